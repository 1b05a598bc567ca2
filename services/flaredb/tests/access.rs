//! Who may do what to FlareDB, on real processes over mutual TLS (issue 16's list): read the
//! `iam` namespace, write, overwrite and delete in it, append to a time series.
//!
//! Each is refused without a certificate (401), with one of another CA and with a revoked one
//! (no handshake); a node's certificate may do all of it; an operator's may append and use
//! ordinary namespaces but is refused `iam` and `system` (403 naming the rule). A serial
//! revoked in Chainfire (`pki/revoked/<serial>`) is refused by FlareDB within 10 s (measured;
//! FlareDB reads the list through its `--chainfire` link with its node certificate), and stays
//! refused while Chainfire is away.

#[path = "../../chainfire/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{
    https_anonymous, https_as, node_cert, operator_cert, phase, stranger_client, wait_healthy,
    Call, Node, Outcome,
};
use plasmacloud_testkit::wait_until_async;
use reqwest::Method;

/// The operations of issue 16's list on namespace `ns` (and a series) at `n`.
fn operations(n: &Node, ns: &str) -> Vec<Call> {
    let kv = |key: &str| n.api_url(&format!("/v1/ns/{ns}/kv/{key}"));
    vec![
        Call::new("read a key", Method::GET, kv("users/admin"), ""),
        Call::new(
            "list the namespace",
            Method::GET,
            n.api_url(&format!("/v1/ns/{ns}/kv?prefix=")),
            "",
        ),
        Call::new("write a new key", Method::PUT, kv("keys/forged"), "{}"),
        Call::new(
            "overwrite a key",
            Method::PUT,
            kv("users/admin"),
            "{\"v\":2}",
        ),
        Call::new("delete a key", Method::DELETE, kv("gone"), ""),
    ]
}

