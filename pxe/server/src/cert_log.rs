//! What the CA did: `pki/issued.log` (one JSON line per certificate it signed: serial,
//! identity, validity, how) and `pki/revoked.log` (one JSON line per revocation, the same
//! record `pki revoke` writes to Chainfire under `pki/revoked/<serial>`).
//!
//! Both are append-only and every line is fsynced before the caller goes on (a certificate is
//! logged before it is handed out; a revocation before Chainfire is told). A torn last line
//! (a power cut mid-write) is skipped when read. Neither holds anything secret: certificates
//! are public, keys never pass through here.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use plasmacloud_pki::Issued;
use serde::{Deserialize, Serialize};

use crate::cluster_ca::pki_dir;
use crate::ServerError;

/// The issued-certificates log, under `pki/`.
pub const ISSUED_LOG: &str = "issued.log";
/// The revocations log, under `pki/`.
pub const REVOKED_LOG: &str = "revoked.log";

/// One certificate the CA signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// Serial, lowercase hex (the form revocation uses).
    pub serial: String,
    /// `urn:plasmacloud:node:NAME` or `urn:plasmacloud:operator:NAME`.
    pub identity: String,
    /// Not valid after (Unix seconds).
    pub not_after: i64,
    /// `enroll` (a node's CSR at boot) or `offline` (`pki issue`).
    pub how: String,
    /// When it was signed (Unix seconds).
    pub at: i64,
}

/// One revocation: the value of Chainfire's `pki/revoked/<serial>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Who the certificate named (from the issued log), or `unknown`.
    pub identity: String,
    /// RFC 3339 UTC.
    pub revoked_at: String,
    /// Free text.
    pub reason: String,
}

fn log_path(state_dir: &Path, name: &str) -> PathBuf {
    pki_dir(state_dir).join(name)
}

fn append_line(path: &Path, line: &impl Serialize) -> Result<(), ServerError> {
    let io = |e: std::io::Error| ServerError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut s = serde_json::to_string(line).unwrap_or_default();
    s.push('\n');
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io)?;
    // After a torn last line, start on a fresh one so this record is not lost with it.
    let len = f.metadata().map_err(io)?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut last, len - 1).map_err(io)?;
        if last[0] != b'\n' {
            s.insert(0, '\n');
        }
    }
    f.write_all(s.as_bytes()).map_err(io)?;
    f.sync_data().map_err(io)
}

fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, ServerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ServerError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// Logs a certificate the CA signed (`how`: `enroll` or `offline`).
pub fn append_issued(state_dir: &Path, issued: &Issued, how: &str) -> Result<(), ServerError> {
    append_line(
        &log_path(state_dir, ISSUED_LOG),
        &IssuedRecord {
            serial: issued.cert.serial.clone(),
            identity: issued.cert.identity.uri(),
            not_after: issued.cert.not_after,
            how: how.to_string(),
            at: plasmacloud_pki::now_unix(),
        },
    )
}

/// Every certificate the CA signed, oldest first.
pub fn read_issued(state_dir: &Path) -> Result<Vec<IssuedRecord>, ServerError> {
    read_lines(&log_path(state_dir, ISSUED_LOG))
}

/// Logs a revocation.
pub fn append_revoked(state_dir: &Path, r: &Revocation) -> Result<(), ServerError> {
    append_line(&log_path(state_dir, REVOKED_LOG), r)
}

/// Every revocation, oldest first.
pub fn read_revoked(state_dir: &Path) -> Result<Vec<Revocation>, ServerError> {
    read_lines(&log_path(state_dir, REVOKED_LOG))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_survive_and_a_torn_one_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(pki_dir(dir.path())).expect("pki dir");
        let r = Revocation {
            serial: "1a".into(),
            identity: "urn:plasmacloud:node:node02".into(),
            revoked_at: "2026-01-01T00:00:00.000Z".into(),
            reason: "lost".into(),
        };
        append_revoked(dir.path(), &r).expect("append");
        let path = log_path(dir.path(), REVOKED_LOG);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"serial\":\"2").expect("torn");
        assert_eq!(read_revoked(dir.path()).expect("read"), vec![r.clone()]);
        let r2 = Revocation {
            serial: "2b".into(),
            ..r.clone()
        };
        append_revoked(dir.path(), &r2).expect("append after the torn line");
        assert_eq!(read_revoked(dir.path()).expect("read"), vec![r, r2]);
        assert!(read_issued(dir.path()).expect("none").is_empty());
    }
}
