//! The part that runs inside the rack's namespace: the boot server (pxe-server, or dnsmasq
//! for the comparison), the VMs, the live progress view, the host-side checks, the scenario's
//! own steps, and the timeline. Every child is killed when this process ends.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use tokio::process::{Child, Command};

use crate::prepare::{self, node, voters_for, MGMT_PORT, SERVER_IP, UNKNOWN_MAC};
use crate::scenario::{Firmware, Scenario};

/// Which server boots the rack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BootServer {
    /// Our pxe-server, full DHCP mode, IPv6 RA on.
    Pxe,
    /// dnsmasq (DHCP + TFTP) with equivalent iPXE scripts; a small sink takes the phase reports.
    Dnsmasq,
}

/// Everything the inner run needs (written by the outer process as JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Label of this run (file names).
    pub label: String,
    /// Work directory.
    pub work: PathBuf,
    /// Where pxe-server is.
    pub bin_dir: PathBuf,
    /// Contract.
    pub contract: PathBuf,
    /// Bundle.
    pub bundle: PathBuf,
    /// The boot server.
    pub server: BootServer,
    /// MiB per VM.
    pub memory_mib: u32,
    /// Seconds until the rack must be ready.
    pub timeout_secs: u64,
    /// Live view on stderr.
    pub progress: bool,
}

/// The result the inner run leaves for the outer one (which prints the last line).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Nodes ready.
    pub ready: usize,
    /// Nodes expected.
    pub nodes: usize,
    /// First QEMU start to the last node ready (or to now, when not all are).
    pub secs: f64,
    /// Did the scenario pass?
    pub passed: bool,
    /// Why not.
    pub error: Option<String>,
    /// Mean share of each phase of power-on to cluster-ready: (phase, mean seconds, share).
    pub phases: Vec<(String, f64, f64)>,
}

impl Outcome {
    /// Where the outcome of run `label` is written.
    pub fn path(work: &Path, label: &str) -> PathBuf {
        work.join(format!("outcome-{label}.json"))
    }
}

/// One observed event (server boot events and node phase reports alike).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
struct Event {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    at_ms: u64,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    source: String,
    phase: String,
    status: String,
    #[serde(default)]
    detail: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Console markers: (label in the timeline, text on a serial console line once its ANSI
/// colour codes are stripped). The unit lines match because the kernel command line carries
/// `systemd.status_unit_format=name` ([`prepare::CMDLINE`]): by default systemd 252 prints
/// `Finished firstboot-disk.se… boot: prepare the Raft data disk.` (name and description
/// ellipsized to the console's width, unit name in bold), which no fixed needle matches.
/// systemd's own `systemd[1]: Finished UNIT - …` kernel-log lines (before journald takes the
/// log over) match too.
const SERIAL_MARKS: &[(&str, &str)] = &[
    ("kernel: started", "Linux version"),
    ("initramfs: /init", "Run /init"),
    ("systemd: started", "systemd 252"),
    (
        "udev: coldplug done",
        "Finished systemd-udev-trigger.service",
    ),
    ("network: online", "Reached target network-online.target"),
    ("unit: firstboot-disk", "Finished firstboot-disk.service"),
    (
        "unit: firstboot-configure",
        "Finished firstboot-configure.service",
    ),
    ("unit: chainfire", "Started chainfire.service"),
    (
        "unit: chainfire-cluster-join",
        "Finished chainfire-cluster-join.service",
    ),
    ("unit: flaredb", "Started flaredb.service"),
    (
        "unit: flaredb-cluster-join",
        "Finished flaredb-cluster-join.service",
    ),
    ("unit: iam", "Started iam.service"),
    (
        "unit: iam-initial-setup",
        "Finished iam-initial-setup.service",
    ),
    (
        "unit: cluster-health-check",
        "Finished cluster-health-check.service",
    ),
    (CONSOLE_READY, "Reached target cluster-ready.target"),
    (
        "multi-user.target",
        "plasmacloud-appliance: multi-user.target reached",
    ),
    (
        "unit: firstboot-disk FAILED",
        "Failed to start firstboot-disk.service",
    ),
];

/// A console line without its ANSI escape sequences (`ESC [ … letter`) and carriage returns.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters and intermediates, then one final byte in @..~.
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The console mark that says the node reached cluster-ready.target (a fallback for a lost
/// phase report, and the only ready signal a node without a reachable boot server gives).
const CONSOLE_READY: &str = "console: cluster-ready.target";

/// One VM.
#[derive(Debug)]
struct Vm {
    name: String,
    label: String,
    mac: String,
    tap: String,
    disk: PathBuf,
    firmware: Firmware,
    memory_mib: u32,
    work: PathBuf,
    child: Option<Child>,
    boots: u32,
    serial: PathBuf,
    /// Bytes of `serial` already scanned, and the unfinished last line.
    serial_read: u64,
    serial_tail: Vec<u8>,
    /// Rack-relative seconds of this boot's power-on.
    powered_on: f64,
    marks: BTreeMap<&'static str, f64>,
}

impl Vm {
    fn start(&mut self, t: f64) -> anyhow::Result<()> {
        self.boots += 1;
        self.serial = self.work.join(format!(
            "{}-{}.serial-boot{}.log",
            self.name, self.label, self.boots
        ));
        // A console left by an earlier run must not feed this one's marks.
        let _ = std::fs::remove_file(&self.serial);
        self.serial_read = 0;
        self.serial_tail.clear();
        self.marks.clear();
        self.powered_on = t;
        let mut c = Command::new("qemu-system-x86_64");
        // `-cpu qemu64,+rdrand`: TCG implements RDRAND and Debian's kernel trusts it
        // (RANDOM_TRUST_CPU), so the kernel's random pool is ready at boot instead of tens of
        // seconds later (util-linux's UUIDs for the data disk and others wait on it).
        // `-nodefaults`: no IDE CD-ROM, floppy or default NIC to probe at boot.
        c.args(["-accel", "tcg", "-cpu", "qemu64,+rdrand", "-nodefaults"])
            .args(["-smp", "1", "-m"])
            .arg(self.memory_mib.to_string())
            .args([
                "-display",
                "none",
                "-vga",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
                "-boot",
                "n",
            ])
            .arg("-name")
            .arg(&self.name)
            .arg("-serial")
            .arg(format!("file:{}", self.serial.display()))
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                self.tap
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={}", self.mac));
        if self.name != "stranger" {
            c.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,cache=writeback",
                self.disk.display()
            ));
        }
        match self.firmware {
            Firmware::Bios => {
                c.args(["-machine", "pc"]);
            }
            Firmware::Uefi => {
                let vars = self.work.join(format!("{}-vars.fd", self.name));
                if !vars.exists() {
                    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                        .context("while copying the OVMF vars (is ovmf installed?)")?;
                }
                c.args(["-machine", "q35", "-drive"])
                    .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", vars.display()));
            }
        }
        let log = std::fs::File::create(self.work.join(format!(
            "{}-{}.qemu-boot{}.log",
            self.name, self.label, self.boots
        )))?;
        c.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(c.spawn().context("while starting qemu-system-x86_64")?);
        Ok(())
    }

    async fn power_off(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// `Some(status)` when QEMU has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => Some(st.to_string()),
            _ => None,
        }
    }

