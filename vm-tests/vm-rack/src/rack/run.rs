//! The inner run from start to outcome: start the boot server, power on every VM at once (the
//! clock starts there), tick (events, consoles, QEMU liveness, the view) until every node is
//! ready or the deadline passes, then the checks and the scenario's own steps. [`Rack`] is the
//! state all of that shares; the checks and the scenarios add their steps to it in modules of
//! their own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use plasmacloud_contract::voter_count_for_rack;
use tokio::process::Child;

use super::boot_server::{start_dnsmasq, start_pxe};
use super::events::{now_ms, start_sink, Event, Feed};
use super::http::Http;
use super::plan::{BootServer, Outcome, Plan};
use super::timeline::{self, NodeProgress};
use super::view::View;
use super::vm::Vm;
use crate::prepare::{self, node, UNKNOWN_MAC};
use crate::scenario::Scenario;

/// The running rack.
pub struct Rack {
    /// What to run.
    pub plan: Plan,
    /// Every request to the nodes and the boot server goes through it.
    pub http: Http,
    /// The VMs (contract nodes in order, then a stranger, if any).
    pub vms: Vec<Vm>,
    /// Progress per node name.
    pub nodes: BTreeMap<String, NodeProgress>,
    pub(super) mac_to_node: BTreeMap<String, String>,
    start: Instant,
    start_ms: u64,
    feed: Feed,
    view: View,
    /// Every event seen.
    pub events: Vec<Event>,
    /// The harness's operator certificate (what `rackctl` presents in the day-2 scenarios).
    pub operator: plasmacloud_pki::TlsFiles,
    _children: Vec<Child>,
}

impl Rack {
    /// Seconds since the first power-on.
    pub fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn rel(&self, at_ms: u64) -> f64 {
        (at_ms as f64 - self.start_ms as f64) / 1000.0
    }

    /// One tick: events, consoles, QEMU liveness, the view.
    pub async fn tick(&mut self) -> anyhow::Result<()> {
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
            self.nodes.entry(name).or_default().record_event(t, &e);
            self.events.push(e);
        }
        let t = self.t();
        for vm in &mut self.vms {
            let before = vm.console.marks.len();
            vm.console.scan(t);
            if vm.console.marks.len() != before {
                self.nodes
                    .entry(vm.name.clone())
                    .or_default()
                    .record_marks(&vm.console.marks, vm.powered_on);
            }
        }
        self.draw(false);
        Ok(())
    }

    /// How many of `names` are ready.
    pub fn ready_count(&self, names: &[String]) -> usize {
        names
            .iter()
            .filter(|n| self.nodes.get(*n).is_some_and(|p| p.ready_at.is_some()))
            .count()
    }

    /// Redraws the live view (every line when `force`).
    pub fn draw(&mut self, force: bool) {
        if !self.view.enabled() {
            return;
        }
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
        let t = self.t();
        self.view.draw(t, lines, force);
    }

    /// Prints a message of the harness.
    pub fn say(&mut self, msg: &str) {
        let t = self.t();
        self.view.say(t, msg);
    }

    /// Ticks until every VM in `names` is ready (events after `since`), a VM dies, or the
    /// deadline passes.
    pub async fn wait_ready(&mut self, names: &[String], deadline: Duration) -> anyhow::Result<()> {
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
                            vm.console.path.display()
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

    /// The VM named `name`.
    pub fn vm(&mut self, name: &str) -> anyhow::Result<&mut Vm> {
        self.vms
            .iter_mut()
            .find(|v| v.name == name)
            .ok_or_else(|| anyhow!("no VM {name}"))
    }

    /// Forgets that `name` was ready (it is being power-cycled).
    pub fn reset_ready(&mut self, name: &str) {
        if let Some(p) = self.nodes.get_mut(name) {
            p.ready_at = None;
            p.last = "power cycle".into();
        }
    }

    /// Prints the timelines of `names`; the mean phase shares.
    fn report(&self, names: &[String]) -> Vec<(String, f64, f64)> {
        timeline::report(&self.nodes, names)
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
    // The cluster CA in pxe-server's state directory, and the harness's operator certificate.
    let operator = prepare::rack_pki(&plan.work, &plan.bin_dir, &plan.contract, &plan.label)?;
    let http = Http::new(&operator)?;
    let mut children = Vec::new();
    let sink = match plan.server {
        BootServer::Pxe => {
            children.push(start_pxe(plan, &http).await?);
            None
        }
        BootServer::Dnsmasq => {
            let sink = start_sink(&prepare::pxe_state_dir(&plan.work, &plan.label)).await?;
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
        match plan.server {
            // pxe-server enrolls each node: its disk starts blank.
            BootServer::Pxe => {
                prepare::blank_disk(&disk)?;
            }
            // dnsmasq cannot enroll anyone: the nodes are installed machines holding their
            // certificate already.
            BootServer::Dnsmasq => prepare::preinstalled_disk(
                &disk,
                prepare::DISK_BYTES,
                &plan.work,
                &plan.bin_dir,
                &plan.contract,
                &plan.label,
                &name,
            )?,
        }
        vms.push(Vm::new(plan, &name, &mac, &format!("tap{i}"), Some(disk)));
        mac_to_node.insert(mac, name);
    }
    if plan.scenario == Scenario::UnknownMac {
        vms.push(Vm::new(plan, "stranger", UNKNOWN_MAC, "tap0", None));
    }
    let mut rack = Rack {
        plan: plan.clone(),
        http: http.clone(),
        vms,
        nodes: BTreeMap::new(),
        mac_to_node,
        start: Instant::now(),
        start_ms: now_ms(),
        feed: Feed::new(http, sink),
        view: View::new(plan.progress, &plan.label),
        events: Vec::new(),
        operator,
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
        rack.report(&["stranger".to_string()]);
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
    outcome.phases = rack.report(&names);
    res?;
    rack.say(&format!(
        "all {n} nodes cluster-ready {:.1} s after the first power-on",
        outcome.secs
    ));
    if plan.server == BootServer::Pxe {
        rack.check_cluster(&names).await?;
    } else {
        rack.check_members("chainfire", 2379, &[node(0).2], voter_count_for_rack(n))
            .await?;
    }
    match plan.scenario {
        Scenario::Reboot => rack.scenario_reboot(&names).await?,
        Scenario::LeaderLoss => rack.scenario_leader_loss(&names).await?,
        Scenario::UefiHttp3 => rack.check_http_boot(&names)?,
        Scenario::SecureBoot1 => rack.check_secure_boot(&names)?,
        Scenario::Grow => rack.scenario_grow(&names).await?,
        Scenario::Replace => rack.scenario_replace(&names).await?,
        Scenario::RollingReimage => rack.scenario_rolling_reimage(&names).await?,
        Scenario::Retire => rack.scenario_retire(&names).await?,
        _ => {}
    }
    outcome.ready = rack.ready_count(&names);
    Ok(())
}
