//! A pristine initial voter says so while it waits.
//!
//! The rule it serves ("Never two clusters", shared/DESIGN.md): the seed bootstraps only when
//! every other initial voter answers that it holds no cluster; silence is never taken for
//! "no cluster". But a voter with an empty disk cannot start Chainfire before it has a Raft id,
//! and it gets that id only from the cluster the seed is about to form. So while such a
//! voter's `configure` waits for its id, it answers in Chainfire's place, on Chainfire's API
//! address and with Chainfire's own call: `GET /v1/cluster/members` → no leader, no members.
//! It answers only nodes of the cluster (mutual TLS, node certificates only), and it stops —
//! releasing the port for Chainfire — the moment its id is allocated.

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use plasmacloud_pki::listener::{guard, Need};
use plasmacloud_pki::tls::ClientAuth;
use plasmacloud_pki::{Peer, Revocations, TlsListener};
use plasmacloud_store_client::{ErrorBody, MembersResponse};

use crate::step::Ctx;

/// Answering; dropping it stops the answers and frees the port.
#[derive(Debug)]
pub struct Answering {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts answering "no cluster here" on this node's Chainfire API address. `None` (logged)
/// when the address cannot be bound or this node has no certificate yet: the seed then hears
/// silence and keeps waiting, which is safe.
pub async fn answer_no_cluster(ctx: &Ctx) -> Option<Answering> {
    let tls = match ctx.tls() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell the seed that this node holds no cluster");
            return None;
        }
    };
    let revoked = Revocations::default();
    let config = tls.server_config(ClientAuth::Required, &revoked).ok()?;
    let addr = ctx.me.chainfire_api();
    let tcp = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot answer the seed on Chainfire's address");
            return None;
        }
    };
    let listener = TlsListener::spawn("pristine", tcp, config).ok()?;
    let app = Router::new()
        .route(
            "/v1/cluster/members",
            get(|| async {
                Json(MembersResponse {
                    leader: None,
                    members: Vec::new(),
                })
            }),
        )
        // Anything else is Chainfire's to answer, and Chainfire is not running here yet:
        // "certainly not applied, ask another endpoint", so a peer's client moves on instead
        // of reading this node's silence as an empty key space.
        .fallback(|| async {
            let mut body = ErrorBody::new(
                "this node holds no cluster yet (its Chainfire has not started); ask another member",
            );
            body.retryable = true;
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        })
        .layer(axum::middleware::from_fn_with_state(
            Need::node(&revoked),
            guard,
        ));
    tracing::info!(%addr, "answering the seed: this node holds no cluster");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await;
    });
    Some(Answering { task })
}
