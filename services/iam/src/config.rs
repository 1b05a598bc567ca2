//! Configuration: command-line flags, each also an environment variable `PLASMACLOUD_IAM_…`
//! and a key of the `--config` TOML file. Precedence: flag, then environment, then file, then
//! the default. The merged result is validated into [`Config`].
//!
//! ```toml
//! # /etc/plasmacloud/iam.toml
//! listen_addr = "0.0.0.0:8080"
//! flaredb = ["http://10.0.0.11:2479", "http://10.0.0.12:2479"]
//! signing_key = "/var/lib/plasmacloud/iam/signing-key.pem"
//! token_ttl = "1h"
//! log_format = "pretty"
//! ```

use crate::service::{MAX_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS};
use crate::{IamError, Result};
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default `listen_addr`.
pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:8080";
/// Default `flaredb` endpoint (the local node's FlareDB).
pub const DEFAULT_FLAREDB: &str = "http://127.0.0.1:2479";
/// Default `signing_key` path.
pub const DEFAULT_SIGNING_KEY: &str = "/var/lib/plasmacloud/iam/signing-key.pem";
/// Default `token_ttl`.
pub const DEFAULT_TOKEN_TTL: &str = "1h";

/// Command line of `iam-server`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "iam-server",
    version,
    about = "PlasmaCloud IAM: users, roles and Ed25519 tokens, stored in FlareDB's `iam` namespace.",
    after_help = "The signing key file holds an Ed25519 private key (PKCS#8 PEM, or a raw 32-byte \
                  seed). When it does not exist it is created (PKCS#8 PEM, mode 0600) and its \
                  public key is published in FlareDB under iam/keys/<kid>."
)]
pub struct Cli {
    /// TOML file whose keys are the long flag names with `_` (listen_addr, flaredb, …).
    #[arg(long, env = "PLASMACLOUD_IAM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve the API on [default: 0.0.0.0:8080]. Port 0 picks a free port.
    #[arg(long, env = "PLASMACLOUD_IAM_LISTEN_ADDR", value_name = "IP:PORT")]
    pub listen_addr: Option<String>,

    /// FlareDB API endpoints, comma-separated [default: http://127.0.0.1:2479].
    #[arg(
        long,
        env = "PLASMACLOUD_IAM_FLAREDB",
        value_name = "URL[,URL…]",
        value_delimiter = ','
    )]
    pub flaredb: Option<Vec<String>>,

    /// Ed25519 signing key file [default: /var/lib/plasmacloud/iam/signing-key.pem].
    #[arg(long, env = "PLASMACLOUD_IAM_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,

    /// Token lifetime: seconds, or a number with s, m, h or d (60s to 7d) [default: 1h].
    #[arg(long, env = "PLASMACLOUD_IAM_TOKEN_TTL", value_name = "DURATION")]
    pub token_ttl: Option<String>,

    /// Log format: `pretty` for people, `json` for machines [default: pretty].
    #[arg(long, env = "PLASMACLOUD_IAM_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Validate the configuration and the signing key file, print the result, bind nothing.
    #[arg(long)]
    pub check: bool,
}

/// The TOML file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See `--listen-addr`.
    pub listen_addr: Option<String>,
    /// See `--flaredb`.
    pub flaredb: Option<Vec<String>>,
    /// See `--signing-key`.
    pub signing_key: Option<PathBuf>,
    /// See `--token-ttl` (a string like `"1h"` or an integer of seconds).
    pub token_ttl: Option<TtlValue>,
    /// See `--log-format`.
    pub log_format: Option<String>,
}

/// A TTL in the file: `"1h"` or `3600`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TtlValue {
    /// Seconds.
    Seconds(u64),
    /// Text with a unit.
    Text(String),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the API listens.
    pub listen_addr: SocketAddr,
    /// FlareDB API base URLs (`http://host:port`, no trailing slash).
    pub flaredb: Vec<String>,
    /// The signing key file.
    pub signing_key: PathBuf,
    /// Token lifetime in seconds.
    pub token_ttl_secs: u64,
    /// Log format.
    pub log_format: LogFormat,
}

/// Parses `90`, `90s`, `15m`, `1h`, `7d` into seconds.
pub fn parse_duration_secs(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a duration; write e.g. 3600, 90s, 15m, 1h or 1d"))
}

