//! The management listener (HTTPS with pxe-server's certificate, its own address, never the
//! boot plane): status, boot events, first-boot phase reports, Prometheus metrics, and the
//! live rack page ([`crate::rack_page`], [`crate::event_stream`]).
//!
//! | route | body / answer | who |
//! |---|---|---|
//! | `GET /health` | `{"status":"ok"}` | anyone |
//! | `GET /v1/status` | `{"cluster","cluster_id","mode","bundle":{"version","dir","loaded_at","files","retained"},"nodes":[{"name","mac","ipv4","dhcp_ip","last_event","bundle":{"version","at"}}],"unknown":[event…],"leases":[…]}` | loopback, or an operator certificate |
//! | `GET /v1/events?since=SEQ` | `{"events":[event…],"next":SEQ}`: events with `seq > since` (default 0); poll again with `since=next` | loopback, or an operator certificate |
//! | `GET /metrics` | OpenMetrics text format ([`crate::exposition`]) | loopback, or an operator certificate |
//! | `DELETE /v1/leases/{mac}` | the machine with that MAC is gone (retired, or its name given to another MAC): its lease is released at once, synced, so its address may go to another MAC → 200 `{"mac","released":lease\|null}` (`null`: it held none); 409 while the MAC is a node of the served contract; 400 for a malformed MAC | loopback, or an operator certificate |
//! | `GET /`, `GET /rack`, `GET /assets/rack.{css,js}` | the rack page | loopback, or an operator certificate |
//! | `GET /v1/rack` | the rack view: every contract node's row, the unknown MACs | loopback, or an operator certificate |
//! | `GET /v1/events/stream?since=SEQ` | `text/event-stream`: `rack`, `boot`, `node`, `unknown` | loopback, or an operator certificate |
//! | `POST /v1/nodes/{name}/events` | `{"phase":"chainfire-cluster-join","status":"started\|ok\|failed","detail":"…"}` (detail optional) → 202 with the stored event, once fsynced; 404 for a node not in the contract; 400 for a bad body | that node's certificate, or `Authorization: Bearer <enrollment token>` of a live token of that node |
//!
//! An event is `{"seq","at_ms","at","node","mac","ip","source":"server|node","phase","status","detail","bundle"}`
//! (`bundle`: the bundle version a script, kernel or initrd came from, else null). A node's
//! `bundle` in the status is the version of the last kernel it fetched: the bundle it booted.
//!
//! The rule: what the server saw (addresses, MACs, leases, security events) is for the
//! operator, so it needs the operator's certificate (`pxe-server pki issue --operator NAME`) or
//! a shell on this machine; a node may only speak for itself. Refusals are 401 (no
//! credential) and 403 (the wrong one, or a revoked certificate).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plasmacloud_pki::listener::{authorize, Need};
use plasmacloud_pki::{Peer, Role};
use serde::{Deserialize, Serialize};

use crate::leases::now_unix;
use crate::state::{lock, peer_v4, rfc3339, BootEvent, NewEvent, NodeBoot, State};

/// The management router (served by [`crate::http_serve::serve_tls`], which gives handlers
/// `ConnectInfo<Peer>`).
pub fn router(state: Arc<State>) -> Router {
    let operator = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .route("/v1/leases/{mac}", axum::routing::delete(release_lease))
        .route("/v1/rack", get(crate::event_stream::rack))
        .route("/v1/events/stream", get(crate::event_stream::stream))
        .route("/", get(crate::rack_page::page))
        .route("/rack", get(crate::rack_page::page))
        .route("/assets/rack.css", get(crate::rack_page::css))
        .route("/assets/rack.js", get(crate::rack_page::js))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            operator_or_loopback,
        ));
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/nodes/{name}/events", post(report))
        .merge(operator)
        .with_state(state)
}

fn refuse(status: StatusCode, msg: String) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

/// Is this peer on this machine's loopback?
fn is_loopback(peer: &Peer) -> bool {
    peer_v4(peer.addr).is_some_and(|ip| ip.is_loopback()) || peer.addr.ip().is_loopback()
}

