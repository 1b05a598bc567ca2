//! `firstboot reboot-agent`: the node's reboot agent, a long-running unit after
//! `cluster-ready.target`. It reboots this node when — and only when — Chainfire holds a
//! reboot request for it and it got a reboot slot ([`crate::reboots`] states the rule).
//!
//! Every `--poll` it reads its request:
//! - `requested`: for a voter, it first waits until every other voter's Chainfire answers
//!   healthy (a voter never goes down while another one is); then it takes a slot of the
//!   request's group (waiting while the group is full), marks the request `rebooting` with this
//!   boot's id, asks both stores to move leadership away from it, and runs `--reboot-command`
//!   (`systemctl reboot`; the process rack gives a command that makes the harness kill and
//!   start the node's chain again). A command that fails marks the request `failed` and
//!   releases the slot.
//! - `rebooting` under another boot id: this is the boot after; the agent runs only once this
//!   boot's health check passed, so the node is back and healthy: it marks the request `back`
//!   and releases the slot.
//! - `rebooting` under this boot id, by an agent that crashed before it rebooted: reboot.
//!
//! At start it also publishes this node's report (boot id, its last health check) for
//! `rackctl status`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use plasmacloud_store_client::Keyspace;

use crate::ids::my_id;
use crate::node_args::{parse_duration, NodeArgs};
use crate::reboots::{
    self, advance_request, move_leader_away, now_ms, LeaderMove, NodeReport, RebootRequest,
    RequestState, SlotGroup,
};
use crate::step::{Ctx, StepError, StepResult, Store};

/// The default reboot command.
pub const DEFAULT_REBOOT_COMMAND: &str = "systemctl reboot";
/// Where Linux keeps this boot's id.
pub const DEFAULT_BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";
/// A reboot command that returned but left the machine up this long is a failed reboot.
pub const REBOOT_GRACE: Duration = Duration::from_secs(600);

/// The agent's flags.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The node flags every step takes.
    #[command(flatten)]
    pub node: NodeArgs,
    /// How to reboot this machine (run with `/bin/sh -c`).
    #[arg(long, env = "PLASMACLOUD_REBOOT_COMMAND", default_value = DEFAULT_REBOOT_COMMAND)]
    pub reboot_command: String,
    /// How often to look for a reboot request, e.g. `1s`, `500ms`.
    #[arg(long, env = "PLASMACLOUD_REBOOT_POLL", default_value = "1s", value_parser = parse_duration)]
    pub poll: Duration,
    /// The file holding this boot's id (it changes with every boot).
    #[arg(long, env = "PLASMACLOUD_BOOT_ID_FILE", default_value = DEFAULT_BOOT_ID_FILE)]
    pub boot_id_file: PathBuf,
}

/// This boot's id.
pub fn boot_id(args: &AgentArgs) -> StepResult<String> {
    let text = std::fs::read_to_string(&args.boot_id_file).map_err(|e| {
        StepError::Config(format!(
            "{}: {e} (the agent tells boots apart by it; pass --boot-id-file)",
            args.boot_id_file.display()
        ))
    })?;
    let id = text.trim().to_string();
    if id.is_empty() {
        return Err(StepError::Config(format!(
            "{} is empty",
            args.boot_id_file.display()
        )));
    }
    Ok(id)
}

