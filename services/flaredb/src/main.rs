//! `flaredb-server`: parses flags, then runs a FlareDB node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use plasmacloud_raft::config::FileConfig;
use plasmacloud_raft::{api, Error, StoreNode};
use plasmacloud_store_client::StoreClient;

/// FlareDB: Raft-replicated namespaced KV and time series (API 2479, Raft 2480).
#[derive(Debug, Parser)]
#[command(name = "flaredb-server", version, about)]
struct Args {
    /// TOML file with any of the keys below (flags and env vars win).
    #[arg(long, env = "PLASMACLOUD_FLAREDB_CONFIG")]
    config: Option<PathBuf>,
    /// Raft node id (optional once <data-dir>/node_id exists; never reused).
    #[arg(long, env = "PLASMACLOUD_FLAREDB_ID")]
    id: Option<u64>,
    /// Data directory (created when missing or empty; a foreign one is refused).
    #[arg(long, env = "PLASMACLOUD_FLAREDB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// API address ip:port (listened on and told to peers), usually :2479.
    #[arg(long, env = "PLASMACLOUD_FLAREDB_API_ADDR")]
    api_addr: Option<String>,
    /// Raft address ip:port (listened on and told to peers), usually :2480.
    #[arg(long, env = "PLASMACLOUD_FLAREDB_RAFT_ADDR")]
    raft_addr: Option<String>,
    /// Chainfire endpoints (URL or ip:port), comma-separated; registers this node there.
    #[arg(long, env = "PLASMACLOUD_FLAREDB_CHAINFIRE")]
    chainfire: Option<String>,
    /// TLS certificate chain (PEM); turns on HTTPS on both ports.
    #[arg(long, env = "PLASMACLOUD_FLAREDB_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "PLASMACLOUD_FLAREDB_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that peers' (and Chainfire's) certificates are verified against.
    #[arg(long, env = "PLASMACLOUD_FLAREDB_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Build a snapshot and purge the log every this many entries (default 10000).
    #[arg(long, env = "PLASMACLOUD_FLAREDB_SNAPSHOT_LOGS")]
    snapshot_logs: Option<u64>,
    /// Raft heartbeat in ms (default 100; elections after 10-20 heartbeats).
    #[arg(long, env = "PLASMACLOUD_FLAREDB_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Server-side deadline of one request in ms (default 10000).
    #[arg(long, env = "PLASMACLOUD_FLAREDB_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// Log format: `pretty` or `json` (filter with RUST_LOG).
    #[arg(long, env = "PLASMACLOUD_FLAREDB_LOG_FORMAT", default_value = "pretty")]
    log_format: String,
    /// Validate the configuration and exit (binds and creates nothing).
    #[arg(long)]
    check: bool,
}

fn init_logs(format: &str) -> anyhow::Result<()> {
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
        other => anyhow::bail!("--log-format {other:?} must be pretty or json"),
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), Error> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        id: args.id,
        data_dir: args.data_dir,
        api_addr: args.api_addr,
        raft_addr: args.raft_addr,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_ca: args.tls_ca,
        snapshot_logs: args.snapshot_logs,
        heartbeat_ms: args.heartbeat_ms,
        request_timeout_ms: args.request_timeout_ms,
        chainfire: args.chainfire,
    };
    let merged = file.merged_with(flags);
    let chainfire = match merged.chainfire.as_deref().map(str::trim) {
        Some(list) if !list.is_empty() => {
            let mut b =
                StoreClient::builder(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
                    .timeout(Duration::from_secs(2));
            if let Some(ca) = &merged.tls_ca {
                b = b
                    .ca_file(ca)
                    .map_err(|e| Error::Config(format!("--chainfire: {e}")))?;
            }
            Some(
                b.build()
                    .map_err(|e| Error::Config(format!("--chainfire {list:?}: {e}")))?,
            )
        }
        _ => None,
    };
    let cfg = merged.into_node_config(flaredb::SERVICE, flaredb::ENV_PREFIX)?;
    if args.check {
        println!("configuration ok");
        return Ok(());
    }
    let node = StoreNode::start(cfg).await?;
    let st = node.state();
    if let Some(cf) = chainfire {
        st.set_chainfire_connected(false);
        tokio::spawn(flaredb::keep_registered(st.clone(), cf));
    }
    let app = api::cluster_routes(st.clone()).merge(api::flaredb_routes(st));
    node.serve(app).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(&args.log_format).context("while setting up logging")?;
    if let Err(e) = run(args).await {
        tracing::error!("flaredb-server: {e}");
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
    Ok(())
}
