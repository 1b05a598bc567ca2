//! A rack of processes: the fast development loop, and a CI test, for the first-boot chain.
//!
//! [`Rack`] writes a contract for N nodes on `127.0.X.(10+i)` (1 voter below 3 nodes, 3 below
//! 5, else 5 — the contract crate's rule), then runs, for every node at once, exactly what
//! systemd runs on a real node and in the same order: `firstboot disk`, `enroll`, `configure`,
//! `chainfire-server`, `chainfire-join`, `flaredb-server`, `flaredb-join`, `iam-server`,
//! `iam-setup`, `health-check`. A step that exits 75 (retry later) is run again, as
//! `Restart=on-failure` would; exit 2 (configuration wrong) ends that node. Servers are real
//! processes with real RocksDB directories under the rack's work directory; every process is
//! killed when the rack is dropped.
//!
//! For day-2 operations ([`day2`]) a rack also serves a bundle the way pxe-server would (a
//! symlink `work/bundle`, swapped by `rackctl`), runs each node's reboot agent after its
//! chain, and reboots a node when its agent asks: every process of the node stopped, its
//! `/run` emptied, a new boot id, the served bundle recorded as the one it booted, and the
//! chain run again.

pub mod day2;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plasmacloud_contract::voter_count_for_rack;
use tokio::process::{Child, Command};

/// The steps and services of a node, in unit order.
pub const CHAIN: &[Link] = &[
    Link::Step("disk"),
    Link::Step("enroll"),
    Link::Step("configure"),
    Link::Service("chainfire", "chainfire-server"),
    Link::Step("chainfire-join"),
    Link::Service("flaredb", "flaredb-server"),
    Link::Step("flaredb-join"),
    Link::Service("iam", "iam-server"),
    Link::Step("iam-setup"),
    Link::Step("health-check"),
];

/// One link of the chain.
#[derive(Debug, Clone, Copy)]
pub enum Link {
    /// A `firstboot` subcommand (a oneshot unit).
    Step(&'static str),
    /// A long-running server: (service name, binary).
    Service(&'static str, &'static str),
}

/// How to build a rack.
#[derive(Debug, Clone)]
pub struct RackSpec {
    /// Number of nodes.
    pub nodes: usize,
    /// The third octet of the nodes' loopback addresses (`127.0.<subnet>.<10+i>`).
    pub subnet: u8,
    /// Working directory (contract, per-node state, logs).
    pub work: PathBuf,
    /// Where `firstboot`, `chainfire-server`, `flaredb-server`, `iam-server` are.
    pub bin_dir: PathBuf,
    /// Per-node start delay (missing entries: none). Lets tests start nodes late or shuffled.
    pub delays: Vec<Duration>,
    /// Overall deadline.
    pub timeout: Duration,
    /// Print progress lines to stderr.
    pub verbose: bool,
    /// Run each node's reboot agent after its chain (and reboot nodes when it asks).
    pub agents: bool,
    /// How many of the nodes are voters (the first ones) [default: as the contract advises
    /// for a rack of this size: 1 below 3 nodes, 3 below 5, then 5].
    pub voters: Option<usize>,
}

/// What happened on a node, with times since the rack started.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// (link name, seconds since rack start when it finished).
    pub phases: Vec<(String, f64)>,
    /// Ready?
    pub ready: bool,
    /// Why not, when not.
    pub error: Option<String>,
}

/// A running rack.
#[derive(Debug)]
pub struct Rack {
    /// The spec it was built from.
    pub spec: RackSpec,
    /// The contract file.
    pub contract: PathBuf,
    /// Node names.
    pub names: Vec<String>,
    started: Instant,
    children: Arc<Mutex<BTreeMap<(String, String), Child>>>,
    /// Timelines by node.
    pub timelines: Arc<Mutex<BTreeMap<String, Timeline>>>,
    /// Each booted node's reboot watcher.
    watchers: Arc<Mutex<BTreeMap<String, tokio::task::JoinHandle<()>>>>,
    /// Nodes that do not come back when they reboot into this bundle version.
    broken: Arc<Mutex<BTreeMap<String, String>>>,
}

