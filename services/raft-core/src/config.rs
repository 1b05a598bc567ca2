//! The configuration file and flag merging both servers share.
//!
//! Every key is a TOML key in `--config FILE`, a flag and an environment variable
//! (`PLASMACLOUD_CHAINFIRE_…` / `PLASMACLOUD_FLAREDB_…`); flags and variables win over the file.
//! The one exception is `--dev-plaintext` (flag and variable only, never a file key): a shipped
//! configuration file cannot turn TLS off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use plasmacloud_pki::TlsFiles;

use crate::error::Error;
use crate::node::NodeConfig;
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
    /// This node's certificate (PEM), from the cluster CA.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM, mode 0600).
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): every peer and client certificate is verified against it.
    pub tls_ca: Option<PathBuf>,
    /// Snapshot every this many log entries.
    pub snapshot_logs: Option<u64>,
    /// Raft heartbeat, ms.
    pub heartbeat_ms: Option<u64>,
    /// Server-side deadline of one request, ms.
    pub request_timeout_ms: Option<u64>,
    /// How long a stopping leader may spend handing its leadership over, ms (0: never).
    pub shutdown_handover_ms: Option<u64>,
    /// FlareDB only: Chainfire endpoints, comma-separated.
    pub chainfire: Option<String>,
    /// FlareDB only: drop time-series points older than this many seconds (0 or unset: keep
    /// every point; else 60 s up to 100 years).
    pub ts_retention_secs: Option<u64>,
    /// `--dev-plaintext`: no TLS, loopback addresses only (a flag, never a file key).
    #[serde(skip)]
    pub dev_plaintext: Option<bool>,
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
            shutdown_handover_ms,
            chainfire,
            ts_retention_secs,
            dev_plaintext
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
        let tls = tls_files(self.tls_cert, self.tls_key, self.tls_ca, prefix)?;
        let mut cfg = NodeConfig::new(service, self.id, data_dir, api_addr, raft_addr);
        cfg.tls = tls;
        cfg.dev_plaintext = self.dev_plaintext.unwrap_or(false);
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
        if let Some(ms) = self.shutdown_handover_ms {
            cfg.shutdown_handover = Duration::from_millis(ms);
        }
        cfg.ts_retention = ts_retention(service, self.ts_retention_secs)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The shortest time-series retention (`ts_retention_secs`) taken: the leader trims in steps
/// of a hundredth of it, at least a second.
pub const MIN_TS_RETENTION_SECS: u64 = 60;
/// The longest (100 years; in unix ms it stays far inside an `i64`).
pub const MAX_TS_RETENTION_SECS: u64 = 100 * 366 * 24 * 3600;

/// `ts_retention_secs` checked: `None` keeps every point.
fn ts_retention(service: &str, secs: Option<u64>) -> Result<Option<Duration>, Error> {
    match secs {
        None | Some(0) => Ok(None),
        Some(_) if service != "flaredb" => Err(Error::Config(format!(
            "ts_retention_secs is FlareDB's (time series); {service} has none, remove the key"
        ))),
        Some(s) if (MIN_TS_RETENTION_SECS..=MAX_TS_RETENTION_SECS).contains(&s) => {
            Ok(Some(Duration::from_secs(s)))
        }
        Some(s) => Err(Error::Config(format!(
            "ts_retention_secs (--ts-retention-secs) = {s}: give 0 to keep every point, or {MIN_TS_RETENTION_SECS}..={MAX_TS_RETENTION_SECS} seconds (e.g. 2592000 for 30 days)"
        ))),
    }
}

/// How to get the files TLS needs (named in every error about them).
pub const HOW_TO_GET_A_CERTIFICATE: &str = "a node gets them at enrollment (`firstboot enroll`, into <state>/pki/), or offline from the provisioning host: `pxe-server pki issue --node NAME --out DIR --cluster cluster-config.json --state-dir STATE` writes DIR/node.crt, DIR/node.key and DIR/ca.crt";

