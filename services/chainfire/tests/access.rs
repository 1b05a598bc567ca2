//! Who may do what to a 3-node Chainfire cluster, on real processes over mutual TLS (issue 16's
//! list): read, write, overwrite and delete a key, add an outside node as a learner, promote
//! it, remove a member, a forged `/raft/append` and `GET /raft/identity` on the Raft port.
//!
//! Each is refused without a certificate (401 on the API port; no handshake on the Raft port),
//! with a revoked one and with one of another CA (no handshake on either port); an operator's
//! certificate may do what the API offers and nothing on the Raft port (403); a node's may do
//! both. `/health` and `/readyz` answer anyone over TLS. Revocation through Chainfire
//! `pki/revoked/<serial>` is measured: an open connection refused on its next request, and new
//! handshakes refused on every node and port, within 10 s.

mod common;

use std::time::{Duration, Instant};

use common::{
    form_cluster, https_anonymous, https_as, node_cert, operator_cert, phase, stranger_client,
    Call, Node, Outcome,
};
use plasmacloud_store_client::StoreClient;
use plasmacloud_testkit::wait_until_async;
use reqwest::Method;

const BIN: &str = "chainfire-server";

/// The operations of issue 16's list, against `at` (the API calls) and `target` (the Raft
/// calls); `outsider` is the node a learner call adds.
fn operations(at: &Node, target: &Node, outsider: &Node, incarnation: &str) -> Vec<Call> {
    let learner = serde_json::json!({
        "id": outsider.id,
        "raft_addr": outsider.raft.to_string(),
        "api_addr": outsider.api.to_string(),
    })
    .to_string();
    // A leader of term 1002 that does not exist, planting a key (the attack of issue 16).
    let forged = serde_json::json!({
        "vote": {"leader_id": {"term": 1002, "node_id": 9}, "committed": true},
        "prev_log_id": null,
        "leader_commit": null,
        "entries": [{
            "log_id": {"leader_id": {"term": 1002, "node_id": 9}, "index": 999},
            "payload": {"Normal": {"Put": {"ks": "", "key": "planted", "value": "x", "cond": null}}}
        }],
    })
    .to_string();
    let mut append = Call::new(
        "a forged /raft/append",
        Method::POST,
        target.raft_url("/raft/append"),
        &forged,
    );
    append.headers = vec![
        ("x-target-id", target.id.to_string()),
        ("x-target-incarnation", incarnation.to_string()),
        ("content-type", "application/json".into()),
    ];
    vec![
        Call::new("read a key", Method::GET, at.api_url("/v1/kv/k"), ""),
        Call::new(
            "write a new key",
            Method::PUT,
            at.api_url("/v1/kv/new"),
            "v",
        ),
        Call::new("overwrite a key", Method::PUT, at.api_url("/v1/kv/k"), "v1"),
        Call::new(
            "delete a key",
            Method::DELETE,
            at.api_url("/v1/kv/gone"),
            "",
        ),
        Call::new(
            "add an outside node as a learner",
            Method::POST,
            at.api_url("/v1/cluster/learners"),
            &learner,
        ),
        Call::new(
            "promote it",
            Method::POST,
            at.api_url("/v1/cluster/voters"),
            &format!("{{\"ids\":[{}]}}", outsider.id),
        ),
        Call::new(
            "remove a member",
            Method::DELETE,
            at.api_url(&format!("/v1/cluster/members/{}", target.id)),
            "",
        ),
        append,
        Call::new(
            "GET /raft/identity",
            Method::GET,
            target.raft_url("/raft/identity"),
            "",
        ),
    ]
}

fn is_raft(c: &Call) -> bool {
    c.url.contains("/raft/")
}

