//! Configuration: command-line flags, each also an environment variable `PLASMACLOUD_IAM_…`
//! and a key of the `--config` TOML file. Precedence: flag, then environment, then file, then
//! the default. The merged result is validated into [`Config`].
//!
//! TLS is not optional: `tls_cert`, `tls_key` and `tls_ca` (the node's `node.crt`, `node.key`
//! and `ca.crt`) must be given, and every FlareDB and Chainfire URL is `https://`. There is no
//! plaintext mode.
//!
//! ```toml
//! # /etc/plasmacloud/iam.toml
//! listen_addr = "0.0.0.0:8080"
//! flaredb = ["https://10.0.0.11:2479", "https://10.0.0.12:2479"]
//! chainfire = ["https://10.0.0.11:2379", "https://10.0.0.12:2379"]
//! signing_key = "/var/lib/plasmacloud/iam/signing-key.pem"
//! tls_cert = "/var/lib/plasmacloud/pki/node.crt"
//! tls_key = "/var/lib/plasmacloud/pki/node.key"
//! tls_ca = "/var/lib/plasmacloud/pki/ca.crt"
//! token_ttl = "1h"
//! log_format = "pretty"
//! ```

use crate::service::{MAX_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS};
use crate::{IamError, Result};
use clap::{Parser, Subcommand};
use plasmacloud_pki::tls::TlsMaterial;
use plasmacloud_pki::TlsFiles;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default `listen_addr`.
pub const DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:8080";
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
                  public key is published in FlareDB under iam/keys/<kid>.\n\n\
                  TLS is mandatory: the node's certificate, key and CA (a node gets them at \
                  enrollment; `pxe-server pki issue --node NAME --out DIR` writes node.crt, \
                  node.key and ca.crt). Login, tokens and /health are open to anyone over TLS; \
                  administration also needs a client certificate of the cluster CA."
)]
pub struct Cli {
    /// A tool instead of the server (`hash-password`).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML file whose keys are the long flag names with `_` (listen_addr, flaredb, …).
    #[arg(long, env = "PLASMACLOUD_IAM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve the API on [default: 0.0.0.0:8080]. Port 0 picks a free port.
    #[arg(long, env = "PLASMACLOUD_IAM_LISTEN_ADDR", value_name = "IP:PORT")]
    pub listen_addr: Option<String>,

    /// FlareDB API endpoints (https://), comma-separated.
    #[arg(
        long,
        env = "PLASMACLOUD_IAM_FLAREDB",
        value_name = "URL[,URL…]",
        value_delimiter = ','
    )]
    pub flaredb: Option<Vec<String>>,

    /// Chainfire API endpoints (https://), comma-separated: where revoked certificates are listed.
    #[arg(
        long,
        env = "PLASMACLOUD_IAM_CHAINFIRE",
        value_name = "URL[,URL…]",
        value_delimiter = ','
    )]
    pub chainfire: Option<Vec<String>>,

    /// The node's certificate (PEM), served and presented to FlareDB and Chainfire.
    #[arg(long, env = "PLASMACLOUD_IAM_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The node's private key (PEM, mode 0600).
    #[arg(long, env = "PLASMACLOUD_IAM_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The cluster CA certificate (PEM): the only CA trusted, for clients and servers alike.
    #[arg(long, env = "PLASMACLOUD_IAM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Ed25519 signing key file [default: /var/lib/plasmacloud/iam/signing-key.pem].
    #[arg(long, env = "PLASMACLOUD_IAM_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,

    /// Token lifetime: seconds, or a number with s, m, h or d (60s to 7d) [default: 1h].
    #[arg(long, env = "PLASMACLOUD_IAM_TOKEN_TTL", value_name = "DURATION")]
    pub token_ttl: Option<String>,

    /// Log format: `pretty` for people, `json` for machines [default: pretty].
    #[arg(long, env = "PLASMACLOUD_IAM_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Validate the configuration, the TLS files and the signing key file, print the result,
    /// bind nothing.
    #[arg(long)]
    pub check: bool,
}

/// `iam-server` tools.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print the argon2id hash of a password read from stdin (for the contract's admin).
    ///
    /// Reads one line from stdin, checks it by IAM's password rule (a weak one exits 2 saying
    /// why), and prints its argon2id PHC string at IAM's parameters and a newline: the value of
    /// the contract's `iam.admin.password_hash`, e.g.
    /// `printf '%s\n' "$PW" | iam-server hash-password`.
    HashPassword {
        /// The user the password is for (refused when the password contains it).
        #[arg(long, value_name = "NAME")]
        username: Option<String>,
    },
}

