//! What a node counts and serves at `GET /metrics`, in the Prometheus text format (OpenMetrics
//! 1.0, by the official `prometheus-client` crate).
//!
//! Every series carries the service as a prefix (`chainfire_…`, `flaredb_…`), as etcd's carry
//! `etcd_`, so one Prometheus job can scrape both stores of a node without relabelling:
//!
//! | series | type | what |
//! |---|---|---|
//! | `raft_term` | gauge | the current term |
//! | `raft_is_leader` | gauge | 1 on the leader, else 0 |
//! | `raft_has_leader` | gauge | 1 while a leader is known |
//! | `raft_leader_id` | gauge | the known leader's node id (0: none) |
//! | `raft_leader_changes_seen_total` | counter | each time this node learnt of a new leader |
//! | `raft_commit_index` | gauge | the last log index known committed |
//! | `raft_applied_index` | gauge | the last log index applied to the state machine |
//! | `raft_last_log_index` | gauge | the last index in this node's log |
//! | `raft_proposals_total` | counter | writes this node proposed as leader |
//! | `raft_proposals_failed_total` | counter | of those, the ones not confirmed committed |
//! | `raft_snapshots_built_total` | counter | snapshots this node built |
//! | `raft_snapshots_installed_total` | counter | snapshots installed from a leader |
//! | `disk_wal_fsync_duration_seconds` | histogram | each sync of the Raft log |
//! | `ts_horizon_ms` | gauge | FlareDB: the retention trim applied here, unix ms (older points are gone; 0: none yet) |
//! | `http_requests_total{route,method,code}` | counter | API requests answered |
//! | `http_request_duration_seconds{route,method}` | histogram | their latency |
//!
//! `route` is the matched route template (`/v1/kv/{*key}`), never the raw path, so the number
//! of series stays bounded; a request no route matched counts as `unmatched`. The Raft gauges
//! are read from openraft's metrics when scraped; the rest are atomics (counters) and
//! per-series histograms bumped where things happen, with no lock shared by all requests.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use openraft::ServerState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::types::{NodeId, Raft};

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the storage layer counts: the log's syncs, the commit index, snapshots (cheap to
/// clone; clones count into the same series).
#[derive(Debug, Clone)]
pub struct StorageMetrics {
    pub(crate) fsync: Histogram,
    pub(crate) commit_index: Gauge<u64, AtomicU64>,
    pub(crate) snapshots_built: Counter,
    pub(crate) snapshots_installed: Counter,
    pub(crate) ts_horizon: Gauge<i64, AtomicI64>,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        Self {
            // 50 µs … ~3.3 s: an NVMe sync to a stalled disk.
            fsync: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            commit_index: Gauge::default(),
            snapshots_built: Counter::default(),
            snapshots_installed: Counter::default(),
            ts_horizon: Gauge::default(),
        }
    }
}

impl StorageMetrics {
    /// Records one sync of the log that took `started.elapsed()`.
    pub(crate) fn observe_fsync(&self, started: Instant) {
        self.fsync.observe(started.elapsed().as_secs_f64());
    }
}

/// The labels of a request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route template, or `unmatched`.
    pub route: String,
    /// The HTTP method.
    pub method: &'static str,
    /// The status code answered.
    pub code: u16,
}

/// The labels of a latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route template, or `unmatched`.
    pub route: String,
    /// The HTTP method.
    pub method: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

/// The HTTP series: requests by route, method and code, and their latency.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        }
    }
}

