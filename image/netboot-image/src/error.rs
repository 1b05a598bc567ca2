//! The one error type of the crate. Every variant names the file (and where it applies the node
//! and contract field) and says what to do.

use std::fmt;
use std::path::PathBuf;

use plasmacloud_contract::ContractError;

/// Everything that can go wrong building a bundle or an appliance.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written. Check the path, its permissions and free space.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What we were doing (`reading`, `creating`, …).
        action: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The cluster contract is unreadable or invalid; its message names the field and the fix.
    #[error(transparent)]
    Contract(#[from] ContractError),

    /// One or more node secrets could not be taken; each problem names the node, the contract
    /// field, the source file and the fix. Nothing was written.
    #[error("{} secret problem(s); nothing was written:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Secrets(Vec<SecretProblem>),

    /// A file is too large for a newc cpio member (its size field has 32 bits, so 4 GiB - 1 is
    /// the limit). Leave the file out of the archive, or split it.
    #[error("{}: {size} bytes is over the newc cpio limit of {limit} bytes (4 GiB - 1); it cannot be packed into an initrd archive", path.display())]
    MemberTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The largest member the newc format can hold.
        limit: u64,
    },

    /// A file changed size while it was being packed (someone is writing to it). Re-run when
    /// the build that writes it has finished.
    #[error("{}: changed size while being packed (expected {expected} bytes, read {read}); re-run once nothing writes to it", path.display())]
    ChangedWhilePacking {
        /// The file.
        path: PathBuf,
        /// Size when the header was written.
        expected: u64,
        /// Bytes actually read.
        read: u64,
    },

    /// An input is not what it should be (a `netboot.ipxe` without a kernel line, a kernel
    /// image without a version, a unit file that cannot be parsed, …); the message says which
    /// and what was expected.
    #[error("{}: {message}", path.display())]
    BadInput {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong, and what was expected.
        message: String,
    },

    /// A shared library a binary needs was found in none of the library directories. Install
    /// it on the build machine, or pass `--lib-dir` with the directory that holds it.
    #[error("{}: needs {library}, found in none of: {searched}", binary.display())]
    LibraryNotFound {
        /// The binary or library that needs it.
        binary: PathBuf,
        /// The `DT_NEEDED` name.
        library: String,
        /// The directories searched, comma-separated.
        searched: String,
    },

    /// An external command (debootstrap) failed; its log is attached.
    #[error("{command} failed ({status}); last output:\n{log}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of its output.
        log: String,
    },

    /// The output directory exists and is not a bundle; refusing to replace it.
    #[error("{}: exists and is not a bundle (no manifest.json); refusing to replace it — pick another --out or remove it", path.display())]
    NotABundle {
        /// The directory.
        path: PathBuf,
    },
}

impl ImageError {
    /// An [`ImageError::Io`] error builder: `.map_err(ImageError::io(path, "reading"))`.
    pub fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io {
            path,
            action,
            source,
        }
    }

    /// An [`ImageError::BadInput`] error.
    pub fn bad(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ImageError::BadInput {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// What is wrong with one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretIssue {
    /// The contract names a secret but `--secrets DIR` was not given.
    NoSecretsDir,
    /// The source file does not exist.
    Missing,
    /// The source is not a regular file.
    NotAFile,
    /// The source can be read by anyone (mode `o+r`); secrets must not be.
    WorldReadable {
        /// The file's permission bits.
        mode: u32,
    },
    /// The source is larger than a secret may be (`limit`, the bundle's `MAX_SECRET_SIZE`).
    TooLarge {
        /// Its size.
        size: u64,
        /// The largest secret taken.
        limit: u64,
    },
    /// The contract path is not an absolute path without `..`.
    BadPath,
    /// The source could not be read.
    Unreadable {
        /// The I/O error, as text.
        error: String,
    },
}

/// One secret that could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretProblem {
    /// The node whose overlay needs it.
    pub node: String,
    /// The contract field naming it (`nodes[0].tls.key`, `iam.bootstrap_credential`).
    pub field: String,
    /// The path on the node (as the contract writes it).
    pub on_node: PathBuf,
    /// Where it was looked for on this machine (`DIR/<node>/<path on node>`), if anywhere.
    pub source: Option<PathBuf>,
    /// What is wrong.
    pub issue: SecretIssue,
}

impl fmt::Display for SecretProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let src = self
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        write!(
            f,
            "node {:?}, {} ({}): ",
            self.node,
            self.field,
            self.on_node.display()
        )?;
        match &self.issue {
            SecretIssue::NoSecretsDir => write!(
                f,
                "the contract names this secret but no --secrets DIR was given (fix: pass --secrets DIR holding DIR/{}/{})",
                self.node,
                self.on_node.display().to_string().trim_start_matches('/')
            ),
            SecretIssue::Missing => write!(f, "{src} does not exist (fix: put the file there)"),
            SecretIssue::NotAFile => write!(f, "{src} is not a regular file"),
            SecretIssue::WorldReadable { mode } => write!(
                f,
                "{src} is world-readable (mode {mode:04o}); fix: chmod o-rwx {src}"
            ),
            SecretIssue::TooLarge { size, limit } => write!(
                f,
                "{src} is {size} bytes, over the {limit} byte limit for a secret (is it the right file?)"
            ),
            SecretIssue::BadPath => write!(
                f,
                "the contract path must be absolute and free of `..` (it is where the file lives on the node)"
            ),
            SecretIssue::Unreadable { error } => write!(f, "{src}: cannot read: {error}"),
        }
    }
}
