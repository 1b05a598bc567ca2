//! `/metrics` on a real FlareDB node: it answers anyone over TLS in the Prometheus text format
//! with the Raft series and the API's requests by route template (a namespace key, a time
//! series), and the counters move with the writes.

// The process helpers are shared with Chainfire's tests (same binary flags, same API).
#[path = "../../chainfire/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{https_anonymous, phase, wait_healthy, Node};
use plasmacloud_store_client::Point;
use plasmacloud_testkit::scrape::Scrape;

const KV_KEY_ROUTE: &str = "/v1/ns/{ns}/kv/{*key}";
const TS_POINTS_ROUTE: &str = "/v1/ts/{series}/points";

async fn scrape(n: &Node) -> Scrape {
    let r = https_anonymous()
        .get(n.api_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics without a certificate");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_raft_and_requests_by_route_template() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut a = Node::new("flaredb-server", 1, tmp.path());
    a.start(true);
    a.client().init(&[a.member()]).await.expect("init");
    wait_healthy(&a, Duration::from_secs(20)).await;

    phase("before: the series are there, the leader is this node");
    let before = scrape(&a).await;
    for name in [
        "flaredb_raft_term",
        "flaredb_raft_is_leader",
        "flaredb_raft_leader_id",
        "flaredb_raft_leader_changes_seen",
        "flaredb_raft_commit_index",
        "flaredb_raft_applied_index",
        "flaredb_raft_last_log_index",
        "flaredb_raft_proposals",
        "flaredb_raft_proposals_failed",
        "flaredb_raft_snapshots_built",
        "flaredb_raft_snapshots_installed",
        "flaredb_disk_wal_fsync_duration_seconds",
        "flaredb_http_requests",
        "flaredb_http_request_duration_seconds",
    ] {
        assert!(before.documents(name), "{name} not in /metrics");
    }
    assert_eq!(before.value("flaredb_raft_is_leader", &[]), Some(1.0));
    assert_eq!(before.value("flaredb_raft_leader_id", &[]), Some(1.0));

    phase("a namespace write, a time-series append, and a key no route has");
    let c = a.client();
    let ns = c.namespace("events").expect("ns");
    for i in 0..3 {
        ns.put(&format!("boot/{i}"), "x").await.expect("put");
    }
    c.ts_append("cpu", &[Point { t: 1, v: 0.5 }])
        .await
        .expect("append");
    let stray = a
        .https()
        .get(a.api_url("/v1/nothing/here"))
        .send()
        .await
        .expect("request");
    assert_eq!(stray.status(), 404);

    phase("after: requests by template, proposals, indexes and syncs moved");
    let after = scrape(&a).await;
    let puts = |s: &Scrape| {
        s.sum(
            "flaredb_http_requests_total",
            &[("route", KV_KEY_ROUTE), ("method", "PUT"), ("code", "200")],
        )
    };
    assert_eq!(puts(&after) - puts(&before), 3.0);
    assert!(
        after.sum(
            "flaredb_http_requests_total",
            &[("route", TS_POINTS_ROUTE), ("method", "POST")]
        ) >= 1.0
    );
    assert!(
        after.sum(
            "flaredb_http_requests_total",
            &[("route", "unmatched"), ("code", "404")]
        ) >= 1.0,
        "a path no route matched counts as unmatched, not by its raw path"
    );
    assert_eq!(
        after.sum(
            "flaredb_http_requests_total",
            &[("route", "/v1/nothing/here")]
        ),
        0.0
    );
    for (name, by) in [
        ("flaredb_raft_proposals_total", 4.0),
        ("flaredb_raft_commit_index", 4.0),
        ("flaredb_raft_applied_index", 4.0),
    ] {
        let (b, n) = (
            before.value(name, &[]).unwrap_or(0.0),
            after.value(name, &[]).unwrap_or(0.0),
        );
        assert!(n >= b + by, "{name}: {b} then {n}");
    }
    assert!(
        after
            .histogram_count("flaredb_disk_wal_fsync_duration_seconds", &[])
            .unwrap_or(0.0)
            > before
                .histogram_count("flaredb_disk_wal_fsync_duration_seconds", &[])
                .unwrap_or(0.0)
    );
}
