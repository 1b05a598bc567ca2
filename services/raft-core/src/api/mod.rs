//! The HTTP API both services share, one module per resource:
//!
//! - `health`: `/health` and `/readyz`;
//! - `membership`: `/v1/cluster/…` (init, members, learners, voters, removal, moving the
//!   leader);
//! - `kv`: the revisioned key-value handlers, mounted by Chainfire at `/v1/kv` and by FlareDB
//!   per namespace at `/v1/ns/{ns}/kv`;
//! - `timeseries`: FlareDB's `/v1/ts/{series}`;
//! - `forward`: where a request runs — here when this node leads, else at the leader, whose
//!   answer is relayed — and the local write and read steps;
//! - `handler`: what every handler is made of (its state, its inputs, its answers).
//!
//! [`app`] puts them together: `/health`, `/readyz` and `/metrics` for anyone, everything else
//! behind the API port's guard (a certificate of the cluster CA; see [`crate::access`]), every
//! request counted by route template ([`crate::metrics`]).
//!
//! Errors are always JSON (`ErrorBody`). Writes, linearizable reads and membership changes
//! arriving at a non-leader are forwarded to the leader (see the crate docs). This module holds
//! only the routers; the modules above never import it back.

use axum::extract::OriginalUri;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::access::Port;

mod forward;
mod handler;
mod health;
mod kv;
mod membership;
mod timeseries;

pub use forward::HDR_FORWARDED;
pub use handler::St;
pub use health::health_of;
pub use kv::{MAX_KEY, MAX_VALUE};
pub use membership::{LEARNER_CATCHUP_TIMEOUT, MOVE_LEADER_TIMEOUT};
pub use timeseries::{downsample, MAX_POINTS};

async fn not_found(uri: OriginalUri) -> Response {
    handler::err(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.0.path()),
    )
}

/// The API port: the public [`health_routes`], and [`cluster_routes`] plus the server's `own`
/// routes behind the guard; JSON 404s for anything else; every request counted.
pub fn app(st: St, own: Router) -> Router {
    // Bodies are read inside the guard (crate::bounds): none for a refused caller.
    let http = st.metrics.http.clone();
    let routes =
        cluster_routes(st.clone())
            .merge(own)
            .route_layer(axum::middleware::from_fn_with_state(
                crate::bounds::MAX_API_BODY,
                crate::bounds::read_body,
            ));
    let guarded = st.access.guard(Port::Api, routes);
    health_routes(st).merge(guarded).fallback(not_found).layer(
        axum::middleware::from_fn_with_state(http, crate::metrics::track_requests),
    )
}

/// `/health`, `/readyz` and `/metrics`: anyone may read them (over TLS, without a certificate;
/// shared/DESIGN.md, "Trust").
pub fn health_routes(st: St) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics))
        .with_state(st)
}

/// `GET /metrics`: the node's series in the Prometheus text format.
async fn metrics(axum::extract::State(st): axum::extract::State<St>) -> Response {
    st.metrics.response(&st.raft)
}

/// `/v1/cluster/…`: forming the cluster, reading and changing its members.
pub fn cluster_routes(st: St) -> Router {
    Router::new()
        .route("/v1/cluster/init", post(membership::init))
        .route("/v1/cluster/members", get(membership::members))
        .route("/v1/cluster/learners", post(membership::add_learner))
        .route("/v1/cluster/voters", post(membership::promote))
        .route("/v1/cluster/leader", post(membership::move_leader))
        .route(
            "/v1/cluster/members/{id}",
            delete(membership::remove_member),
        )
        .with_state(st)
}

/// The KV handlers, listing at `list` and one key at `key`.
fn kv_routes(list: &str, key: &str) -> Router<St> {
    Router::new()
        .route(list, get(kv::list))
        .route(key, get(kv::get).put(kv::put).delete(kv::delete))
}

/// Chainfire's key space: `/v1/kv` and `/v1/kv/{*key}`.
pub fn chainfire_kv_routes(st: St) -> Router {
    kv_routes("/v1/kv", "/v1/kv/{*key}").with_state(st)
}

/// FlareDB's namespaces (`/v1/ns/{ns}/kv…`) and time series (`/v1/ts/{series}…`).
pub fn flaredb_routes(st: St) -> Router {
    kv_routes("/v1/ns/{ns}/kv", "/v1/ns/{ns}/kv/{*key}")
        .route("/v1/ts/{series}/points", post(timeseries::ts_append))
        .route("/v1/ts/{series}", get(timeseries::ts_query))
        .with_state(st)
}