/// Middleware: loopback peers pass, and operator certificates that are not revoked.
async fn operator_or_loopback(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    if is_loopback(&peer) {
        return next.run(req).await;
    }
    let need = Need {
        roles: vec![Role::Operator],
        revoked: state.revocations.clone(),
    };
    match authorize(&peer, &need) {
        Ok(_) => next.run(req).await,
        Err(r) => *r,
    }
}

/// May `peer` report phases for `node`: its own certificate, or a live enrollment token of
/// that node as a bearer token.
async fn may_report(
    state: &Arc<State>,
    peer: &Peer,
    headers: &HeaderMap,
    node: &str,
) -> Result<(), Response> {
    if let Some(cert) = &peer.cert {
        authorize(peer, &Need::node(&state.revocations)).map_err(|r| *r)?;
        if cert.identity.name == node {
            return Ok(());
        }
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("{} may not report for node {node}", cert.identity),
        ));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let Some(token) = bearer else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            format!("a phase report for {node} needs {node}'s certificate or its enrollment token (Authorization: Bearer …)"),
        ));
    };
    let n = node.to_string();
    let vouches = state
        .with_enroll_tokens(move |t| t.vouches_for(&token, &n, now_unix()))
        .await
        .unwrap_or(false);
    if vouches {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::FORBIDDEN,
            format!("that token is not a live enrollment token of {node}"),
        ))
    }
}

/// A node's first-boot phase report.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseReport {
    /// The phase (a unit name such as `chainfire-cluster-join`, or `cluster-ready`).
    pub phase: String,
    /// `started`, `ok` or `failed`.
    pub status: String,
    /// Free text (an error message on failure).
    #[serde(default)]
    pub detail: String,
}

#[derive(Serialize)]
struct NodeStatus {
    name: String,
    mac: String,
    ipv4: String,
    dhcp_ip: Option<String>,
    last_event: Option<BootEvent>,
    /// The bundle of the node's last boot (its last kernel fetch).
    bundle: Option<NodeBoot>,
}

async fn status(AxState(state): AxState<Arc<State>>) -> Response {
    let last = state.last_events();
    let bundle = state.bundles.current();
    let booted = lock(&state.booted).clone();
    let nodes: Vec<NodeStatus> = bundle
        .contract
        .nodes
        .iter()
        .map(|n| NodeStatus {
            name: n.name.clone(),
            mac: n.mac.to_string(),
            ipv4: n.ipv4.to_string(),
            dhcp_ip: state.seen_ip(&n.mac.to_string()).map(|i| i.to_string()),
            last_event: last.get(&n.name).cloned(),
            bundle: booted.get(&n.name).cloned(),
        })
        .collect();
    let unknown: Vec<BootEvent> = last
        .iter()
        .filter(|(k, _)| k.starts_with("mac:"))
        .map(|(_, e)| e.clone())
        .collect();
    let leases = lock(&state.leases).all();
    Json(serde_json::json!({
        "cluster": bundle.contract.name(),
        "cluster_id": bundle.contract.id(),
        "mode": state.config.mode.as_str(),
        "bundle": {
            "version": bundle.version,
            "dir": bundle.dir.display().to_string(),
            "loaded_at": rfc3339(bundle.loaded_at_ms),
            "files": bundle.manifest.files.len(),
            "retained": state.bundles.retained(),
        },
        "nodes": nodes,
        "unknown": unknown,
        "leases": leases,
    }))
    .into_response()
}

async fn events(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let since = match q.get("since").map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "since must be an event sequence number"})),
            )
                .into_response()
        }
    };
    let events = state.events_since(since);
    let next = events.last().map(|e| e.seq).unwrap_or(since);
    Json(serde_json::json!({"events": events, "next": next})).into_response()
}

