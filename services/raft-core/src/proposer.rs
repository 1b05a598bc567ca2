//! Batches concurrent client writes into single Raft entries.
//!
//! openraft 0.9 appends, fsyncs, replicates and applies every `client_write` as its own log
//! entry. Under concurrent load that means one fsync per write on the leader and a replication
//! batch made of many small entries. The proposer keeps at most [`MAX_IN_FLIGHT`] proposals in
//! Raft at a time; writes that arrive while those are in flight queue up and go together as one
//! [`Command::Batch`] entry once a slot frees. A lone write (no queue) is proposed at once, so
//! batching costs a single client nothing.
//!
//! A write whose caller stopped waiting (its request deadline passed while Raft had no quorum
//! and it sat in the queue) is dropped unproposed, so an outage does not pile up writes that
//! would all land at once when the quorum returns.
//!
//! A leader handing its leadership over ([`crate::handover`]) pauses the proposer
//! ([`Proposer::pause`]): writes queue and are proposed once the pause ends — by then to a
//! follower, which refuses them unapplied (`ForwardToLeader`), so their clients go to the new
//! leader.
//!
//! A batch never holds two writes to the same key: all commands in a batch share the entry's
//! log index as their revision, and a key's revision must name exactly one write (compare-and-
//! swap on a revision depends on it). A write to a key already in the batch starts the next one.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::types::{Command, CommandResult, NodeId, Raft};

/// Proposals (single writes or batches) in Raft at once.
pub const MAX_IN_FLIGHT: usize = 2;
/// Writes in one batch at most.
pub const MAX_BATCH: usize = 256;
/// Payload bytes (keys and values) in one batch at most; a single larger write goes alone.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Why a proposed write did not commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFail {
    /// This node is not the leader (any more); the write was not applied. The current
    /// leader, when known.
    ForwardToLeader(Option<NodeId>),
    /// Raft refused or failed; the message says why.
    Failed(String),
}

type Reply = oneshot::Sender<Result<CommandResult, WriteFail>>;

struct Proposal {
    cmd: Command,
    reply: Reply,
}

/// The handle the API writes through (cheap to clone).
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Proposal>,
    paused: Arc<watch::Sender<u32>>,
}

/// While it lives, the proposer proposes nothing new (see [`Proposer::pause`]).
#[derive(Debug)]
pub struct Paused(Arc<watch::Sender<u32>>);

impl Drop for Paused {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Proposer {
    /// Starts the batching task for `raft`.
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (paused, paused_rx) = watch::channel(0u32);
        tokio::spawn(run(raft, rx, paused_rx));
        Self {
            tx,
            paused: Arc::new(paused),
        }
    }

    /// Stops proposing new writes until the guard drops (proposals already in Raft go on;
    /// new writes queue meanwhile).
    pub fn pause(&self) -> Paused {
        self.paused.send_modify(|n| *n += 1);
        Paused(self.paused.clone())
    }

    /// Proposes `cmd` and waits until it is committed and applied (or fails).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, WriteFail> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Proposal { cmd, reply })
            .map_err(|_| WriteFail::Failed("the node is shutting down".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(WriteFail::Failed("the node is shutting down".into())))
    }
}

/// The key a command writes, if it writes exactly one.
fn key_of(cmd: &Command) -> Option<(&str, &str)> {
    match cmd {
        Command::Put { ks, key, .. } | Command::Delete { ks, key, .. } => Some((ks, key)),
        Command::TsAppend { .. } | Command::TsTrim { .. } | Command::Batch(_) => None,
    }
}

