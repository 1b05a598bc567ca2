//! `chainfire-server`: the shared start-up of `plasmacloud_raft::serve` with Chainfire's
//! key-value routes, and its revocation set kept equal to its own `pki/revoked/`.

use clap::Parser;
use plasmacloud_raft::serve::{self, ServeArgs};
use plasmacloud_raft::{api, revocation, Error};

/// Chainfire: Raft-replicated configuration store (API 2379, Raft 2380).
#[derive(Debug, Parser)]
#[command(name = "chainfire-server", version, about)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

#[tokio::main]
async fn main() {
    let args: Args = serve::parse(serve::command::<Args>(&chainfire::SERVER));
    serve::serve_main(
        &chainfire::SERVER,
        args.serve,
        |cfg| match cfg.chainfire {
            Some(_) => Err(Error::Config(
                "`chainfire` is a FlareDB setting; remove it from Chainfire's config".into(),
            )),
            None => Ok(()),
        },
        |st, ()| {
            tokio::spawn(revocation::follow_local(st.clone()));
            api::chainfire_kv_routes(st.clone())
        },
    )
    .await
}
