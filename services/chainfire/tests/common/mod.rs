//! Shared helpers of Chainfire's and FlareDB's integration tests (FlareDB includes this file by
//! path): nodes as real processes on 127.0.0.x, every one speaking mutual TLS with a node
//! certificate of the test's cluster CA ([`ca`], one per test process, made with
//! plasmacloud-pki's `ClusterCa` as pxe-server makes the real one).
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use plasmacloud_pki::ca::{CertSpec, ClusterCa};
use plasmacloud_pki::tls::{reqwest_builder_trusting, TlsMaterial};
use plasmacloud_pki::{Credentials, Identity, TlsFiles};
use plasmacloud_store_client::{Health, Member, StoreClient};
use plasmacloud_testkit::{free_port, loopback_ip, netns, workspace_binary, Process};

/// The test process's cluster CA.
pub fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate("test").expect("test CA"))
}

/// A certificate of `ca()` for `spec`, as loaded TLS material, and its files written into
/// `dir` (key 0600) as `pxe-server pki issue` writes them.
pub fn issue(spec: &CertSpec, dir: Option<&Path>) -> (TlsMaterial, Option<TlsFiles>) {
    let (issued, key) = ca().issue_with_new_key(spec).expect("issue a certificate");
    let material = TlsMaterial::from_pem(
        &spec.identity.to_string(),
        &issued.cert_pem,
        &key,
        ca().cert_pem(),
    )
    .expect("TLS material");
    let files = dir.map(|dir| {
        let creds = match spec.identity.role {
            plasmacloud_pki::Role::Node => Credentials::node(dir),
            plasmacloud_pki::Role::Operator => Credentials::operator(dir),
        };
        creds
            .write_all(&key, &issued.cert_pem, ca().cert_pem())
            .expect("write certificate files");
        TlsFiles::from(&creds)
    });
    (material, files)
}

/// A node certificate (server and client) for `name` at `ip`.
pub fn node_cert(name: &str, ip: IpAddr) -> TlsMaterial {
    issue(
        &CertSpec::node(Identity::node(name).expect("node name"), ip),
        None,
    )
    .0
}

/// An operator certificate (client only) for `name`.
pub fn operator_cert(name: &str) -> TlsMaterial {
    issue(
        &CertSpec::operator(Identity::operator(name).expect("operator name")),
        None,
    )
    .0
}

