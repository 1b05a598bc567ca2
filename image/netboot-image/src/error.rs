//! The one error type of the crate. Every variant names the file (and where it applies the node
//! and contract field) and says what to do.

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