/// This node's report from its health check's report file.
pub fn node_report(ctx: &Ctx, boot: &str, started_ms: u64) -> NodeReport {
    let path = ctx.firstboot_dir().join("health-report.json");
    let (ready, failed) = match std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        Some(v) => (
            v["ready"].as_bool().unwrap_or(false),
            v["checks"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .filter(|c| c["ok"] == false)
                        .map(|c| {
                            format!(
                                "{}: {}",
                                c["name"].as_str().unwrap_or("?"),
                                c["detail"].as_str().unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        None => (false, vec![format!("{} missing", path.display())]),
    };
    let checked = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64);
    NodeReport {
        node: ctx.me.name.clone(),
        boot_id: boot.into(),
        agent_started_ms: started_ms,
        health_ready: ready,
        health_checked_ms: checked,
        health_failed: failed,
    }
}

/// The agent's state within one process.
struct Agent<'a> {
    ctx: &'a Ctx,
    args: &'a AgentArgs,
    kv: Keyspace,
    http: reqwest::Client,
    boot: String,
    /// The request this process ran the reboot command for, and when.
    rebooted: Option<(String, Instant)>,
    /// The last detail written while waiting (so a wait is written once, not every poll).
    waiting: String,
}

/// Runs the agent until it fails for a reason a restart will not fix.
pub async fn run(ctx: &Ctx, args: &AgentArgs) -> StepResult<()> {
    let boot = boot_id(args)?;
    let started = now_ms();
    let cf = ctx.client(
        Store::Chainfire,
        ctx.contract.voters(),
        Duration::from_secs(5),
    )?;
    let http = ctx.http_client()?;
    let mut agent = Agent {
        ctx,
        args,
        kv: cf.kv(),
        http,
        boot,
        rebooted: None,
        waiting: String::new(),
    };
    let mut reported = false;
    ctx.progress("reboot-agent", "ok", "watching for reboot requests")
        .await;
    loop {
        if !reported {
            // Last writer wins: only this node writes its own report.
            reported = put_report(&agent.kv, &node_report(ctx, &agent.boot, started)).await;
        }
        match reboots::read_request(&agent.kv, &ctx.me.name).await {
            Ok(Some((req, rev))) => agent.handle(req, rev).await,
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read this node's reboot request yet"),
        }
        tokio::time::sleep(args.poll).await;
    }
}

async fn put_report(kv: &Keyspace, report: &NodeReport) -> bool {
    let text = serde_json::to_string(report).unwrap_or_default();
    kv.put(&reboots::report_key(&report.node), &text)
        .await
        .is_ok()
}

impl Agent<'_> {
    async fn handle(&mut self, req: RebootRequest, rev: u64) {
        let name = self.ctx.me.name.clone();
        match req.state {
            RequestState::Requested => {
                if let Err(e) = self.start_reboot(req, rev).await {
                    tracing::warn!(node = %name, error = %e, "reboot request not acted on yet");
                }
            }
            RequestState::Rebooting if req.boot_id.as_deref() != Some(self.boot.as_str()) => {
                self.back(req, rev).await;
            }
            RequestState::Rebooting => {
                match &self.rebooted {
                    Some((id, at)) if *id == req.id => {
                        if at.elapsed() > REBOOT_GRACE {
                            let detail = format!(
                                "`{}` returned but the machine was still up {} s later",
                                self.args.reboot_command,
                                REBOOT_GRACE.as_secs()
                            );
                            self.fail(req, rev, &detail).await;
                        }
                    }
                    // This boot marked it `rebooting` but this process did not reboot:
                    // an agent that stopped in between. It still holds the slot: reboot.
                    _ => {
                        tracing::warn!(node = %name, "rebooting was marked by an earlier agent of this boot; rebooting now");
                        self.reboot(req, rev).await;
                    }
                }
            }
            RequestState::Back | RequestState::Failed => {
                // A release that failed when the state changed is done here, until the
                // operator's tool clears the request.
                if let Ok((slots, _)) = reboots::read_slots(&self.kv, req.group).await {
                    if slots
                        .holders
                        .get(&name)
                        .is_some_and(|h| h.request == req.id)
                    {
                        let _ = reboots::release_slot(&self.kv, req.group, &name).await;
                    }
                }
            }
        }
    }

    /// Writes a waiting detail once.
    async fn wait_note(&mut self, req: &RebootRequest, rev: u64, detail: String) {
        if self.waiting == detail {
            return;
        }
        tracing::info!(node = %self.ctx.me.name, "{detail}");
        let _ = advance_request(
            &self.kv,
            req.clone(),
            rev,
            RequestState::Requested,
            &detail,
            |_| {},
        )
        .await;
        self.waiting = detail;
    }

    async fn start_reboot(&mut self, req: RebootRequest, rev: u64) -> reboots::Result<()> {
        if req.group == SlotGroup::Voters {
            if let Some(why) = self.other_voter_unhealthy().await {
                self.wait_note(&req, rev, format!("waiting: {why}")).await;
                return Ok(());
            }
        }
        if !reboots::take_slot(&self.kv, req.group, &self.ctx.me.name, &req.id).await? {
            let (slots, _) = reboots::read_slots(&self.kv, req.group).await?;
            let holders: Vec<&str> = slots.holders.keys().map(String::as_str).collect();
            self.wait_note(
                &req,
                rev,
                format!(
                    "waiting for a {} slot ({} of {} held: {})",
                    req.group.as_str(),
                    slots.holders.len(),
                    slots.limit,
                    holders.join(", ")
                ),
            )
            .await;
            return Ok(());
        }
        let boot = self.boot.clone();
        let id = req.id.clone();
        let group = req.group;
        if !advance_request(
            &self.kv,
            req.clone(),
            rev,
            RequestState::Rebooting,
            "rebooting",
            |r| r.boot_id = Some(boot),
        )
        .await?
        {
            // Changed under us (withdrawn, replaced): give the slot back unless it is still
            // this very request.
            match reboots::read_request(&self.kv, &self.ctx.me.name).await? {
                Some((r, _)) if r.id == id => {}
                _ => reboots::release_slot(&self.kv, group, &self.ctx.me.name).await?,
            }
            return Ok(());
        }
        let rev = match reboots::read_request(&self.kv, &self.ctx.me.name).await? {
            Some((r, rev)) if r.id == id => rev,
            _ => return Ok(()),
        };
        let mut req = req;
        req.state = RequestState::Rebooting;
        req.boot_id = Some(self.boot.clone());
        self.reboot(req, rev).await;
        Ok(())
    }

    /// `None` when every other voter's Chainfire answers healthy, else which one does not.
    async fn other_voter_unhealthy(&self) -> Option<String> {
        for n in self.ctx.other_voters() {
            let url = format!("{}/health", self.ctx.api_url(Store::Chainfire, &n));
            match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => return Some(format!("voter {} answers {}", n.name, r.status())),
                Err(e) => return Some(format!("voter {} unreachable: {e}", n.name)),
            }
        }
        None
    }

    /// Moves leadership away (both stores, when this node is a voter), then runs the reboot
    /// command.
    async fn reboot(&mut self, req: RebootRequest, rev: u64) {
        if let Ok(id) = my_id(self.ctx, Store::Chainfire) {
            for store in [Store::Chainfire, Store::Flaredb] {
                let endpoints: Vec<String> = self
                    .ctx
                    .contract
                    .voters()
                    .iter()
                    .map(|n| self.ctx.api_url(store, n))
                    .collect();
                match move_leader_away(&self.http, &endpoints, id, Duration::from_secs(30)).await
                {
                    Ok(LeaderMove::Away { leader }) => {
                        tracing::info!(store = store.name(), ?leader, "leadership is away from this node")
                    }
                    Ok(LeaderMove::Unsupported) => tracing::warn!(
                        store = store.name(),
                        "the store cannot hand leadership over; it elects a new leader when this node goes down"
                    ),
                    Ok(other) => tracing::warn!(store = store.name(), outcome = ?other, "leadership not moved; rebooting anyway (one voter down keeps the quorum)"),
                    Err(e) => tracing::warn!(store = store.name(), error = %e, "cannot ask to move leadership"),
                }
            }
        }
        self.ctx
            .progress("reboot", "started", &format!("for {}", req.by))
            .await;
        tracing::info!(command = %self.args.reboot_command, "rebooting");
        self.rebooted = Some((req.id.clone(), Instant::now()));
        let out = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.args.reboot_command)
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        let failure = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "`{}` exited {}: {}",
                self.args.reboot_command,
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run `{}`: {e}", self.args.reboot_command)),
        };
        if let Some(detail) = failure {
            self.fail(req, rev, &detail).await;
        }
    }

    async fn fail(&mut self, req: RebootRequest, rev: u64, detail: &str) {
        tracing::error!(node = %self.ctx.me.name, "reboot failed: {detail}");
        let group = req.group;
        let _ = advance_request(&self.kv, req, rev, RequestState::Failed, detail, |_| {}).await;
        let _ = reboots::release_slot(&self.kv, group, &self.ctx.me.name).await;
        self.ctx.progress("reboot", "failed", detail).await;
        self.rebooted = None;
    }

    async fn back(&mut self, req: RebootRequest, rev: u64) {
        let group = req.group;
        let boot = self.boot.clone();
        let report = node_report(self.ctx, &self.boot, now_ms());
        let detail = if report.health_ready {
            "back; health check passed".to_string()
        } else {
            format!("back; health: {}", report.health_failed.join("; "))
        };
        match advance_request(&self.kv, req, rev, RequestState::Back, &detail, |r| {
            r.back_boot_id = Some(boot)
        })
        .await
        {
            Ok(true) => {
                if let Err(e) = reboots::release_slot(&self.kv, group, &self.ctx.me.name).await {
                    tracing::warn!(error = %e, "cannot release the reboot slot yet");
                }
                tracing::info!(node = %self.ctx.me.name, "back after the reboot; slot released");
                self.ctx.progress("reboot", "ok", &detail).await;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot mark the reboot request back yet"),
        }
    }
}