/// A method as a label value without an allocation (anything unusual is `other`).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl HttpMetrics {
    /// Registers both series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "API requests answered, by matched route template, method and status code",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "API request latency (until the response head), by matched route template and method",
            self.duration.clone(),
        );
    }

    /// Counts one answered request.
    pub fn record(&self, route: &str, method: &Method, code: u16, started: Instant) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method,
                code,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method,
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The axum middleware counting every request into `metrics` (add it with `Router::layer`, so
/// the matched route is known).
pub async fn track_requests(
    State(metrics): State<HttpMetrics>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let resp = next.run(req).await;
    metrics.record(
        route.as_deref().unwrap_or("unmatched"),
        &method,
        resp.status().as_u16(),
        started,
    );
    resp
}

/// Everything one node serves at `/metrics`.
#[derive(Debug)]
pub struct StoreMetrics {
    registry: Registry,
    /// Counted by the log store and the state machine.
    pub storage: StorageMetrics,
    /// Counted by [`track_requests`] on the API port.
    pub http: HttpMetrics,
    term: Gauge,
    is_leader: Gauge,
    has_leader: Gauge,
    leader_id: Gauge<u64, AtomicU64>,
    applied_index: Gauge<u64, AtomicU64>,
    last_log_index: Gauge<u64, AtomicU64>,
    pub(crate) leader_changes: Counter,
    pub(crate) proposals: Counter,
    pub(crate) proposals_failed: Counter,
}

impl StoreMetrics {
    /// The series of `service` (their prefix), counting into `storage`.
    pub fn new(service: &str, storage: StorageMetrics) -> Self {
        let mut registry = Registry::with_prefix(service);
        let m = Self {
            registry: Registry::default(),
            storage,
            http: HttpMetrics::default(),
            term: Gauge::default(),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            leader_id: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            leader_changes: Counter::default(),
            proposals: Counter::default(),
            proposals_failed: Counter::default(),
        };
        let r = &mut registry;
        r.register("raft_term", "The current Raft term", m.term.clone());
        r.register(
            "raft_is_leader",
            "1 when this node is the leader",
            m.is_leader.clone(),
        );
        r.register(
            "raft_has_leader",
            "1 while this node knows a leader",
            m.has_leader.clone(),
        );
        r.register(
            "raft_leader_id",
            "The node id of the leader this node knows (0: none)",
            m.leader_id.clone(),
        );
        r.register(
            "raft_leader_changes_seen",
            "How often this node learnt of a new leader",
            m.leader_changes.clone(),
        );
        r.register(
            "raft_commit_index",
            "The last log index known committed",
            m.storage.commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "The last log index applied to the state machine",
            m.applied_index.clone(),
        );
        r.register(
            "raft_last_log_index",
            "The last index in this node's log",
            m.last_log_index.clone(),
        );
        r.register(
            "raft_proposals",
            "Writes this node proposed as leader",
            m.proposals.clone(),
        );
        r.register(
            "raft_proposals_failed",
            "Proposed writes not confirmed committed (leadership lost, timeout, Raft stopped)",
            m.proposals_failed.clone(),
        );
        r.register(
            "raft_snapshots_built",
            "Snapshots this node built",
            m.storage.snapshots_built.clone(),
        );
        r.register(
            "raft_snapshots_installed",
            "Snapshots installed from a leader",
            m.storage.snapshots_installed.clone(),
        );
        r.register(
            "disk_wal_fsync_duration_seconds",
            "Each sync of the Raft log to disk",
            m.storage.fsync.clone(),
        );
        if service == "flaredb" {
            r.register(
                "ts_horizon_ms",
                "The time-series retention trim applied here, unix ms: every point older is gone (0: none yet)",
                m.storage.ts_horizon.clone(),
            );
        }
        m.http.register(r);
        Self { registry, ..m }
    }

    /// Notes a leader seen by the role watcher: counts a change when it differs from `last`.
    pub(crate) fn leader_seen(&self, last: &mut Option<NodeId>, now: Option<NodeId>) {
        if now.is_some() && now != *last {
            self.leader_changes.inc();
            *last = now;
        }
    }

    /// The text served at `/metrics`, with the Raft gauges read from `raft` now.
    pub fn render(&self, raft: &Raft) -> String {
        {
            let m = raft.metrics().borrow().clone();
            self.term
                .set(i64::try_from(m.current_term).unwrap_or(i64::MAX));
            self.is_leader
                .set(i64::from(m.state == ServerState::Leader));
            self.has_leader.set(i64::from(m.current_leader.is_some()));
            self.leader_id.set(m.current_leader.unwrap_or(0));
            self.applied_index
                .set(m.last_applied.map_or(0, |l| l.index));
            self.last_log_index.set(m.last_log_index.unwrap_or(0));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The `/metrics` answer.
    pub fn response(&self, raft: &Raft) -> Response {
        let mut r = self.render(raft).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        r
    }
}

/// Shared handle on a node's metrics.
pub type SharedMetrics = Arc<StoreMetrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_change_counts_only_when_a_new_leader_is_known() {
        let m = StoreMetrics::new("chainfire", StorageMetrics::default());
        let mut last = None;
        for now in [None, Some(1), Some(1), None, Some(1), Some(2)] {
            m.leader_seen(&mut last, now);
        }
        assert_eq!(m.leader_changes.get(), 2);
        assert_eq!(last, Some(2));
    }

    #[test]
    fn requests_are_counted_by_route_template() {
        let m = StoreMetrics::new("flaredb", StorageMetrics::default());
        let t = Instant::now();
        m.http.record("/v1/ns/{ns}/kv/{*key}", &Method::PUT, 200, t);
        m.http.record("/v1/ns/{ns}/kv/{*key}", &Method::PUT, 200, t);
        m.http.record(
            "unmatched",
            &Method::from_bytes(b"BREW").expect("m"),
            404,
            t,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).expect("encode");
        assert!(
            out.contains(
                r#"flaredb_http_requests_total{route="/v1/ns/{ns}/kv/{*key}",method="PUT",code="200"} 2"#
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"flaredb_http_requests_total{route="unmatched",method="other",code="404"} 1"#
            ),
            "{out}"
        );
    }
}
