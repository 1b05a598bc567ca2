//! iam-server against a real FlareDB, both started as processes.
//!
//! Each test reads as phases, logged with `phase:`. FlareDB's binary comes from the workspace
//! build (`workspace_binary` rules, `PLASMACLOUD_BIN_DIR` first); when it has not been built the
//! tests skip by hand and fail under `CI=true` — unless `services/flaredb` is not a workspace
//! member at all (nothing could build it), where they skip and say so.

use plasmacloud_store_client::{Member, StoreClient};
use plasmacloud_testkit::{free_port, in_ci, loopback_ip, wait_until_async, Process};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PW: &str = "correct horse battery";
const START: Duration = Duration::from_secs(60);

fn phase(name: &str) {
    eprintln!("phase: {name}");
}

/// `flaredb-server` as `workspace_binary` finds it, or `None` (skip) when run by hand without it.
fn flaredb_binary(test: &str) -> Option<PathBuf> {
    let name = "flaredb-server";
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("PLASMACLOUD_BIN_DIR") {
        candidates.push(PathBuf::from(dir).join(name));
    }
    if let Some(profile) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
    {
        candidates.push(profile.join(name));
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Some(found.clone());
    }
    // While FlareDB is not (yet) a member of the workspace, nothing can build it: skip even in
    // CI. Once it is a member, CI builds it and a missing binary is a failure.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let is_member = std::fs::read_to_string(&root)
        .map(|t| t.contains("\"services/flaredb\""))
        .unwrap_or(false);
    if !is_member {
        eprintln!("SKIP {test}: services/flaredb is not a workspace member yet");
        return None;
    }
    assert!(
        !in_ci(),
        "{test}: {name} was not built (looked at {candidates:?}); build the workspace (`cargo build --release --workspace`)"
    );
    eprintln!("SKIP {test}: {name} not built; set PLASMACLOUD_BIN_DIR or build the workspace");
    None
}

/// The FlareDB binary and a scratch directory for `test`, or `None` when the test skips.
fn setup(test: &str) -> Option<(PathBuf, tempfile::TempDir)> {
    let bin = flaredb_binary(test)?;
    Some((bin, tempfile::tempdir().expect("tempdir")))
}

