//! FlareDB as real processes: namespaces with compare-and-swap, time series with downsampling,
//! registration in Chainfire and degraded health when Chainfire is gone (reads and writes go
//! on), and replication to a second node.

// The process helpers are shared with Chainfire's tests (same binary flags, same API).
#[path = "../../chainfire/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{phase, wait_healthy, Node};
use plasmacloud_store_client::{Error, Point, Precondition, StoreClient};
use plasmacloud_testkit::wait_until_async;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaces_time_series_and_chainfire_registration() {
    let tmp = tempfile::tempdir().expect("tempdir");

    phase("a one-node chainfire");
    let mut cf = Node::new("chainfire-server", 1, &tmp.path().join("cf"));
    std::fs::create_dir_all(tmp.path().join("cf")).expect("mkdir");
    cf.start(true);
    cf.client()
        .init(&[cf.member()])
        .await
        .expect("chainfire init");
    wait_healthy(&cf, Duration::from_secs(20)).await;

    phase("two flaredb nodes registered in chainfire");
    let root = tmp.path().join("fl");
    std::fs::create_dir_all(&root).expect("mkdir");
    let mut a = Node::new("flaredb-server", 1, &root);
    let mut b = Node::new("flaredb-server", 2, &root);
    for n in [&mut a, &mut b] {
        n.extra = vec!["--chainfire".into(), format!("https://{}", cf.api)];
        n.start(true);
    }
    a.client().init(&[a.member()]).await.expect("init");
    wait_healthy(&a, Duration::from_secs(20)).await;
    a.client().add_learner(&b.member()).await.expect("learner");
    a.client().promote_voters(&[2]).await.expect("promote");
    wait_healthy(&b, Duration::from_secs(20)).await;
    let cfc = cf.client();
    let regs = wait_until_async("both registered", Duration::from_secs(20), || {
        let cfc = cfc.clone();
        async move {
            let l = cfc.list("flaredb/members/").await.ok()?;
            (l.items.len() == 2).then_some(l)
        }
    })
    .await
    .expect("registrations");
    let v: serde_json::Value = serde_json::from_str(&regs.items[0].value).expect("json");
    assert_eq!(v["api_addr"], a.api.to_string());
    assert_eq!(v["id"], 1);
    let h = a.client().health().await.expect("health");
    assert_eq!(h.chainfire.as_deref(), Some("connected"), "{h:?}");

    phase("namespaces: isolation, CAS, listing");
    let both = StoreClient::builder([a.api.to_string(), b.api.to_string()])
        .tls(a.cert.clone())
        .build()
        .expect("client");
    let iam = both.namespace("iam").expect("ns");
    let metrics = both.namespace("metrics").expect("ns");
    let r1 = iam
        .put("users/admin", "{\"name\":\"admin\"}")
        .await
        .expect("put");
    metrics.put("users/admin", "other").await.expect("put");
    assert_eq!(
        iam.get("users/admin")
            .await
            .expect("get")
            .expect("present")
            .value,
        "{\"name\":\"admin\"}"
    );
    assert_eq!(
        metrics
            .get("users/admin")
            .await
            .expect("get")
            .expect("present")
            .value,
        "other"
    );
    assert!(both
        .namespace("events")
        .expect("ns")
        .get("users/admin")
        .await
        .expect("get")
        .is_none());
    let e = iam
        .put_if("users/admin", "x", Precondition::Absent)
        .await
        .expect_err("exists");
    assert!(
        matches!(e, Error::Conflict { revision, .. } if revision == r1),
        "{e}"
    );
    iam.put_if("users/admin", "{\"v\":2}", Precondition::Revision(r1))
        .await
        .expect("cas");
    iam.put_if("seeded", "yes", Precondition::Absent)
        .await
        .expect("create-only");
    let l = iam.list("users/").await.expect("list");
    assert_eq!(l.items.len(), 1);
    assert!(both.namespace("Bad!").is_err());
    let r = a
        .https()
        .get(a.api_url("/v1/ns/UPPER/kv/x"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    // written through the leader, readable through the follower
    let on_b = b
        .client()
        .namespace("iam")
        .expect("ns")
        .get("seeded")
        .await
        .expect("get");
    assert_eq!(on_b.expect("present").value, "yes");

    phase("time series: append, range, downsample");
    let pts: Vec<Point> = (0..100)
        .map(|i| Point {
            t: 1_000 + i * 10,
            v: i as f64,
        })
        .collect();
    let ack = both.ts_append("node01.cpu", &pts).await.expect("append");
    assert_eq!(ack.appended, 100);
    both.ts_append("node02.cpu", &[Point { t: 1_000, v: 42.0 }])
        .await
        .expect("append");
    let got = both
        .ts_range("node01.cpu", 1_000, 1_100)
        .await
        .expect("range");
    assert_eq!(got.len(), 10);
    assert_eq!(got[0], Point { t: 1_000, v: 0.0 });
    assert_eq!(got[9].t, 1_090);
    let buckets = both
        .ts_downsample("node01.cpu", 0, 10_000, 500)
        .await
        .expect("downsample");
    assert_eq!(buckets.len(), 2);
    assert_eq!(
        (
            buckets[0].t,
            buckets[0].count,
            buckets[0].min,
            buckets[0].max
        ),
        (1_000, 50, 0.0, 49.0)
    );
    assert_eq!(buckets[0].v, 24.5);
    assert_eq!((buckets[1].t, buckets[1].count), (1_500, 50));
    let other = both.ts_range("node02.cpu", 0, 10_000).await.expect("range");
    assert_eq!(other, vec![Point { t: 1_000, v: 42.0 }]);
    // replacing a point at the same t
    both.ts_append("node02.cpu", &[Point { t: 1_000, v: 1.0 }])
        .await
        .expect("append");
    assert_eq!(
        both.ts_range("node02.cpu", 0, 10_000).await.expect("range")[0].v,
        1.0
    );
    let r = a
        .https()
        .post(a.api_url("/v1/ts/x/points"))
        .body("{\"points\":[{\"t\":1}]}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);

    phase("chainfire down: health degraded, reads and writes go on");
    cf.kill();
    let ac = a.client();
    wait_until_async("chainfire disconnected", Duration::from_secs(20), || {
        let ac = ac.clone();
        async move {
            ac.health()
                .await
                .ok()
                .filter(|h| h.chainfire.as_deref() == Some("disconnected"))
        }
    })
    .await
    .expect("degraded health");
    let h = ac.health().await.expect("health");
    assert!(h.is_healthy(), "still healthy as a store: {h:?}");
    let (ready, text) = ac.readyz().await.expect("readyz");
    assert!(
        ready && text.contains("chainfire disconnected (not required)"),
        "{text}"
    );
    iam.put("after", "chainfire-down")
        .await
        .expect("write without chainfire");
    assert_eq!(
        iam.get("after")
            .await
            .expect("read")
            .expect("present")
            .value,
        "chainfire-down"
    );
}

#[test]
fn a_plain_http_chainfire_link_is_refused_when_the_node_speaks_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n = Node::new("flaredb-server", 1, tmp.path());
    let check = |chainfire: &str| {
        let mut args = n.args(true);
        args.extend(["--chainfire".into(), chainfire.into(), "--check".into()]);
        let out =
            std::process::Command::new(plasmacloud_testkit::workspace_binary("flaredb-server"))
                .args(&args)
                .output()
                .expect("run flaredb-server");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let (code, out) = check("http://127.0.0.1:2379");
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("Chainfire speaks TLS; write https://"),
        "{out}"
    );
    let (code, out) = check("https://127.0.0.1:2379,127.0.0.2:2379");
    assert_eq!(code, Some(0), "{out}");
    assert!(!n.dir.exists(), "--check creates nothing");
}