/// A certificate of another CA entirely (trusting ours, so only the certificate is in
/// question).
pub fn stranger_client() -> reqwest::Client {
    let other = ClusterCa::generate("stranger").expect("other CA");
    let (issued, key) = other
        .issue_with_new_key(&CertSpec::node(
            Identity::node("node1").expect("name"),
            IpAddr::from([127, 0, 0, 1]),
        ))
        .expect("issue");
    let chain: Vec<_> = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .expect("key")
        .expect("a key");
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(plasmacloud_pki::tls::root_store("ca", ca().cert_pem()).expect("roots"))
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// A reqwest client presenting `m` (trusting only the test CA).
pub fn https_as(m: &TlsMaterial) -> reqwest::Client {
    m.reqwest_builder()
        .expect("builder")
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A reqwest client that trusts the test CA and presents no certificate.
pub fn https_anonymous() -> reqwest::Client {
    reqwest_builder_trusting(ca().cert_pem())
        .expect("builder")
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// `VmRSS` and `VmHWM` (peak) of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A number of `node`'s `/readyz?verbose` line (`applied`, `snapshot`, `purged` …), 0 when
/// absent.
pub async fn readyz_field(n: &Node, field: &str) -> u64 {
    let (_, text) = n.client().readyz().await.expect("readyz");
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == field)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(0)
}

/// Prints a named test phase.
pub fn phase(name: &str) {
    eprintln!("=== phase: {name}");
}

/// One node: its addresses, data directory, certificate and (while running) process.
pub struct Node {
    pub bin: &'static str,
    pub id: u64,
    pub api: SocketAddr,
    pub raft: SocketAddr,
    pub dir: PathBuf,
    pub logs: PathBuf,
    /// Its node certificate `node<id>` (server and client), as files and loaded.
    pub tls: TlsFiles,
    pub cert: TlsMaterial,
    pub extra: Vec<String>,
    /// The network namespace it runs in (`ip netns exec`); `None`: the test's own.
    pub netns: Option<String>,
    pub proc: Option<Process>,
    starts: u32,
}

impl Node {
    /// A node description with fresh addresses and a node certificate `node<id>` of [`ca`]
    /// (in `root/pki-node<id>/`, outside the data directory); nothing runs yet.
    pub fn new(bin: &'static str, id: u64, root: &Path) -> Self {
        let ip = loopback_ip();
        let api = SocketAddr::from((ip, free_port(ip)));
        let mut raft = SocketAddr::from((ip, free_port(ip)));
        while raft == api {
            raft = SocketAddr::from((ip, free_port(ip)));
        }
        Self::at(bin, id, root, api, raft)
    }

    /// A node description that will run inside network namespace `ns` (its interface has
    /// address `ip`), on the well-known ports 2379 (API) and 2380 (Raft): the namespace is its
    /// own, so nothing else uses them. Its certificate carries `ip`.
    pub fn in_netns(bin: &'static str, id: u64, root: &Path, ns: &str, ip: IpAddr) -> Self {
        let mut n = Self::at(
            bin,
            id,
            root,
            SocketAddr::new(ip, 2379),
            SocketAddr::new(ip, 2380),
        );
        n.netns = Some(ns.to_string());
        n
    }

    /// A node description at these addresses, with a node certificate `node<id>` for the API
    /// address's IP.
    fn at(bin: &'static str, id: u64, root: &Path, api: SocketAddr, raft: SocketAddr) -> Self {
        let spec = CertSpec::node(
            Identity::node(&format!("node{id}")).expect("node name"),
            api.ip(),
        );
        let (cert, tls) = issue(&spec, Some(&root.join(format!("pki-node{id}"))));
        Node {
            bin,
            id,
            api,
            raft,
            dir: root.join(format!("node{id}")),
            logs: root.to_path_buf(),
            tls: tls.expect("files"),
            cert,
            extra: Vec::new(),
            netns: None,
            proc: None,
            starts: 0,
        }
    }

    /// The TLS flags of this node's certificate.
    pub fn tls_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.tls.cert.display().to_string(),
            "--tls-key".into(),
            self.tls.key.display().to_string(),
            "--tls-ca".into(),
            self.tls.ca.display().to_string(),
        ]
    }

    /// The arguments of a start (`--id` only when `with_id`).
    pub fn args(&self, with_id: bool) -> Vec<String> {
        let mut a = vec![
            "--data-dir".into(),
            self.dir.display().to_string(),
            "--api-addr".into(),
            self.api.to_string(),
            "--raft-addr".into(),
            self.raft.to_string(),
        ];
        a.extend(self.tls_args());
        if with_id {
            a.push("--id".into());
            a.push(self.id.to_string());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// `https://<api><path>`.
    pub fn api_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.api)
    }

    /// `https://<raft><path>`.
    pub fn raft_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.raft)
    }

    /// Starts the process and waits for its `listening` line.
    pub fn start(&mut self, with_id: bool) {
        self.spawn(with_id);
        let p = self.proc.as_mut().expect("spawned");
        p.wait_for_output("listening", Duration::from_secs(30))
            .expect("server listening");
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(&mut self, with_id: bool) {
        self.starts += 1;
        let log = self
            .logs
            .join(format!("node{}-{}.log", self.id, self.starts));
        let mut cmd = match &self.netns {
            Some(ns) => netns::command_in(ns, workspace_binary(self.bin)),
            None => std::process::Command::new(workspace_binary(self.bin)),
        };
        cmd.args(self.args(with_id));
        let p =
            Process::spawn(&format!("{}-{}", self.bin, self.id), cmd, &log).expect("spawn server");
        self.proc = Some(p);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// The membership record for this node.
    pub fn member(&self) -> Member {
        Member {
            id: self.id,
            raft_addr: self.raft.to_string(),
            api_addr: self.api.to_string(),
        }
    }

    /// A client talking to this node only, with its own node certificate.
    pub fn client(&self) -> StoreClient {
        self.client_as(&self.cert)
    }

    /// A client talking to this node only, presenting `cert`.
    pub fn client_as(&self, cert: &TlsMaterial) -> StoreClient {
        StoreClient::builder([self.api.to_string()])
            .tls(cert.clone())
            .timeout(Duration::from_secs(10))
            .membership_timeout(Duration::from_secs(60))
            .build()
            .expect("client")
    }

    /// A reqwest client presenting this node's certificate.
    pub fn https(&self) -> reqwest::Client {
        https_as(&self.cert)
    }

    /// The log of the current (or last) process.
    pub fn output(&self) -> String {
        self.proc.as_ref().map(|p| p.output()).unwrap_or_default()
    }
}

/// A client over all `nodes`, with the first one's node certificate.
pub fn client_all(nodes: &[&Node], timeout: Duration) -> StoreClient {
    StoreClient::builder(nodes.iter().map(|n| n.api.to_string()))
        .tls(nodes[0].cert.clone())
        .timeout(timeout)
        .build()
        .expect("client")
}

/// Waits until `node` reports healthy.
pub async fn wait_healthy(node: &Node, deadline: Duration) {
    let c = node.client();
    let what = format!("node {} healthy", node.id);
    plasmacloud_testkit::wait_until_async(&what, deadline, || {
        let c = c.clone();
        async move { c.health().await.ok().filter(|h| h.is_healthy()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", node.output()));
}

/// Forms a cluster: init on `nodes[0]`, then each other node as learner, then promotes them.
pub async fn form_cluster(nodes: &[&Node]) {
    let seed = nodes[0].client();
    seed.init(&[nodes[0].member()]).await.expect("init");
    wait_healthy(nodes[0], Duration::from_secs(20)).await;
    for n in &nodes[1..] {
        seed.add_learner(&n.member()).await.expect("add learner");
    }
    let ids: Vec<u64> = nodes[1..].iter().map(|n| n.id).collect();
    if !ids.is_empty() {
        // A learner added a moment ago may not have caught up yet (409): that passes.
        let last = std::sync::Mutex::new(String::new());
        plasmacloud_testkit::wait_until_async(
            "the learners promoted",
            Duration::from_secs(20),
            || {
                let (seed, ids, last) = (seed.clone(), ids.clone(), &last);
                async move {
                    match seed.promote_voters(&ids).await {
                        Ok(_) => Some(()),
                        Err(e) => {
                            *last.lock().expect("lock") = e.to_string();
                            None
                        }
                    }
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", last.lock().expect("lock")));
    }
    for n in nodes {
        wait_healthy(n, Duration::from_secs(20)).await;
    }
}

/// Asserts that `h` is a pristine node's health: unhealthy because it is not initialised.
pub fn assert_not_initialised(h: &Health) {
    let reason = h.reason.as_deref().unwrap_or("");
    assert!(
        !h.is_healthy() && reason.contains("not initialised"),
        "{h:?}"
    );
}

/// What a request got: no HTTP answer at all (the TLS handshake was refused, or the
/// connection broke), or a status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    NoAnswer(String),
    Status(u16, String),
}

impl Outcome {
    /// The status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Status(s, _) => Some(*s),
            Outcome::NoAnswer(_) => None,
        }
    }
}

/// One HTTP request to a node, as an attacker or a legitimate caller would send it.
#[derive(Debug, Clone)]
pub struct Call {
    /// What it does, for messages (`"write a new key"`).
    pub what: &'static str,
    pub method: reqwest::Method,
    /// The full URL.
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Call {
    pub fn new(what: &'static str, method: reqwest::Method, url: String, body: &str) -> Self {
        Call {
            what,
            method,
            url,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    /// Sends it with `client`.
    pub async fn send(&self, client: &reqwest::Client) -> Outcome {
        let mut req = client
            .request(self.method.clone(), &self.url)
            .body(self.body.clone());
        for (k, v) in &self.headers {
            req = req.header(*k, v);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                Outcome::Status(status, r.text().await.unwrap_or_default())
            }
            Err(e) => Outcome::NoAnswer(format!("{e:?}")),
        }
    }
}

impl Call {
    /// Sends it with fresh clients from `client` (a new handshake each time) and checks that
    /// it gets no HTTP answer because the server ended the handshake with `alert`
    /// (`CertificateRevoked`, `UnknownCA`, `CertificateRequired`). With TLS 1.3 the client
    /// may see only the closed connection, not the alert (hyper: "connection was not
    /// ready"); such a try is repeated, any HTTP answer fails at once.
    pub async fn refused_with(&self, client: impl Fn() -> reqwest::Client, alert: &str) {
        let mut last = None;
        for _ in 0..10 {
            match self.send(&client()).await {
                Outcome::NoAnswer(e) if e.contains(alert) => return,
                Outcome::NoAnswer(e) => last = Some(e),
                answered => panic!(
                    "{}: the handshake should end in {alert}, got an answer: {answered:?}",
                    self.what
                ),
            }
        }
        panic!(
            "{}: no answer, but never the alert {alert}: {last:?}",
            self.what
        );
    }
}

/// What one write was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// Acknowledged: it must be there, whatever happens next.
    Acked,
    /// Certainly not applied (503 `"retryable"`, nobody reachable): it must not be there.
    NotApplied,
    /// The outcome is unknown (a timeout, a broken connection, `"outcome":"unknown"`): it may
    /// be there or not.
    Unknown,
    /// Anything else: "failed". It must not be there (a client would believe it failed).
    Failed(String),
}

/// One write of a [`Writers`] run: a unique key and value, what it was told and when.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub key: String,
    pub value: String,
    pub told: Told,
    /// When it was sent and answered (since the run began).
    pub sent: Duration,
    pub answered: Duration,
}

impl WriteRecord {
    /// Puts `key` = `value` through `c` and records what it was told, timed since `began`.
    pub async fn put(
        c: &StoreClient,
        key: String,
        value: String,
        began: std::time::Instant,
    ) -> WriteRecord {
        let sent = began.elapsed();
        let told = match c.put(&key, &value).await {
            Ok(_) => Told::Acked,
            Err(e) if e.is_retryable() => Told::NotApplied,
            Err(e) if e.is_outcome_unknown() => Told::Unknown,
            Err(e) => Told::Failed(e.to_string()),
        };
        WriteRecord {
            key,
            value,
            told,
            sent,
            answered: began.elapsed(),
        }
    }
}

/// Clients writing unique keys in a loop (`PREFIX/<writer>/<n>`), every answer recorded.
pub struct Writers {
    pub began: std::time::Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    records: std::sync::Arc<std::sync::Mutex<Vec<WriteRecord>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Starts `n` writers through `client`.
    pub fn start(client: &StoreClient, n: usize, prefix: &str) -> Writers {
        use std::sync::atomic::Ordering;
        let began = std::time::Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let records: std::sync::Arc<std::sync::Mutex<Vec<WriteRecord>>> = Default::default();
        let tasks = (0..n)
            .map(|w| {
                let (c, stop, records) = (client.clone(), stop.clone(), records.clone());
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}/{w}/{i:06}");
                        let record = WriteRecord::put(&c, key, format!("v{w}-{i}"), began).await;
                        records.lock().expect("lock").push(record);
                        i += 1;
                    }
                })
            })
            .collect();
        Writers {
            began,
            stop,
            records,
            tasks,
        }
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.records
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.told == Told::Acked)
            .count()
    }

    /// Waits until `more` writes beyond those acknowledged now are acknowledged.
    pub async fn wait_acked_more(&self, more: usize, deadline: Duration, what: &str) {
        let want = self.acked() + more;
        plasmacloud_testkit::wait_until_async(what, deadline, || async {
            (self.acked() >= want).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The first acknowledgement sent at or after `t` (since the run began): how long writes
    /// were unavailable after something happened at `t`.
    pub fn first_ack_after(&self, t: Duration) -> Option<Duration> {
        self.records
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.told == Told::Acked && r.sent >= t)
            .map(|r| r.answered)
            .min()
            .map(|a| a - t)
    }

    /// Stops every writer and returns what they were told.
    pub async fn stop(self) -> Vec<WriteRecord> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("writer");
        }
        let mut v = self.records.lock().expect("lock").clone();
        v.sort_by_key(|r| r.sent);
        v
    }
}