async fn report(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let bundle = state.bundles.current();
    let Ok(node) = bundle.contract.node(&name) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no node {name:?} in the contract"),
        );
    };
    if let Err(r) = may_report(&state, &peer, &headers, &node.name).await {
        return r;
    }
    let r: PhaseReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"phase\":…,\"status\":\"started|ok|failed\",\"detail\":…}}: {e}"
                ),
            )
        }
    };
    if !matches!(r.status.as_str(), "started" | "ok" | "failed") {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("status {:?} is not one of started, ok, failed", r.status),
        );
    }
    if r.phase.is_empty() || r.phase.len() > 128 || r.detail.len() > 4096 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "phase must be 1-128 characters and detail at most 4096".into(),
        );
    }
    let ev = state.event(NewEvent {
        node: Some(node.name.clone()),
        mac: Some(node.mac.to_string()),
        ip: peer_v4(peer.addr),
        source: "node",
        phase: r.phase,
        status: r.status,
        detail: r.detail,
        bundle: None,
    });
    // A phase report is worth its fsync: the 202 says it is on disk.
    let synced = tokio::time::timeout(std::time::Duration::from_secs(5), state.sync_events())
        .await
        .unwrap_or(false);
    if !synced {
        tracing::warn!(seq = ev.seq, node = %name, "a phase report is recorded but not yet fsynced");
    }
    (StatusCode::ACCEPTED, Json(ev)).into_response()
}

/// `DELETE /v1/leases/{mac}`: see the module's table. The release is also a boot event
/// (`lease-released`), naming who asked.
async fn release_lease(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(mac): Path<String>,
) -> Response {
    let parsed: plasmacloud_contract::MacAddr = match mac.parse() {
        Ok(m) => m,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("{mac:?} is not a MAC address ({e}); write it as 52:54:00:12:34:56"),
            )
        }
    };
    let mac = parsed.to_string();
    if let Some(node) = state.node_of_mac(&mac) {
        return refuse(
            StatusCode::CONFLICT,
            format!(
                "{mac} is {} in the contract being served: retire or replace that node first (`rackctl retire {0}`, `rackctl replace {0} --mac NEW`), then release its old MAC",
                node.name
            ),
        );
    }
    let who = match &peer.cert {
        Some(c) => c.identity.to_string(),
        None => format!("a local client ({})", peer.addr),
    };
    let st = state.clone();
    let m = mac.clone();
    let released = tokio::task::spawn_blocking(move || lock(&st.leases).release(&m)).await;
    let released = match released {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("releasing {mac}'s lease: {e}"),
            )
        }
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("releasing {mac}'s lease: the task failed: {e}"),
            )
        }
    };
    lock(&state.seen).remove(&mac);
    if let Some(l) = &released {
        state.event(NewEvent {
            mac: Some(mac.clone()),
            ip: Some(l.ip),
            phase: "lease-released".into(),
            status: "ok".into(),
            detail: format!(
                "{} released by {who}{}",
                l.ip,
                l.node
                    .as_deref()
                    .map(|n| format!(" (it was {n})"))
                    .unwrap_or_default()
            ),
            ..NewEvent::default()
        });
    }
    Json(serde_json::json!({ "mac": mac, "released": released })).into_response()
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> Response {
    let mut x = crate::exposition::Exposition::default();
    state.metrics.describe(&mut x);
    state.listeners.describe(&mut x);
    state.describe_events(&mut x);
    let compactions = lock(&state.leases).compactions();
    x.counter(
        "pxe_lease_log_compactions_total",
        "Lease log compactions while serving.",
    )
    .value(compactions);
    let bundle = state.bundles.current();
    x.gauge(
        "pxe_bundle_info",
        "The bundle being served (version: its manifest's sha256).",
    )
    .row(&[("version", &bundle.version)], 1u64);
    x.gauge(
        "pxe_bundles_retained",
        "Replaced bundles still served to boots that began on them.",
    )
    .value(state.bundles.retained().len());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::exposition::CONTENT_TYPE,
        )],
        x.render(),
    )
        .into_response()
}