/// A single-node FlareDB and two IAM instances on it, `iam-a` and `iam-b`.
async fn flare_and_two_iams(bin: PathBuf, dir: &Path) -> (Flare, Iam, Iam) {
    let flare = Flare::start(bin).await;
    let a = Iam::start("iam-a", &flare, dir);
    let b = Iam::start("iam-b", &flare, dir);
    (flare, a, b)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// Waits until `GET {base}/health` answers 200.
async fn wait_health_200(what: &str, base: &str) -> Result<(), String> {
    let client = http();
    let health = format!("{base}/health");
    wait_until_async(what, START, || {
        let (client, health) = (client.clone(), health.clone());
        async move { (client.get(&health).send().await.ok()?.status() == 200).then_some(()) }
    })
    .await
    .map_err(|e| e.to_string())
}

/// A single-node FlareDB cluster.
struct Flare {
    proc: Process,
    bin: PathBuf,
    args: Vec<String>,
    dir: tempfile::TempDir,
    url: String,
    member: Member,
}

impl Flare {
    /// Starts node `id` and waits for its `listening` line (no cluster yet).
    fn spawn(bin: PathBuf, id: u64) -> Flare {
        let dir = tempfile::tempdir().expect("tempdir");
        let ip = loopback_ip();
        let api = format!("{ip}:{}", free_port(ip));
        let raft = format!("{ip}:{}", free_port(ip));
        let args: Vec<String> = [
            "--id",
            &id.to_string(),
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--api-addr",
            &api,
            "--raft-addr",
            &raft,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = Process::start("flaredb", &bin, &args, &dir.path().join("flaredb.log"))
            .expect("start flaredb-server");
        tokio::task::block_in_place(|| proc.wait_for_output("listening", START))
            .unwrap_or_else(|e| panic!("{e}"));
        Flare {
            proc,
            bin,
            args,
            dir,
            url: format!("http://{api}"),
            member: Member {
                id,
                raft_addr: raft,
                api_addr: api,
            },
        }
    }

    /// A single-node cluster.
    async fn start(bin: PathBuf) -> Flare {
        let flare = Flare::spawn(bin, 1);
        flare
            .client()
            .init(std::slice::from_ref(&flare.member))
            .await
            .unwrap_or_else(|e| panic!("init: {e}\n--- flaredb log ---\n{}", flare.proc.output()));
        flare.wait_healthy().await;
        flare
    }

    fn client(&self) -> StoreClient {
        StoreClient::builder([self.url.clone()])
            .timeout(Duration::from_secs(20))
            .membership_timeout(START)
            .build()
            .expect("store client")
    }

    async fn wait_healthy(&self) {
        wait_health_200("FlareDB /health 200", &self.url)
            .await
            .unwrap_or_else(|e| panic!("{e}\n--- flaredb log ---\n{}", self.proc.output()));
    }

    /// Starts the same node again on its data (same id, same addresses).
    async fn restart(&mut self) {
        let log = self.dir.path().join("flaredb-2.log");
        self.proc = Process::start("flaredb", &self.bin, &self.args, &log).expect("restart");
        self.wait_healthy().await;
    }
}

/// One iam-server process and its address.
struct Iam {
    proc: Process,
    url: String,
}

impl Iam {
    fn start(name: &str, flare: &Flare, dir: &Path) -> Iam {
        let ip = loopback_ip();
        let mut proc = Process::start(
            name,
            Path::new(env!("CARGO_BIN_EXE_iam-server")),
            [
                "--listen-addr",
                &format!("{ip}:0"),
                "--flaredb",
                &flare.url,
                "--signing-key",
                &dir.join(format!("{name}.pem")).display().to_string(),
                "--token-ttl",
                "10m",
            ],
            &dir.join(format!("{name}.log")),
        )
        .expect("start iam-server");
        tokio::task::block_in_place(|| proc.wait_for_output("listening on", START))
            .unwrap_or_else(|e| panic!("{e}"));
        let out = proc.output();
        let addr = out
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address after 'listening on' in:\n{out}"))
            .to_string();
        Iam {
            proc,
            url: format!("http://{addr}"),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = http();
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = client.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}\n--- iam log ---\n{}", self.proc.output()));
        let status = resp.status().as_u16();
        let value = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, value)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("GET", path, token, None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call("POST", path, token, Some(body)).await
    }

    /// `POST /v1/bootstrap` with these credentials.
    async fn bootstrap(&self, user: &str, pw: &str) -> (u16, Value) {
        self.post("/v1/bootstrap", None, credentials(user, pw))
            .await
    }

    /// `POST /v1/auth/login`, whatever it answers.
    async fn try_login(&self, user: &str, pw: &str) -> (u16, Value) {
        self.post("/v1/auth/login", None, credentials(user, pw))
            .await
    }

    /// Logs in (must succeed) and returns the token.
    async fn login(&self, user: &str, pw: &str) -> String {
        let (s, j) = self.try_login(user, pw).await;
        assert_eq!(s, 200, "login {user}: {j}");
        j["token"].as_str().expect("token").to_string()
    }
}

fn credentials(user: &str, pw: &str) -> Value {
    json!({"username": user, "password": pw})
}

/// The `error` message of an error response ("" when there is none).
fn error_of(j: &Value) -> &str {
    j["error"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_once_and_concurrently_from_two_instances() {
    let Some((bin, dir)) = setup("bootstrap_once_and_concurrently_from_two_instances") else {
        return;
    };

    phase("start FlareDB and two IAM instances");
    let (_flare, a, b) = flare_and_two_iams(bin, dir.path()).await;
    for iam in [&a, &b] {
        let (s, j) = iam.get("/health", None).await;
        assert_eq!(s, 200, "{j}");
        assert_eq!(j["status"], "healthy");
        assert_eq!(j["database"], "connected");
        assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    }

    phase("bad bootstrap input writes nothing");
    let (s, j) = a
        .post(
            "/v1/bootstrap",
            None,
            json!({"username": "root", "password": PW, "extra": 1}),
        )
        .await;
    assert_eq!(s, 400, "{j}");
    assert!(error_of(&j).contains("unknown field"), "{j}");
    let (s, j) = a.bootstrap("root", "weak").await;
    assert_eq!(s, 400, "{j}");

    phase("concurrent bootstrap with different credentials: exactly one wins");
    let (ra, rb) = tokio::join!(a.bootstrap("alice", PW), b.bootstrap("bob", PW));
    let mut statuses = [ra.0, rb.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "a: {ra:?} b: {rb:?}");
    let winner = if ra.0 == 200 { "alice" } else { "bob" };
    let loser = if winner == "alice" { "bob" } else { "alice" };
    assert_eq!(if ra.0 == 200 { &ra.1 } else { &rb.1 }["created"], true);

    phase("the same credentials again succeed without change, on both instances");
    for iam in [&a, &b] {
        let (s, j) = iam.bootstrap(winner, PW).await;
        assert_eq!(s, 200, "{j}");
        assert_eq!(j["created"], false);
    }
    phase("other credentials are refused");
    let (s, j) = a.bootstrap(loser, PW).await;
    assert_eq!(s, 409, "{j}");
    let (s, j) = b.bootstrap(winner, "a different password").await;
    assert_eq!(s, 409, "{j}");

    phase("exactly one admin exists");
    let tok = a.login(winner, PW).await;
    let (s, j) = b.get("/v1/users", Some(&tok)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(
        j["users"],
        json!([{"username": winner, "roles": ["admin"], "created_at": j["users"][0]["created_at"]}])
    );
    let (s, j) = b.get("/v1/bindings", Some(&tok)).await;
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

    phase("start FlareDB and two IAM instances; bootstrap on A");
    let (_flare, a, b) = flare_and_two_iams(bin, dir.path()).await;
    let (s, j) = a.bootstrap("admin", PW).await;
    assert_eq!(s, 200, "{j}");

    phase("a token from A is verified by B (published key)");
    let admin = a.login("admin", PW).await;
    let (s, j) = b.get("/v1/auth/whoami", Some(&admin)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["subject"], "admin");
    assert_eq!(j["roles"], json!(["admin"]));

    phase("users, custom roles and bindings");
    let (s, j) = b
        .post(
            "/v1/users",
            Some(&admin),
            json!({"username": "carol", "password": "tiger lily 4821"}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    let (s, j) = b
        .post(
            "/v1/roles",
            Some(&admin),
            json!({"name": "auditor", "permissions": ["iam:users:read"]}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    let (s, j) = a
        .post(
            "/v1/bindings",
            Some(&admin),
            json!({"user": "carol", "role": "auditor"}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    let carol = b.login("carol", "tiger lily 4821").await;
    let (s, j) = a.get("/v1/users", Some(&carol)).await;
    assert_eq!(s, 200, "{j}");
    let (s, j) = a
        .post(
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
        let (s, j) = a.post("/v1/users", Some(&admin), body.clone()).await;
        assert_eq!(s, 400, "{body}: {j}");
        assert!(j["error"].is_string(), "{j}");
    }
    let (_, j) = a.get("/v1/users", Some(&admin)).await;
    assert_eq!(j["users"].as_array().map(Vec::len), Some(2), "{j}");
    for tok in ["garbage", "a.b.c"] {
        let (s, j) = a.get("/v1/auth/whoami", Some(tok)).await;
        assert_eq!(s, 401, "{j}");
    }

    phase("revoke on B ends the session on A too");
    let (s, j) = b.call("POST", "/v1/auth/revoke", Some(&carol), None).await;
    assert_eq!(s, 200, "{j}");
    for iam in [&a, &b] {
        let (s, j) = iam.get("/v1/auth/whoami", Some(&carol)).await;
        assert_eq!(s, 401, "{j}");
        assert!(error_of(&j).contains("revoked"), "{j}");
    }
    let (s, _) = a.get("/v1/auth/whoami", Some(&admin)).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaredb_killed_mid_session() {
    let Some((bin, dir)) = setup("flaredb_killed_mid_session") else {
        return;
    };

    phase("start FlareDB and IAM; bootstrap; log in twice, verify one token");
    let mut flare = Flare::start(bin).await;
    let iam = Iam::start("iam", &flare, dir.path());
    let (s, j) = iam.bootstrap("admin", PW).await;
    assert_eq!(s, 200, "{j}");
    let seen = iam.login("admin", PW).await;
    let unseen = iam.login("admin", PW).await;
    let (s, j) = iam.get("/v1/auth/whoami", Some(&seen)).await;
    assert_eq!(s, 200, "{j}");

    phase("kill FlareDB");
    flare.proc.kill();

    phase("health says disconnected");
    let (s, j) = iam.get("/health", None).await;
    assert_eq!(s, 503, "{j}");
    assert_eq!(j["database"], "disconnected");
    assert_eq!(j["status"], "unhealthy");

    phase("the verified token still works from the cache");
    let (s, j) = iam.get("/v1/auth/whoami", Some(&seen)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["roles"], json!(["admin"]));

    phase("new logins and never-seen tokens get a clear 503");
    let (s, j) = iam.try_login("admin", PW).await;
    assert_eq!(s, 503, "{j}");
    assert!(error_of(&j).contains("unreachable"), "{j}");
    let (s, j) = iam.get("/v1/auth/whoami", Some(&unseen)).await;
    assert_eq!(s, 503, "{j}");

    phase("restart FlareDB on its data: IAM reconnects");
    flare.restart().await;
    wait_health_200("IAM /health 200 after FlareDB restart", &iam.url)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- iam log ---\n{}", iam.proc.output()));
    let fresh = iam.login("admin", PW).await;
    let (s, j) = iam.get("/v1/auth/whoami", Some(&fresh)).await;
    assert_eq!(s, 200, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_iam_per_node_of_a_three_node_flaredb() {
    let Some((bin, dir)) = setup("one_iam_per_node_of_a_three_node_flaredb") else {
        return;
    };

    phase("form a three-node FlareDB cluster");
    let nodes: Vec<Flare> = (1..=3).map(|id| Flare::spawn(bin.clone(), id)).collect();
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
        .map(|(i, n)| Iam::start(&format!("iam-{}", i + 1), n, dir.path()))
        .collect();

    phase("all three bootstrap at once with the same credentials: all succeed, one creates");
    let (r1, r2, r3) = tokio::join!(
        iams[0].bootstrap("admin", PW),
        iams[1].bootstrap("admin", PW),
        iams[2].bootstrap("admin", PW),
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
    let (s, j) = iams[0].get("/v1/auth/whoami", Some(&tok)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["roles"], json!(["admin"]));
    let (s, j) = iams[1].get("/v1/users", Some(&tok)).await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["users"].as_array().map(Vec::len), Some(1), "{j}");
}
