//! One way to start a server: the flags Chainfire and FlareDB share ([`ServeArgs`], flattened
//! into each binary's own `Args`), each flag's environment variable named after the server
//! (`PLASMACLOUD_CHAINFIRE_DATA_DIR`, `PLASMACLOUD_FLAREDB_DATA_DIR`, …), log set-up, the
//! `--config` merge, `--check`, and the exit code ([`Error::exit_code`]). A server's `main.rs`
//! keeps only what is its own: its routes, and FlareDB its link to Chainfire.
//!
//! ```text
//! #[derive(clap::Parser)]
//! #[command(name = "chainfire-server", version, about)]
//! struct Args {
//!     #[command(flatten)]
//!     serve: ServeArgs,
//! }
//!
//! #[tokio::main]
//! async fn main() {
//!     let args: Args = serve::parse(serve::command::<Args>(&chainfire::SERVER));
//!     serve::serve_main(&chainfire::SERVER, args.serve, |_| Ok(()), |st, ()| routes(st)).await
//! }
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use clap::{CommandFactory, FromArgMatches};

use crate::access::Access;
use crate::api;
use crate::config::FileConfig;
use crate::error::Error;
use crate::node::{NodeState, StoreNode};

/// What tells one server from the other at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    /// `chainfire` or `flaredb`: the data directory's marker, the Raft cluster's name, and with
    /// `-server` the binary's name.
    pub name: &'static str,
    /// The flag `--foo-bar` is also the variable `{env_prefix}_FOO_BAR`.
    pub env_prefix: &'static str,
    /// The usual API port, named in `--help`.
    pub api_port: u16,
    /// The usual Raft port, named in `--help`.
    pub raft_port: u16,
}

impl Server {
    /// A server description (for a `const`).
    pub const fn new(
        name: &'static str,
        env_prefix: &'static str,
        api_port: u16,
        raft_port: u16,
    ) -> Self {
        Server {
            name,
            env_prefix,
            api_port,
            raft_port,
        }
    }
}

/// The flags both servers take. Each is also an environment variable (set by [`command`]) and,
/// but for `--log-format` and `--check`, a key in `--config`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the keys below (flags and env vars win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Raft node id (optional once <data-dir>/node_id exists; never reused).
    #[allow(rustdoc::invalid_html_tags)] // the text is `--help`'s, where <data-dir> is a flag
    #[arg(long)]
    pub id: Option<u64>,
    /// Data directory (created when missing or empty; a foreign one is refused).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API address ip:port (listened on and told to peers).
    #[arg(long)]
    pub api_addr: Option<String>,
    /// Raft address ip:port (listened on and told to peers).
    #[arg(long)]
    pub raft_addr: Option<String>,
    /// This node's certificate (PEM) from the cluster CA; mutual TLS on both ports (required).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM, mode 0600).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): every peer and client certificate is verified against it.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Development only: no TLS and no client authentication, refused unless both addresses
    /// are loopback (never a --config key).
    #[arg(long)]
    pub dev_plaintext: bool,
    /// Build a snapshot and purge the log every this many entries (default 10000).
    #[arg(long)]
    pub snapshot_logs: Option<u64>,
    /// Raft heartbeat in ms (default 100; a follower campaigns 15-20 heartbeats after its
    /// leader falls silent).
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Server-side deadline of one request in ms (default 10000).
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// How long a stopping leader may spend handing leadership to another voter, in ms
    /// (default 5000; 0: stop without handing over).
    #[arg(long)]
    pub shutdown_handover_ms: Option<u64>,
    /// Log format: `pretty` or `json` (filter with RUST_LOG).
    #[arg(long, default_value = "pretty")]
    pub log_format: String,
    /// Validate the configuration (the TLS files included) and exit (binds and creates nothing).
    #[arg(long)]
    pub check: bool,
}

impl ServeArgs {
    /// The configuration keys given as flags (or variables), to lay over `--config`.
    fn overrides(&self) -> FileConfig {
        FileConfig {
            id: self.id,
            data_dir: self.data_dir.clone(),
            api_addr: self.api_addr.clone(),
            raft_addr: self.raft_addr.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
            snapshot_logs: self.snapshot_logs,
            heartbeat_ms: self.heartbeat_ms,
            request_timeout_ms: self.request_timeout_ms,
            shutdown_handover_ms: self.shutdown_handover_ms,
            chainfire: None,
            ts_retention_secs: None,
            dev_plaintext: self.dev_plaintext.then_some(true),
        }
    }
}