fn append(n: &Node) -> Call {
    Call::new(
        "append to a series",
        Method::POST,
        n.api_url("/v1/ts/node01.cpu/points"),
        "{\"points\":[{\"t\":1000,\"v\":1.0}]}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iam_is_node_only_and_revocation_reaches_flaredb_within_10s() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cf_root, fl_root) = (tmp.path().join("cf"), tmp.path().join("fl"));
    std::fs::create_dir_all(&cf_root).expect("mkdir");
    std::fs::create_dir_all(&fl_root).expect("mkdir");

    phase("a one-node chainfire, a one-node flaredb linked to it");
    let mut cf = Node::new("chainfire-server", 1, &cf_root);
    cf.start(true);
    cf.client().init(&[cf.member()]).await.expect("init");
    wait_healthy(&cf, Duration::from_secs(20)).await;
    let mut fl = Node::new("flaredb-server", 1, &fl_root);
    fl.extra = vec!["--chainfire".into(), format!("https://{}", cf.api)];
    fl.start(true);
    fl.client().init(&[fl.member()]).await.expect("init");
    wait_healthy(&fl, Duration::from_secs(20)).await;
    let iam = fl.client().namespace("iam").expect("ns");
    iam.put("users/admin", "{\"hash\":\"$argon2id$…\"}")
        .await
        .expect("a node writes iam");
    iam.put("gone", "x").await.expect("put");
    for ns in ["system", "metrics"] {
        let c = fl.client().namespace(ns).expect("ns");
        c.put("users/admin", "{}").await.expect("put");
        c.put("gone", "x").await.expect("put");
    }
    let anon = https_anonymous();
    let got = Call::new("health", Method::GET, fl.api_url("/health"), "")
        .send(&anon)
        .await;
    assert_eq!(
        got.status(),
        Some(200),
        "/health over TLS without a certificate: {got:?}"
    );

    phase("revoke a node certificate in chainfire: measured at flaredb");
    let doomed = node_cert("node9", fl.api.ip());
    let doomed_http = https_as(&doomed);
    let read = operations(&fl, "iam").remove(0);
    assert_eq!(read.send(&doomed_http).await.status(), Some(200));
    let serial = doomed.identity().serial.clone();
    let start = Instant::now();
    cf.client_as(&operator_cert("pxe-server"))
        .put(
            &format!("pki/revoked/{serial}"),
            &serde_json::json!({"serial": serial, "identity": "node node9"}).to_string(),
        )
        .await
        .expect("write the revocation");
    wait_until_async(
        "the open connection refused",
        Duration::from_secs(10),
        || {
            let (read, http) = (read.clone(), doomed_http.clone());
            async move {
                match read.send(&http).await {
                    Outcome::Status(403, body) if body.contains("revoked") => Some(()),
                    Outcome::Status(200, _) => None,
                    other => panic!("the open connection should answer 403: {other:?}"),
                }
            }
        },
    )
    .await
    .expect("refused on the open connection");
    let open = start.elapsed();
    wait_until_async("new handshakes refused", Duration::from_secs(10), || {
        let (read, doomed) = (read.clone(), doomed.clone());
        async move {
            match read.send(&https_as(&doomed)).await {
                Outcome::NoAnswer(e) if e.contains("CertificateRevoked") => Some(()),
                _ => None,
            }
        }
    })
    .await
    .expect("refused at the handshake");
    let fresh = start.elapsed();
    eprintln!(
        "revocation through chainfire took effect at flaredb: open connection refused after {open:?}, new handshakes after {fresh:?}"
    );
    assert!(fresh < Duration::from_secs(10));

    phase("refused without a certificate, with a revoked one, with another CA's");
    let revoked = || https_as(&doomed);
    let mut all = operations(&fl, "iam");
    all.push(append(&fl));
    all.push(Call::new(
        "GET /raft/identity",
        Method::GET,
        fl.raft_url("/raft/identity"),
        "",
    ));
    for call in &all {
        if call.url.contains("/raft/") {
            call.refused_with(https_anonymous, "CertificateRequired")
                .await;
        } else {
            let got = call.send(&https_anonymous()).await;
            assert_eq!(
                got.status(),
                Some(401),
                "{} without a certificate: {got:?}",
                call.what
            );
        }
        call.refused_with(revoked, "CertificateRevoked").await;
        call.refused_with(stranger_client, "UnknownCA").await;
    }
    let admin = iam.get("users/admin").await.expect("get").expect("admin");
    assert!(admin.value.contains("argon2id"), "unchanged: {admin:?}");
    assert!(iam.get("keys/forged").await.expect("get").is_none());
    assert!(fl
        .client()
        .ts_range("node01.cpu", 0, 10_000)
        .await
        .expect("range")
        .is_empty());

    phase("an operator: refused iam and system by name, allowed elsewhere");
    let op = https_as(&operator_cert("alice"));
    for ns in ["iam", "system"] {
        for call in operations(&fl, ns) {
            match call.send(&op).await {
                Outcome::Status(403, body) => assert!(
                    body.contains(&format!("namespace \\\"{ns}\\\" is node-only"))
                        && body.contains("operator alice"),
                    "{}: {body}",
                    call.what
                ),
                other => panic!(
                    "{} in {ns} as an operator: want 403, got {other:?}",
                    call.what
                ),
            }
        }
    }
    for call in operations(&fl, "metrics").iter().chain([&append(&fl)]) {
        let got = call.send(&op).await;
        assert_eq!(
            got.status(),
            Some(200),
            "{} as an operator: {got:?}",
            call.what
        );
    }
    let got = Call::new("raft", Method::GET, fl.raft_url("/raft/identity"), "")
        .send(&op)
        .await;
    assert_eq!(got.status(), Some(403), "{got:?}");
    assert!(iam.get("keys/forged").await.expect("get").is_none());

    phase("a node: everything, iam included");
    let node = fl.https();
    for call in operations(&fl, "iam").iter().chain([&append(&fl)]) {
        let got = call.send(&node).await;
        assert_eq!(got.status(), Some(200), "{} as a node: {got:?}", call.what);
    }

    phase("chainfire away: the last revocation list stays in force");
    cf.kill();
    let fc = fl.client();
    wait_until_async("chainfire disconnected", Duration::from_secs(20), || {
        let fc = fc.clone();
        async move {
            fc.health()
                .await
                .ok()
                .filter(|h| h.chainfire.as_deref() == Some("disconnected"))
        }
    })
    .await
    .expect("degraded");
    fl.proc
        .as_mut()
        .expect("running")
        .wait_for_output("keeping the last known set", Duration::from_secs(20))
        .expect("a failed read of the list");
    read.refused_with(|| https_as(&doomed), "CertificateRevoked")
        .await;
}
