//! `rackctl grow`: new machines added to the contract (workers, or voters up to five), the
//! bundle rebuilt and swapped in, and — once the new machines have PXE-booted and joined —
//! the voter set reconciled with the contract one change at a time.
//!
//! New machines join by themselves (their first-boot chain: a learner, promoted if the contract
//! names it a voter); `grow` waits for them, then promotes every contract voter still a
//! learner (an existing worker named a voter, or a joiner that stopped before its promotion).
//! Nothing here removes a voter.
//!
//! Run again after it stopped — `rackctl` killed, its machine's power cut, between the
//! contract's edit and the bundle being served, or while it waited for the joins — the same
//! command goes on: nodes already in the contract exactly as asked are kept, the bundle is
//! built for the contract as it stands and swapped in, and the joins are waited for (a node
//! that joined already answers at once).

use std::time::Duration;

use plasmacloud_contract::Contract;

use crate::contract_edit::{ContractEdit, NewNode};
use crate::ctl::Operation;
use crate::{Ctl, Error, Result};

/// What to add.
#[derive(Debug, Clone, Default)]
pub struct GrowPlan {
    /// New machines.
    pub add: Vec<NewNode>,
    /// Existing nodes to make voters.
    pub make_voters: Vec<String>,
}

impl GrowPlan {
    /// `grow node04, node05` for the lock.
    pub fn describe(&self) -> String {
        let mut names: Vec<&str> = self.add.iter().map(|n| n.name.as_str()).collect();
        names.extend(self.make_voters.iter().map(String::as_str));
        format!("grow {}", names.join(", "))
    }
}

/// The contract and bundle changed; machines may boot.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The contract now.
    pub contract: Contract,
    /// The bundle now served, when bundles are managed here.
    pub bundle: Option<String>,
    /// The machines to wait for.
    pub new_nodes: Vec<String>,
}

/// What `grow` did.
#[derive(Debug, Clone)]
pub struct GrowReport {
    /// The bundle served.
    pub bundle: Option<String>,
    /// New nodes with their Raft ids.
    pub joined: Vec<(String, u64)>,
    /// Promotions made here.
    pub promoted: Vec<String>,
    /// Voters now.
    pub voters: usize,
}

/// Changes the contract and the bundle.
pub async fn prepare(op: &Operation<'_>, plan: &GrowPlan) -> Result<Prepared> {
    if plan.add.is_empty() && plan.make_voters.is_empty() {
        return Err(Error::Config(
            "nothing to grow: give --add NAME=MAC@IPV4 and/or --voter NAME".into(),
        ));
    }
    let mut edit = ContractEdit::load(&op.ctl.config.contract)?;
    for n in &plan.add {
        if edit.holds(n) {
            // A grow that stopped (killed, its machine's power cut) after its contract edit and
            // before its bundle was served: the same command again goes on from there — the
            // bundle is built and swapped in for the contract as it stands.
            tracing::warn!(node = %n.name, "in the contract already, as asked (an earlier grow stopped after its edit); going on");
            continue;
        }
        edit.add_node(n)?;
    }
    for v in &plan.make_voters {
        if !plan.add.iter().any(|n| &n.name == v) {
            edit.make_voter(v, None)?;
        }
    }
    op.check()?;
    let (contract, bundle) = op.ctl.apply_contract(&edit).await?;
    Ok(Prepared {
        contract,
        bundle,
        new_nodes: plan.add.iter().map(|n| n.name.clone()).collect(),
    })
}

/// Waits for the new machines to join, then reconciles the voters.
pub async fn complete(
    op: &Operation<'_>,
    prepared: &Prepared,
    timeout: Duration,
) -> Result<GrowReport> {
    let cluster = op.ctl.cluster()?;
    let mut joined = Vec::new();
    for name in &prepared.new_nodes {
        let node = cluster.contract.node(name)?.clone();
        tracing::info!(node = %name, "waiting for it to boot and join");
        let id = cluster.wait_joined(&node, None, timeout).await?;
        joined.push((name.clone(), id));
        op.check()?;
    }
    let promoted = cluster.reconcile_voters(timeout).await?;
    Ok(GrowReport {
        bundle: prepared.bundle.clone(),
        joined,
        promoted,
        voters: cluster.contract.voters().len(),
    })
}

/// The whole of `grow`, holding the lock: prepare, wait, reconcile, release (or leave the
/// lock stopped when it failed after the contract changed).
pub async fn grow(ctl: &Ctl, plan: &GrowPlan, timeout: Duration) -> Result<GrowReport> {
    let op = ctl.begin(&plan.describe()).await?;
    let prepared = match prepare(&op, plan).await {
        Ok(p) => p,
        Err(e) => return op.end_unprepared(e).await,
    };
    let r = complete(&op, &prepared, timeout).await;
    op.end(r, true).await
}