/// Waits until `check` says refused; returns how long that took.
async fn time_until_refused<F, Fut>(what: &str, start: Instant, check: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_async(what, Duration::from_secs(10), || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_needs_a_cluster_certificate_and_revocation_bites_within_10s() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::new(BIN, id, tmp.path())).collect();
    let mut outsider = Node::new(BIN, 4, tmp.path());
    for n in nodes.iter_mut().chain([&mut outsider]) {
        n.start(true);
    }

    phase("form the cluster with node certificates");
    form_cluster(&nodes.iter().collect::<Vec<_>>()).await;
    let c = nodes[0].client();
    c.put("k", "v0").await.expect("put");
    c.put("gone", "x").await.expect("put");
    let leader = c.members().await.expect("members").leader.expect("leader");
    // The API calls go to a follower (forwarded to the leader), the Raft calls and the removal
    // to another follower.
    let followers: Vec<usize> = (0..3).filter(|i| nodes[*i].id != leader).collect();
    let (at, target) = (&nodes[followers[0]], &nodes[followers[1]]);
    let identity: serde_json::Value = nodes[0]
        .https()
        .get(target.raft_url("/raft/identity"))
        .send()
        .await
        .expect("identity with a node certificate")
        .json()
        .await
        .expect("json");
    let incarnation = identity["incarnation"].as_str().expect("incarnation");
    let ops = operations(at, target, &outsider, incarnation);

    phase("/health, /readyz and /metrics answer anyone over TLS");
    let anon = https_anonymous();
    for n in &nodes {
        for path in ["/health", "/readyz", "/metrics"] {
            let got = Call::new("health", Method::GET, n.api_url(path), "")
                .send(&anon)
                .await;
            assert_eq!(got.status(), Some(200), "{path} on node {}: {got:?}", n.id);
        }
    }

    phase("revoke a node certificate in pki/revoked/: measured");
    let doomed = node_cert("node9", at.api.ip());
    let doomed_http = https_as(&doomed);
    let read = Call::new("read", Method::GET, at.api_url("/v1/kv/k"), "");
    assert_eq!(read.send(&doomed_http).await.status(), Some(200));
    let op = operator_cert("alice");
    let op_client: StoreClient = at.client_as(&op);
    let serial = doomed.identity().serial.clone();
    let start = Instant::now();
    op_client
        .put(
            &format!("pki/revoked/{serial}"),
            &serde_json::json!({"serial": serial, "identity": "node node9", "reason": "test"})
                .to_string(),
        )
        .await
        .expect("write the revocation");
    let open = time_until_refused(
        "the open connection refused on its next request",
        start,
        || {
            let (read, http) = (read.clone(), doomed_http.clone());
            async move {
                match read.send(&http).await {
                    Outcome::Status(403, body) => {
                        assert!(body.contains("revoked"), "{body}");
                        true
                    }
                    Outcome::Status(200, _) => false,
                    other => panic!("the open connection should answer 403: {other:?}"),
                }
            }
        },
    )
    .await;
    let all_ports = time_until_refused(
        "new handshakes refused on every node and port",
        start,
        || {
            let nodes = &nodes;
            let doomed = doomed.clone();
            async move {
                for n in nodes {
                    for url in [n.api_url("/v1/kv/k"), n.raft_url("/raft/identity")] {
                        let fresh = https_as(&doomed);
                        if let Outcome::Status(..) =
                            Call::new("fresh", Method::GET, url, "").send(&fresh).await
                        {
                            return false;
                        }
                    }
                }
                true
            }
        },
    )
    .await;
    eprintln!(
        "revocation took effect: open connection refused after {open:?}, every new handshake on 3 nodes x 2 ports after {all_ports:?}"
    );
    assert!(all_ports < Duration::from_secs(10));

    phase("refused without a certificate, with a revoked one, with another CA's");
    let revoked = || https_as(&doomed);
    for call in &ops {
        if is_raft(call) {
            // The Raft port requires a certificate at the handshake.
            call.refused_with(https_anonymous, "CertificateRequired")
                .await;
        } else {
            match &call.send(&https_anonymous()).await {
                Outcome::Status(401, body) => {
                    assert!(body.contains("needs a client certificate"), "{body}")
                }
                other => panic!(
                    "{} without a certificate: want 401, got {other:?}",
                    call.what
                ),
            }
        }
        call.refused_with(revoked, "CertificateRevoked").await;
        call.refused_with(stranger_client, "UnknownCA").await;
    }
    for n in &nodes {
        Call::new("health", Method::GET, n.api_url("/health"), "")
            .refused_with(stranger_client, "UnknownCA")
            .await;
    }
    phase("check: nothing changed");
    assert_eq!(c.get("k").await.expect("get").expect("k").value, "v0");
    assert!(c.get("new").await.expect("get").is_none());
    assert!(c.get("gone").await.expect("get").is_some());
    assert!(c.get("planted").await.expect("get").is_none());
    let mut voters = c.members().await.expect("members").voter_ids();
    voters.sort_unstable();
    assert_eq!(voters, [1, 2, 3]);
    let (_, text) = target.client().readyz().await.expect("readyz");
    assert!(!text.contains("term 1002"), "{text}");

    phase("an operator: every API operation, nothing on the Raft port");
    let op_http = https_as(&op);
    for call in &ops {
        let got = call.send(&op_http).await;
        if is_raft(call) {
            match &got {
                Outcome::Status(403, body) => {
                    assert!(body.contains("needs a node certificate"), "{body}")
                }
                other => panic!("{} as an operator: want 403, got {other:?}", call.what),
            }
        } else {
            assert_eq!(
                got.status(),
                Some(200),
                "{} as an operator: {got:?}",
                call.what
            );
        }
    }
    assert_eq!(c.get("k").await.expect("get").expect("k").value, "v1");
    assert!(c.get("gone").await.expect("get").is_none());
    let mut voters = c.members().await.expect("members").voter_ids();
    voters.sort_unstable();
    let mut want: Vec<u64> = [1, 2, 3, 4]
        .into_iter()
        .filter(|i| *i != target.id)
        .collect();
    want.sort_unstable();
    assert_eq!(
        voters, want,
        "learner 4 added and promoted, {} removed",
        target.id
    );

    phase("a node: the Raft port too");
    let node_http = at.https();
    let got = Call::new("identity", Method::GET, at.raft_url("/raft/identity"), "")
        .send(&node_http)
        .await;
    assert_eq!(got.status(), Some(200), "{got:?}");
    // Past the guard, the forged append still meets the target check (wrong incarnation).
    let mut append = ops
        .iter()
        .find(|c| c.url.ends_with("/raft/append"))
        .expect("append")
        .clone();
    append.url = at.raft_url("/raft/append");
    append.headers[0].1 = at.id.to_string();
    append.headers[1].1 = "not-its-incarnation".into();
    let got = append.send(&node_http).await;
    assert_eq!(got.status(), Some(409), "{got:?}");
    let got = Call::new("read", Method::GET, at.api_url("/v1/kv/k"), "")
        .send(&node_http)
        .await;
    assert_eq!(got, Outcome::Status(200, "v1".into()));
}
