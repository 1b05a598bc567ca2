//! Shared helpers of IAM's integration tests: FlareDB, Chainfire and iam-server as real
//! processes on 127.0.0.x, every one speaking TLS with a node certificate of the test
//! process's cluster CA ([`ca`], made with plasmacloud-pki's `ClusterCa` as pxe-server makes the
//! real one), and callers holding a node certificate, an operator certificate, or none.
//!
//! FlareDB's and Chainfire's binaries come from the workspace build (`PLASMACLOUD_BIN_DIR`
//! first, then next to the test executable); when they have not been built the tests skip by
//! hand and fail under `CI=true`.
#![allow(dead_code)]

use plasmacloud_pki::ca::{CertSpec, ClusterCa};
use plasmacloud_pki::tls::{reqwest_builder_trusting, TlsMaterial};
use plasmacloud_pki::{Credentials, Identity, TlsFiles};
use plasmacloud_store_client::{Member, StoreClient};
use plasmacloud_testkit::{free_port, in_ci, loopback_ip, wait_until_async, Process};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a process may take to come up.
pub const START: Duration = Duration::from_secs(60);
/// The admin password of the tests.
pub const PW: &str = "correct horse battery";

/// Prints a named test phase.
pub fn phase(name: &str) {
    eprintln!("=== phase: {name}");
}

/// The test process's cluster CA.
pub fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate("iam-test").expect("test CA"))
}

/// A certificate of [`ca`] for `spec`, loaded, and its files written into `dir` (key 0600) as
/// `pxe-server pki issue` writes them.
pub fn issue(spec: &CertSpec, dir: &Path) -> (TlsMaterial, TlsFiles) {
    let (issued, key) = ca().issue_with_new_key(spec).expect("issue a certificate");
    let creds = if spec.identity.is_node() {
        Credentials::node(dir)
    } else {
        Credentials::operator(dir)
    };
    creds
        .write_all(&key, &issued.cert_pem, ca().cert_pem())
        .expect("write certificate files");
    let material = TlsMaterial::load(&TlsFiles::from(&creds)).expect("TLS material");
    (material, TlsFiles::from(&creds))
}

/// A node certificate of [`ca`] for `name` at `ip` (files in a fresh directory under `root`).
pub fn node_cert(name: &str, ip: Ipv4Addr, root: &Path) -> (TlsMaterial, TlsFiles) {
    issue(
        &CertSpec::node(Identity::node(name).expect("node name"), IpAddr::V4(ip)),
        &root.join(format!("pki-{name}")),
    )
}

/// An operator certificate of [`ca`] for `name`.
pub fn operator_cert(name: &str, root: &Path) -> TlsMaterial {
    issue(
        &CertSpec::operator(Identity::operator(name).expect("operator name")),
        &root.join(format!("pki-operator-{name}")),
    )
    .0
}