    /// Reads what the console gained since the last scan and records the first time each
    /// marker's line shows up (at `t`, rack-relative).
    fn scan_serial(&mut self, t: f64) {
        use std::io::{Read, Seek, SeekFrom};
        if self.marks.len() == SERIAL_MARKS.len() {
            return;
        }
        let Ok(mut f) = std::fs::File::open(&self.serial) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.serial_read)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        self.serial_read += n as u64;
        self.serial_tail.extend_from_slice(&buf);
        let Some(end) = self.serial_tail.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let done: Vec<u8> = self.serial_tail.drain(..=end).collect();
        for line in String::from_utf8_lossy(&done).lines() {
            let line = strip_ansi(line);
            for (label, needle) in SERIAL_MARKS {
                if !self.marks.contains_key(label) && line.contains(needle) {
                    self.marks.insert(label, t);
                }
            }
        }
    }
}

/// Per-node progress.
#[derive(Debug, Default, Clone)]
struct NodeProgress {
    /// (seconds since rack start, what).
    timeline: Vec<(f64, String)>,
    last: String,
    ready_at: Option<f64>,
}

/// The event feed: pxe-server's management API, or our own sink (dnsmasq runs).
struct Feed {
    http: reqwest::Client,
    since: u64,
    sink: Option<Arc<Mutex<Vec<Event>>>>,
}

impl Feed {
    async fn poll(&mut self) -> Vec<Event> {
        if let Some(sink) = &self.sink {
            return sink
                .lock()
                .map(|mut v| v.drain(..).collect())
                .unwrap_or_default();
        }
        let url = format!(
            "http://{SERVER_IP}:{MGMT_PORT}/v1/events?since={}",
            self.since
        );
        let Ok(r) = self.http.get(url).send().await else {
            return Vec::new();
        };
        let Ok(v) = r.json::<serde_json::Value>().await else {
            return Vec::new();
        };
        let evs: Vec<Event> = serde_json::from_value(v["events"].clone()).unwrap_or_default();
        if let Some(n) = v["next"].as_u64() {
            self.since = self.since.max(n);
        }
        evs
    }
}

/// Starts the phase-report sink that stands in for pxe-server's management API in dnsmasq runs.
async fn start_sink() -> anyhow::Result<Arc<Mutex<Vec<Event>>>> {
    use axum::extract::{Path as AxPath, State};
    let store: Arc<Mutex<Vec<Event>>> = Arc::default();
    async fn report(
        State(s): State<Arc<Mutex<Vec<Event>>>>,
        AxPath(name): AxPath<String>,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return axum::http::StatusCode::BAD_REQUEST;
        };
        let ev = Event {
            seq: 0,
            at_ms: now_ms(),
            node: Some(name),
            mac: None,
            source: "node".into(),
            phase: v["phase"].as_str().unwrap_or("?").to_string(),
            status: v["status"].as_str().unwrap_or("?").to_string(),
            detail: v["detail"].as_str().unwrap_or("").to_string(),
        };
        if let Ok(mut g) = s.lock() {
            g.push(ev);
        }
        axum::http::StatusCode::ACCEPTED
    }
    let app = axum::Router::new()
        .route("/v1/nodes/{name}/events", axum::routing::post(report))
        .with_state(store.clone());
    let l = tokio::net::TcpListener::bind((SERVER_IP, MGMT_PORT))
        .await
        .context("while binding the phase-report sink")?;
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(store)
}

