//! `/metrics` on a 3-node Chainfire cluster of real processes: it answers anyone over TLS in
//! the Prometheus text format with every documented series, and the Raft series move as they
//! should across a kill -9 of the leader (term, leader changes, leader id; commit and applied
//! indexes after a write; the KV request counter of the write route), and a node that comes
//! back behind the purged log counts the snapshot it installs.

mod common;

use std::time::Duration;

use common::{form_cluster, https_anonymous, phase, wait_healthy, Node};
use plasmacloud_testkit::scrape::Scrape;
use plasmacloud_testkit::wait_until_async;

const BIN: &str = "chainfire-server";
const KV_KEY_ROUTE: &str = "/v1/kv/{*key}";

/// Every series `/metrics` documents (HELP names: counters without `_total`).
const SERIES: [&str; 15] = [
    "chainfire_raft_term",
    "chainfire_raft_is_leader",
    "chainfire_raft_has_leader",
    "chainfire_raft_leader_id",
    "chainfire_raft_leader_changes_seen",
    "chainfire_raft_commit_index",
    "chainfire_raft_applied_index",
    "chainfire_raft_last_log_index",
    "chainfire_raft_proposals",
    "chainfire_raft_proposals_failed",
    "chainfire_raft_snapshots_built",
    "chainfire_raft_snapshots_installed",
    "chainfire_disk_wal_fsync_duration_seconds",
    "chainfire_http_requests",
    "chainfire_http_request_duration_seconds",
];

/// `GET /metrics` without a client certificate, parsed.
async fn scrape(n: &Node) -> Scrape {
    let r = https_anonymous()
        .get(n.api_url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /metrics on node {}: {e}", n.id));
    assert_eq!(r.status(), 200, "GET /metrics on node {}", n.id);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = r.text().await.expect("metrics body");
    Scrape::parse(&text).unwrap_or_else(|e| panic!("node {}: {e}\n{text}", n.id))
}

fn gauge(s: &Scrape, name: &str) -> f64 {
    s.value(name, &[])
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

fn kv_puts(s: &Scrape) -> f64 {
    s.sum(
        "chainfire_http_requests_total",
        &[("route", KV_KEY_ROUTE), ("method", "PUT"), ("code", "200")],
    )
}

/// Puts `key` through `n` until it is acknowledged (a new leader may still be settling).
async fn put_through(n: &Node, key: &str) {
    let c = n.client();
    wait_until_async(
        "a write through the survivor",
        Duration::from_secs(30),
        || {
            let c = c.clone();
            async move { c.put(key, "after").await.ok() }
        },
    )
    .await
    .expect("write acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_series_move_across_a_leader_kill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::new(BIN, id, tmp.path())).collect();
    for n in &mut nodes {
        // Snapshots (and log purges) every 10 entries: a node away for a few dozen writes
        // comes back by snapshot.
        n.extra = vec!["--snapshot-logs".into(), "10".into()];
        n.start(true);
    }

    phase("form cluster; /metrics answers anyone with every series");
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        form_cluster(&refs).await;
    }
    nodes[0].client().put("before", "x").await.expect("put");
    for n in &nodes {
        let s = scrape(n).await;
        for name in SERIES {
            assert!(s.documents(name), "node {}: {name} not documented", n.id);
        }
        assert_eq!(gauge(&s, "chainfire_raft_has_leader"), 1.0, "node {}", n.id);
        assert!(gauge(&s, "chainfire_raft_term") >= 1.0);
        assert!(gauge(&s, "chainfire_raft_leader_changes_seen_total") >= 1.0);
    }
    let leader = nodes[0]
        .client()
        .members()
        .await
        .expect("members")
        .leader
        .expect("a leader");
    let li = nodes.iter().position(|n| n.id == leader).expect("leader");
    let s = scrape(&nodes[li]).await;
    assert_eq!(gauge(&s, "chainfire_raft_is_leader"), 1.0);
    assert!(gauge(&s, "chainfire_raft_proposals_total") >= 1.0);
    assert!(
        s.histogram_count("chainfire_disk_wal_fsync_duration_seconds", &[])
            .unwrap_or(0.0)
            >= 1.0,
        "the leader synced its log at least once"
    );
    let si = (li + 1) % nodes.len();
    let before = scrape(&nodes[si]).await;
    assert_eq!(gauge(&before, "chainfire_raft_leader_id"), leader as f64);
    assert_eq!(gauge(&before, "chainfire_raft_is_leader"), 0.0);

    phase("kill -9 the leader; the survivor sees a new leader in a higher term");
    eprintln!("killing leader {leader}; watching node {}", nodes[si].id);
    nodes[li].kill();
    let survivor = &nodes[si];
    let after_election = wait_until_async("a new leader", Duration::from_secs(30), || async {
        let s = scrape(survivor).await;
        let id = s.value("chainfire_raft_leader_id", &[])?;
        (id != 0.0 && id != leader as f64).then_some(s)
    })
    .await
    .expect("a new leader elected");
    assert!(
        gauge(&after_election, "chainfire_raft_term") > gauge(&before, "chainfire_raft_term"),
        "term did not increase"
    );
    assert!(
        gauge(&after_election, "chainfire_raft_leader_changes_seen_total")
            > gauge(&before, "chainfire_raft_leader_changes_seen_total"),
        "leader changes did not increase"
    );

    phase("write through the survivor: commit and applied indexes move, the PUT is counted");
    for i in 0..30 {
        put_through(survivor, &format!("after/{i:02}")).await;
    }
    let after = scrape(survivor).await;
    for idx in [
        "chainfire_raft_commit_index",
        "chainfire_raft_applied_index",
    ] {
        assert!(
            gauge(&after, idx) > gauge(&before, idx),
            "{idx}: {} then {}",
            gauge(&before, idx),
            gauge(&after, idx)
        );
    }
    assert!(
        kv_puts(&after) >= kv_puts(&before) + 30.0,
        "PUT {KV_KEY_ROUTE} counted {} then {}",
        kv_puts(&before),
        kv_puts(&after)
    );
    assert!(
        after
            .histogram_count(
                "chainfire_http_request_duration_seconds",
                &[("route", KV_KEY_ROUTE), ("method", "PUT")]
            )
            .unwrap_or(0.0)
            >= 30.0
    );
    let built: f64 = {
        let mut sum = 0.0;
        for n in nodes.iter().filter(|n| n.id != leader) {
            sum += gauge(&scrape(n).await, "chainfire_raft_snapshots_built_total");
        }
        sum
    };
    assert!(
        built >= 1.0,
        "30 writes at --snapshot-logs 10 built no snapshot"
    );

    phase("the old leader comes back behind the purged log: it installs a snapshot");
    nodes[li].start(false);
    wait_healthy(&nodes[li], Duration::from_secs(30)).await;
    let back = &nodes[li];
    wait_until_async("a snapshot installed", Duration::from_secs(30), || async {
        let s = scrape(back).await;
        (s.value("chainfire_raft_snapshots_installed_total", &[])? >= 1.0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", back.output()));
}
