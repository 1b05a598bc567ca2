//! The IAM rows of issue 16 ("Trust II"), against real processes that all speak mutual TLS:
//! Chainfire, FlareDB and iam-server, with callers holding no certificate, an operator's, or
//! a node's.
//!
//! Measured before: `/v1/bootstrap` on a fresh IAM made the first caller admin; deleting
//! `iam/bootstrap` in FlareDB reopened it; an Ed25519 key written to `iam/keys/<kid>` let anyone
//! mint a token IAM accepted as admin. Now each of these is refused without a cluster
//! certificate (and the FlareDB ones without a node's), bootstrap and node tokens take only a
//! node certificate, and a revoked node certificate is refused within 10 s.

mod common;

use common::{
    binary, error_of, hash_of, https_as, phase, store_client, Callers, Iam, StoreNode, PW,
};
use iam::model::{now_unix, KeyRecord};
use iam::token::{encode_public_key, TokenSigner};
use plasmacloud_store_client::StoreClient;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Chainfire's and FlareDB's binaries and a scratch directory, or `None` when the test skips.
fn setup(test: &str) -> Option<(PathBuf, PathBuf, tempfile::TempDir)> {
    let chainfire = binary("chainfire-server", test)?;
    let flaredb = binary("flaredb-server", test)?;
    Some((chainfire, flaredb, tempfile::tempdir().expect("tempdir")))
}

/// The HTTP status a store call was refused with (`None`: it succeeded or got no answer).
fn refused_with<T: std::fmt::Debug>(r: Result<T, plasmacloud_store_client::Error>) -> Option<u16> {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.status(),
    }
}

