//! `rackctl rollout --bundle DIR`: a new bundle rolls across the rack in waves, and
//! `rackctl reboot NODE`, the same for one node.
//!
//! The rule, in order:
//! 1. the rollout lock is taken ([`crate::lock`]): a second rollout, or a human's reboot, is
//!    refused while it is held;
//! 2. the bundle is swapped in under pxe-server and the rollout waits until pxe-server serves
//!    it (nodes that reboot before would boot the old one);
//! 3. the reboot slots are set: 1 for voters, `--wave-size` for workers; a rollout that took
//!    the lock over from a lapsed hold (its operator's process killed mid-wave) first waits
//!    for the reboots that hold had requested, through the same health gate ([`adopt`]);
//! 4. waves: every voter alone (contract order, the current Chainfire leader last, so the
//!    leader moves once), then the workers `--wave-size` at a time; nodes pxe-server says
//!    booted the new version already are skipped (a rollout run again after a stop goes on
//!    where it stopped);
//! 5. before each wave the rack must be as the contract says (a leader in both stores, the
//!    contract's voters) and, for a voter, every other voter must answer;
//! 6. each node of the wave gets a reboot request and reboots itself ([`firstboot::reboots`]:
//!    its agent takes a slot, has leadership moved away, reboots, and releases the slot once
//!    back); the wave's **health gate** waits, within `--wave-timeout`, until every node of it
//!    is back: its request `back`, its services healthy, its roles as the contract says, the
//!    rack's voters as the contract says, and the new version booted;
//! 7. a node that fails its gate **stops the rollout**: no further wave starts, the lock stays
//!    held in state `stopped` with the reason, and the error names the node, what is done and
//!    what is not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use firstboot::reboots::{self, RebootRequest, RequestState, SlotGroup};
use plasmacloud_contract::{Contract, NodeSpec};
use plasmacloud_store_client::Precondition;

use crate::bundle::{short, version_of};
use crate::cluster::{reboot_keeps_quorum, NodeRole};
use crate::ctl::Operation;
use crate::lock::Aborted;
use crate::operator::Store;
use crate::{Ctl, Error, Result, Stopped};

/// What to roll out.
#[derive(Debug, Clone)]
pub struct RolloutPlan {
    /// The new bundle directory (swapped in for pxe-server); `None`: the one served now.
    pub bundle: Option<PathBuf>,
    /// Workers rebooted at once.
    pub wave_size: usize,
    /// How long one wave may take, from its reboot requests to its health gate passed.
    pub wave_timeout: Duration,
}

/// One wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// Its slot group.
    pub group: SlotGroup,
    /// Its nodes.
    pub nodes: Vec<String>,
}

/// One wave as it went.
#[derive(Debug, Clone)]
pub struct WaveReport {
    /// The wave.
    pub wave: Wave,
    /// From the requests to the gate passed, seconds.
    pub seconds: f64,
    /// Reboots a lapsed hold had requested, finished by this rollout (see [`adopt`]).
    pub adopted: bool,
}

/// What a rollout did.
#[derive(Debug, Clone)]
pub struct RolloutReport {
    /// The version rolled out.
    pub version: String,
    /// The waves, in order.
    pub waves: Vec<WaveReport>,
    /// Nodes already on the version.
    pub skipped: Vec<String>,
}

/// The waves for `contract`: voters alone (the leader last), then workers `wave_size` at a
/// time; nodes whose booted version is `target` are left out (and returned apart).
pub fn plan_waves(
    contract: &Contract,
    leader: Option<&str>,
    booted: &BTreeMap<String, Option<String>>,
    target: Option<&str>,
    wave_size: usize,
) -> (Vec<Wave>, Vec<String>) {
    let mut skipped = Vec::new();
    let mut keep = |n: &NodeSpec| {
        let on = target.is_some() && booted.get(&n.name).and_then(|v| v.as_deref()) == target;
        if on {
            skipped.push(n.name.clone());
        }
        !on
    };
    let mut voters: Vec<&NodeSpec> = contract.voters().into_iter().filter(|n| keep(n)).collect();
    if let Some(l) = leader {
        if let Some(i) = voters.iter().position(|n| n.name == l) {
            let n = voters.remove(i);
            voters.push(n);
        }
    }
    let workers: Vec<&NodeSpec> = contract
        .nodes
        .iter()
        .filter(|n| !n.voter)
        .filter(|n| keep(n))
        .collect();
    let mut waves: Vec<Wave> = voters
        .into_iter()
        .map(|n| Wave {
            group: SlotGroup::Voters,
            nodes: vec![n.name.clone()],
        })
        .collect();
    for chunk in workers.chunks(wave_size.max(1)) {
        waves.push(Wave {
            group: SlotGroup::Workers,
            nodes: chunk.iter().map(|n| n.name.clone()).collect(),
        });
    }
    (waves, skipped)
}