/// The command line of a server whose `Args` flattens [`ServeArgs`]: every flag without an
/// environment variable of its own (but `--check`) gets `{env_prefix}_{FLAG}`, and the address
/// flags name the server's usual ports.
pub fn command<A: CommandFactory>(server: &Server) -> clap::Command {
    A::command().mut_args(|a| {
        let port = match a.get_id().as_str() {
            "api_addr" => Some(server.api_port),
            "raft_addr" => Some(server.raft_port),
            _ => None,
        };
        let a = match (port, a.get_help().map(ToString::to_string)) {
            (Some(port), Some(help)) => a.help(format!("{help}, usually :{port}")),
            _ => a,
        };
        let var = match a.get_long() {
            Some(long) if long != "check" && a.get_env().is_none() => format!(
                "{}_{}",
                server.env_prefix,
                long.replace('-', "_").to_uppercase()
            ),
            _ => return a,
        };
        // clap keeps `'static` names; these few live as long as the process anyway.
        a.env(&*var.leak())
    })
}

/// Parses the process's arguments with `cmd` (from [`command`]); like `clap::Parser::parse`,
/// it prints the error or the help and exits (code 2 on a usage error).
pub fn parse<A: FromArgMatches>(mut cmd: clap::Command) -> A {
    let mut matches = cmd.clone().get_matches();
    A::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
}

/// Sets up logging to stderr: `pretty` (no colour codes unless stderr is a terminal) or `json`,
/// filtered by `RUST_LOG` (default `info,openraft=warn`).
pub fn init_logs(format: &str) -> Result<(), Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    // No colour codes when stderr is not a terminal (journald, test logs).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        "json" => b.json().init(),
        "pretty" => b.init(),
        other => {
            return Err(Error::Config(format!(
                "--log-format {other:?} must be pretty or json"
            )))
        }
    }
    Ok(())
}

/// The body of a server's `main`: sets up logs, merges `--config` with the flags, lets the
/// server `prepare` what is its own from the merged configuration (it may refuse it, or lay its
/// own flags over it), validates, answers `--check`, then starts the node and serves
/// `/health`, `/readyz` and `/v1/cluster/…` plus the server's `routes` until SIGTERM (every
/// route but the first two guarded: see [`crate::access`]).
///
/// Never returns on failure: the error goes to the log and to stderr (`error: …`) and the
/// process exits with [`Error::exit_code`] (2: configuration; 1: otherwise, also when logging
/// cannot be set up).
pub async fn serve_main<P>(
    server: &Server,
    args: ServeArgs,
    prepare: impl FnOnce(&mut FileConfig) -> Result<P, Error>,
    routes: impl FnOnce(&Arc<NodeState>, P) -> Router,
) {
    if let Err(e) = init_logs(&args.log_format) {
        eprintln!("error: while setting up logging: {e}");
        // 1, not `e.exit_code()`: the code these servers have always exited with here.
        std::process::exit(1);
    }
    if let Err(e) = run(server, args, prepare, routes).await {
        tracing::error!("{}-server: {e}", server.name);
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}

async fn run<P>(
    server: &Server,
    args: ServeArgs,
    prepare: impl FnOnce(&mut FileConfig) -> Result<P, Error>,
    routes: impl FnOnce(&Arc<NodeState>, P) -> Router,
) -> Result<(), Error> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let mut merged = file.merged_with(args.overrides());
    let prepared = prepare(&mut merged)?;
    let cfg = merged.into_node_config(server.name, server.env_prefix)?;
    // The certificate, key and CA are read and checked here too, so `--check` reports them.
    Access::load(&cfg)?;
    if args.check {
        println!("configuration ok");
        return Ok(());
    }
    let node = StoreNode::start(cfg).await?;
    let st = node.state();
    let own = routes(&st, prepared);
    node.serve(api::app(st, own)).await
}
