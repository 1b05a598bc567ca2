//! The leader writes its own log beside replication, not before it.
//!
//! openraft 0.9 runs a leader's log append inside its core task and waits there until the store
//! reports the entries flushed; only then does it hand them to the replication streams. So a
//! lone write paid the leader's fsync *and then* a follower's round trip with its fsync, one
//! after the other (measured: replication began ~330 µs after the write arrived, right after the
//! leader's fsync). Raft does not need that order (Ongaro's thesis, §10.2.1: the leader may
//! write its log in parallel with replicating it, as long as it counts itself toward a commit
//! only once its entries are durable).
//!
//! The rule here: a leader's own new entries are reported flushed to openraft as soon as they
//! are queued for the synced write (`log_store`), so replication starts at once; in exchange,
//! **nothing that follows from a commit happens before the leader's copy is on disk**:
//!
//! 1. the state machine applies an entry only once this node's log is durable up to it (so a
//!    client is answered, and a linearizable read served, only for entries on a true majority:
//!    the followers that acknowledged — which flush before they answer — and the leader);
//! 2. a commit index is sent to followers (`leader_commit` of append and heartbeat RPCs) only
//!    once the leader's log is durable up to it, so no follower applies an entry a crashed
//!    leader could still lose;
//! 3. the committed index itself is written after the entries it covers (one ordered writer).
//!
//! Followers never take this path: they acknowledge only what they have synced. A synced write
//! that fails after its entries were reported flushed cannot be taken back, so the process
//! aborts (as etcd does on a failed WAL sync) and restarts from what is on disk.
//!
//! [`Durable`] is how far the log is on disk: the highest index written with `sync` and not
//! truncated since, as the log writer reports it.

use std::time::Duration;

use tokio::sync::watch;

/// How far this node's log is on disk (cheap to clone).
#[derive(Debug, Clone)]
pub struct Durable {
    rx: watch::Receiver<u64>,
}

/// The log writer's side of [`Durable`].
#[derive(Debug)]
pub(crate) struct DurableWriter {
    tx: watch::Sender<u64>,
}

/// A new pair, starting at `index` (the last entry already on disk).
pub(crate) fn durable_from(index: u64) -> (DurableWriter, Durable) {
    let (tx, rx) = watch::channel(index);
    (DurableWriter { tx }, Durable { rx })
}

impl DurableWriter {
    /// Entries up to `index` are on disk.
    pub(crate) fn appended(&self, index: u64) {
        self.tx.send_replace(index);
    }

    /// The log was cut from `index` on: what is on disk now ends before it.
    pub(crate) fn truncated(&self, index: u64) {
        self.tx
            .send_modify(|d| *d = (*d).min(index.saturating_sub(1)));
    }
}

impl Durable {
    /// The highest index on disk.
    pub fn index(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Waits until entries up to `index` are on disk. Logs a warning every 5 s while it waits
    /// (a log writer that stopped making progress).
    pub async fn wait_for(&self, index: u64) {
        if self.index() >= index {
            return;
        }
        let mut rx = self.rx.clone();
        loop {
            let waited = tokio::time::timeout(Duration::from_secs(5), async {
                rx.wait_for(|d| *d >= index).await.map(|_| ())
            })
            .await;
            match waited {
                Ok(Ok(())) => return,
                // The writer is gone (shutting down): nothing will ever be durable again, and
                // nothing may proceed as if it were.
                Ok(Err(_)) => std::future::pending::<()>().await,
                Err(_) => tracing::warn!(
                    waiting_for = index,
                    durable = self.index(),
                    "still waiting for the log writer to sync the log"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_end_when_the_writer_reaches_the_index_and_truncation_lowers_it() {
        let (w, d) = durable_from(3);
        d.wait_for(2).await;
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.wait_for(5).await }
        });
        w.appended(4);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        w.appended(5);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("done")
            .expect("joined");
        w.truncated(3);
        assert_eq!(d.index(), 2);
        w.truncated(9);
        assert_eq!(d.index(), 2);
    }
}