fn size_of(cmd: &Command) -> usize {
    match cmd {
        Command::Put { ks, key, value, .. } => ks.len() + key.len() + value.len(),
        Command::Delete { ks, key, .. } => ks.len() + key.len(),
        Command::TsAppend { series, points } => series.len() + points.len() * 16,
        Command::TsTrim { .. } => 8,
        Command::Batch(c) => c.iter().map(size_of).sum(),
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    mut paused: watch::Receiver<u32>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carry: Option<Proposal> = None;
    loop {
        if paused.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        // Wait for a free slot first: while none is free, writes queue up and batch.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        if first.reply.is_closed() {
            continue;
        }
        if *paused.borrow() > 0 {
            // Paused while this write waited: it goes first once the pause ends.
            carry = Some(first);
            continue;
        }
        let batch = gather(first, &mut rx, &mut carry);
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch).await;
            drop(permit);
        });
    }
}

/// `first` plus whatever is queued behind it, up to the limits; a write that cannot join
/// (its key is already in the batch, or it would pass the byte limit) is left in `carry`.
fn gather(
    first: Proposal,
    rx: &mut mpsc::UnboundedReceiver<Proposal>,
    carry: &mut Option<Proposal>,
) -> Vec<Proposal> {
    let mut bytes = size_of(&first.cmd);
    let mut keys: HashSet<(String, String)> = HashSet::new();
    if let Some((ks, k)) = key_of(&first.cmd) {
        keys.insert((ks.to_string(), k.to_string()));
    }
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        let Ok(p) = rx.try_recv() else { break };
        if p.reply.is_closed() {
            // Its caller gave up (the request's deadline passed while it queued): it was
            // answered "outcome unknown", and is never proposed.
            continue;
        }
        let size = size_of(&p.cmd);
        let clash =
            key_of(&p.cmd).is_some_and(|(ks, k)| !keys.insert((ks.to_string(), k.to_string())));
        if clash || bytes + size > MAX_BATCH_BYTES {
            *carry = Some(p);
            break;
        }
        bytes += size;
        batch.push(p);
    }
    batch
}

/// How long openraft may still take to answer a write of a leader that lost its leadership
/// (it usually answers at once, `ForwardToLeader`) before the proposer answers it itself.
pub const LOST_LEADERSHIP_GRACE: Duration = Duration::from_secs(2);

type WriteResult = Result<
    openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
    RaftError<NodeId, ClientWriteError<NodeId, crate::types::NodeInfo>>,
>;

/// `raft.client_write(cmd)`, except that a proposal made as leader is given up
/// [`LOST_LEADERSHIP_GRACE`] after this node stops being that term's leader. openraft 0.9 does
/// not always answer the writes of a leader cut off from its followers once it steps down
/// (their entries may be truncated later, or never): without this, each such write held one of
/// the [`MAX_IN_FLIGHT`] slots for good, and when the node became leader again it could
/// propose nothing. The outcome of a given-up write is unknown: another leader may commit it.
async fn write(raft: &Raft, cmd: Command) -> Result<crate::types::CommandResult, WriteFail> {
    let mut metrics = raft.metrics();
    let (me, term, leading) = {
        let m = metrics.borrow();
        (m.id, m.current_term, m.current_leader == Some(m.id))
    };
    let res: WriteResult = if leading {
        let w = raft.client_write(cmd);
        tokio::pin!(w);
        tokio::select! {
            biased;
            r = &mut w => r,
            _ = async {
                // The guard it returns is dropped here, before anything else is awaited.
                let _ = metrics
                    .wait_for(|m| m.current_leader != Some(me) || m.current_term != term)
                    .await
                    .map(|_| ());
            } => {
                match tokio::time::timeout(LOST_LEADERSHIP_GRACE, &mut w).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(WriteFail::Failed(format!(
                            "this node stopped leading term {term} while the write was in flight"
                        )))
                    }
                }
            }
        }
    } else {
        raft.client_write(cmd).await
    };
    res.map(|r| r.data).map_err(fail)
}

