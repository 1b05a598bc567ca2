//! The management listener (its own address, never the boot plane): status, boot events,
//! first-boot phase reports, and Prometheus metrics.
//!
//! | route | body / answer |
//! |---|---|
//! | `GET /health` | `{"status":"ok"}` |
//! | `GET /v1/status` | `{"cluster","mode","nodes":[{"name","mac","ipv4","dhcp_ip","last_event"}],"unknown":[event…],"leases":[…]}` |
//! | `POST /v1/nodes/{name}/events` | `{"phase":"chainfire-cluster-join","status":"started\|ok\|failed","detail":"…"}` (detail optional) → 202 with the stored event; 404 for a node not in the contract; 400 for a bad body |
//! | `GET /v1/events?since=SEQ` | `{"events":[event…],"next":SEQ}`: events with `seq > since` (default 0); poll again with `since=next` |
//! | `GET /metrics` | Prometheus text format |
//!
//! An event is `{"seq","at_ms","at","node","mac","ip","source":"server|node","phase","status","detail"}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::state::{lock, BootEvent, NewEvent, State};

/// The management router.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/nodes/{name}/events", post(report))
        .route("/metrics", get(metrics))
        .with_state(state)
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
}

async fn status(AxState(state): AxState<Arc<State>>) -> Response {
    let last = state.last_events();
    let nodes: Vec<NodeStatus> = state
        .config
        .contract
        .nodes
        .iter()
        .map(|n| NodeStatus {
            name: n.name.clone(),
            mac: n.mac.to_string(),
            ipv4: n.ipv4.to_string(),
            dhcp_ip: state.seen_ip(&n.mac.to_string()).map(|i| i.to_string()),
            last_event: last.get(&n.name).cloned(),
        })
        .collect();
    let unknown: Vec<BootEvent> = last
        .iter()
        .filter(|(k, _)| k.starts_with("mac:"))
        .map(|(_, e)| e.clone())
        .collect();
    let leases = lock(&state.leases).all();
    Json(serde_json::json!({
        "cluster": state.config.contract.name(),
        "cluster_id": state.config.contract.id(),
        "mode": state.config.mode.as_str(),
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
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let bad = |m: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": m})),
        )
            .into_response()
    };
    let r: PhaseReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad(format!(
                "expected {{\"phase\":…,\"status\":\"started|ok|failed\",\"detail\":…}}: {e}"
            ))
        }
    };
    if !matches!(r.status.as_str(), "started" | "ok" | "failed") {
        return bad(format!(
            "status {:?} is not one of started, ok, failed",
            r.status
        ));
    }
    if r.phase.is_empty() || r.phase.len() > 128 || r.detail.len() > 4096 {
        return bad("phase must be 1-128 characters and detail at most 4096".into());
    }
    let Ok(node) = state.config.contract.node(&name) else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no node {name:?} in the contract")})),
        )
            .into_response();
    };
    let ev = state.event(NewEvent {
        node: Some(node.name.clone()),
        mac: Some(node.mac.to_string()),
        ip: None,
        source: "node",
        phase: r.phase,
        status: r.status,
        detail: r.detail,
    });
    (StatusCode::ACCEPTED, Json(ev)).into_response()
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}