/// A reqwest client presenting `m` (trusting only the test CA).
pub fn https_as(m: &TlsMaterial) -> reqwest::Client {
    m.reqwest_builder()
        .expect("builder")
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A reqwest client that trusts the test CA and presents no certificate.
pub fn https_anonymous() -> reqwest::Client {
    reqwest_builder_trusting(ca().cert_pem())
        .expect("builder")
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A store client over `urls` presenting `m`, or no certificate when `None`.
pub fn store_client(urls: &[String], m: Option<&TlsMaterial>) -> StoreClient {
    let b = StoreClient::builder(urls.iter().cloned())
        .timeout(Duration::from_secs(20))
        .membership_timeout(START);
    match m {
        Some(m) => b.tls(m.clone()),
        None => b.ca_pem(ca().cert_pem().as_bytes().to_vec()),
    }
    .build()
    .expect("store client")
}

/// Who calls: no certificate, a node's (`node09`, the seed that bootstraps), an operator's
/// (`alice`). One set per test: reqwest clients belong to the runtime that made them.
pub struct Callers {
    pub anon: reqwest::Client,
    pub node: reqwest::Client,
    pub node_cert: TlsMaterial,
    pub operator: reqwest::Client,
    pub operator_cert: TlsMaterial,
}

impl Callers {
    pub fn new(root: &Path) -> Self {
        let (node_cert, _) = node_cert("node09", Ipv4Addr::new(127, 0, 0, 9), root);
        let operator_cert = operator_cert("alice", root);
        Callers {
            anon: https_anonymous(),
            node: https_as(&node_cert),
            node_cert,
            operator: https_as(&operator_cert),
            operator_cert,
        }
    }
}

/// A workspace binary, or `None` (skip) when run by hand without it; a failure under CI.
pub fn binary(name: &str, test: &str) -> Option<PathBuf> {
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
    assert!(
        !in_ci(),
        "{test}: {name} was not built (looked at {candidates:?}); build the workspace (`cargo build --release --workspace`)"
    );
    eprintln!("SKIP {test}: {name} not built; set PLASMACLOUD_BIN_DIR or build the workspace");
    None
}

/// Waits until `GET {base}/health` answers 200 over TLS without a client certificate.
pub async fn wait_health_200(what: &str, base: &str) -> Result<(), String> {
    let client = https_anonymous();
    let health = format!("{base}/health");
    wait_until_async(what, START, || {
        let (client, health) = (client.clone(), health.clone());
        async move { (client.get(&health).send().await.ok()?.status() == 200).then_some(()) }
    })
    .await
    .map_err(|e| e.to_string())
}

/// One Chainfire or FlareDB node with its own node certificate `<bin-stem><id>`.
pub struct StoreNode {
    pub proc: Process,
    bin: PathBuf,
    args: Vec<String>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub member: Member,
    pub cert: TlsMaterial,
}

impl StoreNode {
    /// Starts node `id` of `bin` (`chainfire-server` or `flaredb-server`) and waits for its
    /// `listening` line (no cluster yet).
    pub fn spawn(bin: PathBuf, id: u64) -> StoreNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let ip = loopback_ip();
        let api = format!("{ip}:{}", free_port(ip));
        let mut raft = format!("{ip}:{}", free_port(ip));
        while raft == api {
            raft = format!("{ip}:{}", free_port(ip));
        }
        let stem = if bin.ends_with("chainfire-server") {
            "cf"
        } else {
            "fdb"
        };
        let (cert, files) = node_cert(&format!("{stem}{id}"), ip, dir.path());
        let args: Vec<String> = [
            "--id",
            &id.to_string(),
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--api-addr",
            &api,
            "--raft-addr",
            &raft,
            "--tls-cert",
            &files.cert.display().to_string(),
            "--tls-key",
            &files.key.display().to_string(),
            "--tls-ca",
            &files.ca.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let name = format!("{stem}{id}");
        let mut proc = Process::start(&name, &bin, &args, &dir.path().join(format!("{name}.log")))
            .expect("start server");
        tokio::task::block_in_place(|| proc.wait_for_output("listening", START))
            .unwrap_or_else(|e| panic!("{e}"));
        StoreNode {
            proc,
            bin,
            args,
            dir,
            url: format!("https://{api}"),
            member: Member {
                id,
                raft_addr: raft,
                api_addr: api,
            },
            cert,
        }
    }

    /// A single-node cluster of `bin`.
    pub async fn single(bin: PathBuf) -> StoreNode {
        let node = StoreNode::spawn(bin, 1);
        node.client()
            .init(std::slice::from_ref(&node.member))
            .await
            .unwrap_or_else(|e| panic!("init: {e}\n--- log ---\n{}", node.proc.output()));
        node.wait_healthy().await;
        node
    }

    /// A client of this node with its own node certificate.
    pub fn client(&self) -> StoreClient {
        store_client(std::slice::from_ref(&self.url), Some(&self.cert))
    }

    pub async fn wait_healthy(&self) {
        wait_health_200("/health 200", &self.url)
            .await
            .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", self.proc.output()));
    }

    /// Starts the same node again on its data (same id, same addresses).
    pub async fn restart(&mut self) {
        let log = self.dir.path().join("restart.log");
        self.proc = Process::start("restart", &self.bin, &self.args, &log).expect("restart");
        self.wait_healthy().await;
    }
}

/// An address nothing listens on, for IAM's Chainfire when a test does not need one.
pub fn no_chainfire() -> String {
    "https://127.0.0.1:1".to_string()
}

/// One iam-server process: its URL and its node certificate.
pub struct Iam {
    pub proc: Process,
    pub url: String,
    pub cert: TlsMaterial,
}

impl Iam {
    /// Starts iam-server `name` (also its node name) on `flaredb`, reading revocations from
    /// `chainfire`, with its own node certificate; waits for `listening on`.
    pub fn start(name: &str, flaredb: &[&StoreNode], chainfire: &str, dir: &Path) -> Iam {
        let ip = loopback_ip();
        let (cert, files) = node_cert(name, ip, dir);
        let flaredb: Vec<String> = flaredb.iter().map(|f| f.url.clone()).collect();
        let mut proc = Process::start(
            name,
            Path::new(env!("CARGO_BIN_EXE_iam-server")),
            [
                "--listen-addr",
                &format!("{ip}:0"),
                "--flaredb",
                &flaredb.join(","),
                "--chainfire",
                chainfire,
                "--signing-key",
                &dir.join(format!("{name}.pem")).display().to_string(),
                "--tls-cert",
                &files.cert.display().to_string(),
                "--tls-key",
                &files.key.display().to_string(),
                "--tls-ca",
                &files.ca.display().to_string(),
                "--token-ttl",
                "10m",
            ],
            &dir.join(format!("{name}.log")),
        )
        .expect("start iam-server");
        tokio::task::block_in_place(|| proc.wait_for_output("listening on", START))
            .unwrap_or_else(|e| panic!("{e}"));
        let out = proc.output();
        let addr: SocketAddr = out
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address after 'listening on' in:\n{out}"));
        Iam {
            proc,
            url: format!("https://{addr}"),
            cert,
        }
    }

    /// Any request as `who`; the status and the JSON body (`Null` when none). A failed
    /// connection (a refused handshake) is `Err`.
    pub async fn try_call(
        &self,
        who: &reqwest::Client,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = who.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json::<Value>().await.unwrap_or(Value::Null)))
    }

    /// [`Self::try_call`] that must get an answer.
    pub async fn call(
        &self,
        who: &reqwest::Client,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.try_call(who, method, path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}\n--- iam log ---\n{}", self.proc.output()))
    }

    pub async fn get(
        &self,
        who: &reqwest::Client,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        self.call(who, "GET", path, token, None).await
    }

    pub async fn post(
        &self,
        who: &reqwest::Client,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        self.call(who, "POST", path, token, Some(body)).await
    }

    /// `POST /v1/bootstrap` as `who` with this admin (a hash, as the contract carries it).
    pub async fn bootstrap(&self, who: &reqwest::Client, user: &str, hash: &str) -> (u16, Value) {
        self.post(
            who,
            "/v1/bootstrap",
            None,
            json!({"username": user, "password_hash": hash}),
        )
        .await
    }

    /// `POST /v1/auth/login` (no certificate), whatever it answers.
    pub async fn try_login(&self, user: &str, pw: &str) -> (u16, Value) {
        self.post(
            &https_anonymous(),
            "/v1/auth/login",
            None,
            json!({"username": user, "password": pw}),
        )
        .await
    }

    /// Logs in (must succeed) and returns the token.
    pub async fn login(&self, user: &str, pw: &str) -> String {
        let (s, j) = self.try_login(user, pw).await;
        assert_eq!(s, 200, "login {user}: {j}");
        j["token"].as_str().expect("token").to_string()
    }
}

/// The argon2id hash of `pw`, as `iam-server hash-password` makes it.
pub fn hash_of(pw: &str) -> String {
    iam::password::hash_blocking(pw).expect("hash")
}

/// The `error` message of an error response ("" when there is none).
pub fn error_of(j: &Value) -> &str {
    j["error"].as_str().unwrap_or_default()
}