struct Rack {
    plan: Plan,
    http: reqwest::Client,
    vms: Vec<Vm>,
    nodes: BTreeMap<String, NodeProgress>,
    mac_to_node: BTreeMap<String, String>,
    start: Instant,
    start_ms: u64,
    feed: Feed,
    drawn: usize,
    tty: bool,
    last_lines: Vec<String>,
    events: Vec<Event>,
    _children: Vec<Child>,
}

impl Rack {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn rel(&self, at_ms: u64) -> f64 {
        (at_ms as f64 - self.start_ms as f64) / 1000.0
    }

    /// One tick: events, consoles, QEMU liveness, the view.
    async fn tick(&mut self) -> anyhow::Result<()> {
        let evs = self.feed.poll().await;
        for e in evs {
            let name = e
                .node
                .clone()
                .or_else(|| {
                    e.mac
                        .as_ref()
                        .and_then(|m| self.mac_to_node.get(&m.to_lowercase()).cloned())
                })
                .unwrap_or_else(|| format!("mac:{}", e.mac.clone().unwrap_or_default()));
            let t = self.rel(e.at_ms);
            let what = if e.source == "node" {
                format!("{} {}", e.phase, e.status)
            } else {
                format!("server: {}", e.phase)
            };
            let p = self.nodes.entry(name).or_default();
            p.timeline.push((t, what.clone()));
            p.last = if e.status == "failed" {
                format!("{what}: {}", e.detail.chars().take(60).collect::<String>())
            } else {
                what
            };
            if e.source == "node" && e.phase == "cluster-ready" && e.status == "ok" {
                p.ready_at = Some(t);
            }
            self.events.push(e);
        }
        let t = self.t();
        for vm in &mut self.vms {
            let before = vm.marks.len();
            vm.scan_serial(t);
            if vm.marks.len() != before {
                let p = self.nodes.entry(vm.name.clone()).or_default();
                for (label, at) in &vm.marks {
                    if !p
                        .timeline
                        .iter()
                        .any(|(x, w)| w == label && *x >= vm.powered_on)
                    {
                        p.timeline.push((*at, label.to_string()));
                        if p.ready_at.is_none() {
                            p.last = label.to_string();
                        }
                    }
                }
            }
        }
        self.draw(false);
        Ok(())
    }

    fn ready_count(&self, names: &[String]) -> usize {
        names
            .iter()
            .filter(|n| self.nodes.get(*n).is_some_and(|p| p.ready_at.is_some()))
            .count()
    }

    fn draw(&mut self, force: bool) {
        if !self.plan.progress {
            return;
        }
        let t = self.t();
        let lines: Vec<String> = self
            .vms
            .iter()
            .map(|vm| {
                let p = self.nodes.get(&vm.name).cloned().unwrap_or_default();
                let state = match (p.ready_at, vm.child.is_some()) {
                    (Some(r), _) => format!("READY at {r:.1} s"),
                    (None, false) => "powered off".into(),
                    (None, true) => p.last.clone(),
                };
                format!("  {:<8} {}  {state}", vm.name, vm.mac)
            })
            .collect();
        let status_changed = lines != self.last_lines;
        if self.tty {
            let mut err = std::io::stderr().lock();
            if self.drawn > 0 {
                let _ = write!(err, "\x1b[{}A", self.drawn);
            }
            let _ = writeln!(err, "\x1b[2K[{t:6.1} s] rack {}", self.plan.label);
            for l in &lines {
                let _ = writeln!(err, "\x1b[2K{l}");
            }
            self.drawn = lines.len() + 1;
        } else if status_changed || force {
            for (i, l) in lines.iter().enumerate() {
                if self.last_lines.get(i) != Some(l) || force {
                    eprintln!("[{t:6.1} s]{l}");
                }
            }
        }
        self.last_lines = lines;
    }

    fn say(&mut self, msg: &str) {
        self.drawn = 0;
        eprintln!("[{:6.1} s] {msg}", self.t());
    }

