//! Time-series retention (`ts_retention_secs`) on three real FlareDB nodes: a query never
//! answers a point older than the retention; the leader's trim drops those points on every
//! node alike (the answers of all three replicas compared); a restart keeps the setting (the
//! file is read again and the trims go on); a bad value is refused naming the key, and the node
//! it was given to comes back with its data as it was.

// The process helpers are shared with Chainfire's tests (same binary flags, same API).
#[path = "../../chainfire/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{client_all, form_cluster, https_anonymous, phase, wait_healthy, Node};
use plasmacloud_store_client::{Point, PointsBody};
use plasmacloud_testkit::scrape::Scrape;
use plasmacloud_testkit::{run_to_end, wait_until_async, workspace_binary};

const RETENTION_SECS: i64 = 600;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn write_config(path: &Path, text: &str) -> String {
    std::fs::write(path, text).expect("write config");
    path.display().to_string()
}

/// What `node` itself holds of `series` (`consistency=serializable`: not the leader's answer).
async fn local_points(node: &Node, series: &str) -> Option<Vec<(i64, f64)>> {
    let url = node.api_url(&format!(
        "/v1/ts/{series}?from={}&to={}&consistency=serializable",
        i64::MIN,
        i64::MAX
    ));
    let r = node.https().get(url).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    let body: PointsBody = r.json().await.ok()?;
    Some(body.points.iter().map(|p| (p.t, p.v)).collect())
}

/// `flaredb_ts_horizon_ms` on `node`.
async fn horizon(node: &Node) -> Option<i64> {
    let r = https_anonymous()
        .get(node.api_url("/metrics"))
        .send()
        .await
        .ok()?;
    let s = Scrape::parse(&r.text().await.ok()?).ok()?;
    s.value("flaredb_ts_horizon_ms", &[]).map(|v| v as i64)
}

/// Waits until every node holds exactly `want` of `series`; no answer on the way may hold a
/// point older than `oldest`.
async fn wait_every_node_holds(nodes: &[&Node], series: &str, want: &[(i64, f64)], oldest: i64) {
    for n in nodes {
        let what = format!("node {} holds exactly the kept points of {series}", n.id);
        let last = std::sync::Mutex::new(None);
        let got = wait_until_async(&what, Duration::from_secs(30), || {
            let last = &last;
            async move {
                let pts = local_points(n, series).await?;
                assert!(
                    pts.iter().all(|&(t, _)| t >= oldest),
                    "node {} answered a point older than the retention: {pts:?}",
                    n.id
                );
                *last.lock().expect("lock") = Some(pts.clone());
                (pts == want).then_some(pts)
            }
        })
        .await;
        got.unwrap_or_else(|e| panic!("{e}: last answer {:?}", last.lock().expect("lock")));
    }
}

