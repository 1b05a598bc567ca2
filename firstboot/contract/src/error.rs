//! Errors of the contract crate. Each says which file, which field, and the fix.

use std::fmt;
use std::path::PathBuf;

/// One semantic problem: a JSON path (`nodes[2].mac`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    /// JSON path of the offending value, e.g. `nodes[2].mac` (`.` for the whole document).
    pub path: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything that can go wrong reading the contract or the manifest.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The file could not be read. Check the path and its permissions.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The JSON is broken (a missing comma, an unclosed brace): fix it at the line and column.
    #[error("{origin}: line {line}, column {column}: {message}")]
    Syntax {
        /// The file (or `<input>`).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's description.
        message: String,
    },

    /// The JSON is well formed but a value has the wrong shape (an unknown field, a string where
    /// a number belongs): the path names it.
    #[error("{origin}: {path}: {message} (line {line}, column {column})")]
    Shape {
        /// The file (or `<input>`).
        origin: String,
        /// JSON path of the offending value.
        path: String,
        /// What serde expected.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },

    /// The document parsed but breaks the contract's rules; every problem is listed.
    #[error("{origin}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file (or `<input>`).
        origin: String,
        /// Every problem found, in document order.
        problems: Vec<Problem>,
    },

    /// This machine is not a node of the contract. The message lists what was looked at; fix
    /// the kernel command line (`plasmacloud.node=NAME`), the identity file, or the node's MAC.
    #[error("cannot find this node in cluster {cluster:?}: {looked_at}")]
    SelfNotFound {
        /// The cluster name.
        cluster: String,
        /// What was looked at and why it did not match.
        looked_at: String,
    },

    /// A node name that the contract does not have.
    #[error("node {name:?} is not in cluster {cluster:?} (known: {known})")]
    UnknownNode {
        /// The name asked for.
        name: String,
        /// The cluster name.
        cluster: String,
        /// Known node names, comma-separated.
        known: String,
    },
}

impl ContractError {
    /// The problems of an [`ContractError::Invalid`] error (empty for the other kinds).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ContractError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}
