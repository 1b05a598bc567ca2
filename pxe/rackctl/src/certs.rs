//! Node certificates as an operator sees them: read from a node's TLS handshake (expiry,
//! serial), from pxe-server's issued log (`<state>/pki/issued.log`, when the state directory
//! is at hand), and revoked — through `pxe-server pki revoke` when the state directory is at
//! hand (it also records the revocation in `pki/revoked.log`, which pxe-server's own
//! listeners read), else by writing Chainfire's `pki/revoked/<serial>` directly, exactly the
//! record `pki revoke` writes. Every service refuses a revoked serial within 10 s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plasmacloud_pki::{identity, PeerCert, REVOKED_PREFIX};
use plasmacloud_store_client::StoreClient;
use serde::Deserialize;

use crate::operator::Operator;
use crate::{Error, Result};

/// One line of pxe-server's `pki/issued.log`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IssuedEntry {
    /// Serial, lowercase hex.
    pub serial: String,
    /// `urn:plasmacloud:node:NAME` or `urn:plasmacloud:operator:NAME`.
    pub identity: String,
    /// Not valid after (Unix seconds).
    pub not_after: i64,
    /// `enroll` or `offline`.
    pub how: String,
    /// When it was signed (Unix seconds).
    pub at: i64,
}

/// Reads `<state>/pki/issued.log` (a torn last line is skipped, as pxe-server does).
pub fn read_issued(state_dir: &Path) -> Result<Vec<IssuedEntry>> {
    let path = state_dir.join("pki").join("issued.log");
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The certificates issued to node `name`, oldest first.
pub fn issued_to(entries: &[IssuedEntry], name: &str) -> Vec<IssuedEntry> {
    let uri = format!("urn:plasmacloud:node:{name}");
    entries
        .iter()
        .filter(|e| e.identity == uri)
        .cloned()
        .collect()
}

/// The certificate a TLS server at `addr` presents (verified against the cluster CA, the
/// name checked against the address), read from the handshake.
pub async fn peer_certificate(
    operator: &Operator,
    addr: &str,
    timeout: Duration,
) -> Result<PeerCert> {
    let cfg = operator
        .material()
        .client_config()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| Error::Config(format!("{addr:?} is not ip:port")))?;
    let name = rustls::pki_types::ServerName::IpAddress(sock.ip().into());
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(sock)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{addr}: TLS: {e}"))?;
        let (_, conn) = tls.get_ref();
        let der = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| format!("{addr} presented no certificate"))?;
        identity::inspect(der.as_ref()).map_err(|e| format!("{addr}: {e}"))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(Error::Revoke),
        Err(_) => Err(Error::Timeout {
            what: format!("a TLS handshake with {addr}"),
            after: timeout,
            detail: "no answer".into(),
        }),
    }
}

/// How to revoke.
#[derive(Debug, Clone)]
pub enum Revoker {
    /// `pxe-server pki revoke --state-dir DIR --cluster FILE …`.
    PxeServer {
        /// The binary.
        bin: PathBuf,
        /// pxe-server's state directory.
        state_dir: PathBuf,
        /// The contract.
        contract: PathBuf,
    },
    /// Chainfire's `pki/revoked/<serial>` written with the operator certificate.
    Chainfire(StoreClient),
}

/// One certificate to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToRevoke {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Whose (`urn:…`), or `unknown`.
    pub identity: String,
}

/// Adds to `certs` every certificate pxe-server's issued log (in `state_dir`, when given)
/// holds for node `name` and `certs` lacks.
pub fn add_issued(certs: &mut Vec<ToRevoke>, state_dir: Option<&Path>, name: &str) -> Result<()> {
    if let Some(dir) = state_dir {
        for e in issued_to(&read_issued(dir)?, name) {
            if !certs.iter().any(|c| c.serial == e.serial) {
                certs.push(ToRevoke {
                    serial: e.serial,
                    identity: e.identity,
                });
            }
        }
    }
    Ok(())
}

impl Revoker {
    /// Revokes `certs` with `reason`; returns the serials revoked.
    pub async fn revoke(&self, certs: &[ToRevoke], reason: &str) -> Result<Vec<String>> {
        if certs.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Revoker::PxeServer {
                bin,
                state_dir,
                contract,
            } => {
                let mut cmd = tokio::process::Command::new(bin);
                cmd.args(["pki", "revoke", "--state-dir"])
                    .arg(state_dir)
                    .arg("--cluster")
                    .arg(contract)
                    .arg("--reason")
                    .arg(reason);
                for c in certs {
                    cmd.arg(&c.serial);
                }
                let out = cmd.output().await.map_err(|e| {
                    Error::Revoke(format!(
                        "cannot run {}: {e} (pass --pxe-server-bin)",
                        bin.display()
                    ))
                })?;
                if !out.status.success() {
                    return Err(Error::Revoke(format!(
                        "pxe-server pki revoke exited {}: {}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
            }
            Revoker::Chainfire(cf) => {
                for c in certs {
                    let key = format!("{REVOKED_PREFIX}{}", c.serial);
                    let value = serde_json::json!({
                        "serial": c.serial,
                        "identity": c.identity,
                        "revoked_at": crate::utc_ms(crate::now_ms()),
                        "reason": reason,
                    });
                    cf.put(&key, &value.to_string())
                        .await
                        .map_err(|e| Error::store(format!("writing {key}"), e))?;
                }
            }
        }
        Ok(certs.iter().map(|c| c.serial.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issued_log_is_read_line_by_line_and_a_torn_line_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("pki")).expect("mkdir");
        std::fs::write(
            dir.path().join("pki/issued.log"),
            concat!(
                r#"{"serial":"0a","identity":"urn:plasmacloud:node:node02","not_after":10,"how":"offline","at":1}"#,
                "\n",
                r#"{"serial":"0b","identity":"urn:plasmacloud:operator:op","not_after":10,"how":"offline","at":2}"#,
                "\n",
                r#"{"serial":"0c","identity":"urn:plasmacloud:node:node02","not_after":20,"how":"enroll","at":3}"#,
                "\n",
                r#"{"serial":"0d","ident"#
            ),
        )
        .expect("write");
        let all = read_issued(dir.path()).expect("reads");
        assert_eq!(all.len(), 3);
        let mine: Vec<String> = issued_to(&all, "node02")
            .into_iter()
            .map(|e| e.serial)
            .collect();
        assert_eq!(mine, ["0a", "0c"]);
    }
}
