//! The rollout lock: one Chainfire key, [`LOCK_KEY`], that every operation changing the rack
//! holds while it runs (FleetLock's idea, as Flatcar's Zincati uses it: whoever reboots holds
//! the lock first).
//!
//! The rule:
//! - it is **taken create-only** (`prev_exist=false`), naming its holder, an id, what for, and
//!   a lease; a second rollout, or a human's `rackctl reboot`, finds it and is refused;
//! - while the operation runs, **the lease is renewed** (compare-and-swap on the key's revision,
//!   every third of the lease); an operation whose holder died stops renewing, and once its
//!   lease has lapsed the next operation may take the lock over (by compare-and-swap on the
//!   lapsed record, so two cannot both take it);
//! - a renewal that finds the key changed to another hold's (or gone) means the lock was lost
//!   (aborted, or taken over): the operation stops at its next step; one that finds it changed
//!   but still this hold's (an earlier renewal whose outcome was unknown landed after all)
//!   goes on from the key's revision;
//! - an operation that **stops** on a failure leaves the lock held in state `stopped`, with no
//!   lease (it never lapses) and the reason: nothing else runs until an operator has looked and
//!   released it (`rackctl rollout --abort`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plasmacloud_store_client::{Keyspace, Precondition};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::{now_ms, Error, Result};

/// The lock's key.
pub const LOCK_KEY: &str = "plasmacloud/day2/lock";
/// The lease a running holder renews.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// `running` (lease renewed) or `stopped` (held until `--abort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockState {
    /// Its holder runs and renews the lease.
    Running,
    /// Its holder stopped on a failure; held until released by hand.
    Stopped,
}

/// The lock's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRecord {
    /// Who (operator identity and host).
    pub holder: String,
    /// This hold's id.
    pub id: String,
    /// What for (`rollout 1a2b3c…`, `reboot node02`, `grow node04, node05`).
    pub what: String,
    /// Running or stopped.
    pub state: LockState,
    /// When it was taken.
    pub since_ms: u64,
    /// When the lease was last renewed.
    pub renewed_ms: u64,
    /// The lease; `None` once stopped (it never lapses).
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// Why it stopped, or progress.
    #[serde(default)]
    pub detail: String,
}

impl LockRecord {
    /// Has a running holder's lease lapsed (at `now`)?
    pub fn lapsed(&self, now: u64) -> bool {
        self.state == LockState::Running
            && self
                .lease_ms
                .is_some_and(|l| self.renewed_ms.saturating_add(l) < now)
    }

    /// The error for an operation that finds this lock held.
    pub fn held_error(&self) -> Error {
        Error::LockHeld(Box::new(self.clone()))
    }
}

/// Reads the lock (and its revision).
pub async fn read(kv: &Keyspace) -> Result<Option<(LockRecord, u64)>> {
    Ok(firstboot::reboots::read_json(kv, LOCK_KEY).await?)
}

/// A held lock; renewed in the background until released or stopped.
#[derive(Debug)]
pub struct RolloutLock {
    kv: Keyspace,
    record: Arc<tokio::sync::Mutex<(LockRecord, u64)>>,
    lost: Arc<AtomicBool>,
    renewal: tokio::task::JoinHandle<()>,
    took_over: Option<LockRecord>,
}

