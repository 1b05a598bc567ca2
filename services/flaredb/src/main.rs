//! `flaredb-server`: the shared start-up of `plasmacloud_raft::serve` with FlareDB's
//! `--chainfire` link (registration and the revocation list) and its namespace and time-series
//! routes.

use clap::Parser;
use plasmacloud_raft::serve::{self, ServeArgs};
use plasmacloud_raft::{api, revocation};

/// FlareDB: Raft-replicated namespaced KV and time series (API 2479, Raft 2480).
#[derive(Debug, Parser)]
#[command(name = "flaredb-server", version, about)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    /// Chainfire endpoints (URL or ip:port), comma-separated; registers this node there.
    #[arg(long, env = "PLASMACLOUD_FLAREDB_CHAINFIRE")]
    chainfire: Option<String>,
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
            api::flaredb_routes(st.clone())
        },
    )
    .await
}
