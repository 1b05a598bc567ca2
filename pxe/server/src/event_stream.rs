//! The rack as JSON and as a live stream: `GET /v1/rack` (a snapshot: every contract node's
//! row, the unknown MACs) and `GET /v1/events/stream[?since=SEQ]` (server-sent events), what
//! the rack page reads. Both are the operator's (loopback or an operator certificate, like
//! status).
//!
//! The stream, in order: `rack` (the snapshot, `id` the last sequence number in it); with
//! `since` (or the `Last-Event-ID` a reconnecting `EventSource` sends) the `boot` events after
//! it that are still in memory; then live: `boot` (an event, `id` its sequence number), `node`
//! (the row of the node it concerns, or whose health changed), `unknown` (an unknown MAC's
//! row). A subscriber that falls [`crate::state::STREAM_BACKLOG`] messages behind is sent a
//! new `rack` snapshot and goes on from there. A comment every [`KEEPALIVE`] keeps idle
//! connections open through the listener's stall timeout and proxies. At most
//! [`MAX_SUBSCRIBERS`] at once (503 beyond).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::broadcast::error::RecvError;

use crate::rack_view::STAGES;
use crate::state::{now_ms, rfc3339, State, StreamItem};

/// Subscribers at once.
pub const MAX_SUBSCRIBERS: u64 = 64;
/// How often an idle stream gets a comment line.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// The whole rack view: (view version, last sequence number, JSON).
pub fn rack_snapshot(state: &State) -> (u64, u64, serde_json::Value) {
    let bundle = state.bundles.current();
    let (version, seq, nodes, unknown) = state.with_view(|view, version, seq| {
        let nodes: Vec<_> = bundle
            .contract
            .nodes
            .iter()
            .map(|n| {
                let seen = state.seen_ip(&n.mac.to_string()).map(|i| i.to_string());
                view.node_row(n, seen)
            })
            .collect();
        (version, seq, nodes, view.unknown())
    });
    let json = serde_json::json!({
        "cluster": bundle.contract.name(),
        "cluster_id": bundle.contract.id(),
        "mode": state.config.mode.as_str(),
        "bundle": {
            "version": bundle.version,
            "loaded_at": rfc3339(bundle.loaded_at_ms),
            "retained": state.bundles.retained(),
        },
        "seq": seq,
        "server_time_ms": now_ms(),
        "health_poll_ms": crate::node_health::POLL_INTERVAL.as_millis() as u64,
        "stages": STAGES.iter().map(|s| s.name).collect::<Vec<_>>(),
        "nodes": nodes,
        "unknown": unknown,
    });
    (version, seq, json)
}

/// `GET /v1/rack`.
pub async fn rack(AxState(state): AxState<Arc<State>>) -> Response {
    Json(rack_snapshot(&state).2).into_response()
}

/// Counts a subscriber while it lives.
struct Subscriber(Arc<State>);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0
            .stream_stats
            .subscribers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

struct Sub {
    guard: Subscriber,
    rx: tokio::sync::broadcast::Receiver<Arc<StreamItem>>,
    /// Items with a version up to this are in the snapshot sent.
    snapshot_version: u64,
    pending: VecDeque<Event>,
}

fn snapshot_event(state: &State) -> (u64, u64, Event) {
    let (version, seq, json) = rack_snapshot(state);
    (
        version,
        seq,
        Event::default()
            .event("rack")
            .id(seq.to_string())
            .data(json.to_string()),
    )
}

fn item_event(item: &StreamItem) -> Event {
    let e = Event::default().event(item.kind).data(&item.data);
    match item.id {
        Some(id) => e.id(id.to_string()),
        None => e,
    }
}

/// `GET /v1/events/stream[?since=SEQ]`.
pub async fn stream(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let since = q
        .get("since")
        .map(String::as_str)
        .or_else(|| headers.get("last-event-id").and_then(|v| v.to_str().ok()))
        .map(|s| s.trim().parse::<u64>());
    let since = match since {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "since (or Last-Event-ID) must be an event sequence number"})),
            )
                .into_response()
        }
    };
    let stats = &state.stream_stats;
    if stats.subscribers.fetch_add(1, Ordering::Relaxed) >= MAX_SUBSCRIBERS {
        stats.subscribers.fetch_sub(1, Ordering::Relaxed);
        stats.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": format!("{MAX_SUBSCRIBERS} event streams are open already; close one")})),
        )
            .into_response();
    }
    stats.opened.fetch_add(1, Ordering::Relaxed);
    let guard = Subscriber(state.clone());
    // Subscribe before the snapshot: nothing falls between them.
    let rx = state.subscribe();
    let (snapshot_version, last, first) = snapshot_event(&state);
    let mut pending = VecDeque::from([first]);
    if let Some(since) = since {
        for e in state
            .events_since(since)
            .into_iter()
            .filter(|e| e.seq <= last)
        {
            if let Ok(data) = serde_json::to_string(&e) {
                pending.push_back(
                    Event::default()
                        .event("boot")
                        .id(e.seq.to_string())
                        .data(data),
                );
            }
        }
    }
    let sub = Sub {
        guard,
        rx,
        snapshot_version,
        pending,
    };
    let events = futures::stream::unfold(sub, |mut sub| async move {
        loop {
            if let Some(e) = sub.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), sub));
            }
            match sub.rx.recv().await {
                Ok(item) if item.version <= sub.snapshot_version => continue,
                Ok(item) => return Some((Ok(item_event(&item)), sub)),
                Err(RecvError::Lagged(_)) => {
                    let state = sub.guard.0.clone();
                    state.stream_stats.lagged.fetch_add(1, Ordering::Relaxed);
                    let (v, _, e) = snapshot_event(&state);
                    sub.snapshot_version = v;
                    return Some((Ok(e), sub));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    (
        [("cache-control", "no-store")],
        Sse::new(events).keep_alive(KeepAlive::new().interval(KEEPALIVE)),
    )
        .into_response()
}