/// The three TLS files, all or none; a partial set names what is missing.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    prefix: &str,
) -> Result<Option<TlsFiles>, Error> {
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
        (None, None, None) => Ok(None),
        (cert, key, ca) => {
            let missing: Vec<String> = [("tls_cert", cert), ("tls_key", key), ("tls_ca", ca)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| {
                    format!(
                        "`{k}` (--{}, {prefix}_{})",
                        k.replace('_', "-"),
                        k.to_uppercase()
                    )
                })
                .collect();
            Err(Error::Config(format!(
                "TLS needs tls_cert, tls_key and tls_ca together; missing {}: {HOW_TO_GET_A_CERTIFICATE}",
                missing.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: &str =
        "tls_cert = \"/p/node.crt\"\ntls_key = \"/p/node.key\"\ntls_ca = \"/p/ca.crt\"\n";

    #[test]
    fn flags_win_and_errors_name_the_key() {
        let file: FileConfig = toml::from_str(&format!(
            "id = 1\ndata_dir = \"/x\"\napi_addr = \"127.0.0.1:2379\"\nraft_addr = \"127.0.0.1:2380\"\n{TLS}"
        ))
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
        assert_eq!(
            cfg.tls.as_ref().map(|t| t.ca.clone()),
            Some(PathBuf::from("/p/ca.crt"))
        );
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

    #[test]
    fn ts_retention_is_off_by_default_and_bounded() {
        let base = |extra: &str| -> Result<NodeConfig, Error> {
            toml::from_str::<FileConfig>(&format!(
                "id = 1\ndata_dir = \"/x\"\napi_addr = \"127.0.0.1:2379\"\nraft_addr = \"127.0.0.1:2380\"\n{TLS}{extra}"
            ))
            .unwrap()
            .into_node_config("flaredb", "P")
        };
        assert_eq!(base("").unwrap().ts_retention, None);
        assert_eq!(base("ts_retention_secs = 0\n").unwrap().ts_retention, None);
        assert_eq!(
            base("ts_retention_secs = 86400\n").unwrap().ts_retention,
            Some(Duration::from_secs(86400))
        );
        for bad in ["59", "99999999999"] {
            let e = base(&format!("ts_retention_secs = {bad}\n")).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("ts_retention_secs (--ts-retention-secs) = {bad}")),
                "{e}"
            );
        }
        let e = toml::from_str::<FileConfig>("ts_retention_secs = -1").unwrap_err();
        assert!(e.to_string().contains("ts_retention_secs"), "{e}");
        let chainfire = FileConfig {
            ts_retention_secs: Some(3600),
            ..toml::from_str(&format!(
                "id = 1\ndata_dir = \"/x\"\napi_addr = \"127.0.0.1:2379\"\nraft_addr = \"127.0.0.1:2380\"\n{TLS}"
            ))
            .unwrap()
        };
        let e = chainfire.into_node_config("chainfire", "P").unwrap_err();
        assert!(e.to_string().contains("FlareDB's"), "{e}");
    }

    #[test]
    fn tls_is_all_three_files_or_the_loopback_development_flag() {
        let base = |extra: &str| -> FileConfig {
            toml::from_str(&format!(
                "id = 1\ndata_dir = \"/x\"\napi_addr = \"127.0.0.1:2379\"\nraft_addr = \"127.0.0.1:2380\"\n{extra}"
            ))
            .unwrap()
        };
        let e = base("").into_node_config("chainfire", "P").unwrap_err();
        let text = e.to_string();
        for needle in [
            "tls_cert",
            "tls_key",
            "tls_ca",
            "pxe-server pki issue --node",
        ] {
            assert!(text.contains(needle), "{text}");
        }
        let e = base("tls_cert = \"/c\"\n")
            .into_node_config("chainfire", "P_X")
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("missing `tls_key` (--tls-key, P_X_TLS_KEY), `tls_ca`"),
            "{text}"
        );
        assert!(!text.contains("`tls_cert`"), "{text}");

        // The development flag is a flag, never a file key, and loopback only.
        let e = toml::from_str::<FileConfig>("dev_plaintext = true").unwrap_err();
        assert!(e.to_string().contains("dev_plaintext"), "{e}");
        let dev = FileConfig {
            dev_plaintext: Some(true),
            ..Default::default()
        };
        let cfg = base("")
            .merged_with(dev.clone())
            .into_node_config("chainfire", "P")
            .unwrap();
        assert!(cfg.dev_plaintext && cfg.tls.is_none());
        let mut far = base("");
        far.api_addr = Some("10.0.0.1:2379".into());
        let e = far
            .merged_with(dev.clone())
            .into_node_config("chainfire", "P")
            .unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = base(TLS)
            .merged_with(dev)
            .into_node_config("chainfire", "P")
            .unwrap_err();
        assert!(e.to_string().contains("--dev-plaintext"), "{e}");
    }
}