/// Why a wave did not pass: the node and the reason.
type GateFailure = (String, String);

/// Reboots one wave and waits for its health gate. `target`: the version it must boot.
pub async fn reboot_wave(
    op: &Operation<'_>,
    wave: &Wave,
    target: Option<&str>,
    timeout: Duration,
) -> Result<Result<f64, GateFailure>> {
    let ctl = op.ctl;
    let cluster = ctl.cluster()?;
    let first = wave.nodes.first().cloned().unwrap_or_default();
    if let Err(why) = cluster.check_voters().await {
        return Ok(Err((
            first,
            format!("the rack is not as the contract says before its wave: {why}"),
        )));
    }
    let nodes: Vec<NodeSpec> = wave
        .nodes
        .iter()
        .map(|n| cluster.contract.node(n).cloned())
        .collect::<Result<_, _>>()?;
    if wave.group == SlotGroup::Voters {
        for store in Store::BOTH {
            let view = cluster.view(store).await?;
            let alive = cluster.alive_voters(&view).await;
            for n in &nodes {
                if let Some(id) = view.role_of(n).id() {
                    if let Err(why) = reboot_keeps_quorum(&view.voters(), &alive, id) {
                        return Ok(Err((n.name.clone(), format!("{}: {why}", store.name()))));
                    }
                }
            }
        }
    }
    let kv = cluster.chainfire_kv()?;
    let lock_id = op.lock.id().await;
    for n in &nodes {
        let req = RebootRequest::new(
            &n.name,
            &format!("{lock_id}-{}", n.name),
            &op.what,
            wave.group,
            target.map(str::to_string),
        );
        let cond = match reboots::read_request(&kv, &n.name).await? {
            None => Precondition::Absent,
            Some((old, rev))
                if matches!(old.state, RequestState::Back | RequestState::Failed) =>
            {
                Precondition::Revision(rev)
            }
            Some((old, _)) => {
                return Ok(Err((
                    n.name.clone(),
                    format!(
                        "it has a reboot request under way already ({} by {}); `rackctl rollout --abort` withdraws it",
                        old.state.as_str(),
                        old.by
                    ),
                )))
            }
        };
        reboots::write_json(&kv, &reboots::request_key(&n.name), &req, cond).await?;
        tracing::info!(node = %n.name, group = wave.group.as_str(), "reboot requested");
    }
    await_wave(op, &nodes, target, timeout).await
}

