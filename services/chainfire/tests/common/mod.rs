//! Shared helpers of Chainfire's and FlareDB's integration tests (FlareDB includes this file by
//! path): nodes as real processes on 127.0.0.x.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plasmacloud_store_client::{Health, Member, StoreClient};
use plasmacloud_testkit::{free_port, loopback_ip, workspace_binary, Process};

/// Prints a named test phase.
pub fn phase(name: &str) {
    eprintln!("=== phase: {name}");
}

/// One node: its addresses, data directory and (while running) process.
pub struct Node {
    pub bin: &'static str,
    pub id: u64,
    pub api: SocketAddr,
    pub raft: SocketAddr,
    pub dir: PathBuf,
    pub logs: PathBuf,
    pub extra: Vec<String>,
    pub proc: Option<Process>,
    starts: u32,
}

impl Node {
    /// A node description with fresh addresses; nothing runs yet.
    pub fn new(bin: &'static str, id: u64, root: &Path) -> Self {
        let ip = loopback_ip();
        let api = SocketAddr::from((ip, free_port(ip)));
        let mut raft = SocketAddr::from((ip, free_port(ip)));
        while raft == api {
            raft = SocketAddr::from((ip, free_port(ip)));
        }
        Node {
            bin,
            id,
            api,
            raft,
            dir: root.join(format!("node{id}")),
            logs: root.to_path_buf(),
            extra: Vec::new(),
            proc: None,
            starts: 0,
        }
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
        if with_id {
            a.push("--id".into());
            a.push(self.id.to_string());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts the process and waits for its `listening` line.
    pub fn start(&mut self, with_id: bool) {
        self.starts += 1;
        let log = self
            .logs
            .join(format!("node{}-{}.log", self.id, self.starts));
        let mut p = Process::start(
            &format!("{}-{}", self.bin, self.id),
            &workspace_binary(self.bin),
            self.args(with_id),
            &log,
        )
        .expect("spawn server");
        p.wait_for_output("listening", Duration::from_secs(30))
            .expect("server listening");
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

    /// A client talking to this node only.
    pub fn client(&self) -> StoreClient {
        StoreClient::builder([self.api.to_string()])
            .timeout(Duration::from_secs(10))
            .membership_timeout(Duration::from_secs(60))
            .build()
            .expect("client")
    }

    /// The log of the current (or last) process.
    pub fn output(&self) -> String {
        self.proc.as_ref().map(|p| p.output()).unwrap_or_default()
    }
}

/// A client over all `nodes`.
pub fn client_all(nodes: &[&Node], timeout: Duration) -> StoreClient {
    StoreClient::builder(nodes.iter().map(|n| n.api.to_string()))
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
        seed.promote_voters(&ids).await.expect("promote");
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
