//! `rackctl status`: every node of the contract (and every store member the contract does not
//! name) in one table — the bundle version it booted and its last boot event (pxe-server), its
//! Raft role in Chainfire and in FlareDB, when its certificate expires (read from its TLS
//! handshake, else from pxe-server's issued log), and its last health check (its reboot
//! agent's report in Chainfire, and its services' `/health` now).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use firstboot::reboots::{self, NodeReport, RebootRequest};
use plasmacloud_contract::NodeSpec;
use serde::Serialize;

use crate::bundle::short;
use crate::certs::{issued_to, peer_certificate, read_issued};
use crate::cluster::{NodeRole, StoreView};
use crate::lock::LockRecord;
use crate::operator::Store;
use crate::{utc_ms, Ctl, Result};

/// One node's row.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Name.
    pub name: String,
    /// `voter` or `worker` (the contract's word).
    pub contract_role: String,
    /// The bundle version it booted last (pxe-server's record).
    pub booted_version: Option<String>,
    /// Its last boot event (`phase status`) and when.
    pub phase: Option<String>,
    /// Chainfire role (`leader 1`, `voter 2`, `learner 5`, `-`).
    pub chainfire: String,
    /// FlareDB role.
    pub flaredb: String,
    /// Certificate expiry (RFC 3339), serial, and where it was read.
    pub cert: Option<String>,
    /// The certificate's expiry, Unix seconds.
    pub cert_not_after: Option<i64>,
    /// Its last health check (agent report) and `/health` now.
    pub health: String,
    /// Its reboot request, if any (`state: detail`).
    pub reboot: Option<String>,
}

/// The whole rack.
#[derive(Debug, Clone, Serialize)]
pub struct RackStatus {
    /// Cluster name.
    pub cluster: String,
    /// The bundle version the boot server serves.
    pub served_version: Option<String>,
    /// The boot server's answer, when it did not answer.
    pub boot_server_error: Option<String>,
    /// The rollout lock, when held.
    pub lock: Option<String>,
    /// One row per contract node.
    pub nodes: Vec<NodeStatus>,
    /// Store members at no contract node's address (`store id addr role`).
    pub strangers: Vec<String>,
    /// Store errors.
    pub errors: Vec<String>,
}

fn role_label(view: &Option<StoreView>, node: &NodeSpec) -> String {
    match view {
        Some(v) => v.role_of(node).label(),
        None => "?".into(),
    }
}

async fn cert_of(ctl: &Ctl, node: &NodeSpec) -> (Option<String>, Option<i64>) {
    match peer_certificate(&ctl.operator, &node.chainfire_api(), Duration::from_secs(2)).await {
        Ok(c) => {
            return (
                Some(format!(
                    "{} (serial {}, handshake)",
                    plasmacloud_pki::identity::utc(c.not_after),
                    c.serial
                )),
                Some(c.not_after),
            )
        }
        Err(e) => tracing::debug!(node = %node.name, error = %e, "no handshake"),
    }
    if let Some(dir) = &ctl.config.pxe_state_dir {
        if let Ok(all) = read_issued(dir) {
            if let Some(last) = issued_to(&all, &node.name).last() {
                return (
                    Some(format!(
                        "{} (serial {}, issued log)",
                        plasmacloud_pki::identity::utc(last.not_after),
                        last.serial
                    )),
                    Some(last.not_after),
                );
            }
        }
    }
    (None, None)
}

fn health_label(report: Option<&NodeReport>, now: &str) -> String {
    let last = match report {
        Some(r) => format!(
            "{} at {}",
            if r.health_ready {
                "ready".to_string()
            } else {
                format!("NOT ready ({})", r.health_failed.join("; "))
            },
            r.health_checked_ms
                .map(utc_ms)
                .unwrap_or_else(|| "?".into())
        ),
        None => "no report".into(),
    };
    format!("{last}; now {now}")
}