/// Waits, within `timeout`, for every node of a wave whose reboots were requested to pass its
/// health gate, checks the rack's voters after it, and clears the wave's requests.
async fn await_wave(
    op: &Operation<'_>,
    nodes: &[NodeSpec],
    target: Option<&str>,
    timeout: Duration,
) -> Result<Result<f64, GateFailure>> {
    let ctl = op.ctl;
    let cluster = ctl.cluster()?;
    let kv = cluster.chainfire_kv()?;
    let first = nodes.first().map(|n| n.name.clone()).unwrap_or_default();
    let start = Instant::now();
    let mut passed: BTreeMap<String, bool> =
        nodes.iter().map(|n| (n.name.clone(), false)).collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        op.check()?;
        let snapshot = if target.is_some() && ctl.boot.knows_versions() {
            ctl.boot.snapshot().await.ok()
        } else {
            None
        };
        for n in nodes {
            if passed[&n.name] {
                continue;
            }
            let state = match reboots::read_request(&kv, &n.name).await {
                Ok(Some((r, _))) => r,
                Ok(None) => {
                    return Ok(Err((
                        n.name.clone(),
                        "its reboot request was withdrawn (rollout --abort?)".into(),
                    )))
                }
                Err(e) => {
                    last.insert(n.name.clone(), e.to_string());
                    continue;
                }
            };
            match state.state {
                RequestState::Failed => {
                    return Ok(Err((
                        n.name.clone(),
                        format!("its reboot failed: {}", state.detail),
                    )))
                }
                RequestState::Requested => {
                    last.insert(
                        n.name.clone(),
                        if state.detail.is_empty() {
                            "its agent has not taken the request (is reboot-agent.service running there?)".into()
                        } else {
                            format!("requested, {}", state.detail)
                        },
                    );
                    continue;
                }
                RequestState::Rebooting => {
                    last.insert(
                        n.name.clone(),
                        format!(
                            "it went down to reboot {:.0} s ago and has not come back healthy",
                            reboots::now_ms().saturating_sub(state.updated_at_ms) as f64 / 1000.0
                        ),
                    );
                    continue;
                }
                RequestState::Back => {}
            }
            match gate(op, n, target, snapshot.as_ref()).await {
                Ok(()) => {
                    tracing::info!(node = %n.name, secs = start.elapsed().as_secs_f64(), "back and healthy");
                    passed.insert(n.name.clone(), true);
                }
                Err(why) => {
                    last.insert(n.name.clone(), format!("back, but {why}"));
                }
            }
        }
        if passed.values().all(|p| *p) {
            break;
        }
        if start.elapsed() >= timeout {
            let (node, why) = passed
                .iter()
                .find(|(_, p)| !**p)
                .map(|(n, _)| (n.clone(), last.get(n).cloned().unwrap_or_default()))
                .unwrap_or_default();
            return Ok(Err((
                node,
                format!("not back and healthy within {timeout:?} ({why})"),
            )));
        }
        tokio::time::sleep(ctl.config.poll).await;
    }
    if let Err(why) = cluster.check_voters().await {
        return Ok(Err((first, format!("after its wave: {why}"))));
    }
    for n in nodes {
        if let Ok(Some((_, rev))) = reboots::read_request(&kv, &n.name).await {
            let _ = kv.delete_if(&reboots::request_key(&n.name), rev).await;
        }
    }
    Ok(Ok(start.elapsed().as_secs_f64()))
}

/// One node's health gate: services healthy, roles as the contract says, version booted.
async fn gate(
    op: &Operation<'_>,
    node: &NodeSpec,
    target: Option<&str>,
    snapshot: Option<&crate::boot_view::BootSnapshot>,
) -> Result<(), String> {
    let cluster = op.ctl.cluster().map_err(|e| e.to_string())?;
    let health = cluster.node_health(node).await;
    if !health.ok() {
        return Err(format!("not healthy: {}", health.summary()));
    }
    for store in Store::BOTH {
        let view = cluster.view(store).await.map_err(|e| e.to_string())?;
        let role = view.role_of(node);
        let ok = match role {
            NodeRole::Absent => false,
            r => r.is_voter() == node.voter,
        };
        if !ok {
            return Err(format!(
                "{} {} (expected a {})",
                store.name(),
                role.label(),
                if node.voter { "voter" } else { "learner" }
            ));
        }
    }
    if let (Some(t), true) = (target, op.ctl.boot.knows_versions()) {
        let booted = snapshot
            .and_then(|s| s.nodes.get(&node.name))
            .and_then(|b| b.version.clone());
        if booted.as_deref() != Some(t) {
            return Err(format!(
                "it booted bundle {} (expected {})",
                booted.as_deref().map(short).unwrap_or("unknown"),
                short(t)
            ));
        }
    }
    Ok(())
}