/// What [`check_writes`] found.
#[derive(Debug, Default)]
pub struct WriteCheck {
    pub acked: usize,
    pub not_applied: usize,
    pub unknown: usize,
    /// Unknown outcomes that turned out applied.
    pub unknown_applied: usize,
    pub failed: usize,
}

/// Reads every key under `prefix` through `client` and checks the rules of [`Told`]: every
/// acknowledged write is there with its value; nothing told "not applied" or "failed" is.
pub async fn check_writes(
    client: &StoreClient,
    prefix: &str,
    records: &[WriteRecord],
) -> WriteCheck {
    let mut have = std::collections::BTreeMap::new();
    let mut pages = client.kv().list_pages(&format!("{prefix}/"));
    while let Some(page) = pages.next().await.expect("list a page") {
        for it in page.items {
            have.insert(it.key, it.value);
        }
    }
    let mut c = WriteCheck::default();
    let mut wrong = Vec::new();
    for r in records {
        let present = have.get(&r.key) == Some(&r.value);
        match &r.told {
            Told::Acked => {
                c.acked += 1;
                if !present {
                    wrong.push(format!("acknowledged write {} is missing", r.key));
                }
            }
            Told::NotApplied => {
                c.not_applied += 1;
                if present {
                    wrong.push(format!("{} was told 'not applied' but is there", r.key));
                }
            }
            Told::Unknown => {
                c.unknown += 1;
                c.unknown_applied += usize::from(present);
            }
            Told::Failed(why) => {
                c.failed += 1;
                if present {
                    wrong.push(format!(
                        "{} was told it failed ({why}) but it was committed",
                        r.key
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers, e.g. {:?} ({c:?})",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    c
}