/// FlareDB's `iam` namespace through `client`.
fn iam_ns(client: &StoreClient) -> plasmacloud_store_client::Keyspace {
    client.namespace("iam").expect("namespace")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_rows_of_issue_16_are_refused_without_a_cluster_certificate() {
    let Some((cf_bin, fdb_bin, dir)) = setup("iam_rows_of_issue_16") else {
        return;
    };
    let who = Callers::new(dir.path());

    phase("start Chainfire, FlareDB and IAM, all over mutual TLS");
    let chainfire = StoreNode::single(cf_bin).await;
    let flare = StoreNode::single(fdb_bin).await;
    let iam = Iam::start("iam-a", &[&flare], &chainfire.url, dir.path());
    let (s, j) = iam.get(&who.anon, "/health", None).await;
    assert_eq!(s, 200, "/health over TLS without a certificate: {j}");
    let urls = std::slice::from_ref(&flare.url);
    let fdb_anon = iam_ns(&store_client(urls, None));
    let fdb_operator = iam_ns(&store_client(urls, Some(&who.operator_cert)));
    let fdb_node = iam_ns(&flare.client());

    phase("bootstrap by the first caller: refused without a node certificate");
    let hash = hash_of(PW);
    let (s, j) = iam.bootstrap(&who.anon, "mallory", &hash).await;
    assert_eq!(s, 401, "{j}");
    assert!(error_of(&j).contains("client certificate"), "{j}");
    let (s, j) = iam.bootstrap(&who.operator, "mallory", &hash).await;
    assert_eq!(s, 403, "{j}");
    assert!(error_of(&j).contains("node certificate"), "{j}");
    assert_eq!(fdb_node.get("bootstrap").await.expect("read"), None);

    phase("the seed node bootstraps the contract's admin, once");
    let (s, j) = iam.bootstrap(&who.node, "admin", &hash).await;
    assert_eq!((s, &j["created"]), (200, &json!(true)), "{j}");
    let (s, j) = iam.bootstrap(&who.node, "admin", &hash).await;
    assert_eq!((s, &j["created"]), (200, &json!(false)), "{j}");
    let (s, j) = iam
        .bootstrap(&who.node, "mallory", &hash_of("mallory's own password"))
        .await;
    assert_eq!(s, 409, "{j}");

    phase("FlareDB's iam namespace (password hashes) is unreadable without a node certificate");
    assert_eq!(refused_with(fdb_anon.get("users/admin").await), Some(401));
    assert_eq!(
        refused_with(fdb_operator.get("users/admin").await),
        Some(403)
    );
    assert_eq!(refused_with(fdb_anon.list("").await), Some(401));

    phase("reopen bootstrap by deleting iam/bootstrap: refused, and bootstrap stays closed");
    assert_eq!(refused_with(fdb_anon.delete("bootstrap").await), Some(401));
    assert_eq!(
        refused_with(fdb_operator.delete("bootstrap").await),
        Some(403)
    );
    assert!(fdb_node.get("bootstrap").await.expect("read").is_some());
    let (s, j) = iam.bootstrap(&who.node, "mallory", &hash).await;
    assert_eq!(s, 409, "{j}");

    phase("a forged signing key in iam/keys/: the write is refused, its tokens are worthless");
    let forger = TokenSigner::generate();
    let record = KeyRecord {
        kid: forger.kid().to_string(),
        alg: "EdDSA".into(),
        public_key: encode_public_key(&forger.verifying_key()),
        created_at: now_unix(),
    };
    let key = format!("keys/{}", forger.kid());
    let value = serde_json::to_string(&record).expect("json");
    assert_eq!(refused_with(fdb_anon.put(&key, &value).await), Some(401));
    assert_eq!(
        refused_with(fdb_operator.put(&key, &value).await),
        Some(403)
    );
    assert_eq!(fdb_node.get(&key).await.expect("read"), None);
    let (forged, _) = forger.issue("admin", now_unix(), 600).expect("forge");
    let (s, j) = iam.get(&who.anon, "/v1/auth/whoami", Some(&forged)).await;
    assert_eq!(s, 401, "{j}");
    assert!(
        error_of(&j).contains("no IAM instance has published"),
        "{j}"
    );
    let (s, j) = iam.get(&who.operator, "/v1/users", Some(&forged)).await;
    assert_eq!(s, 401, "{j}");

    phase("IAM's own key is in iam/keys/, written with its node certificate");
    let keys = fdb_node.list("keys/").await.expect("list keys");
    assert_eq!(keys.items.len(), 1, "{keys:?}");

    phase("login and whoami are open over TLS; administration needs a certificate too");
    let admin = iam.login("admin", PW).await;
    let (s, j) = iam.get(&who.anon, "/v1/auth/whoami", Some(&admin)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["subject"], "admin");
    let (s, j) = iam.get(&who.anon, "/v1/users", Some(&admin)).await;
    assert_eq!(s, 401, "{j}");
    let (s, j) = iam.get(&who.operator, "/v1/users", Some(&admin)).await;
    assert_eq!(s, 200, "{j}");
    let (s, j) = iam.get(&who.node, "/v1/roles", Some(&admin)).await;
    assert_eq!(s, 200, "{j}");

    phase("node tokens: a node certificate only; any IAM verifies them");
    let (s, _) = iam
        .call(&who.anon, "POST", "/v1/auth/node-token", None, None)
        .await;
    assert_eq!(s, 401);
    let (s, _) = iam
        .call(&who.operator, "POST", "/v1/auth/node-token", None, None)
        .await;
    assert_eq!(s, 403);
    let (s, j) = iam
        .call(&who.node, "POST", "/v1/auth/node-token", None, None)
        .await;
    assert_eq!(s, 200, "{j}");
    let node_token = j["token"].as_str().expect("token").to_string();
    let other = Iam::start("iam-b", &[&flare], &chainfire.url, dir.path());
    for i in [&iam, &other] {
        let (s, j) = i.get(&who.anon, "/v1/auth/whoami", Some(&node_token)).await;
        assert_eq!(s, 200, "{j}");
        assert_eq!(j["subject"], "node:node09");
        assert_eq!(j["roles"], json!(["node"]));
    }
}

/// `true` when `who`'s request to `iam` cannot even open a connection (refused handshake).
async fn handshake_refused(iam: &Iam, who: &reqwest::Client) -> bool {
    iam.try_call(who, "GET", "/health", None, None)
        .await
        .is_err()
}

/// What a revoked certificate meets: a 403 on its old connection, a refused handshake on a new
/// one, and a 401 for the node token it was given.
async fn refused_everywhere(
    iam: &Iam,
    old: &reqwest::Client,
    fresh: &reqwest::Client,
    token: &str,
) -> bool {
    let on_old = iam
        .try_call(old, "POST", "/v1/auth/node-token", None, None)
        .await
        .map(|(s, _)| s);
    let anon = common::https_anonymous();
    let token_status = iam
        .try_call(&anon, "GET", "/v1/auth/whoami", Some(token), None)
        .await
        .map(|(s, _): (u16, Value)| s);
    matches!(on_old, Ok(403) | Err(_))
        && handshake_refused(iam, fresh).await
        && matches!(token_status, Ok(401))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_certificate_is_refused_within_10_s() {
    let Some((cf_bin, fdb_bin, dir)) = setup("a_revoked_node_certificate_is_refused_within_10_s")
    else {
        return;
    };
    let who = Callers::new(dir.path());

    phase("start Chainfire, FlareDB and IAM; the node gets a token on a kept-alive connection");
    let mut chainfire = StoreNode::single(cf_bin).await;
    let flare = StoreNode::single(fdb_bin).await;
    let iam = Iam::start("iam-a", &[&flare], &chainfire.url, dir.path());
    let (s, j) = iam
        .call(&who.node, "POST", "/v1/auth/node-token", None, None)
        .await;
    assert_eq!(s, 200, "{j}");
    let token = j["token"].as_str().expect("token").to_string();
    let (s, j) = iam.get(&who.anon, "/v1/auth/whoami", Some(&token)).await;
    assert_eq!(s, 200, "{j}");
    let (control_cert, _) =
        common::node_cert("node08", std::net::Ipv4Addr::new(127, 0, 0, 8), dir.path());
    let control = https_as(&control_cert);

    phase("revoke node09's certificate in Chainfire pki/revoked/ (as pxe-server pki revoke does)");
    let serial = who.node_cert.identity().serial.clone();
    let record = json!({
        "serial": serial,
        "identity": who.node_cert.identity().identity.to_string(),
        "revoked_at": now_unix(),
        "reason": "test",
    });
    let revoker = store_client(
        std::slice::from_ref(&chainfire.url),
        Some(&who.operator_cert),
    );
    let revoked_at = Instant::now();
    revoker
        .put(&format!("pki/revoked/{serial}"), &record.to_string())
        .await
        .expect("write pki/revoked/<serial>");

    phase("refused within 10 s: old connection, new handshake, and its node token");
    let fresh = || https_as(&who.node_cert);
    plasmacloud_testkit::wait_until_async(
        "the revoked certificate refused",
        Duration::from_secs(10),
        || {
            let (iam, old, fresh, token) = (&iam, &who.node, fresh(), token.clone());
            async move {
                refused_everywhere(iam, old, &fresh, &token)
                    .await
                    .then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- iam log ---\n{}", iam.proc.output()));
    let took = revoked_at.elapsed();
    eprintln!("revocation took effect after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    phase("other certificates are unaffected");
    let (s, j) = iam
        .call(&control, "POST", "/v1/auth/node-token", None, None)
        .await;
    assert_eq!(s, 200, "{j}");
    let (s, _) = iam.get(&who.operator, "/health", None).await;
    assert_eq!(s, 200);

    phase("Chainfire away: the last list stays in force");
    chainfire.proc.kill();
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(6) {
        assert!(
            refused_everywhere(&iam, &who.node, &fresh(), &token).await,
            "the revoked certificate was accepted again {:?} after Chainfire went away\n--- iam log ---\n{}",
            hold.elapsed(),
            iam.proc.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (s, j) = iam
        .call(&control, "POST", "/v1/auth/node-token", None, None)
        .await;
    assert_eq!(s, 200, "{j}");
}