/// Rolls a bundle across the rack, holding the lock of `op`.
pub async fn run(op: &Operation<'_>, plan: &RolloutPlan) -> Result<RolloutReport> {
    let ctl = op.ctl;
    let site = ctl.bundle_site()?;
    let version = match &plan.bundle {
        Some(dir) => {
            let v = version_of(dir)?;
            if site.current_version().ok().as_deref() != Some(v.as_str()) {
                site.swap_in(dir)?;
                tracing::info!(version = short(&v), "bundle swapped in");
            }
            v
        }
        None => site.current_version()?,
    };
    ctl.wait_served(&version).await?;
    let cluster = ctl.cluster()?;
    let kv = cluster.chainfire_kv()?;
    reboots::set_slot_limit(&kv, SlotGroup::Voters, 1).await?;
    reboots::set_slot_limit(&kv, SlotGroup::Workers, plan.wave_size.max(1) as u32).await?;
    let target = ctl.boot.knows_versions().then_some(version.as_str());
    let mut reports: Vec<WaveReport> = adopt(op, target, plan.wave_timeout)
        .await?
        .into_iter()
        .collect();

    let snapshot = if ctl.boot.knows_versions() {
        ctl.boot.snapshot().await?
    } else {
        Default::default()
    };
    let booted: BTreeMap<String, Option<String>> = snapshot
        .nodes
        .iter()
        .map(|(n, b)| (n.clone(), b.version.clone()))
        .collect();
    let view = cluster.view(Store::Chainfire).await?;
    let leader = cluster
        .contract
        .nodes
        .iter()
        .find(|n| matches!(view.role_of(n), NodeRole::Leader(_)))
        .map(|n| n.name.clone());
    let (waves, skipped) = plan_waves(
        &cluster.contract,
        leader.as_deref(),
        &booted,
        target,
        plan.wave_size,
    );
    tracing::info!(
        version = short(&version),
        waves = waves.len(),
        skipped = skipped.len(),
        "rolling out"
    );
    let mut done: Vec<String> = reports
        .iter()
        .flat_map(|r| r.wave.nodes.iter().cloned())
        .collect();
    for (i, wave) in waves.iter().enumerate() {
        op.check()?;
        let _ = op
            .lock
            .note(&format!(
                "wave {}/{}: {}",
                i + 1,
                waves.len(),
                wave.nodes.join(", ")
            ))
            .await;
        match reboot_wave(op, wave, target, plan.wave_timeout).await? {
            Ok(seconds) => {
                done.extend(wave.nodes.iter().cloned());
                reports.push(WaveReport {
                    wave: wave.clone(),
                    seconds,
                    adopted: false,
                });
            }
            Err((node, reason)) => {
                let pending: Vec<String> = waves[i..]
                    .iter()
                    .flat_map(|w| w.nodes.iter().cloned())
                    .filter(|n| *n != node)
                    .collect();
                return Err(Error::RolloutStopped(Box::new(Stopped {
                    node,
                    reason,
                    done,
                    pending,
                    lock_id: op.lock.id().await,
                })));
            }
        }
    }
    Ok(RolloutReport {
        version,
        waves: reports,
        skipped,
    })
}

/// A rollout that took the lock over from a lapsed hold (its operator's process killed, its
/// machine's power cut mid-wave) first finishes what that hold left under way: the reboots it
/// had requested — its id in theirs — are waited for through the same health gate, not refused
/// as someone else's, and their requests cleared. A node the contract no longer names is left
/// for `--abort`.
async fn adopt(
    op: &Operation<'_>,
    target: Option<&str>,
    timeout: Duration,
) -> Result<Option<WaveReport>> {
    let Some(old) = op.lock.took_over() else {
        return Ok(None);
    };
    let cluster = op.ctl.cluster()?;
    let kv = cluster.chainfire_kv()?;
    let mut nodes = Vec::new();
    let mut group = SlotGroup::Workers;
    for (name, (req, _)) in reboots::list_requests(&kv).await? {
        if req.id != format!("{}-{name}", old.id) {
            continue;
        }
        let Ok(node) = cluster.contract.node(&name) else {
            continue;
        };
        if req.group == SlotGroup::Voters {
            group = SlotGroup::Voters;
        }
        nodes.push(node.clone());
    }
    if nodes.is_empty() {
        return Ok(None);
    }
    let wave = Wave {
        group,
        nodes: nodes.iter().map(|n| n.name.clone()).collect(),
    };
    tracing::warn!(
        holder = %old.holder,
        what = %old.what,
        nodes = %wave.nodes.join(", "),
        "finishing the reboots the lapsed hold left under way"
    );
    let _ = op
        .lock
        .note(&format!(
            "finishing {}'s reboots: {}",
            old.what,
            wave.nodes.join(", ")
        ))
        .await;
    match await_wave(op, &nodes, target, timeout).await? {
        Ok(seconds) => Ok(Some(WaveReport {
            wave,
            seconds,
            adopted: true,
        })),
        Err((node, reason)) => Err(Error::RolloutStopped(Box::new(Stopped {
            pending: wave.nodes.iter().filter(|n| **n != node).cloned().collect(),
            node,
            reason: format!("a reboot {} had asked for: {reason}", old.what),
            done: Vec::new(),
            lock_id: op.lock.id().await,
        }))),
    }
}

