//! `flaredb-server`: the shared start-up of `plasmacloud_raft::serve` with FlareDB's
//! `--chainfire` link (registration and the revocation list), its time-series retention
//! (`--ts-retention-secs`) and its namespace and time-series routes.

use clap::Parser;
use plasmacloud_raft::serve::{self, ServeArgs};
use plasmacloud_raft::{api, retention, revocation};

/// FlareDB: Raft-replicated namespaced KV and time series (API 2479, Raft 2480).
#[derive(Debug, Parser)]
#[command(name = "flaredb-server", version, about)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    /// Chainfire endpoints (URL or ip:port), comma-separated; registers this node there.
    #[arg(long, env = "PLASMACLOUD_FLAREDB_CHAINFIRE")]
    chainfire: Option<String>,
    /// Drop time-series points older than this many seconds, on every node alike (0, the
    /// default: keep every point; else 60 up to 100 years, e.g. 2592000 for 30 days).
    #[arg(long, env = "PLASMACLOUD_FLAREDB_TS_RETENTION_SECS")]
    ts_retention_secs: Option<u64>,
}

#[tokio::main]
async fn main() {
    let cmd = serve::command::<Args>(&flaredb::SERVER).mut_arg("tls_ca", |a| {
        a.help("The cluster CA (PEM): every peer, client and Chainfire certificate is verified against it")
    });
    let args: Args = serve::parse(cmd);
    serve::serve_main(
        &flaredb::SERVER,
        args.serve,
        |cfg| {
            if args.chainfire.is_some() {
                cfg.chainfire = args.chainfire;
            }
            if args.ts_retention_secs.is_some() {
                cfg.ts_retention_secs = args.ts_retention_secs;
            }
            flaredb::chainfire_client(cfg)
        },
        |st, chainfire| {
            match chainfire {
                Some(cf) => {
                    st.set_chainfire_connected(false);
                    tokio::spawn(revocation::follow_chainfire(
                        st.access.revoked().clone(),
                        cf.clone(),
                    ));
                    tokio::spawn(flaredb::keep_registered(st.clone(), cf));
                }
                None => tracing::warn!(
                    "no --chainfire: this node cannot read the revocation list (pki/revoked/), so revoked certificates of the cluster CA are still accepted"
                ),
            }
            if let Some(r) = st.cfg.ts_retention {
                tokio::spawn(retention::keep_trimming(st.clone(), r));
            }
            api::flaredb_routes(st.clone())
        },
    )
    .await
}