impl Config {
    /// Merges flags/env with the `--config` file (read here) and validates the result.
    pub fn from_cli(cli: &Cli) -> Result<Self> {
        let file = match &cli.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    /// Merges flags/env with an already parsed file and validates the result.
    pub fn merge(cli: &Cli, file: FileConfig) -> Result<Self> {
        let listen = cli
            .listen_addr
            .clone()
            .or(file.listen_addr)
            .unwrap_or_else(|| DEFAULT_LISTEN_ADDR.to_string());
        let listen_addr: SocketAddr = listen.trim().parse().map_err(|_| {
            IamError::Config(format!(
                "listen_addr {listen:?} is not IP:PORT (e.g. 0.0.0.0:8080)"
            ))
        })?;

        let flaredb_raw = cli
            .flaredb
            .clone()
            .or(file.flaredb)
            .unwrap_or_else(|| vec![DEFAULT_FLAREDB.to_string()]);
        let mut flaredb = Vec::new();
        for url in flaredb_raw
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
        {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .ok_or_else(|| {
                    IamError::Config(format!(
                        "flaredb endpoint {url:?} must start with http:// or https:// (e.g. http://10.0.0.11:2479)"
                    ))
                })?;
            if rest.trim_end_matches('/').is_empty() || rest.trim_end_matches('/').contains('/') {
                return Err(IamError::Config(format!(
                    "flaredb endpoint {url:?} must be a base URL with no path (e.g. http://10.0.0.11:2479)"
                )));
            }
            flaredb.push(url.trim_end_matches('/').to_string());
        }
        if flaredb.is_empty() {
            return Err(IamError::Config(
                "flaredb lists no endpoint; give at least one URL (e.g. http://127.0.0.1:2479)"
                    .into(),
            ));
        }

        let signing_key = cli
            .signing_key
            .clone()
            .or(file.signing_key)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SIGNING_KEY));
        if signing_key.as_os_str().is_empty() {
            return Err(IamError::Config("signing_key must not be empty".into()));
        }

        let token_ttl_secs = match (&cli.token_ttl, file.token_ttl) {
            (Some(s), _) => parse_duration_secs(s),
            (None, Some(TtlValue::Seconds(n))) => Ok(n),
            (None, Some(TtlValue::Text(s))) => parse_duration_secs(&s),
            (None, None) => parse_duration_secs(DEFAULT_TOKEN_TTL),
        }
        .map_err(|e| IamError::Config(format!("token_ttl: {e}")))?;
        if !(MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(&token_ttl_secs) {
            return Err(IamError::Config(format!(
                "token_ttl is {token_ttl_secs} s; it must be between {MIN_TOKEN_TTL_SECS} s and {MAX_TOKEN_TTL_SECS} s (7d)"
            )));
        }

        let log_format = match cli
            .log_format
            .clone()
            .or(file.log_format)
            .as_deref()
            .unwrap_or("pretty")
        {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(IamError::Config(format!(
                    "log_format {other:?} is unknown; use \"pretty\" or \"json\""
                )))
            }
        };

        Ok(Config {
            listen_addr,
            flaredb,
            signing_key,
            token_ttl_secs,
            log_format,
        })
    }
}

/// Reads and parses a TOML config file (unknown keys are errors).
pub fn read_file_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| IamError::Config(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| IamError::Config(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["iam-server"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults() {
        let c = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.flaredb, vec![DEFAULT_FLAREDB.to_string()]);
        assert_eq!(c.token_ttl_secs, 3600);
        assert_eq!(c.signing_key, PathBuf::from(DEFAULT_SIGNING_KEY));
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            listen_addr = "127.0.0.1:9000"
            flaredb = ["http://10.0.0.1:2479/"]
            token_ttl = 600
            "#,
        )
        .unwrap();
        let c = Config::merge(
            &cli(&["--flaredb", "http://a:1,http://b:2", "--token-ttl", "2h"]),
            file,
        )
        .unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(c.flaredb, vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.token_ttl_secs, 7200);
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("iam.example.toml");
        let file = read_file_config(&path).unwrap();
        let c = Config::merge(&cli(&[]), file).unwrap();
        assert_eq!(c.listen_addr.port(), 8080);
    }

    #[test]
    fn bad_values_name_the_key() {
        let bad = [
            (vec!["--listen-addr", "nope"], "listen_addr"),
            (vec!["--flaredb", "10.0.0.1:2479"], "http://"),
            (vec!["--flaredb", "http://a:1/v1"], "no path"),
            (vec!["--token-ttl", "5s"], "token_ttl"),
            (vec!["--token-ttl", "1w"], "token_ttl"),
            (vec!["--log-format", "xml"], "log_format"),
        ];
        for (args, needle) in bad {
            let e = Config::merge(&cli(&args), FileConfig::default()).unwrap_err();
            assert!(e.to_string().contains(needle), "{args:?}: {e}");
        }
        let e = toml::from_str::<FileConfig>("listen = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("15m"), Ok(900));
        assert_eq!(parse_duration_secs("1d"), Ok(86_400));
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("").is_err());
    }
}