async fn propose(raft: &Raft, mut batch: Vec<Proposal>) {
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            let _ = p.reply.send(write(raft, p.cmd).await);
        }
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<Reply>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let n = cmds.len();
    match write(raft, Command::Batch(cmds)).await {
        Ok(r) if r.batch.len() == n => {
            for (reply, res) in replies.into_iter().zip(r.batch) {
                let _ = reply.send(Ok(res));
            }
        }
        Ok(r) => {
            let msg = format!(
                "internal: a batch of {n} writes produced {} results",
                r.batch.len()
            );
            for reply in replies {
                let _ = reply.send(Err(WriteFail::Failed(msg.clone())));
            }
        }
        Err(f) => {
            for reply in replies {
                let _ = reply.send(Err(f.clone()));
            }
        }
    }
}

fn fail(e: RaftError<NodeId, ClientWriteError<NodeId, crate::types::NodeInfo>>) -> WriteFail {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            WriteFail::ForwardToLeader(f.leader_id)
        }
        e => WriteFail::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply whose caller waits forever (the receiver is leaked on purpose).
    fn live_reply() -> Reply {
        let (tx, rx) = oneshot::channel();
        std::mem::forget(rx);
        tx
    }

    fn put(key: &str, value_len: usize) -> Proposal {
        Proposal {
            cmd: Command::Put {
                ks: String::new(),
                key: key.into(),
                value: "v".repeat(value_len),
                cond: None,
            },
            reply: live_reply(),
        }
    }

    fn keys(b: &[Proposal]) -> Vec<String> {
        b.iter()
            .map(|p| match &p.cmd {
                Command::Put { key, .. } => key.clone(),
                Command::TsAppend { series, .. } => format!("ts:{series}"),
                other => format!("{other}"),
            })
            .collect()
    }

    #[test]
    fn a_batch_takes_what_is_queued_but_never_one_key_twice() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for k in ["b", "c", "a", "d"] {
            tx.send(put(k, 1)).ok();
        }
        tx.send(Proposal {
            cmd: Command::TsAppend {
                series: "s".into(),
                points: vec![(1, 1.0)],
            },
            reply: live_reply(),
        })
        .ok();
        let mut carry = None;
        let b = gather(put("a", 1), &mut rx, &mut carry);
        assert_eq!(keys(&b), ["a", "b", "c"]);
        let next = carry.take().expect("the second write of a waits");
        let b = gather(next, &mut rx, &mut carry);
        assert_eq!(keys(&b), ["a", "d", "ts:s"]);
        assert!(carry.is_none());
        // Nothing queued: a lone write goes alone, at once.
        let b = gather(put("z", 1), &mut rx, &mut carry);
        assert_eq!(keys(&b), ["z"]);
    }

    #[test]
    fn writes_whose_callers_gave_up_are_dropped_unproposed() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (reply, waiting) = oneshot::channel();
        let mut gone = put("gone", 1);
        gone.reply = oneshot::channel().0; // its receiver is dropped at once
        tx.send(gone).ok();
        let mut kept = put("kept", 1);
        kept.reply = reply;
        tx.send(kept).ok();
        let mut carry = None;
        let b = gather(put("first", 1), &mut rx, &mut carry);
        assert_eq!(keys(&b), ["first", "kept"]);
        drop(waiting);
    }

    #[test]
    fn a_batch_stops_at_the_byte_and_count_limits() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..3 {
            tx.send(put(&format!("big{i}"), MAX_BATCH_BYTES / 2)).ok();
        }
        let mut carry = None;
        let b = gather(put("small", 10), &mut rx, &mut carry);
        assert_eq!(keys(&b), ["small", "big0"]);
        assert!(carry.is_some());
        // A single write over the limit still goes (alone).
        let b = gather(put("huge", MAX_BATCH_BYTES * 2), &mut rx, &mut carry);
        assert_eq!(b.len(), 1);

        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..MAX_BATCH + 10 {
            tx.send(put(&format!("k{i}"), 1)).ok();
        }
        let mut carry = None;
        let b = gather(put("first", 1), &mut rx, &mut carry);
        assert_eq!(b.len(), MAX_BATCH);
        assert!(carry.is_none(), "the count limit leaves the rest queued");
    }
}