/// The node name of index `i` (0-based).
pub fn node_name(i: usize) -> String {
    format!("node{:02}", i + 1)
}

/// Loopback address of node `i` in `subnet`.
pub fn node_ip(subnet: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, subnet, 10 + i as u8)
}

/// The rack's IAM administrator and the password the harness logs in with (only its
/// argon2id hash, made with `iam-server hash-password`, goes into the contract).
pub const ADMIN: (&str, &str) = ("admin", "Rack-Seed-Passphrase-7");

/// Runs one of the workspace's binaries to completion; fails with its output.
fn run_tool(
    bin_dir: &Path,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> std::io::Result<String> {
    use std::io::Write;
    let mut child = std::process::Command::new(bin_dir.join(program))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes the rack's contract (v2: the admin as a hash, no secret anywhere) and returns its
/// path.
pub fn write_contract(spec: &RackSpec) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(&spec.work)?;
    let hash = run_tool(
        &spec.bin_dir,
        "iam-server",
        &["hash-password"],
        Some(ADMIN.1),
    )?;
    let voters = spec
        .voters
        .unwrap_or_else(|| voter_count_for_rack(spec.nodes))
        .min(spec.nodes);
    let nodes: Vec<serde_json::Value> = (0..spec.nodes)
        .map(|i| {
            serde_json::json!({
                "name": node_name(i),
                "mac": format!("52:54:00:{:02x}:{:02x}:{:02x}", spec.subnet, i / 256, i % 256),
                "ipv4": node_ip(spec.subnet, i).to_string(),
                "roles": [if i < voters { "control-plane" } else { "worker" }],
            })
        })
        .collect();
    let contract = serde_json::json!({
        "version": plasmacloud_contract::CONTRACT_VERSION,
        "cluster": {"name": format!("local-rack-{}", spec.nodes), "id": format!("local-rack-{}-{}", spec.subnet, spec.nodes)},
        "boot_server": {"address": format!("127.0.{}.1", spec.subnet), "http_port": 8081, "management_port": 8082, "enrollment_port": 8443},
        "initial_voters": (0..voters).map(node_name).collect::<Vec<_>>(),
        "iam": {"admin": {"username": ADMIN.0, "password_hash": hash.trim()}},
        "nodes": nodes,
    });
    let path = spec.work.join("cluster-config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&contract)? + "\n")?;
    Ok(path)
}

/// Issues `name` a key and certificate offline (`pxe-server pki issue --node`) into its
/// `state/pki`, as for a machine that does not PXE-boot.
pub fn issue_node(spec: &RackSpec, contract: &Path, name: &str) -> std::io::Result<()> {
    let state_s = spec.work.join("pxe-state").display().to_string();
    let contract_s = contract.display().to_string();
    let out = spec
        .work
        .join(name)
        .join("state")
        .join(plasmacloud_contract::NODE_PKI_DIR);
    let out_s = out.display().to_string();
    run_tool(
        &spec.bin_dir,
        "pxe-server",
        &[
            "pki",
            "issue",
            "--state-dir",
            &state_s,
            "--node",
            name,
            "--cluster",
            &contract_s,
            "--out",
            &out_s,
        ],
        None,
    )
    .map(drop)
}

/// The rack's cluster CA (in `work/pxe-state`, as pxe-server keeps it) and, issued offline,
/// every node's key and certificate (in its `state/pki`) and the harness's operator
/// certificate (`work/operator`).
pub fn issue_certificates(
    spec: &RackSpec,
    contract: &Path,
    names: &[String],
) -> std::io::Result<()> {
    let state_s = spec.work.join("pxe-state").display().to_string();
    let contract_s = contract.display().to_string();
    run_tool(
        &spec.bin_dir,
        "pxe-server",
        &[
            "pki",
            "init",
            "--state-dir",
            &state_s,
            "--cluster",
            &contract_s,
        ],
        None,
    )?;
    for name in names {
        issue_node(spec, contract, name)?;
    }
    let op = spec.work.join("operator").display().to_string();
    run_tool(
        &spec.bin_dir,
        "pxe-server",
        &[
            "pki",
            "issue",
            "--state-dir",
            &state_s,
            "--operator",
            "local-rack",
            "--out",
            &op,
        ],
        None,
    )?;
    Ok(())
}

impl Rack {
    /// Writes the contract and prepares the work directory; starts nothing.
    pub fn new(spec: RackSpec) -> std::io::Result<Self> {
        let contract = write_contract(&spec)?;
        let names: Vec<String> = (0..spec.nodes).map(node_name).collect();
        issue_certificates(&spec, &contract, &names)?;
        Ok(Self {
            names,
            spec,
            contract,
            started: Instant::now(),
            children: Arc::default(),
            timelines: Arc::default(),
            watchers: Arc::default(),
            broken: Arc::default(),
        })
    }

    /// The node's directory.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.spec.work.join(name)
    }

    /// Issues `name` a new key and certificate offline (after its disk was wiped).
    pub fn issue_node(&self, name: &str, contract: &Path) -> std::io::Result<()> {
        issue_node(&self.spec, contract, name)
    }

    /// The harness's operator certificate, key and the cluster CA (what its checks present).
    pub fn operator_files(&self) -> plasmacloud_pki::TlsFiles {
        plasmacloud_pki::TlsFiles::from(&plasmacloud_pki::Credentials::operator(
            self.spec.work.join("operator"),
        ))
    }

    /// The per-node flags every `firstboot` step takes.
    pub fn node_args(&self, name: &str, deadline: Duration) -> Vec<String> {
        let dir = self.node_dir(name);
        vec![
            "--cluster".into(),
            self.contract.display().to_string(),
            "--node".into(),
            name.into(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--ready-file".into(),
            dir.join("run/cluster-ready").display().to_string(),
            "--etc-dir".into(),
            dir.join("etc").display().to_string(),
            "--deadline".into(),
            format!("{}ms", deadline.as_millis().max(1000)),
        ]
    }

    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn note(&self, name: &str, phase: &str) {
        let t = self.elapsed();
        if let Ok(mut tl) = self.timelines.lock() {
            tl.entry(name.into())
                .or_default()
                .phases
                .push((phase.into(), t));
        }
        if self.spec.verbose {
            eprintln!("[{t:7.2}s] {name:<7} {phase}");
        }
    }

    /// Runs one `firstboot` step for `name`: exit 0 done; 75 run again (as systemd would) until
    /// the rack's deadline; anything else fails with the step's output.
    pub async fn run_step(&self, name: &str, step: &str) -> Result<(), String> {
        let log = self.node_dir(name).join("logs").join(format!("{step}.log"));
        loop {
            let remaining = self.spec.timeout.saturating_sub(self.started.elapsed());
            if remaining.is_zero() {
                return Err(format!("{name}: {step}: rack deadline passed"));
            }
            let out = Command::new(self.spec.bin_dir.join("firstboot"))
                .arg(step)
                .args(self.node_args(name, remaining))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| format!("{name}: cannot run firstboot {step}: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            let _ = append(&log, &text);
            match out.status.code() {
                Some(0) => return Ok(()),
                Some(75) => {
                    // Restart=on-failure, RestartSec=1.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                code => {
                    return Err(format!(
                        "{name}: firstboot {step} exited {code:?}: {}",
                        last_lines(&text, 6)
                    ))
                }
            }
        }
    }

    /// Starts a server for `name` from its configure-written TOML, and waits until its port
    /// accepts connections.
    pub async fn start_service(
        &self,
        name: &str,
        service: &str,
        binary: &str,
    ) -> Result<(), String> {
        let dir = self.node_dir(name);
        let log = dir.join("logs").join(format!("{service}.log"));
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(self.spec.bin_dir.join(binary))
            .arg("--config")
            .arg(dir.join("etc").join(format!("{service}.toml")))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{name}: cannot start {binary}: {e}"))?;
        let key = (name.to_string(), service.to_string());
        if let Ok(mut c) = self.children.lock() {
            c.insert(key.clone(), child);
        }
        let addr = self.service_addr(name, service)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            let exited = self
                .children
                .lock()
                .ok()
                .and_then(|mut c| c.get_mut(&key).and_then(|ch| ch.try_wait().ok().flatten()));
            if let Some(status) = exited {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "{name}: {binary} exited ({status}): {}",
                    last_lines(&text, 6)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name}: {binary} did not listen on {addr} within 60 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The API address of a service of node `name`, as the contract says now (nodes may be
    /// added to it, and replaced, while the rack runs).
    pub fn service_addr(&self, name: &str, service: &str) -> Result<SocketAddr, String> {
        let contract =
            plasmacloud_contract::Contract::load(&self.contract).map_err(|e| e.to_string())?;
        let node = contract.node(name).map_err(|e| e.to_string())?;
        let port = match service {
            "chainfire" => node.ports.chainfire_api,
            "flaredb" => node.ports.flaredb_api,
            _ => node.ports.iam_api,
        };
        Ok(SocketAddr::from((node.ipv4, port as u16)))
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to one service of a node: `STOP` freezes it, as a
    /// machine that stops answering for a while. Whether the service was running.
    pub async fn signal_service(&self, name: &str, service: &str, signal: &str) -> bool {
        let pid = self
            .children
            .lock()
            .ok()
            .and_then(|c| c.get(&(name.to_string(), service.to_string()))?.id());
        let Some(pid) = pid else {
            return false;
        };
        tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .is_ok_and(|s| s.success())
    }

    /// Kills one service of a node (SIGKILL), as a crash would.
    pub async fn kill_service(&self, name: &str, service: &str) {
        let child = self
            .children
            .lock()
            .ok()
            .and_then(|mut c| c.remove(&(name.to_string(), service.to_string())));
        if let Some(mut child) = child {
            let _ = child.kill().await;
        }
    }

    /// Runs a node's whole chain in unit order.
    pub async fn run_chain(&self, name: &str) -> Result<(), String> {
        for link in CHAIN {
            match link {
                Link::Step(step) => self.run_step(name, step).await?,
                Link::Service(service, binary) => self.start_service(name, service, binary).await?,
            }
            self.note(
                name,
                match link {
                    Link::Step(s) => s,
                    Link::Service(s, _) => s,
                },
            );
        }
        Ok(())
    }

    /// Runs every node's chain at once (each after its delay); returns how many became ready.
    pub async fn run_all(self: &Arc<Self>) -> usize {
        let mut tasks = Vec::new();
        for (i, name) in self.names.clone().into_iter().enumerate() {
            let rack = Arc::clone(self);
            let delay = self.spec.delays.get(i).copied().unwrap_or_default();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let res = rack.boot(&name).await;
                if let Ok(mut tl) = rack.timelines.lock() {
                    let t = tl.entry(name.clone()).or_default();
                    t.ready = res.is_ok();
                    t.error = res.err();
                    if let (Some(e), true) = (&t.error, rack.spec.verbose) {
                        eprintln!("[{:7.2}s] {name:<7} FAILED: {e}", rack.elapsed());
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        self.ready_count()
    }

    /// Nodes whose chain finished.
    pub fn ready_count(&self) -> usize {
        self.timelines
            .lock()
            .map(|t| t.values().filter(|t| t.ready).count())
            .unwrap_or(0)
    }

    /// Seconds from the first node's start until the last node was ready.
    pub fn seconds_to_ready(&self) -> f64 {
        self.timelines
            .lock()
            .map(|t| {
                t.values()
                    .filter_map(|t| t.phases.last().map(|p| p.1))
                    .fold(0.0, f64::max)
            })
            .unwrap_or(0.0)
            - self
                .spec
                .delays
                .iter()
                .min()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
    }

    /// The harness's last line.
    pub fn summary_line(&self) -> String {
        format!(
            "cluster-ready: {}/{} nodes in {:.1} s",
            self.ready_count(),
            self.spec.nodes,
            self.seconds_to_ready().max(0.0)
        )
    }

    /// Kills every process of the rack.
    pub async fn shutdown(&self) {
        if let Ok(mut w) = self.watchers.lock() {
            for (_, t) in std::mem::take(&mut *w) {
                t.abort();
            }
        }
        let children: Vec<Child> = self
            .children
            .lock()
            .map(|mut c| std::mem::take(&mut *c).into_values().collect())
            .unwrap_or_default();
        for mut c in children {
            let _ = c.kill().await;
        }
    }
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
