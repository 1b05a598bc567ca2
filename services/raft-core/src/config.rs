//! The configuration file and flag merging both servers share.
//!
//! Every key is a TOML key in `--config FILE`, a flag and an environment variable
//! (`PLASMACLOUD_CHAINFIRE_…` / `PLASMACLOUD_FLAREDB_…`); flags and variables win over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;
use crate::node::{NodeConfig, TlsConfig};
use crate::types::NodeId;

/// The TOML file (and, field for field, the flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Raft node id (optional once `<data-dir>/node_id` exists).
    pub id: Option<NodeId>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// API listen (and advertised) address.
    pub api_addr: Option<String>,
    /// Raft listen (and advertised) address.
    pub raft_addr: Option<String>,
    /// TLS certificate (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA for verifying peers (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Snapshot every this many log entries.
    pub snapshot_logs: Option<u64>,
    /// Raft heartbeat, ms.
    pub heartbeat_ms: Option<u64>,
    /// Server-side deadline of one request, ms.
    pub request_timeout_ms: Option<u64>,
    /// FlareDB only: Chainfire endpoints, comma-separated.
    pub chainfire: Option<String>,
}

macro_rules! over {
    ($self:ident, $o:ident, $($f:ident),*) => {
        FileConfig { $( $f: $o.$f.or($self.$f), )* }
    };
}

impl FileConfig {
    /// Reads and parses a TOML file; the error names the file and the field.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("reading --config {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// `overrides` wins field by field.
    pub fn merged_with(self, overrides: FileConfig) -> FileConfig {
        over!(
            self,
            overrides,
            id,
            data_dir,
            api_addr,
            raft_addr,
            tls_cert,
            tls_key,
            tls_ca,
            snapshot_logs,
            heartbeat_ms,
            request_timeout_ms,
            chainfire
        )
    }

    /// Validates into a node configuration for `service`; `prefix` is the env prefix used in
    /// messages (`PLASMACLOUD_CHAINFIRE`).
    pub fn into_node_config(
        self,
        service: &'static str,
        prefix: &str,
    ) -> Result<NodeConfig, Error> {
        let addr = |name: &str, v: Option<String>| -> Result<SocketAddr, Error> {
            let env = format!("{prefix}_{}", name.replace('-', "_").to_uppercase());
            let v = v.ok_or_else(|| {
                Error::Config(format!(
                    "--{name} is required (or {env}, or `{}` in --config)",
                    name.replace('-', "_")
                ))
            })?;
            v.parse()
                .map_err(|_| Error::Config(format!("--{name} {v:?} must be ip:port")))
        };
        let api_addr = addr("api-addr", self.api_addr)?;
        let raft_addr = addr("raft-addr", self.raft_addr)?;
        let data_dir = self.data_dir.ok_or_else(|| {
            Error::Config(format!(
                "--data-dir is required (or {prefix}_DATA_DIR, or `data_dir` in --config)"
            ))
        })?;
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert,
                key,
                ca: self.tls_ca,
            }),
            (None, None) => {
                if self.tls_ca.is_some() {
                    return Err(Error::Config(
                        "--tls-ca needs --tls-cert and --tls-key".into(),
                    ));
                }
                None
            }
            _ => return Err(Error::Config("--tls-cert and --tls-key go together".into())),
        };
        let mut cfg = NodeConfig::new(service, self.id, data_dir, api_addr, raft_addr);
        cfg.tls = tls;
        if let Some(n) = self.snapshot_logs {
            cfg.snapshot_logs = n;
        }
        if let Some(n) = self.heartbeat_ms {
            cfg.heartbeat_ms = n;
        }
        if let Some(ms) = self.request_timeout_ms {
            if ms < 100 {
                return Err(Error::Config(
                    "--request-timeout-ms must be at least 100".into(),
                ));
            }
            cfg.request_timeout = Duration::from_millis(ms);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_errors_name_the_key() {
        let file: FileConfig = toml::from_str(
            "id = 1\ndata_dir = \"/x\"\napi_addr = \"127.0.0.1:2379\"\nraft_addr = \"127.0.0.1:2380\"\n",
        )
        .unwrap();
        let flags = FileConfig {
            id: Some(2),
            ..Default::default()
        };
        let cfg = file
            .clone()
            .merged_with(flags)
            .into_node_config("chainfire", "P")
            .unwrap();
        assert_eq!(cfg.id, Some(2));
        let e = toml::from_str::<FileConfig>("bogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = FileConfig {
            api_addr: Some("nope".into()),
            ..file
        }
        .into_node_config("chainfire", "P")
        .unwrap_err();
        assert!(e.to_string().contains("--api-addr \"nope\""), "{e}");
    }
}
