//! The one error type of the crate: what went wrong starting or running a node, and the exit
//! code it maps to.

use std::path::PathBuf;

use crate::types::NodeId;

/// Errors of starting or running a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is wrong; the message names the flag and the fix.
    #[error("configuration: {0}")]
    Config(String),
    /// The data directory is foreign, damaged or unusable; nothing in it was changed.
    #[error("data directory {path}: {problem}")]
    DataDir {
        /// The offending path.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// `--id` disagrees with the id stored in the data directory.
    #[error("{path} says this node is id {stored}, but --id {given} was given; ids are never reused or changed — drop --id, or use a fresh data directory for a new id")]
    IdMismatch {
        /// The node_id file.
        path: PathBuf,
        /// Its id.
        stored: NodeId,
        /// The flag's id.
        given: NodeId,
    },
    /// A listener could not bind (port in use, address not local).
    #[error(
        "cannot listen on {which} address {addr}: {source} (is another process using the port?)"
    )]
    Bind {
        /// `api` or `raft`.
        which: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The Raft core failed.
    #[error("raft: {0}")]
    Raft(String),
}

impl Error {
    /// The process exit code for this error: 2 for configuration and data-directory problems
    /// (retrying will not help), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::DataDir { .. } | Error::IdMismatch { .. } | Error::Tls(_) => {
                2
            }
            _ => 1,
        }
    }
}
