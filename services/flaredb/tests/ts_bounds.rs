//! The time-series query bound (`plasmacloud_raft::api::MAX_POINTS` points or buckets per
//! answer) on a real FlareDB node: a query over more is answered 400 naming the maximum and
//! what to ask instead; one at the maximum is answered whole.

// The process helpers are shared with Chainfire's tests (same binary flags, same API).
#[path = "../../chainfire/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{phase, wait_healthy, Node};
use plasmacloud_raft::api::MAX_POINTS;
use plasmacloud_store_client::Point;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_over_the_maximum_is_refused_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut n = Node::new("flaredb-server", 1, tmp.path());
    n.start(true);
    let c = n.client();
    c.init(&[n.member()]).await.expect("init");
    wait_healthy(&n, Duration::from_secs(20)).await;

    phase("2.5 × the maximum of points, one every ms");
    let total = MAX_POINTS as i64 * 5 / 2;
    for chunk in (0..total).collect::<Vec<_>>().chunks(MAX_POINTS) {
        let pts: Vec<Point> = chunk.iter().map(|&t| Point { t, v: t as f64 }).collect();
        c.ts_append("node01.cpu", &pts).await.expect("append");
    }

    phase("raw points: over the maximum is 400, at the maximum is whole");
    let e = c
        .ts_range("node01.cpu", 0, total)
        .await
        .expect_err("more points than one answer carries");
    let msg = e.to_string();
    assert_eq!(e.status(), Some(400), "{msg}");
    assert!(
        msg.contains(&MAX_POINTS.to_string()) && msg.contains("step"),
        "names the maximum and the way out: {msg}"
    );
    let whole = c
        .ts_range("node01.cpu", 0, MAX_POINTS as i64)
        .await
        .expect("a range at the maximum");
    assert_eq!(whole.len(), MAX_POINTS);
    assert_eq!(whole[MAX_POINTS - 1].t, MAX_POINTS as i64 - 1);

    phase("buckets: too many is 400, a larger step is answered");
    let e = c
        .ts_downsample("node01.cpu", 0, total, 1)
        .await
        .expect_err("more buckets than one answer carries");
    let msg = e.to_string();
    assert_eq!(e.status(), Some(400), "{msg}");
    assert!(
        msg.contains(&MAX_POINTS.to_string()) && msg.contains("larger step"),
        "names the maximum and the way out: {msg}"
    );
    let buckets = c
        .ts_downsample("node01.cpu", 0, total, 10)
        .await
        .expect("buckets of 10 ms");
    assert_eq!(buckets.len(), total as usize / 10);
    assert_eq!((buckets[0].t, buckets[0].count, buckets[0].v), (0, 10, 4.5));
    eprintln!("ts bounds: {total} points; raw and 1 ms buckets refused, 10 ms buckets answered");
}