/// The TOML file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See `--listen-addr`.
    pub listen_addr: Option<String>,
    /// See `--flaredb` (a list, or a comma-separated string).
    pub flaredb: Option<UrlList>,
    /// See `--chainfire` (a list, or a comma-separated string).
    pub chainfire: Option<UrlList>,
    /// See `--signing-key`.
    pub signing_key: Option<PathBuf>,
    /// See `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// See `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// See `--tls-ca`.
    pub tls_ca: Option<PathBuf>,
    /// See `--token-ttl` (a string like `"1h"` or an integer of seconds).
    pub token_ttl: Option<TtlValue>,
    /// See `--log-format`.
    pub log_format: Option<String>,
}

/// URLs in the file: `["https://a:1", "https://b:2"]` or `"https://a:1,https://b:2"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum UrlList {
    /// A TOML array.
    List(Vec<String>),
    /// Comma-separated.
    Text(String),
}

impl UrlList {
    fn into_vec(self) -> Vec<String> {
        match self {
            UrlList::List(v) => v,
            UrlList::Text(s) => s.split(',').map(str::to_string).collect(),
        }
    }
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
    /// FlareDB API base URLs (`https://host:port`, no trailing slash).
    pub flaredb: Vec<String>,
    /// Chainfire API base URLs (`https://host:port`), for the certificate revocation list.
    pub chainfire: Vec<String>,
    /// The signing key file.
    pub signing_key: PathBuf,
    /// The node's certificate, key and the cluster CA.
    pub tls: TlsFiles,
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

        let flaredb = endpoints(
            "flaredb",
            cli.flaredb.clone().or(file.flaredb.map(UrlList::into_vec)),
            "FlareDB's API",
            2479,
        )?;
        let chainfire = endpoints(
            "chainfire",
            cli.chainfire
                .clone()
                .or(file.chainfire.map(UrlList::into_vec)),
            "the voters' Chainfire API, where revoked certificates are listed",
            2379,
        )?;
        let tls = tls_files(
            cli.tls_cert.clone().or(file.tls_cert),
            cli.tls_key.clone().or(file.tls_key),
            cli.tls_ca.clone().or(file.tls_ca),
        )?;

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
            chainfire,
            signing_key,
            tls,
            token_ttl_secs,
            log_format,
        })
    }
}

/// Validates the endpoint list of `key`: at least one, each an `https://host:port` base URL.
fn endpoints(key: &str, raw: Option<Vec<String>>, what: &str, port: u16) -> Result<Vec<String>> {
    let example = format!("https://10.0.0.11:{port}");
    let mut out = Vec::new();
    for url in raw
        .unwrap_or_default()
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
    {
        let rest = url.strip_prefix("https://").ok_or_else(|| {
            IamError::Config(format!(
                "{key} endpoint {url:?} must start with https:// (every service port speaks TLS), e.g. {example}"
            ))
        })?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(IamError::Config(format!(
                "{key} endpoint {url:?} must be a base URL with no path, e.g. {example}"
            )));
        }
        out.push(format!("https://{rest}"));
    }
    if out.is_empty() {
        return Err(IamError::Config(format!(
            "{key} lists no endpoint; give the https:// URLs of {what}, e.g. {key} = [\"{example}\"] \
             (or --{key}, or PLASMACLOUD_IAM_{})",
            key.to_uppercase()
        )));
    }
    Ok(out)
}

/// The three TLS files, all required; the error names the missing keys and how to get them.
fn tls_files(cert: Option<PathBuf>, key: Option<PathBuf>, ca: Option<PathBuf>) -> Result<TlsFiles> {
    let empty = |p: &Option<PathBuf>| p.as_ref().is_none_or(|p| p.as_os_str().is_empty());
    let missing: Vec<&str> = [("tls_cert", &cert), ("tls_key", &key), ("tls_ca", &ca)]
        .into_iter()
        .filter(|(_, p)| empty(p))
        .map(|(k, _)| k)
        .collect();
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) if missing.is_empty() => Ok(TlsFiles { cert, key, ca }),
        _ => Err(IamError::Config(format!(
            "{} missing: iam-server serves HTTPS only, with the node's certificate (tls_cert, \
             tls_key and tls_ca; --tls-cert/--tls-key/--tls-ca or PLASMACLOUD_IAM_TLS_*). A node \
             gets them at enrollment (<state>/pki/node.crt, node.key, ca.crt); elsewhere run \
             `pxe-server pki issue --node NAME --out DIR`",
            missing.join(", ")
        ))),
    }
}