impl RolloutLock {
    /// Takes the lock for `what`, or refuses with who holds it. A running hold whose lease
    /// has lapsed is taken over.
    pub async fn acquire(kv: &Keyspace, holder: &str, what: &str, lease: Duration) -> Result<Self> {
        let mut b = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut b);
        let now = now_ms();
        let record = LockRecord {
            holder: holder.into(),
            id: hex::encode(b),
            what: what.into(),
            state: LockState::Running,
            since_ms: now,
            renewed_ms: now,
            lease_ms: Some(lease.as_millis() as u64),
            detail: String::new(),
        };
        let (cond, took_over) = match read(kv).await? {
            None => (Precondition::Absent, None),
            Some((held, rev)) if held.lapsed(now_ms()) => {
                tracing::warn!(
                    holder = %held.holder,
                    what = %held.what,
                    "the rollout lock's lease lapsed (its holder is gone); taking it over"
                );
                (Precondition::Revision(rev), Some(held))
            }
            Some((held, _)) => return Err(held.held_error()),
        };
        let rev = match firstboot::reboots::write_json(kv, LOCK_KEY, &record, cond).await {
            Ok(rev) => rev,
            Err(firstboot::reboots::CoordinationError::Store(e)) if e.is_conflict() => {
                // Someone else took it between the read and the write.
                return Err(match read(kv).await? {
                    Some((held, _)) => held.held_error(),
                    None => {
                        Error::Config("the rollout lock changed while taking it; try again".into())
                    }
                });
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(id = %record.id, %what, "took the rollout lock");
        let record = Arc::new(tokio::sync::Mutex::new((record, rev)));
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn(renew(kv.clone(), record.clone(), lost.clone(), lease));
        Ok(Self {
            kv: kv.clone(),
            record,
            lost,
            renewal,
            took_over,
        })
    }

    /// The lapsed hold this one took over, if it did: its holder went away mid-operation
    /// (killed, its machine's power cut), and what it left under way is this hold's now.
    pub fn took_over(&self) -> Option<&LockRecord> {
        self.took_over.as_ref()
    }

    /// This hold's id.
    pub async fn id(&self) -> String {
        self.record.lock().await.0.id.clone()
    }

    /// `Err` when the lock was lost (the operation must stop).
    pub fn check(&self, what: &str) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            Err(Error::LockLost(what.into()))
        } else {
            Ok(())
        }
    }

    /// Writes progress into the record (at the next renewal's revision).
    pub async fn note(&self, detail: &str) -> Result<()> {
        let mut g = self.record.lock().await;
        let mut next = g.0.clone();
        next.detail = detail.into();
        next.renewed_ms = now_ms();
        let rev = self.write(&next, g.1).await?;
        *g = (next, rev);
        Ok(())
    }

    /// The key's revision when it still holds this hold (a renewal cancelled after its write
    /// went out leaves the revision in memory behind).
    async fn own_revision(&self, id: &str) -> Result<Option<u64>> {
        Ok(read_own(&self.kv, id).await?.map(|(_, rev)| rev))
    }

    async fn write(&self, next: &LockRecord, rev: u64) -> Result<u64> {
        let mut rev = rev;
        for _ in 0..2 {
            match firstboot::reboots::write_json(
                &self.kv,
                LOCK_KEY,
                next,
                Precondition::Revision(rev),
            )
            .await
            {
                Ok(r) => return Ok(r),
                Err(firstboot::reboots::CoordinationError::Store(e)) if e.is_conflict() => {
                    match self.own_revision(&next.id).await? {
                        Some(r) if r != rev => rev = r,
                        _ => break,
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.lost.store(true, Ordering::SeqCst);
        Err(Error::LockLost(next.what.clone()))
    }

    /// Releases the lock (deletes the key if it is still this hold's). Chainfire busy — an
    /// election, a leader that lost its quorum for a moment while new voters catch up — is
    /// ridden out for up to [`RELEASE_PATIENCE`]: a delete that certainly had no effect is
    /// sent again, and one whose outcome is unknown is read back first (the key gone or no
    /// longer this hold's: released).
    pub async fn release(self) -> Result<()> {
        self.renewal.abort();
        let g = self.record.lock().await;
        let mut rev = g.1;
        let until = tokio::time::Instant::now() + RELEASE_PATIENCE;
        let mut conflicts = 0;
        loop {
            let busy = match self.kv.delete_if(LOCK_KEY, rev).await {
                Ok(_) => {
                    tracing::info!(id = %g.0.id, "released the rollout lock");
                    return Ok(());
                }
                Err(e) if e.is_conflict() => {
                    conflicts += 1;
                    match self.own_revision(&g.0.id).await? {
                        Some(r) if r != rev && conflicts < 2 => {
                            rev = r;
                            continue;
                        }
                        _ => return Err(Error::LockLost(g.0.what.clone())),
                    }
                }
                Err(e) if e.is_retryable() || e.is_outcome_unknown() => e,
                Err(e) => return Err(Error::store("releasing the rollout lock", e)),
            };
            if tokio::time::Instant::now() >= until {
                return Err(Error::store("releasing the rollout lock", busy));
            }
            tracing::warn!(error = %busy, "Chainfire did not take the lock's release yet; trying again");
            tokio::time::sleep(RELEASE_RETRY).await;
            if busy.is_outcome_unknown() {
                match read(&self.kv).await {
                    Ok(Some((r, now))) if r.id == g.0.id => rev = now,
                    Ok(_) => {
                        tracing::info!(id = %g.0.id, "released the rollout lock");
                        return Ok(());
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the rollout lock back yet"),
                }
            }
        }
    }

    /// Leaves the lock held in state `stopped` with `why` (no lease: it never lapses).
    pub async fn stop(self, why: &str) -> Result<LockRecord> {
        self.renewal.abort();
        let g = self.record.lock().await;
        let mut next = g.0.clone();
        next.state = LockState::Stopped;
        next.lease_ms = None;
        next.detail = why.into();
        next.renewed_ms = now_ms();
        self.write(&next, g.1).await?;
        Ok(next)
    }
}

impl Drop for RolloutLock {
    fn drop(&mut self) {
        // Dropped without release or stop (an error path, a panic): renewal stops and the
        // lease lapses, so the next operation may take over.
        self.renewal.abort();
    }
}

async fn renew(
    kv: Keyspace,
    record: Arc<tokio::sync::Mutex<(LockRecord, u64)>>,
    lost: Arc<AtomicBool>,
    lease: Duration,
) {
    let every = (lease / 3).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(every).await;
        let mut g = record.lock().await;
        let mut next = g.0.clone();
        next.renewed_ms = now_ms();
        match firstboot::reboots::write_json(&kv, LOCK_KEY, &next, Precondition::Revision(g.1))
            .await
        {
            Ok(rev) => *g = (next, rev),
            Err(firstboot::reboots::CoordinationError::Store(e)) if e.is_conflict() => {
                // The key moved on. A renewal whose outcome was unknown (a leader that lost its
                // quorum before confirming it) may have landed after all: if the key still
                // names this hold, that was us, and the renewal goes on from there.
                match read_own(&kv, &g.0.id).await {
                    Ok(Some(own)) => {
                        tracing::info!(id = %g.0.id, revision = own.1, "an earlier renewal landed after all");
                        *g = own;
                    }
                    Ok(None) => {
                        tracing::error!(id = %g.0.id, "the rollout lock was taken away; stopping");
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the rollout lock back yet")
                    }
                }
            }
            // Chainfire busy (an election): try again at the next tick, well within the lease.
            Err(e) => tracing::warn!(error = %e, "cannot renew the rollout lock's lease yet"),
        }
    }
}

/// The lock and its revision while it still names the hold `id`.
async fn read_own(kv: &Keyspace, id: &str) -> Result<Option<(LockRecord, u64)>> {
    Ok(read(kv).await?.filter(|(r, _)| r.id == id))
}

/// What `--abort` cleared.
#[derive(Debug, Clone, Default)]
pub struct Aborted {
    /// The lock as it was.
    pub lock: Option<LockRecord>,
    /// Reboot requests withdrawn, by node, with the state they were in.
    pub requests: Vec<(String, String)>,
    /// Slot holders released, by group.
    pub slots: Vec<(String, String)>,
}

/// How long [`RolloutLock::release`] rides out a Chainfire that cannot take writes.
pub const RELEASE_PATIENCE: Duration = Duration::from_secs(30);
/// How long it waits between two tries.
const RELEASE_RETRY: Duration = Duration::from_millis(500);

/// Releases the lock whatever its state, withdraws every reboot request and empties every
/// reboot slot. A node that was rebooting comes back to find nothing asked of it.
pub async fn abort(kv: &Keyspace) -> Result<Aborted> {
    use firstboot::reboots::{self, SlotGroup};
    let lock = delete_latest(kv, LOCK_KEY, "releasing the rollout lock", read(kv).await?).await?;
    let mut out = Aborted {
        lock,
        ..Aborted::default()
    };
    for (node, first) in reboots::list_requests(kv).await? {
        let key = reboots::request_key(&node);
        let withdrawn: Option<reboots::RebootRequest> =
            delete_latest(kv, &key, "withdrawing a reboot request", Some(first)).await?;
        if let Some(req) = withdrawn {
            out.requests.push((node, req.state.as_str().into()));
        }
    }
    for group in [SlotGroup::Voters, SlotGroup::Workers] {
        let (slots, _) = reboots::read_slots(kv, group).await?;
        for node in slots.holders.keys() {
            reboots::release_slot(kv, group, node).await?;
            out.slots.push((group.as_str().into(), node.clone()));
        }
    }
    Ok(out)
}

/// Deletes `key`, whatever version it is at, returning the value it held (`None`: already
/// gone). Someone may be changing it at the same moment (a running rollout renewing its lock,
/// a node coming back marking its request done), so a lost compare-and-delete reads it again
/// and retries.
async fn delete_latest<T: serde::de::DeserializeOwned>(
    kv: &Keyspace,
    key: &str,
    what: &str,
    mut current: Option<(T, u64)>,
) -> Result<Option<T>> {
    const ATTEMPTS: usize = 10;
    for _ in 0..ATTEMPTS {
        let Some((value, rev)) = current else {
            return Ok(None);
        };
        match kv.delete_if(key, rev).await {
            Ok(_) => return Ok(Some(value)),
            Err(e) if e.is_conflict() => {
                current = firstboot::reboots::read_json(kv, key).await?;
            }
            Err(e) => return Err(Error::store(what, e)),
        }
    }
    Err(Error::store(
        what,
        plasmacloud_store_client::Error::Conflict {
            revision: current.map_or(0, |(_, rev)| rev),
            message: format!(
                "{key} changed under each of {ATTEMPTS} attempts; run `rackctl rollout --abort` again"
            ),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_lease_lapses_and_a_stopped_lock_never_does() {
        let mut r = LockRecord {
            holder: "op".into(),
            id: "1".into(),
            what: "rollout".into(),
            state: LockState::Running,
            since_ms: 1_000,
            renewed_ms: 1_000,
            lease_ms: Some(30_000),
            detail: String::new(),
        };
        assert!(!r.lapsed(30_000));
        assert!(r.lapsed(31_001));
        r.state = LockState::Stopped;
        r.lease_ms = None;
        assert!(!r.lapsed(u64::MAX));
        let e = r.held_error().to_string();
        assert!(
            e.contains("rollout --abort") && e.contains("stopped"),
            "{e}"
        );
    }
}
