//! The cluster's certificates, and the mutual TLS every PlasmaCloud listener and client speaks.
//!
//! The trust rule (shared/DESIGN.md, "Trust"): one cluster CA, kept in pxe-server's state
//! directory, signs every certificate; nothing else is trusted. A certificate names who holds
//! it with one URI SAN — `urn:plasmacloud:node:<name>` for a cluster node, or
//! `urn:plasmacloud:operator:<name>` for a person or tool — and services decide what a caller
//! may do from that identity, never from a header. A node's key is made on the node and never
//! leaves it; the CA signs a CSR. A revoked serial (Chainfire `pki/revoked/<serial>`) is refused
//! by every listener that watches the list.
//!
//! - [`identity`]: who a certificate names, read from its DER ([`identity::inspect`]);
//! - [`ca`]: the CA — created, loaded (its key must be 0600), imported; signing CSRs and
//!   issuing offline with keys made here;
//! - [`credentials`]: a holder's key, certificate and CA on disk (written 0600 and fsynced),
//!   and the check that they are usable together;
//! - [`tls`]: rustls server and client configurations from those files, the revocation set,
//!   and a reqwest client builder that presents the holder's certificate;
//! - [`listener`]: an axum listener that completes TLS handshakes off the accept loop and hands
//!   each connection's verified peer certificate to the handlers ([`listener::Peer`]).
//!
//! Keys are ECDSA P-256: every client in the field (curl, openssl, etcdctl, browsers) speaks it.

pub mod ca;
pub mod credentials;
pub mod identity;
pub mod listener;
pub mod tls;

use std::path::PathBuf;

pub use ca::{CertSpec, ClusterCa, Issued};
pub use credentials::Credentials;
pub use identity::{Identity, PeerCert, Role};
pub use listener::{Peer, TlsListener};
pub use tls::{Revocations, TlsFiles};

/// The Chainfire key prefix under which revoked serials are listed (`pki/revoked/<serial>`).
pub const REVOKED_PREFIX: &str = "pki/revoked/";

/// Everything that can go wrong with certificates and keys. Each variant names the file or
/// the input and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{}: {source} (check the path, its permissions and that the disk is not full)", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file or input is not what it should be (not PEM, not a certificate, wrong key).
    #[error("{what}: {message}")]
    Invalid {
        /// Which file or input.
        what: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A private key file may be read by others than its owner.
    #[error("{}: mode {mode:o} lets others read this private key; run `chmod 600 {}`", path.display(), path.display())]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A certificate could not be made or signed.
    #[error("certificate: {0}")]
    Sign(String),
    /// A certificate signing request is malformed, badly signed, or asks for a key we refuse.
    #[error("certificate signing request: {0}")]
    Csr(String),
    /// The TLS configuration could not be built from the material given.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Result alias.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

pub(crate) fn invalid(what: impl Into<String>, message: impl Into<String>) -> PkiError {
    PkiError::Invalid {
        what: what.into(),
        message: message.into(),
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
