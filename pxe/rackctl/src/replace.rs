//! `rackctl replace NAME --mac NEW`: a machine died for good, and a new one takes its name.
//!
//! In this order, each step waited for:
//! 1. the dead machine must be silent (its Chainfire and FlareDB do not answer `/health`;
//!    `--force` skips this) — a live machine is retired, not replaced;
//! 2. its members are found in both stores by its address (and its Raft id is read from
//!    Chainfire's `plasmacloud/raft-ids/by-node/NAME`, for the record);
//! 3. the contract gets the new MAC, the bundle is rebuilt and swapped in, so the new machine
//!    PXE-boots into its own overlay and enrollment, and the old MAC's DHCP lease is released
//!    (`DELETE /v1/leases/MAC`) so the new machine gets the node's address at once;
//! 4. the dead members are removed, one store at a time, only if a majority of the voters
//!    stays alive;
//! 5. its certificates are revoked (every one pxe-server's issued log lists for it, and any
//!    `--serial`);
//! 6. once the new machine has joined under a new Raft id (ids are never reused), the voter
//!    count is restored (it promotes itself when the contract names it a voter; what is left
//!    is promoted here).

use std::time::Duration;

use crate::boot_view::release_departed;
use crate::certs::{add_issued, ToRevoke};
use crate::contract_edit::ContractEdit;
use crate::ctl::Operation;
use crate::operator::Store;
use crate::{Ctl, Error, Result};

/// What to replace.
#[derive(Debug, Clone)]
pub struct ReplacePlan {
    /// The node's name.
    pub name: String,
    /// The new machine's boot MAC.
    pub mac: String,
    /// Serials to revoke besides those the issued log names.
    pub serials: Vec<String>,
    /// Replace even though the old machine still answers.
    pub force: bool,
}

/// The dead machine is out; the new one may boot.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The node.
    pub name: String,
    /// The dead machine's members, by store.
    pub removed: Vec<(Store, u64)>,
    /// Its Raft id as Chainfire recorded it.
    pub recorded_id: Option<u64>,
    /// Serials revoked.
    pub revoked: Vec<String>,
    /// The bundle now served.
    pub bundle: Option<String>,
    /// The address the boot server released from the dead machine's MAC, if it held one.
    pub lease_released: Option<String>,
}

/// What `replace` did.
#[derive(Debug, Clone)]
pub struct ReplaceReport {
    /// The preparation.
    pub prepared: Prepared,
    /// The new machine's Raft id.
    pub new_id: u64,
    /// Promotions made here.
    pub promoted: Vec<String>,
}

/// Steps 1–5.
pub async fn prepare(
    op: &Operation<'_>,
    plan: &ReplacePlan,
    timeout: Duration,
) -> Result<Prepared> {
    let ctl = op.ctl;
    let cluster = ctl.cluster()?;
    let node = cluster.contract.node(&plan.name)?.clone();
    if node.mac.to_string() == plan.mac.to_lowercase() {
        return Err(Error::Config(format!(
            "{} has MAC {} already; give the new machine's MAC",
            plan.name, plan.mac
        )));
    }
    let health = cluster.node_health(&node).await;
    let answering: Vec<&str> = health
        .services
        .iter()
        .filter(|(s, r)| *s != "iam" && r.is_ok())
        .map(|(s, _)| *s)
        .collect();
    if !answering.is_empty() && !plan.force {
        return Err(Error::Config(format!(
            "{}'s {} still answer(s) at {}: replace is for a machine that is gone — power it off first, or `rackctl retire {}` (or --force)",
            plan.name,
            answering.join(" and "),
            node.ipv4,
            plan.name
        )));
    }
    let mut old = Vec::new();
    for store in Store::BOTH {
        if let Some(id) = cluster.view(store).await?.role_of(&node).id() {
            old.push((store, id));
        }
    }
    let recorded_id = cluster
        .chainfire_kv()?
        .get(&format!(
            "{}{}",
            firstboot::ids::ID_BY_NODE_PREFIX,
            plan.name
        ))
        .await
        .ok()
        .flatten()
        .and_then(|v| v.value.trim().parse().ok());

    let mut certs: Vec<ToRevoke> = plan
        .serials
        .iter()
        .map(|s| ToRevoke {
            serial: s.trim().to_lowercase(),
            identity: format!("urn:plasmacloud:node:{}", plan.name),
        })
        .collect();
    add_issued(&mut certs, ctl.config.pxe_state_dir.as_deref(), &plan.name)?;
    if certs.is_empty() {
        tracing::warn!(
            node = %plan.name,
            "no certificate of the dead machine is known: pass --state-dir (pxe-server's issued log) or --serial, or it stays valid until it expires"
        );
    }

    let mut edit = ContractEdit::load(&ctl.config.contract)?;
    edit.set_mac(&plan.name, &plan.mac)?;
    op.check()?;
    let (_, bundle) = ctl.apply_contract(&edit).await?;
    // The served contract no longer names the old MAC: free the address for the new one.
    let lease_released =
        release_departed(ctl.boot.as_ref(), &plan.name, &node.mac.to_string()).await;

    for (store, id) in &old {
        op.check()?;
        cluster.remove(*store, *id, timeout).await?;
    }
    let revoked = ctl
        .revoker()?
        .revoke(
            &certs,
            &format!("{}'s machine replaced (rackctl replace)", plan.name),
        )
        .await?;
    Ok(Prepared {
        name: plan.name.clone(),
        removed: old,
        recorded_id,
        revoked,
        bundle,
        lease_released,
    })
}

/// Step 6.
pub async fn complete(
    op: &Operation<'_>,
    prepared: &Prepared,
    timeout: Duration,
) -> Result<ReplaceReport> {
    let cluster = op.ctl.cluster()?;
    let node = cluster.contract.node(&prepared.name)?.clone();
    let old = prepared.removed.first().map(|(_, id)| *id);
    tracing::info!(node = %prepared.name, "waiting for the new machine to boot and join");
    let new_id = cluster.wait_joined(&node, old, timeout).await?;
    op.check()?;
    let promoted = cluster.reconcile_voters(timeout).await?;
    Ok(ReplaceReport {
        prepared: prepared.clone(),
        new_id,
        promoted,
    })
}

/// The whole of `replace`, holding the lock.
pub async fn replace(ctl: &Ctl, plan: &ReplacePlan, timeout: Duration) -> Result<ReplaceReport> {
    let op = ctl.begin(&format!("replace {}", plan.name)).await?;
    let prepared = match prepare(&op, plan, timeout).await {
        Ok(p) => p,
        Err(e) => return op.end_unprepared(e).await,
    };
    let r = complete(&op, &prepared, timeout).await;
    op.end(r, true).await
}