/// Waits until every node's applied horizon is at least `min`; returns the highest seen.
async fn wait_horizons_reach(nodes: &[&Node], min: i64, what: &str) -> i64 {
    let mut top = i64::MIN;
    for n in nodes {
        let h = wait_until_async(
            &format!("node {}: {what}", n.id),
            Duration::from_secs(60),
            || async move { horizon(n).await.filter(|&h| h >= min) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", n.output()));
        top = top.max(h);
    }
    top
}

async fn restart_all(nodes: &mut [&mut Node]) {
    for n in nodes.iter_mut() {
        if let Some(p) = n.proc.as_mut() {
            p.terminate(Duration::from_secs(20));
        }
        n.proc = None;
    }
    for n in nodes.iter_mut() {
        n.start(false);
    }
    for n in nodes.iter() {
        wait_healthy(n, Duration::from_secs(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_points_go_on_every_node_alike_and_the_setting_survives_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = write_config(
        &tmp.path().join("flaredb.toml"),
        &format!("ts_retention_secs = {RETENTION_SECS}\n"),
    );
    let mut a = Node::new("flaredb-server", 1, tmp.path());
    let mut b = Node::new("flaredb-server", 2, tmp.path());
    let mut c = Node::new("flaredb-server", 3, tmp.path());
    for n in [&mut a, &mut b, &mut c] {
        n.extra = vec!["--config".into(), good.clone()];
        n.start(true);
    }
    phase("three nodes, each with ts_retention_secs = 600 in its --config file");
    form_cluster(&[&a, &b, &c]).await;

    phase("points from two hours ago to a second ago, in two series");
    let t0 = now_ms();
    let oldest = t0 - RETENTION_SECS * 1000;
    let old = [
        (t0 - 7_200_000, 1.0),
        (t0 - 3_600_000, 2.0),
        (oldest - 60_000, 3.0),
    ];
    let kept = [(t0 - 120_000, 4.0), (t0 - 60_000, 5.0), (t0 - 1_000, 6.0)];
    let pts = |p: &[(i64, f64)]| -> Vec<Point> { p.iter().map(|&(t, v)| Point { t, v }).collect() };
    let client = client_all(&[&a, &b, &c], Duration::from_secs(10));
    let all: Vec<(i64, f64)> = old.iter().chain(kept.iter()).copied().collect();
    client
        .ts_append("cpu", &pts(&all))
        .await
        .expect("append cpu");
    client
        .ts_append("mem", &pts(&old))
        .await
        .expect("append mem");
    let through_leader = client
        .ts_range("cpu", i64::MIN, i64::MAX)
        .await
        .expect("range");
    assert_eq!(
        through_leader
            .iter()
            .map(|p| (p.t, p.v))
            .collect::<Vec<_>>(),
        kept,
        "a linearizable query answers only the points inside the retention"
    );

    phase("every replica answers only the kept points, trim or not");
    wait_every_node_holds(&[&a, &b, &c], "cpu", &kept, oldest).await;
    wait_every_node_holds(&[&a, &b, &c], "mem", &[], oldest).await;

    phase("the leader's trim is applied on every node");
    let before_restart =
        wait_horizons_reach(&[&a, &b, &c], oldest, "trimmed past the old points").await;
    assert!(
        before_restart <= now_ms() - RETENTION_SECS * 1000,
        "the horizon {before_restart} is never newer than now - retention"
    );

    phase("a restart of all three keeps the setting: the trims go on, queries stay bounded");
    restart_all(&mut [&mut a, &mut b, &mut c]).await;
    wait_horizons_reach(
        &[&a, &b, &c],
        before_restart + 1,
        "trimmed again after the restart",
    )
    .await;
    wait_every_node_holds(&[&a, &b, &c], "cpu", &kept, oldest).await;

    phase("bad values are refused naming the key; nothing started, nothing changed");
    if let Some(mut p) = c.proc.take() {
        p.terminate(Duration::from_secs(20));
    }
    let bin = workspace_binary("flaredb-server");
    for (i, (bad, needle)) in [
        (
            "ts_retention_secs = 30\n",
            "ts_retention_secs (--ts-retention-secs) = 30",
        ),
        ("ts_retention_secs = -1\n", "ts_retention_secs"),
        ("ts_retention_secs = \"30d\"\n", "ts_retention_secs"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = write_config(&tmp.path().join(format!("bad{i}.toml")), bad);
        c.extra = vec!["--config".into(), path];
        let args = c.args(false);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run_to_end(&bin, &args, Duration::from_secs(30)).expect("run");
        assert_eq!(r.code, Some(2), "{bad:?}: a configuration error: {r:?}");
        assert!(r.stderr.contains(needle), "{bad:?}: names the key: {r:?}");
    }
    c.extra = vec!["--ts-retention-secs".into(), "5".into()];
    let args = c.args(false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_to_end(&bin, &args, Duration::from_secs(30)).expect("run");
    assert_eq!(r.code, Some(2), "--ts-retention-secs 5: {r:?}");
    assert!(
        r.stderr
            .contains("ts_retention_secs (--ts-retention-secs) = 5")
            && r.stderr.contains("0 to keep every point"),
        "says what is allowed: {r:?}"
    );
    c.extra = vec!["--config".into(), good.clone()];
    c.start(false);
    wait_healthy(&c, Duration::from_secs(30)).await;
    wait_every_node_holds(&[&a, &b, &c], "cpu", &kept, oldest).await;

    phase("retention off (the flag wins over the file): the trimmed points are gone for good, alike on every node");
    for n in [&mut a, &mut b, &mut c] {
        n.extra = vec![
            "--config".into(),
            good.clone(),
            "--ts-retention-secs".into(),
            "0".into(),
        ];
    }
    restart_all(&mut [&mut a, &mut b, &mut c]).await;
    wait_every_node_holds(&[&a, &b, &c], "cpu", &kept, i64::MIN).await;
    wait_every_node_holds(&[&a, &b, &c], "mem", &[], i64::MIN).await;
    let answers = [
        local_points(&a, "cpu").await,
        local_points(&b, "cpu").await,
        local_points(&c, "cpu").await,
    ];
    assert!(
        answers.iter().all(|x| x.as_deref() == Some(&kept[..])),
        "{answers:?}"
    );
    // No trims with retention off, so every node settles on the same horizon.
    let (a, b, c) = (&a, &b, &c);
    let h = wait_until_async(
        "one horizon on every node",
        Duration::from_secs(30),
        || async move {
            let hs = [horizon(a).await?, horizon(b).await?, horizon(c).await?];
            (hs[0] == hs[1] && hs[1] == hs[2]).then_some(hs[0])
        },
    )
    .await
    .expect("horizons");
    assert!(
        h > before_restart && h <= now_ms() - RETENTION_SECS * 1000,
        "{h}"
    );
    eprintln!(
        "retention: 3 nodes, {} old points trimmed alike, {} kept; horizon t0 - {} ms",
        old.len() * 2,
        kept.len(),
        t0 - h
    );
}