    /// Ticks until every VM in `names` is ready (events after `since`), a VM dies, or the
    /// deadline passes.
    async fn wait_ready(&mut self, names: &[String], deadline: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + deadline;
        loop {
            self.tick().await?;
            if self.ready_count(names) == names.len() {
                return Ok(());
            }
            for vm in &mut self.vms {
                if names.contains(&vm.name) {
                    if let Some(st) = vm.exited() {
                        bail!(
                            "{}'s QEMU exited ({st}) before cluster-ready; console: {}",
                            vm.name,
                            vm.serial.display()
                        );
                    }
                }
            }
            if Instant::now() >= until {
                let missing: Vec<String> = names
                    .iter()
                    .filter(|n| self.nodes.get(*n).is_none_or(|p| p.ready_at.is_none()))
                    .map(|n| {
                        let last = self
                            .nodes
                            .get(n)
                            .map(|p| p.last.clone())
                            .unwrap_or_default();
                        format!("{n} (last: {last})")
                    })
                    .collect();
                bail!(
                    "not cluster-ready after {} s: {}",
                    deadline.as_secs(),
                    missing.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn vm(&mut self, name: &str) -> anyhow::Result<&mut Vm> {
        self.vms
            .iter_mut()
            .find(|v| v.name == name)
            .ok_or_else(|| anyhow!("no VM {name}"))
    }

    async fn get_json(&self, url: &str) -> anyhow::Result<serde_json::Value> {
        let r = self
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let s = r.status();
        let body = r.text().await.unwrap_or_default();
        if !s.is_success() {
            bail!("GET {url}: {s}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON: {body}"))
    }

    /// Checks one store's membership from every listed node: `voters` voters, one leader that
    /// every node agrees on. Returns (leader id, sorted voter ids, leader's api address).
    async fn check_members(
        &self,
        store: &str,
        port: u16,
        ips: &[String],
        voters: usize,
    ) -> anyhow::Result<(u64, Vec<u64>, String)> {
        let mut seen: Option<(u64, Vec<u64>, String)> = None;
        for ip in ips {
            let v = self
                .get_json(&format!("http://{ip}:{port}/v1/cluster/members"))
                .await?;
            let leader = v["leader"]
                .as_u64()
                .ok_or_else(|| anyhow!("{store} on {ip}: no leader: {v}"))?;
            let members = v["members"].as_array().cloned().unwrap_or_default();
            let mut ids: Vec<u64> = members
                .iter()
                .filter(|m| m["role"] == "voter")
                .filter_map(|m| m["id"].as_u64())
                .collect();
            ids.sort_unstable();
            if ids.len() != voters {
                bail!(
                    "{store} on {ip}: {} voters, expected {voters}: {v}",
                    ids.len()
                );
            }
            let addr = members
                .iter()
                .find(|m| m["id"].as_u64() == Some(leader))
                .and_then(|m| m["api_addr"].as_str())
                .unwrap_or("")
                .to_string();
            if let Some((l, ref i, _)) = seen {
                if l != leader || *i != ids {
                    bail!("{store}: {ip} sees leader {leader} voters {ids:?}, others leader {l} voters {i:?}");
                }
            }
            seen = Some((leader, ids, addr));
        }
        seen.ok_or_else(|| anyhow!("{store}: no nodes to ask"))
    }

    /// The host-side checks through the services' APIs.
    async fn check_cluster(&mut self, names: &[String]) -> anyhow::Result<()> {
        let n = names.len();
        let ips: Vec<String> = (0..n).map(|i| node(i).2).collect();
        let voters = voters_for(self.plan.scenario.nodes());
        let (cl, cv, _) = self.check_members("chainfire", 2379, &ips, voters).await?;
        let (fl, fv, _) = self.check_members("flaredb", 2479, &ips, voters).await?;
        self.say(&format!(
            "check: chainfire voters {cv:?} leader {cl}; flaredb voters {fv:?} leader {fl} (same on all {n} nodes)"
        ));
        let seed = &ips[0];
        // IAM answers 503 while its FlareDB read times out (a loaded host); retry until a
        // deadline, fail at once on any other refusal.
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self
                .http
                .post(format!("http://{seed}:8080/v1/auth/login"))
                .json(&serde_json::json!({"username": prepare::IAM_ADMIN.0, "password": prepare::IAM_ADMIN.1}))
                .send()
                .await
                .context("IAM login on the seed")?;
            let s = r.status();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            if s.is_success() && v["token"].as_str().is_some() {
                break;
            }
            if s != reqwest::StatusCode::SERVICE_UNAVAILABLE || Instant::now() >= until {
                bail!("IAM admin login on the seed answered {s}: {v}");
            }
            self.say(&format!("check: IAM login answered {s}; retrying: {v}"));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.say("check: IAM admin logs in on the seed");
        for (name, ip) in names.iter().zip(&ips) {
            for (svc, port) in [("chainfire", 2379), ("flaredb", 2479), ("iam", 8080)] {
                let h = self
                    .get_json(&format!("http://{ip}:{port}/health"))
                    .await
                    .with_context(|| format!("{name} {svc} health"))?;
                if h["status"] != "healthy" {
                    bail!("{name} {svc} /health: {h}");
                }
            }
            // cluster-ready is reported (or reached on the console) only after the node's
            // cluster-health-check passed.
            let passed = self.nodes.get(name).is_some_and(|p| p.ready_at.is_some());
            if !passed {
                bail!("{name}: no passed health check reported");
            }
        }
        self.say("check: every node's services healthy and its health check passed");
        Ok(())
    }

    /// PUT a key through any of `ips` (following redirects to the leader) until it sticks.
    async fn put_any(
        &self,
        port: u16,
        ips: &[String],
        key: &str,
        value: &str,
        deadline: Duration,
    ) -> anyhow::Result<String> {
        let until = Instant::now() + deadline;
        let mut last = String::new();
        loop {
            for ip in ips {
                let url = kv_url(ip, port, key);
                match self.http.put(&url).body(value.to_string()).send().await {
                    Ok(r) if r.status().is_success() => return Ok(ip.clone()),
                    Ok(r) => last = format!("{url}: {}", r.status()),
                    Err(e) => last = format!("{url}: {e}"),
                }
            }
            if Instant::now() >= until {
                bail!("no write of {key} succeeded within {deadline:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn get_value(&self, ip: &str, port: u16, key: &str) -> anyhow::Result<String> {
        let url = kv_url(ip, port, key);
        let r = self.http.get(&url).send().await.context(url.clone())?;
        let s = r.status();
        let t = r.text().await.unwrap_or_default();
        if !s.is_success() {
            bail!("GET {url}: {s}: {t}");
        }
        Ok(t)
    }

    fn reset_ready(&mut self, name: &str) {
        if let Some(p) = self.nodes.get_mut(name) {
            p.ready_at = None;
            p.last = "power cycle".into();
        }
    }

    /// `reboot`: node03 power-cycles and must come back as the same member with its data.
    async fn scenario_reboot(&mut self, names: &[String]) -> anyhow::Result<()> {
        let ips: Vec<String> = (0..names.len()).map(|i| node(i).2).collect();
        let voters = voters_for(names.len());
        let (_, before_cf, _) = self.check_members("chainfire", 2379, &ips, voters).await?;
        let (_, before_fd, _) = self.check_members("flaredb", 2479, &ips, voters).await?;
        let value = format!("written-before-reboot-{}", now_ms());
        self.put_any(
            2379,
            &ips,
            "vm-rack/reboot",
            &value,
            Duration::from_secs(30),
        )
        .await?;
        self.put_any(
            2479,
            &ips,
            "vm-rack/reboot",
            &value,
            Duration::from_secs(30),
        )
        .await?;
        let victim = names[names.len() - 1].clone();
        self.say(&format!(
            "reboot: wrote vm-rack/reboot; power-cycling {victim}"
        ));
        let t = self.t();
        {
            let vm = self.vm(&victim)?;
            vm.power_off().await;
            vm.start(t)?;
        }
        self.reset_ready(&victim);
        self.wait_ready(
            std::slice::from_ref(&victim),
            Duration::from_secs(self.plan.timeout_secs),
        )
        .await?;
        let (_, after_cf, _) = self.check_members("chainfire", 2379, &ips, voters).await?;
        let (_, after_fd, _) = self.check_members("flaredb", 2479, &ips, voters).await?;
        if before_cf != after_cf || before_fd != after_fd {
            bail!("membership changed across the reboot: chainfire {before_cf:?} → {after_cf:?}, flaredb {before_fd:?} → {after_fd:?}");
        }
        let vip = &ips[ips.len() - 1];
        for port in [2379, 2479] {
            let got = self.get_value(vip, port, "vm-rack/reboot").await?;
            if got != value {
                bail!("after the reboot {vip}:{port} has vm-rack/reboot = {got:?}, expected {value:?}");
            }
        }
        self.say(&format!(
            "reboot: {victim} came back as the same member (chainfire {after_cf:?}, flaredb {after_fd:?}) with its data"
        ));
        Ok(())
    }

    /// `leader-loss`: the Chainfire leader powers off; the rest keep serving writes; it rejoins.
    async fn scenario_leader_loss(&mut self, names: &[String]) -> anyhow::Result<()> {
        let ips: Vec<String> = (0..names.len()).map(|i| node(i).2).collect();
        let voters = voters_for(names.len());
        let (leader, ids, addr) = self.check_members("chainfire", 2379, &ips, voters).await?;
        let host = addr.split(':').next().unwrap_or("").to_string();
        let idx = ips
            .iter()
            .position(|ip| *ip == host)
            .ok_or_else(|| anyhow!("chainfire leader {leader} at {addr:?} is not a rack node"))?;
        let victim = names[idx].clone();
        self.say(&format!(
            "leader-loss: powering off {victim} (chainfire leader {leader})"
        ));
        let t0 = Instant::now();
        self.vm(&victim)?.power_off().await;
        let rest: Vec<String> = ips.iter().filter(|ip| **ip != host).cloned().collect();
        let value = format!("written-without-{victim}-{}", now_ms());
        let via = self
            .put_any(
                2379,
                &rest,
                "vm-rack/leader-loss",
                &value,
                Duration::from_secs(60),
            )
            .await?;
        let cf_secs = t0.elapsed().as_secs_f64();
        self.put_any(
            2479,
            &rest,
            "vm-rack/leader-loss",
            &value,
            Duration::from_secs(60),
        )
        .await?;
        self.say(&format!(
            "leader-loss: the other {} nodes took writes (chainfire via {via} {cf_secs:.1} s after the power-off, flaredb too)",
            rest.len()
        ));
        let t = self.t();
        self.vm(&victim)?.start(t)?;
        self.reset_ready(&victim);
        self.wait_ready(
            std::slice::from_ref(&victim),
            Duration::from_secs(self.plan.timeout_secs),
        )
        .await?;
        let (l2, ids2, _) = self.check_members("chainfire", 2379, &ips, voters).await?;
        self.check_members("flaredb", 2479, &ips, voters).await?;
        if ids2 != ids {
            bail!("chainfire voters changed: {ids:?} → {ids2:?}");
        }
        for port in [2379, 2479] {
            let got = self.get_value(&host, port, "vm-rack/leader-loss").await?;
            if got != value {
                bail!("{victim} rejoined without the write made in its absence ({port}: {got:?})");
            }
        }
        self.say(&format!(
            "leader-loss: {victim} rejoined (voters {ids2:?}, leader now {l2}) and has the write"
        ));
        Ok(())
    }

    /// `unknown-mac`: the stranger boots the default entry, never an overlay.
    async fn scenario_unknown(&mut self) -> anyhow::Result<f64> {
        let until = Instant::now() + Duration::from_secs(self.plan.timeout_secs);
        loop {
            self.tick().await?;
            let vm = self.vm("stranger")?;
            if let Some(at) = vm.marks.get("multi-user.target").copied() {
                break self.check_unknown(at).await;
            }
            if let Some(st) = vm.exited() {
                bail!("the stranger's QEMU exited ({st})");
            }
            if Instant::now() >= until {
                bail!("the stranger did not reach multi-user.target");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What the stranger got, checked from the host: the server's events for its MAC (the
    /// default script, kernel and base initrd; no overlay, no node name, no phase reports), its
    /// lease (from the pool, no node), its console (appliance name, no cluster-ready, no
    /// secret), and the boot plane refusing every way to a node's overlay or script that the
    /// stranger could try.
    async fn check_unknown(&mut self, at: f64) -> anyhow::Result<f64> {
        let mine: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| e.mac.as_deref().map(str::to_lowercase).as_deref() == Some(UNKNOWN_MAC))
            .collect();
        let phases: Vec<String> = mine.iter().map(|e| e.phase.clone()).collect();
        if mine
            .iter()
            .any(|e| e.phase == "overlay" || e.node.is_some())
        {
            bail!("the stranger was served as a contract node: {phases:?}");
        }
        if !phases.iter().any(|p| p == "kernel") || !phases.iter().any(|p| p == "initrd") {
            bail!("the stranger did not fetch the default kernel and initrd: {phases:?}");
        }
        if self.events.iter().any(|e| e.source == "node") {
            bail!("a phase report reached the server, but no contract node is powered on");
        }
        // Its lease: from the pool, no contract node's address or name.
        let status = self
            .get_json(&format!("http://{SERVER_IP}:{MGMT_PORT}/v1/status"))
            .await?;
        let lease = status["leases"]
            .as_array()
            .and_then(|a| a.iter().find(|l| l["mac"].as_str() == Some(UNKNOWN_MAC)))
            .cloned()
            .ok_or_else(|| anyhow!("no lease for the stranger: {status}"))?;
        let ip = lease["ip"].as_str().unwrap_or("").to_string();
        let contract_ips: Vec<String> =
            (0..self.plan.scenario.nodes()).map(|i| node(i).2).collect();
        if !lease["node"].is_null() || contract_ips.contains(&ip) || !ip.starts_with("10.99.0.1") {
            bail!("the stranger's lease is not a pool address without a node: {lease}");
        }
        // Its console.
        let raw = std::fs::read_to_string(&self.vm("stranger")?.serial).unwrap_or_default();
        let console: String = raw.lines().map(|l| strip_ansi(l) + "\n").collect();
        if !console.contains(&format!(
            "{} hostname=plasmacloud-appliance ipv4: ens2={ip}/",
            "plasmacloud-appliance: multi-user.target reached"
        )) {
            bail!("the stranger's console does not show the appliance name with its pool address {ip}");
        }
        if console.contains("Reached target cluster-ready.target") {
            bail!("the stranger reached cluster-ready.target");
        }
        if console.contains("plasmacloud.node=") || console.contains(prepare::IAM_ADMIN.1) {
            bail!("a node name or the IAM secret shows on the stranger's console");
        }
        // The boot plane, asked the way the stranger could ask it.
        let base = format!("http://{SERVER_IP}:{}", prepare::HTTP_PORT);
        let dashed = UNKNOWN_MAC.replace(':', "-");
        let script = self
            .http
            .get(format!("{base}/boot/{dashed}.ipxe"))
            .send()
            .await
            .context("GET the unknown MAC's script")?;
        let code = script.status();
        let script = script.text().await.unwrap_or_default();
        if !code.is_success()
            || script.contains("/s/")
            || script.contains("overlay")
            || script.contains("plasmacloud.node=")
        {
            bail!("the unknown MAC's script is not the bare default entry ({code}):\n{script}");
        }
        let seed = node(0);
        let seed_dashed = seed.1.replace(':', "-");
        let refused = [
            format!("{base}/files/overlay-{}.cpio.zst", seed.0),
            format!("{base}/s/{}/overlay-{}.cpio.zst", "0".repeat(32), seed.0),
            format!("{base}/boot/{seed_dashed}.ipxe"),
        ];
        for url in &refused {
            let r = self
                .http
                .get(url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            if r.status() != reqwest::StatusCode::FORBIDDEN {
                bail!("GET {url} answered {}, expected 403 Forbidden", r.status());
            }
        }
        self.say(&format!(
            "unknown-mac: the stranger booted the default entry ({phases:?}) at pool address {ip}: no overlay, no node name, no phase report, no cluster-ready; the seed's overlay (plain and with a forged token) and script are refused (403)"
        ));
        Ok(at)
    }

    /// The boot timeline per node, and the mean phase shares.
    fn timeline(&self, names: &[String]) -> Vec<(String, f64, f64)> {
        let mut out = String::new();
        for name in names {
            let Some(p) = self.nodes.get(name) else {
                continue;
            };
            out.push_str(&format!("timeline {name}:\n"));
            let mut tl = p.timeline.clone();
            tl.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut prev = 0.0;
            for (t, w) in &tl {
                out.push_str(&format!("  {t:7.2} s  (+{:5.2})  {w}\n", t - prev));
                prev = *t;
            }
        }
        eprint!("{out}");
        // Phases, each ending at a console mark, a server event or a node report. A bound
        // that is missing (dnsmasq runs have no server events; a lost report) merges its phase
        // into the next one.
        let bounds: &[(&str, &str)] = &[
            ("firmware, DHCP, iPXE script", "server: kernel"),
            (
                "kernel + initrds over the net, kernel decompress",
                "kernel: started",
            ),
            ("kernel boot + initramfs unpack", "initramfs: /init"),
            ("systemd start-up to udev coldplug", "udev: coldplug done"),
            (
                "udev to data disk ready (mkfs, mount)",
                "unit: firstboot-disk",
            ),
            ("network online + configure", "configure ok"),
            ("chainfire + join", "chainfire-join ok"),
            ("flaredb + join", "flaredb-join ok"),
            ("iam + setup", "iam-setup ok"),
            ("health check", "cluster-ready ok"),
        ];
        let mut sums = vec![0.0; bounds.len()];
        let mut total = 0.0;
        let mut count = 0;
        for name in names {
            let Some(p) = self.nodes.get(name) else {
                continue;
            };
            let Some(ready) = p.ready_at else { continue };
            let at = |w: &str| p.timeline.iter().find(|(_, x)| x == w).map(|(t, _)| *t);
            let mut prev = 0.0;
            for (i, (_, b)) in bounds.iter().enumerate() {
                let t = if i + 1 == bounds.len() {
                    Some(ready)
                } else {
                    at(b)
                };
                if let Some(t) = t {
                    sums[i] += (t - prev).max(0.0);
                    prev = f64::max(prev, t);
                }
            }
            total += ready;
            count += 1;
        }
        if count == 0 {
            return Vec::new();
        }
        let mean_total = total / count as f64;
        bounds
            .iter()
            .zip(sums)
            .map(|((label, _), s)| {
                let m = s / count as f64;
                (
                    label.to_string(),
                    m,
                    if mean_total > 0.0 {
                        m / mean_total
                    } else {
                        0.0
                    },
                )
            })
            .collect()
    }
}

/// A key's URL: Chainfire's `/v1/kv/KEY`, FlareDB's namespaced `/v1/ns/vm-rack/kv/KEY`.
fn kv_url(ip: &str, port: u16, key: &str) -> String {
    if port == 2479 {
        format!("http://{ip}:{port}/v1/ns/vm-rack/kv/{key}")
    } else {
        format!("http://{ip}:{port}/v1/kv/{key}")
    }
}

/// Runs the plan (inside the namespace). Always writes the outcome file.
pub async fn run_inner(plan: Plan) -> anyhow::Result<Outcome> {
    let n = if plan.scenario == Scenario::UnknownMac {
        0
    } else {
        plan.scenario.nodes()
    };
    let outcome_path = Outcome::path(&plan.work, &plan.label);
    let mut outcome = Outcome {
        nodes: n,
        ..Outcome::default()
    };
    let _ = std::fs::write(&outcome_path, serde_json::to_string(&outcome)?);
    let started = Instant::now();
    let res = tokio::select! {
        r = drive(&plan, &mut outcome) => r,
        _ = shutdown_signal() => Err(anyhow!("interrupted")),
    };
    if outcome.secs == 0.0 {
        outcome.secs = started.elapsed().as_secs_f64();
    }
    match &res {
        Ok(()) => outcome.passed = true,
        Err(e) => {
            outcome.passed = false;
            outcome.error = Some(format!("{e:#}"));
        }
    }
    std::fs::write(&outcome_path, serde_json::to_string_pretty(&outcome)?)?;
    Ok(outcome)
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

async fn drive(plan: &Plan, outcome: &mut Outcome) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut children = Vec::new();
    let sink = match plan.server {
        BootServer::Pxe => {
            children.push(start_pxe(plan, &http).await?);
            None
        }
        BootServer::Dnsmasq => {
            let sink = start_sink().await?;
            children.push(start_dnsmasq(plan)?);
            Some(sink)
        }
    };
    let n = outcome.nodes;
    let mut vms = Vec::new();
    let mut mac_to_node = BTreeMap::new();
    for i in 0..n {
        let (name, mac, _) = node(i);
        let disk = plan.work.join(format!("{name}-{}.raw", plan.label));
        let f = std::fs::File::create(&disk)
            .with_context(|| format!("while creating {}", disk.display()))?;
        f.set_len(2 << 30)?; // sparse 2 GiB
        mac_to_node.insert(mac.clone(), name.clone());
        vms.push(Vm {
            name,
            label: plan.label.clone(),
            mac,
            tap: format!("tap{i}"),
            disk,
            firmware: plan.scenario.firmware(),
            memory_mib: plan.memory_mib,
            work: plan.work.clone(),
            child: None,
            boots: 0,
            serial: PathBuf::new(),
            serial_read: 0,
            serial_tail: Vec::new(),
            powered_on: 0.0,
            marks: BTreeMap::new(),
        });
    }
    if plan.scenario == Scenario::UnknownMac {
        vms.push(Vm {
            name: "stranger".into(),
            label: plan.label.clone(),
            mac: UNKNOWN_MAC.into(),
            tap: "tap0".into(),
            disk: PathBuf::new(),
            firmware: Firmware::Bios,
            memory_mib: plan.memory_mib,
            work: plan.work.clone(),
            child: None,
            boots: 0,
            serial: PathBuf::new(),
            serial_read: 0,
            serial_tail: Vec::new(),
            powered_on: 0.0,
            marks: BTreeMap::new(),
        });
    }
    let mut rack = Rack {
        plan: plan.clone(),
        http: http.clone(),
        vms,
        nodes: BTreeMap::new(),
        mac_to_node,
        start: Instant::now(),
        start_ms: now_ms(),
        feed: Feed {
            http,
            since: 0,
            sink,
        },
        drawn: 0,
        tty: std::io::stderr().is_terminal(),
        last_lines: Vec::new(),
        events: Vec::new(),
        _children: children,
    };
    // Power on every VM at once: the clock starts at the first QEMU start.
    rack.start = Instant::now();
    rack.start_ms = now_ms();
    for vm in &mut rack.vms {
        vm.start(0.0)?;
    }
    let names: Vec<String> = (0..n).map(|i| node(i).0).collect();
    rack.say(&format!(
        "powered on {} VM(s) ({:?}, {} MiB each) booting from {:?}",
        rack.vms.len(),
        plan.scenario.firmware(),
        plan.memory_mib,
        plan.server
    ));
    if plan.scenario == Scenario::UnknownMac {
        let at = rack.scenario_unknown().await;
        rack.draw(true);
        outcome.secs = rack.t();
        rack.timeline(&["stranger".to_string()]);
        at?;
        return Ok(());
    }
    let res = rack
        .wait_ready(&names, Duration::from_secs(plan.timeout_secs))
        .await;
    rack.draw(true);
    outcome.ready = rack.ready_count(&names);
    outcome.secs = names
        .iter()
        .filter_map(|n| rack.nodes.get(n).and_then(|p| p.ready_at))
        .fold(0.0, f64::max);
    if res.is_err() {
        outcome.secs = rack.t();
    }
    outcome.phases = rack.timeline(&names);
    res?;
    rack.say(&format!(
        "all {n} nodes cluster-ready {:.1} s after the first power-on",
        outcome.secs
    ));
    if plan.server == BootServer::Pxe {
        rack.check_cluster(&names).await?;
    } else {
        rack.check_members("chainfire", 2379, &[node(0).2], voters_for(n))
            .await?;
    }
    match plan.scenario {
        Scenario::Reboot => rack.scenario_reboot(&names).await?,
        Scenario::LeaderLoss => rack.scenario_leader_loss(&names).await?,
        _ => {}
    }
    outcome.ready = rack.ready_count(&names);
    Ok(())
}

async fn start_pxe(plan: &Plan, http: &reqwest::Client) -> anyhow::Result<Child> {
    let log = std::fs::File::create(plan.work.join(format!("pxe-server-{}.log", plan.label)))?;
    let mut c = Command::new(plan.bin_dir.join("pxe-server"));
    c.arg("serve")
        .args(["--interface", "br0", "--mode", "full", "--cluster"])
        .arg(&plan.contract)
        .arg("--bundle")
        .arg(&plan.bundle)
        .args(["--dhcp-range", "10.99.0.100-10.99.0.199"])
        .args(["--ipxe-dir", "/usr/lib/ipxe"])
        .arg("--state-dir")
        .arg(plan.work.join(format!("pxe-state-{}", plan.label)))
        .arg("--http-addr")
        .arg(format!("{SERVER_IP}:{}", prepare::HTTP_PORT))
        .arg("--management-addr")
        .arg(format!("{SERVER_IP}:{MGMT_PORT}"))
        .args(["--unknown-mac", "default", "--ipv6-ra", "on"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let mut child = c.spawn().context("while starting pxe-server")?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            bail!(
                "pxe-server exited ({st}); see {}",
                plan.work
                    .join(format!("pxe-server-{}.log", plan.label))
                    .display()
            );
        }
        if let Ok(r) = http
            .get(format!("http://{SERVER_IP}:{MGMT_PORT}/health"))
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(child);
            }
        }
        if Instant::now() >= until {
            bail!("pxe-server's management API did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_dnsmasq(plan: &Plan) -> anyhow::Result<Child> {
    let root = prepare::write_dnsmasq_tree(&plan.work, &plan.bundle, plan.scenario.nodes())?;
    let log = std::fs::File::create(plan.work.join(format!("dnsmasq-{}.log", plan.label)))?;
    let mut c = Command::new("dnsmasq");
    c.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=br0",
        "--bind-interfaces",
        "--log-dhcp",
        "--dhcp-range=10.99.0.100,10.99.0.199,255.255.255.0,1h",
        "--enable-tftp",
        "--dhcp-userclass=set:ipxe,iPXE",
        "--dhcp-boot=tag:!ipxe,undionly.kpxe",
    ])
    .arg(format!("--tftp-root={}", root.display()))
    .arg(format!(
        "--dhcp-leasefile={}",
        plan.work
            .join(format!("dnsmasq-{}.leases", plan.label))
            .display()
    ))
    .arg(format!(
        "--pid-file={}",
        plan.work
            .join(format!("dnsmasq-{}.pid", plan.label))
            .display()
    ));
    for i in 0..plan.scenario.nodes() {
        let (name, mac, ip) = node(i);
        c.arg(format!("--dhcp-host={mac},{ip},set:{name}"));
        c.arg(format!("--dhcp-boot=tag:ipxe,tag:{name},{name}.ipxe"));
    }
    c.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    c.spawn()
        .context("while starting dnsmasq (is dnsmasq-base installed?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_their_colour_codes() {
        let line =
            "[\x1b[0;32m  OK  \x1b[0m] Finished \x1b[0;1;39mfirstboot-disk.service\x1b[0m.\r";
        assert_eq!(
            strip_ansi(line),
            "[  OK  ] Finished firstboot-disk.service."
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn every_first_boot_unit_has_a_console_mark() {
        for unit in [
            "firstboot-disk",
            "firstboot-configure",
            "chainfire",
            "chainfire-cluster-join",
            "flaredb",
            "flaredb-cluster-join",
            "iam",
            "iam-initial-setup",
            "cluster-health-check",
        ] {
            let label = format!("unit: {unit}");
            assert!(
                SERIAL_MARKS.iter().any(|(l, _)| *l == label),
                "no console mark for {unit}"
            );
        }
    }
}
