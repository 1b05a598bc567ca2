//! `rackctl retire NAME [--promote WORKER]`: a node leaves the rack for good.
//!
//! In this order, each step waited for, the contract checked first as it will end up:
//! 1. a voter is retired only with a worker promoted in its place (`--promote`: the contract
//!    keeps 1, 3 or 5 voters), and that worker is promoted in both stores first — so the
//!    voter count never drops below the contract's;
//! 2. leadership is moved away from it in both stores;
//! 3. it is removed from both stores (a majority of the voters stays alive);
//! 4. its certificates are revoked (the one its TLS handshake shows, every one pxe-server's
//!    issued log lists for it, any `--serial`);
//! 5. it leaves the contract and the bundle (pxe-server reloads both: its inventory entry goes
//!    with the contract), its DHCP lease is released (`DELETE /v1/leases/MAC`, so the
//!    address may go to another machine), and its reboot keys leave Chainfire.
//!
//! The machine itself is left running: power it off (its certificate no longer opens any
//! port of the cluster).

use std::time::Duration;

use crate::boot_view::release_departed;
use crate::certs::{add_issued, peer_certificate, ToRevoke};
use crate::contract_edit::ContractEdit;
use crate::ctl::Operation;
use crate::operator::Store;
use crate::{Ctl, Error, Result};

/// What to retire.
#[derive(Debug, Clone)]
pub struct RetirePlan {
    /// The node.
    pub name: String,
    /// The worker that takes its place among the voters (required for a voter).
    pub promote: Option<String>,
    /// Serials to revoke besides those found.
    pub serials: Vec<String>,
}

/// What `retire` did.
#[derive(Debug, Clone)]
pub struct RetireReport {
    /// Members removed, by store.
    pub removed: Vec<(Store, u64)>,
    /// Promotions made first.
    pub promoted: Vec<String>,
    /// Serials revoked.
    pub revoked: Vec<String>,
    /// The bundle now served.
    pub bundle: Option<String>,
    /// The address the boot server released from its MAC, if it held one.
    pub lease_released: Option<String>,
}

/// Retires a node, holding the lock of `op`.
pub async fn run(op: &Operation<'_>, plan: &RetirePlan, timeout: Duration) -> Result<RetireReport> {
    let ctl = op.ctl;
    let cluster = ctl.cluster()?;
    let node = cluster.contract.node(&plan.name)?.clone();
    let mut edit = ContractEdit::load(&ctl.config.contract)?;
    match (&plan.promote, node.voter) {
        (None, true) => {
            return Err(Error::Config(format!(
                "{} is a voter: name a worker to take its place with --promote NODE (the contract keeps 1, 3 or 5 voters)",
                plan.name
            )))
        }
        (Some(p), false) => {
            return Err(Error::Config(format!(
                "{} is not a voter: --promote {p} is only for retiring a voter (`rackctl grow --voter` promotes)",
                plan.name
            )))
        }
        (Some(p), true) => edit.make_voter(p, Some(&plan.name))?,
        (None, false) => {}
    }
    edit.remove_node(&plan.name)?;
    edit.validate()?;

    let mut promoted = Vec::new();
    if let Some(p) = &plan.promote {
        let pnode = cluster.contract.node(p)?.clone();
        for store in Store::BOTH {
            op.check()?;
            let id = cluster
                .view(store)
                .await?
                .role_of(&pnode)
                .id()
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{p} is not a {} member; it must run before it can take {}'s place",
                        store.name(),
                        plan.name
                    ))
                })?;
            cluster.promote(store, id, timeout).await?;
            promoted.push(format!("{}: promoted {p} ({id})", store.name()));
        }
    }

    let mut removed = Vec::new();
    for store in Store::BOTH {
        op.check()?;
        let Some(id) = cluster.view(store).await?.role_of(&node).id() else {
            continue;
        };
        cluster.move_leader_away(store, id).await?;
        cluster.remove(store, id, timeout).await?;
        removed.push((store, id));
    }

    let identity = format!("urn:plasmacloud:node:{}", plan.name);
    let mut certs: Vec<ToRevoke> = plan
        .serials
        .iter()
        .map(|s| ToRevoke {
            serial: s.trim().to_lowercase(),
            identity: identity.clone(),
        })
        .collect();
    if let Ok(c) =
        peer_certificate(&ctl.operator, &node.chainfire_api(), Duration::from_secs(3)).await
    {
        if c.identity.name == plan.name && !certs.iter().any(|x| x.serial == c.serial) {
            certs.push(ToRevoke {
                serial: c.serial,
                identity: identity.clone(),
            });
        }
    }
    add_issued(&mut certs, ctl.config.pxe_state_dir.as_deref(), &plan.name)?;
    if certs.is_empty() {
        tracing::warn!(node = %plan.name, "no certificate of it is known: pass --state-dir or --serial");
    }
    let revoked = ctl
        .revoker()?
        .revoke(&certs, &format!("{} retired (rackctl retire)", plan.name))
        .await?;

    op.check()?;
    let (_, bundle) = ctl.apply_contract(&edit).await?;
    let lease_released =
        release_departed(ctl.boot.as_ref(), &plan.name, &node.mac.to_string()).await;
    let kv = cluster.chainfire_kv()?;
    for key in [
        firstboot::reboots::request_key(&plan.name),
        firstboot::reboots::report_key(&plan.name),
    ] {
        let _ = kv.delete(&key).await;
    }
    ctl.cluster()?.reconcile_voters(timeout).await?;
    Ok(RetireReport {
        removed,
        promoted,
        revoked,
        bundle,
        lease_released,
    })
}

/// The whole of `retire`, holding the lock.
pub async fn retire(ctl: &Ctl, plan: &RetirePlan, timeout: Duration) -> Result<RetireReport> {
    let op = ctl.begin(&format!("retire {}", plan.name)).await?;
    let r = run(&op, plan, timeout).await;
    let changed = !matches!(&r, Err(Error::Config(_) | Error::Contract(_)));
    op.end(r, changed).await
}