impl Config {
    /// Loads and checks the TLS files: they must belong together, the key must be private,
    /// and the certificate must be a node's (FlareDB gives the `iam` namespace to nodes only).
    pub fn tls_material(&self) -> Result<TlsMaterial> {
        let m = TlsMaterial::load(&self.tls).map_err(|e| IamError::Config(format!("tls: {e}")))?;
        let me = &m.identity().identity;
        if !me.is_node() {
            return Err(IamError::Config(format!(
                "tls_cert {} names {me}; iam-server needs its node's certificate (FlareDB gives \
                 the iam namespace to nodes only): `pxe-server pki issue --node NAME --out DIR`",
                self.tls.cert.display()
            )));
        }
        Ok(m)
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

    /// The keys every configuration needs (no defaults: certificates name real addresses).
    const REQUIRED: &[&str] = &[
        "--flaredb",
        "https://10.0.0.11:2479",
        "--chainfire",
        "https://10.0.0.11:2379",
        "--tls-cert",
        "/pki/node.crt",
        "--tls-key",
        "/pki/node.key",
        "--tls-ca",
        "/pki/ca.crt",
    ];

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["iam-server"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    fn with_required(args: &[&str]) -> Cli {
        let mut v = REQUIRED.to_vec();
        v.extend_from_slice(args);
        cli(&v)
    }

    #[test]
    fn defaults() {
        let c = Config::merge(&with_required(&[]), FileConfig::default()).unwrap();
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.flaredb, vec!["https://10.0.0.11:2479".to_string()]);
        assert_eq!(c.chainfire, vec!["https://10.0.0.11:2379".to_string()]);
        assert_eq!(c.token_ttl_secs, 3600);
        assert_eq!(c.signing_key, PathBuf::from(DEFAULT_SIGNING_KEY));
        assert_eq!(c.tls.key, PathBuf::from("/pki/node.key"));
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            listen_addr = "127.0.0.1:9000"
            flaredb = ["https://10.0.0.1:2479/"]
            chainfire = "https://10.0.0.1:2379,https://10.0.0.2:2379"
            tls_cert = "/file/node.crt"
            tls_key = "/file/node.key"
            tls_ca = "/file/ca.crt"
            token_ttl = 600
            "#,
        )
        .unwrap();
        let c = Config::merge(
            &cli(&[
                "--flaredb",
                "https://a:1,https://b:2",
                "--token-ttl",
                "2h",
                "--tls-ca",
                "/flag/ca.crt",
            ]),
            file,
        )
        .unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(c.flaredb, vec!["https://a:1", "https://b:2"]);
        assert_eq!(
            c.chainfire,
            vec!["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
        );
        assert_eq!(c.tls.cert, PathBuf::from("/file/node.crt"));
        assert_eq!(c.tls.ca, PathBuf::from("/flag/ca.crt"));
        assert_eq!(c.token_ttl_secs, 7200);
    }

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("iam.example.toml");
        let file = read_file_config(&path).unwrap();
        let c = Config::merge(&cli(&[]), file).unwrap();
        assert_eq!(c.listen_addr.port(), 8080);
        assert!(c.flaredb.iter().all(|u| u.starts_with("https://")));
        assert!(!c.chainfire.is_empty());
    }

    #[test]
    fn bad_values_name_the_key() {
        let bad = [
            (vec!["--listen-addr", "nope"], "listen_addr"),
            (vec!["--flaredb", "10.0.0.1:2479"], "https://"),
            (vec!["--flaredb", "http://10.0.0.1:2479"], "https://"),
            (vec!["--chainfire", "http://10.0.0.1:2379"], "chainfire"),
            (vec!["--flaredb", "https://a:1/v1"], "no path"),
            (vec!["--token-ttl", "5s"], "token_ttl"),
            (vec!["--token-ttl", "1w"], "token_ttl"),
            (vec!["--log-format", "xml"], "log_format"),
        ];
        for (args, needle) in bad {
            let e = Config::merge(&with_required(&args), FileConfig::default()).unwrap_err();
            assert!(e.to_string().contains(needle), "{args:?}: {e}");
        }
        let e = toml::from_str::<FileConfig>("listen = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn tls_and_endpoints_are_mandatory() {
        let e = Config::merge(&cli(&[]), FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("flaredb lists no endpoint"), "{e}");
        let e = Config::merge(&cli(&REQUIRED[..2]), FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("chainfire lists no endpoint"), "{e}");
        let e = Config::merge(&cli(&REQUIRED[..6]), FileConfig::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("tls_key, tls_ca missing"), "{msg}");
        assert!(msg.contains("pxe-server pki issue --node"), "{msg}");
    }

    #[test]
    fn hash_password_is_a_subcommand() {
        let c = cli(&["hash-password", "--username", "admin"]);
        assert!(matches!(
            c.command,
            Some(Command::HashPassword { username: Some(ref u) }) if u == "admin"
        ));
        assert!(cli(&[]).command.is_none());
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