/// The whole of a rollout: the lock taken, the bundle rolled, the lock released — or left
/// stopped with the reason when a node failed its gate.
pub async fn rollout(ctl: &Ctl, plan: &RolloutPlan) -> Result<RolloutReport> {
    let v = match &plan.bundle {
        Some(dir) => version_of(dir)?,
        None => ctl.bundle_site()?.current_version()?,
    };
    let op = ctl.begin(&format!("rollout {}", short(&v))).await?;
    let r = run(&op, plan).await;
    let changed = !matches!(&r, Err(Error::Config(_) | Error::Contract(_)));
    op.end(r, changed).await
}

/// `rackctl reboot NODE`: one node reboots itself (no bundle change), holding the lock.
pub async fn reboot(ctl: &Ctl, name: &str, timeout: Duration) -> Result<f64> {
    let contract = ctl.contract()?;
    let node = contract.node(name)?.clone();
    let op = ctl.begin(&format!("reboot {name}")).await?;
    let wave = Wave {
        group: if node.voter {
            SlotGroup::Voters
        } else {
            SlotGroup::Workers
        },
        nodes: vec![name.to_string()],
    };
    let r = match reboot_wave(&op, &wave, None, timeout).await {
        Ok(Ok(secs)) => Ok(secs),
        Ok(Err((node, reason))) => Err(Error::RolloutStopped(Box::new(Stopped {
            node,
            reason,
            done: Vec::new(),
            pending: Vec::new(),
            lock_id: op.lock.id().await,
        }))),
        Err(e) => Err(e),
    };
    op.end(r, true).await
}

/// `rackctl rollout --abort`: the lock released, reboot requests withdrawn, slots emptied.
pub async fn abort(ctl: &Ctl) -> Result<Aborted> {
    crate::lock::abort(&ctl.cluster()?.chainfire_kv()?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Contract {
        let nodes: Vec<serde_json::Value> = (1..=7)
            .map(|i| {
                serde_json::json!({
                    "name": format!("node{i:02}"),
                    "mac": format!("52:54:00:00:00:{i:02x}"),
                    "ipv4": format!("10.0.0.{}", 10 + i),
                    "roles": [if i <= 3 { "control-plane" } else { "worker" }],
                })
            })
            .collect();
        Contract::parse(
            &serde_json::json!({
                "version": 2,
                "cluster": {"name": "t", "id": "t-1"},
                "boot_server": {"address": "10.0.0.1"},
                "initial_voters": ["node01", "node02", "node03"],
                "nodes": nodes,
            })
            .to_string(),
        )
        .expect("valid")
    }

    #[test]
    fn voters_go_alone_with_the_leader_last_then_workers_in_waves() {
        let c = contract();
        let booted = BTreeMap::from([
            ("node05".to_string(), Some("v2".to_string())),
            ("node01".to_string(), Some("v1".to_string())),
        ]);
        let (waves, skipped) = plan_waves(&c, Some("node01"), &booted, Some("v2"), 2);
        let names: Vec<Vec<&str>> = waves
            .iter()
            .map(|w| w.nodes.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec!["node02"],
                vec!["node03"],
                vec!["node01"],
                vec!["node04", "node06"],
                vec!["node07"],
            ]
        );
        assert_eq!(skipped, ["node05"]);
        assert!(waves[..3].iter().all(|w| w.group == SlotGroup::Voters));
        assert!(waves[3..].iter().all(|w| w.group == SlotGroup::Workers));
        // No known versions: nothing is skipped.
        let (waves, skipped) = plan_waves(&c, None, &BTreeMap::new(), None, 10);
        assert_eq!(waves.len(), 4);
        assert!(skipped.is_empty());
    }
}
