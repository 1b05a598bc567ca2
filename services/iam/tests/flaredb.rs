//! iam-server against a real FlareDB, both started as processes speaking TLS with node
//! certificates of the test CA (`common`): bootstrap races, tokens and revocation across
//! instances, FlareDB outages, one IAM per node of a three-node FlareDB.
//!
//! Each test reads as phases, logged with `phase:`. Bootstrap goes as a node (the seed's
//! certificate), administration as an operator with the admin's token, logins without a
//! certificate.

mod common;

use common::{
    binary, error_of, hash_of, no_chainfire, phase, wait_health_200, Callers, Iam, StoreNode, PW,
};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The FlareDB binary and a scratch directory for `test`, or `None` when the test skips.
fn setup(test: &str) -> Option<(PathBuf, tempfile::TempDir)> {
    let bin = binary("flaredb-server", test)?;
    Some((bin, tempfile::tempdir().expect("tempdir")))
}

/// A single-node FlareDB and two IAM instances on it, `iam-a` and `iam-b`.
async fn flare_and_two_iams(bin: PathBuf, dir: &Path) -> (StoreNode, Iam, Iam) {
    let flare = StoreNode::single(bin).await;
    let a = Iam::start("iam-a", &[&flare], &no_chainfire(), dir);
    let b = Iam::start("iam-b", &[&flare], &no_chainfire(), dir);
    (flare, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_once_and_concurrently_from_two_instances() {
    let Some((bin, dir)) = setup("bootstrap_once_and_concurrently_from_two_instances") else {
        return;
    };
    let who = Callers::new(dir.path());

    phase("start FlareDB and two IAM instances; /health over TLS without a certificate");
    let (_flare, a, b) = flare_and_two_iams(bin, dir.path()).await;
    for iam in [&a, &b] {
        let (s, j) = iam.get(&who.anon, "/health", None).await;
        assert_eq!(s, 200, "{j}");
        assert_eq!(j["status"], "healthy");
        assert_eq!(j["database"], "connected");
        assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    }

    phase("bad bootstrap input writes nothing");
    let (s, j) = a
        .post(
            &who.node,
            "/v1/bootstrap",
            None,
            json!({"username": "root", "password": PW}),
        )
        .await;
    assert_eq!(s, 400, "{j}");
    assert!(error_of(&j).contains("unknown field"), "{j}");
    let (s, j) = a.bootstrap(&who.node, "root", PW).await;
    assert_eq!(s, 400, "{j}");
    assert!(error_of(&j).contains("password_hash"), "{j}");

    phase("concurrent bootstrap with different admins: exactly one wins");
    let hash = hash_of(PW);
    let (ra, rb) = tokio::join!(
        a.bootstrap(&who.node, "alice", &hash),
        b.bootstrap(&who.node, "bob", &hash)
    );
    let mut statuses = [ra.0, rb.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "a: {ra:?} b: {rb:?}");
    let winner = if ra.0 == 200 { "alice" } else { "bob" };
    let loser = if winner == "alice" { "bob" } else { "alice" };
    assert_eq!(if ra.0 == 200 { &ra.1 } else { &rb.1 }["created"], true);

    phase("the same admin again succeeds without change, on both instances");
    for iam in [&a, &b] {
        let (s, j) = iam.bootstrap(&who.node, winner, &hash).await;
        assert_eq!(s, 200, "{j}");
        assert_eq!(j["created"], false);
    }
    phase("another admin is refused");
    let (s, j) = a.bootstrap(&who.node, loser, &hash).await;
    assert_eq!(s, 409, "{j}");
    let (s, j) = b
        .bootstrap(&who.node, winner, &hash_of("a different password"))
        .await;
    assert_eq!(s, 409, "{j}");

    phase("exactly one admin exists, and logs in with the password behind the hash");
    let tok = a.login(winner, PW).await;
    let (s, j) = b.get(&who.operator, "/v1/users", Some(&tok)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(
        j["users"],
        json!([{"username": winner, "roles": ["admin"], "created_at": j["users"][0]["created_at"]}])
    );
    let (s, j) = b.get(&who.operator, "/v1/bindings", Some(&tok)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["bindings"].as_array().map(Vec::len), Some(1), "{j}");
    let (s, _) = a.try_login(loser, PW).await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_whoami_roles_and_revoke_across_instances() {
    let Some((bin, dir)) = setup("login_whoami_roles_and_revoke_across_instances") else {
        return;
    };
    let who = Callers::new(dir.path());

    phase("start FlareDB and two IAM instances; bootstrap on A");
    let (_flare, a, b) = flare_and_two_iams(bin, dir.path()).await;
    let (s, j) = a.bootstrap(&who.node, "admin", &hash_of(PW)).await;
    assert_eq!(s, 200, "{j}");

    phase("a token from A is verified by B (published key)");
    let admin = a.login("admin", PW).await;
    let (s, j) = b.get(&who.anon, "/v1/auth/whoami", Some(&admin)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["subject"], "admin");
    assert_eq!(j["roles"], json!(["admin"]));

    phase("users, custom roles and bindings (operator certificate + admin token)");
    let op = &who.operator;
    let (s, j) = b
        .post(
            op,
            "/v1/users",
            Some(&admin),
            json!({"username": "carol", "password": "tiger lily 4821"}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    let (s, j) = b
        .post(
            op,
            "/v1/roles",
            Some(&admin),
            json!({"name": "auditor", "permissions": ["iam:users:read"]}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    let (s, j) = a
        .post(
            op,
            "/v1/bindings",
            Some(&admin),
            json!({"user": "carol", "role": "auditor"}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    let carol = b.login("carol", "tiger lily 4821").await;
    let (s, j) = a.get(op, "/v1/users", Some(&carol)).await;
    assert_eq!(s, 200, "{j}");
    let (s, j) = a
        .post(
            op,
            "/v1/users",
            Some(&carol),
            json!({"username": "dave", "password": "tiger lily 4821"}),
        )
        .await;
    assert_eq!(s, 403, "{j}");

    phase("bad input: clear 4xx, nothing written");
    let bad = [
        json!({"username": "dave", "password": "tiger lily 4821", "admin": true}),
        json!({"username": "", "password": "tiger lily 4821"}),
        json!({"username": "x".repeat(65), "password": "tiger lily 4821"}),
        json!({"username": "dave", "password": "short"}),
    ];
    for body in bad {
        let (s, j) = a.post(op, "/v1/users", Some(&admin), body.clone()).await;
        assert_eq!(s, 400, "{body}: {j}");
        assert!(j["error"].is_string(), "{j}");
    }
    let (_, j) = a.get(op, "/v1/users", Some(&admin)).await;
    assert_eq!(j["users"].as_array().map(Vec::len), Some(2), "{j}");
    for tok in ["garbage", "a.b.c"] {
        let (s, j) = a.get(&who.anon, "/v1/auth/whoami", Some(tok)).await;
        assert_eq!(s, 401, "{j}");
    }

    phase("revoke on B ends the session on A too");
    let (s, j) = b
        .call(&who.anon, "POST", "/v1/auth/revoke", Some(&carol), None)
        .await;
    assert_eq!(s, 200, "{j}");
    for iam in [&a, &b] {
        let (s, j) = iam.get(&who.anon, "/v1/auth/whoami", Some(&carol)).await;
        assert_eq!(s, 401, "{j}");
        assert!(error_of(&j).contains("revoked"), "{j}");
    }
    let (s, _) = a.get(&who.anon, "/v1/auth/whoami", Some(&admin)).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaredb_killed_mid_session() {
    let Some((bin, dir)) = setup("flaredb_killed_mid_session") else {
        return;
    };
    let who = Callers::new(dir.path());

    phase("start FlareDB and IAM; bootstrap; log in twice, verify one token");
    let mut flare = StoreNode::single(bin).await;
    let iam = Iam::start("iam", &[&flare], &no_chainfire(), dir.path());
    let (s, j) = iam.bootstrap(&who.node, "admin", &hash_of(PW)).await;
    assert_eq!(s, 200, "{j}");
    let seen = iam.login("admin", PW).await;
    let unseen = iam.login("admin", PW).await;
    let (s, j) = iam.get(&who.anon, "/v1/auth/whoami", Some(&seen)).await;
    assert_eq!(s, 200, "{j}");

    phase("kill FlareDB");
    flare.proc.kill();

    phase("health says disconnected");
    let (s, j) = iam.get(&who.anon, "/health", None).await;
    assert_eq!(s, 503, "{j}");
    assert_eq!(j["database"], "disconnected");
    assert_eq!(j["status"], "unhealthy");

    phase("the verified token still works from the cache");
    let (s, j) = iam.get(&who.anon, "/v1/auth/whoami", Some(&seen)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["roles"], json!(["admin"]));

    phase("new logins and never-seen tokens get a clear 503");
    let (s, j) = iam.try_login("admin", PW).await;
    assert_eq!(s, 503, "{j}");
    assert!(error_of(&j).contains("unreachable"), "{j}");
    let (s, j) = iam.get(&who.anon, "/v1/auth/whoami", Some(&unseen)).await;
    assert_eq!(s, 503, "{j}");

    phase("restart FlareDB on its data: IAM reconnects");
    flare.restart().await;
    wait_health_200("IAM /health 200 after FlareDB restart", &iam.url)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- iam log ---\n{}", iam.proc.output()));
    let fresh = iam.login("admin", PW).await;
    let (s, j) = iam.get(&who.anon, "/v1/auth/whoami", Some(&fresh)).await;
    assert_eq!(s, 200, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_iam_per_node_of_a_three_node_flaredb() {
    let Some((bin, dir)) = setup("one_iam_per_node_of_a_three_node_flaredb") else {
        return;
    };
    let who = Callers::new(dir.path());

    phase("form a three-node FlareDB cluster");
    let nodes: Vec<StoreNode> = (1..=3)
        .map(|id| StoreNode::spawn(bin.clone(), id))
        .collect();
    let seed = nodes[0].client();
    seed.init(std::slice::from_ref(&nodes[0].member))
        .await
        .unwrap_or_else(|e| panic!("init: {e}"));
    nodes[0].wait_healthy().await;
    for n in &nodes[1..] {
        seed.add_learner(&n.member)
            .await
            .unwrap_or_else(|e| panic!("add learner {}: {e}", n.member.id));
    }
    seed.promote_voters(&[2, 3])
        .await
        .unwrap_or_else(|e| panic!("promote: {e}"));
    for n in &nodes {
        n.wait_healthy().await;
    }

    phase("one IAM per node, each on its local FlareDB (followers forward writes)");
    let iams: Vec<Iam> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Iam::start(&format!("iam-{}", i + 1), &[n], &no_chainfire(), dir.path()))
        .collect();

    phase("all three bootstrap at once with the same admin: all succeed, one creates");
    let hash = hash_of(PW);
    let (r1, r2, r3) = tokio::join!(
        iams[0].bootstrap(&who.node, "admin", &hash),
        iams[1].bootstrap(&who.node, "admin", &hash),
        iams[2].bootstrap(&who.node, "admin", &hash),
    );
    for r in [&r1, &r2, &r3] {
        assert_eq!(r.0, 200, "{r:?}");
    }
    let created = [&r1, &r2, &r3]
        .iter()
        .filter(|r| r.1["created"] == true)
        .count();
    assert_eq!(created, 1, "{r1:?} {r2:?} {r3:?}");

    phase("a token from node 3 works on node 1; exactly one admin");
    let tok = iams[2].login("admin", PW).await;
    let (s, j) = iams[0].get(&who.anon, "/v1/auth/whoami", Some(&tok)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["roles"], json!(["admin"]));
    let (s, j) = iams[1].get(&who.operator, "/v1/users", Some(&tok)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["users"].as_array().map(Vec::len), Some(1), "{j}");
}