/// Gathers the status.
pub async fn status(ctl: &Ctl) -> Result<RackStatus> {
    let contract = ctl.contract()?;
    let cluster = ctl.cluster()?;
    let mut errors = Vec::new();
    let (cf, fd, boot) = futures::join!(
        cluster.view(Store::Chainfire),
        cluster.view(Store::Flaredb),
        ctl.boot.snapshot()
    );
    let cf = cf.map_err(|e| errors.push(e.to_string())).ok();
    let fd = fd.map_err(|e| errors.push(e.to_string())).ok();
    let (boot, boot_err) = match boot {
        Ok(b) => (b, None),
        Err(e) => (Default::default(), Some(e.to_string())),
    };
    let kv = cluster.chainfire_kv()?;
    // The served bundle against the contract: apart, an operation stopped between the two.
    if let Some(site) = ctl
        .config
        .bundle
        .clone()
        .map(crate::bundle::BundleSite::new)
    {
        match site.mismatch(&contract) {
            Ok(apart) => errors.extend(apart.into_iter().map(|a| {
                format!("{a} (an operation stopped between its contract edit and its bundle: run it again)")
            })),
            Err(e) => errors.push(format!("the served bundle: {e}")),
        }
    }
    // A Chainfire read that fails is said, not shown as "no report" or "free".
    let mut reports: BTreeMap<String, NodeReport> = BTreeMap::new();
    match kv.list(reboots::NODE_REPORT_PREFIX).await {
        Ok(list) => {
            for item in list.items {
                if let Ok(r) = serde_json::from_str::<NodeReport>(&item.value) {
                    reports.insert(r.node.clone(), r);
                }
            }
        }
        Err(e) => errors.push(format!("chainfire: cannot list the nodes' reports: {e}")),
    }
    let requests: BTreeMap<String, (RebootRequest, u64)> = match reboots::list_requests(&kv).await {
        Ok(r) => r,
        Err(e) => {
            errors.push(format!("chainfire: cannot list the reboot requests: {e}"));
            BTreeMap::new()
        }
    };
    let lock = match crate::lock::read(&kv).await {
        Ok(l) => l.map(|(r, _)| lock_label(&r)),
        Err(e) => {
            errors.push(format!("chainfire: cannot read the rollout lock: {e}"));
            None
        }
    };

    let rows = contract.nodes.iter().map(|n| {
        let boot = boot.nodes.get(&n.name).cloned().unwrap_or_default();
        let report = reports.get(&n.name).cloned();
        let request = requests.get(&n.name).map(|(r, _)| {
            format!(
                "{}{}{}",
                r.state.as_str(),
                if r.detail.is_empty() { "" } else { ": " },
                r.detail
            )
        });
        let (cf, fd, cluster) = (&cf, &fd, &cluster);
        async move {
            let (cert, not_after) = cert_of(ctl, n).await;
            let now = cluster.node_health(n).await.summary();
            NodeStatus {
                name: n.name.clone(),
                contract_role: if n.voter { "voter" } else { "worker" }.into(),
                booted_version: boot.version.clone(),
                phase: boot.last_event.map(|e| match &boot.last_event_at {
                    Some(at) => format!("{e} at {at}"),
                    None => e,
                }),
                chainfire: role_label(cf, n),
                flaredb: role_label(fd, n),
                cert,
                cert_not_after: not_after,
                health: health_label(report.as_ref(), &now),
                reboot: request,
            }
        }
    });
    let nodes = futures::future::join_all(rows).await;

    let mut strangers = Vec::new();
    for view in [&cf, &fd].into_iter().flatten() {
        for m in &view.members.members {
            if !contract
                .nodes
                .iter()
                .any(|n| view.member_of(n).map(|x| x.id) == Some(m.id))
            {
                let role = if view.members.leader == Some(m.id) {
                    NodeRole::Leader(m.id)
                } else if m.role == plasmacloud_store_client::MemberRole::Voter {
                    NodeRole::Voter(m.id)
                } else {
                    NodeRole::Learner(m.id)
                };
                strangers.push(format!(
                    "{} {} at {} ({}): at no contract node's address",
                    view.store.name(),
                    m.id,
                    m.api_addr,
                    role.label()
                ));
            }
        }
    }
    Ok(RackStatus {
        cluster: contract.name().into(),
        served_version: boot.served,
        boot_server_error: boot_err,
        lock,
        nodes,
        strangers,
        errors,
    })
}

fn lock_label(r: &LockRecord) -> String {
    format!(
        "held by {} for {:?} since {} ({:?}{}{})",
        r.holder,
        r.what,
        utc_ms(r.since_ms),
        r.state,
        if r.detail.is_empty() { "" } else { ": " },
        r.detail
    )
}

/// The table people read.
pub fn render(s: &RackStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}  bundle served: {}{}",
        s.cluster,
        s.served_version.as_deref().map(short).unwrap_or("?"),
        s.boot_server_error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "rollout lock: {}", s.lock.as_deref().unwrap_or("free"));
    let _ = writeln!(
        out,
        "{:<10} {:<7} {:<13} {:<12} {:<12} {:<22} {:<22} health",
        "node", "role", "booted", "chainfire", "flaredb", "phase", "cert expires"
    );
    for n in &s.nodes {
        let cert = n
            .cert_not_after
            .map(plasmacloud_pki::identity::utc)
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(
            out,
            "{:<10} {:<7} {:<13} {:<12} {:<12} {:<22} {:<22} {}{}",
            n.name,
            n.contract_role,
            n.booted_version.as_deref().map(short).unwrap_or("?"),
            n.chainfire,
            n.flaredb,
            n.phase
                .as_deref()
                .and_then(|p| p.split(" at ").next())
                .unwrap_or("?"),
            cert,
            n.health,
            n.reboot
                .as_deref()
                .map(|r| format!("; reboot {r}"))
                .unwrap_or_default()
        );
    }
    for x in &s.strangers {
        let _ = writeln!(out, "member {x}");
    }
    for e in &s.errors {
        let _ = writeln!(out, "error: {e}");
    }
    out
}
