//! The Raft log store: entries, vote, committed id and purge point in RocksDB.
//!
//! Every `append`, `save_vote`, `truncate` and `purge` goes to one writer thread, which drains
//! all queued writes into a single RocksDB batch and syncs it (group commit). openraft is told
//! an append is flushed (and a vote call returns) only after that sync, so an entry is
//! acknowledged to the leader, and a vote granted, only once it is on disk. When nothing is
//! queued, a follower's append is synced in place instead (openraft's core task waits for it
//! either way, and one at a time; the hand-over to the writer thread and back cost two thread
//! wake-ups per replicated write), and the committed id goes straight into the WAL buffer.
//! The newest entries, queued or written, are also kept in a bounded in-memory cache, so that
//! replication (which reads what was just appended) is served without touching the disk; a
//! cached entry is dropped only after it is written.
//!
//! One exception to "flushed means synced": a leader's own new entries are reported flushed
//! when they are queued, so openraft replicates them while they are being synced (see
//! [`crate::durability`] for the rule and what waits for the sync instead). The writer reports
//! how far the log is on disk ([`LogStore::durable`]); a failed sync of entries already
//! reported flushed aborts the process.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use crate::db::{blocking, index_key, read_err, write_err, CF_LOG, CF_RAFT_META};
use crate::durability::{durable_from, Durable, DurableWriter};
use crate::metrics::StorageMetrics;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// One queued write: its operations and whom to tell once they are synced.
enum Done {
    Flushed(LogFlushed<TypeConfig>),
    /// A leader's own entries, already reported flushed: synced like the others, and a failure
    /// cannot be reported any more, so it aborts the process.
    Acked,
    Reply(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Nobody waits (the committed id: written in order with the log, never awaited).
    Nothing,
}

enum WOp {
    Put(&'static str, Vec<u8>, Vec<u8>),
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
}

struct Job {
    ops: Vec<WOp>,
    done: Done,
    /// `(index, sequence)` of the cached entries this job writes.
    written: Vec<(u64, u64)>,
    /// What the job does to how far the log is on disk.
    effect: Effect,
}

/// A job's effect on [`Durable`].
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// None (a vote, the committed id, a purge).
    None,
    /// Entries up to this index are on disk once written.
    Appended(u64),
    /// The log is cut from this index on.
    Truncated(u64),
}

/// How many written entries the cache keeps at most (unwritten ones are never dropped).
const CACHE_ENTRIES: usize = 4096;
/// How many bytes (as serialised) of written entries the cache keeps at most.
const CACHE_BYTES: usize = 16 << 20;

struct Cached {
    entry: Entry,
    /// Distinguishes this append of the index from an earlier one (after a truncation).
    seq: u64,
    written: bool,
    bytes: usize,
}

/// The newest entries: every entry handed to the writer and not yet written, plus the most
/// recently written ones. Always a contiguous suffix of the log (appends go to the end,
/// truncation and purge cut it like the log).
#[derive(Default)]
struct Recent {
    map: BTreeMap<u64, Cached>,
    next_seq: u64,
    bytes: usize,
}

impl Recent {
    fn mark_written(&mut self, written: &[(u64, u64)]) {
        for (i, seq) in written {
            if let Some(c) = self.map.get_mut(i) {
                if c.seq == *seq {
                    c.written = true;
                }
            }
        }
        while self.map.len() > CACHE_ENTRIES || self.bytes > CACHE_BYTES {
            match self.map.first_entry() {
                Some(e) if e.get().written => {
                    self.bytes -= e.remove().bytes;
                }
                _ => break,
            }
        }
    }

    fn cut(&mut self, keep: impl Fn(u64) -> bool) {
        self.map.retain(|i, _| keep(*i));
        self.bytes = self.map.values().map(|c| c.bytes).sum();
    }

    /// The entries in `start..end` if the cache holds all of them (`end: None` = to the end
    /// of the log, which the cache always holds once it holds `start`).
    fn covering(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = *self.map.keys().next()?;
        if start < first {
            return None;
        }
        Some(
            self.map
                .range(start..end.unwrap_or(u64::MAX))
                .map(|(_, c)| c.entry.clone())
                .collect(),
        )
    }
}

type Shared = Arc<std::sync::Mutex<Recent>>;

/// The log store (cheap to clone; clones share the database and the writer thread).
///
/// Writes go to one dedicated thread that drains every queued write into a single RocksDB
/// batch written with `sync = true` (group commit), then reports each as flushed, in order.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    tx: std::sync::mpsc::Sender<Job>,
    /// Jobs queued and not yet finished by the writer thread.
    pending: Arc<AtomicUsize>,
    /// The writer's side of `durable`, for writes made in place (see [`LogStore::append`]).
    durable_writer: Arc<DurableWriter>,
    recent: Shared,
    /// This node's id: entries of a leader id naming it, appended while its vote is that
    /// committed leader id, are its own as leader.
    me: NodeId,
    /// The last vote saved (or read at start).
    vote: Arc<std::sync::Mutex<Option<Vote>>>,
    durable: Durable,
    /// The syncs' latency and the commit index, for `/metrics`.
    metrics: StorageMetrics,
    /// Declared after `tx`, so when the last clone drops, every sender is gone before the
    /// writer thread is joined.
    _writer: Arc<WriterThread>,
}

/// Joins the writer thread when the last [`LogStore`] clone drops: the thread drains what is
/// queued, then drops its handle on the database. Without the join a process could exit while
/// that thread was still closing RocksDB, and RocksDB's static destructors then ran under it
/// (`free(): invalid pointer`, SIGABRT, in about a quarter of the storage-suite runs).
struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            // Never join from the writer thread itself (it holds no store, but be sure).
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn writer_loop(
    db: Arc<DB>,
    rx: std::sync::mpsc::Receiver<Job>,
    recent: Shared,
    durable: Arc<DurableWriter>,
    pending: Arc<AtomicUsize>,
    metrics: StorageMetrics,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
            if jobs.len() >= 1024 {
                break;
            }
        }
        let n = jobs.len();
        let res = write_jobs(&db, &jobs, &recent, &durable, &metrics);
        for j in jobs {
            finish(j.done, &res);
        }
        pending.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Writes `jobs` in one RocksDB batch — into the WAL buffer (see `db`), then out and synced
/// unless every job is one nobody waits for (the committed id alone, which the next sync
/// takes along) — and records what is now on disk.
fn write_jobs(
    db: &DB,
    jobs: &[Job],
    recent: &Shared,
    durable: &DurableWriter,
    metrics: &StorageMetrics,
) -> Result<(), String> {
    let mut batch = WriteBatch::default();
    for j in jobs {
        for op in &j.ops {
            let name = match op {
                WOp::Put(n, _, _) | WOp::DeleteRange(n, _, _) => *n,
            };
            let Some(cf) = db.cf_handle(name) else {
                return Err(format!("column family {name} missing"));
            };
            match op {
                WOp::Put(_, k, v) => batch.put_cf(cf, k, v),
                WOp::DeleteRange(_, a, b) => batch.delete_range_cf(cf, a, b),
            }
        }
    }
    let sync = jobs.iter().any(|j| !matches!(j.done, Done::Nothing));
    db.write_opt(batch, &WriteOptions::default())
        .map_err(|e| e.to_string())?;
    if sync {
        let started = Instant::now();
        db.flush_wal(true).map_err(|e| e.to_string())?;
        metrics.observe_fsync(started);
    }
    if let Ok(mut r) = recent.lock() {
        for j in jobs {
            r.mark_written(&j.written);
        }
    }
    for j in jobs {
        match j.effect {
            Effect::None => {}
            Effect::Appended(i) => durable.appended(i),
            Effect::Truncated(i) => durable.truncated(i),
        }
    }
    Ok(())
}

/// Tells whoever waits for a written job how it went.
fn finish(done: Done, res: &Result<(), String>) {
    match done {
        Done::Acked => {
            if let Err(e) = res {
                // Already reported flushed: openraft may count this node toward a commit.
                // Nothing applied or announced it yet (that waits for the sync); stop before
                // anything does, and restart from the disk.
                tracing::error!(
                    "syncing the leader's own log entries failed: {e}; aborting so this node restarts from what is on disk"
                );
                eprintln!("fatal: syncing the Raft log failed: {e}");
                std::process::abort();
            }
        }
        Done::Flushed(cb) => cb.log_io_completed(res.clone().map_err(std::io::Error::other)),
        Done::Reply(tx) => {
            let _ = tx.send(res.clone());
        }
        Done::Nothing => {
            if let Err(e) = res {
                tracing::warn!("saving the committed log id failed: {e}");
            }
        }
    }
}

/// Were `entries` made by node `me` as the leader `vote` says it is? Only then is their flush
/// reported before the sync. A node is leader of exactly one committed leader id at a time, and
/// no other node makes entries under it; entries it receives from another leader — including
/// old ones it made itself under an earlier leader id — are synced before they are reported.
fn made_by_leader_me(vote: Option<Vote>, me: NodeId, entries: &[Entry]) -> bool {
    match vote {
        Some(v) if v.is_committed() && v.leader_id().node_id == me => {
            !entries.is_empty() && entries.iter().all(|e| e.log_id.leader_id == *v.leader_id())
        }
        _ => false,
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name).ok_or_else(|| {
        read_err(&std::io::Error::other(format!(
            "column family {name} missing"
        )))
    })
}

fn get_json<T: serde::de::DeserializeOwned>(
    db: &DB,
    cf_name: &str,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    let cf = cf(db, cf_name)?;
    match db.get_cf(cf, key).map_err(|e| read_err(&e))? {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| read_err(&e)),
        None => Ok(None),
    }
}

impl LogStore {
    /// The log store of node `me` over `db`, starting its writer thread. Reads how far the log
    /// is on disk (a quick seek; call it where blocking is fine).
    pub fn new(db: Arc<DB>, me: NodeId) -> Result<Self, StorageError> {
        Self::counting_into(db, me, StorageMetrics::default())
    }

    /// [`LogStore::new`], recording its syncs and the commit index in `metrics`.
    pub fn counting_into(
        db: Arc<DB>,
        me: NodeId,
        metrics: StorageMetrics,
    ) -> Result<Self, StorageError> {
        let on_disk = Self::last_on_disk(&db)?.map_or(0, |l| l.index);
        let (writer, durable) = durable_from(on_disk);
        let writer = Arc::new(writer);
        let pending = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let recent: Shared = Arc::default();
        let (wdb, wp, ww, wq) = (db.clone(), recent.clone(), writer.clone(), pending.clone());
        let wm = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(wdb, rx, wp, ww, wq, wm))
            .map_err(|e| tracing::error!("cannot start the log writer thread: {e}"))
            .ok();
        Ok(Self {
            db,
            tx,
            pending,
            durable_writer: writer,
            recent,
            me,
            vote: Arc::default(),
            durable,
            metrics,
            _writer: Arc::new(WriterThread(handle)),
        })
    }

    /// How far this node's log is on disk (for the state machine and the network, which wait
    /// on it: see [`crate::durability`]).
    pub fn durable(&self) -> Durable {
        self.durable.clone()
    }

    /// The last log id on disk (or the last purged one), read from the database.
    fn last_on_disk(db: &DB) -> Result<Option<LogId>, StorageError> {
        let last_purged: Option<LogId> = get_json(db, CF_RAFT_META, KEY_PURGED)?;
        let cf = cf(db, CF_LOG)?;
        let mut it = db.iterator_cf(cf, IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (_, v) = item.map_err(|e| read_err(&e))?;
                let e: Entry = serde_json::from_slice(&v).map_err(|e| read_err(&e))?;
                Ok(Some(e.log_id))
            }
            None => Ok(last_purged),
        }
    }

    /// Are `entries` this node's own, made as the leader it is now? Then their flush may be
    /// reported at once (the rule of [`crate::durability`]).
    fn own_as_leader(&self, entries: &[Entry]) -> bool {
        match self.vote.lock() {
            Ok(vote) => made_by_leader_me(*vote, self.me, entries),
            Err(_) => false,
        }
    }

    /// Hands `job` to the writer thread.
    fn queue(&self, job: Job) -> Result<(), StorageError> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.tx.send(job).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            write_err(&std::io::Error::other("log writer stopped"))
        })
    }

    /// Nothing queued or being written: a write made now, in place, lands after everything
    /// before it. (Only openraft's core task writes, one call at a time, so nothing can be
    /// queued while such a write runs.)
    fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
            && tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    }

    /// Queues `ops` and waits until they are synced.
    async fn write_synced(&self, ops: Vec<WOp>, effect: Effect) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue(Job {
            ops,
            done: Done::Reply(tx),
            written: Vec::new(),
            effect,
        })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(&std::io::Error::other(e))),
            Err(_) => Err(write_err(&std::io::Error::other("log writer stopped"))),
        }
    }

    fn read_range(db: &DB, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        let cf = cf(db, CF_LOG)?;
        let mut out = Vec::new();
        let from = index_key(start);
        let it = db.iterator_cf(cf, IteratorMode::From(&from, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(|e| read_err(&e))?;
            let idx = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| read_err(&std::io::Error::other("bad log key")))?,
            );
            if end.is_some_and(|e| idx >= e) {
                break;
            }
            let entry: Entry = serde_json::from_slice(&v).map_err(|e| read_err(&e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(x + 1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        // The cache alone when it holds the whole range (replication reading what was just
        // appended); otherwise disk, with the cache's entries (possibly not yet written) over it.
        let overlay: Vec<Entry> = match self.recent.lock() {
            Ok(r) => {
                if let Some(all) = r.covering(start, end) {
                    return Ok(all);
                }
                r.map
                    .range(start..end.unwrap_or(u64::MAX))
                    .map(|(_, c)| c.entry.clone())
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        let db = self.db.clone();
        let mut out = blocking(move || Self::read_range(&db, start, end)).await?;
        if !overlay.is_empty() {
            let mut map: BTreeMap<u64, Entry> =
                out.into_iter().map(|e| (e.log_id.index, e)).collect();
            for e in overlay {
                map.insert(e.log_id.index, e);
            }
            out = map.into_values().collect();
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        // Entries reported flushed may still be on their way to the disk: the cache has them.
        let cached = self
            .recent
            .lock()
            .ok()
            .and_then(|r| r.map.last_key_value().map(|(_, c)| c.entry.log_id));
        blocking(move || {
            let last_purged: Option<LogId> = get_json(&db, CF_RAFT_META, KEY_PURGED)?;
            let on_disk = Self::last_on_disk(&db)?;
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: cached.max(on_disk),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote).map_err(|e| write_err(&e))?;
        self.write_synced(
            vec![WOp::Put(CF_RAFT_META, KEY_VOTE.to_vec(), bytes)],
            Effect::None,
        )
        .await?;
        if let Ok(mut v) = self.vote.lock() {
            *v = Some(*vote);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        let vote: Option<Vote> = blocking(move || get_json(&db, CF_RAFT_META, KEY_VOTE)).await?;
        if let Ok(mut v) = self.vote.lock() {
            *v = vote;
        }
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Queued behind the log writes it follows and never awaited: RaftCore calls this on
        // every commit advance, and waiting here would stall it behind the writer's fsync.
        // Losing it (a crash before the next synced batch) only means re-applying from the
        // state machine's last applied id on restart.
        let bytes = serde_json::to_vec(&committed).map_err(|e| write_err(&e))?;
        if let Some(c) = committed {
            self.metrics.commit_index.set(c.index);
        }
        if self.idle() {
            // Every log write before it is done: into the WAL buffer now, in memory (a write
            // that would wait in RocksDB goes to the writer after all).
            if let Ok(cf) = cf(&self.db, CF_RAFT_META) {
                let mut batch = WriteBatch::default();
                batch.put_cf(cf, KEY_COMMITTED, &bytes);
                let mut fast = WriteOptions::default();
                fast.set_no_slowdown(true);
                if self.db.write_opt(batch, &fast).is_ok() {
                    return Ok(());
                }
            }
        }
        self.queue(Job {
            ops: vec![WOp::Put(CF_RAFT_META, KEY_COMMITTED.to_vec(), bytes)],
            done: Done::Nothing,
            written: Vec::new(),
            effect: Effect::None,
        })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || Ok(get_json::<Option<LogId>>(&db, CF_RAFT_META, KEY_COMMITTED)?.flatten()))
            .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let own = self.own_as_leader(&entries);
        let last = entries.last().map(|e| e.log_id.index);
        let mut ops = Vec::new();
        let mut written = Vec::new();
        {
            let mut r = self
                .recent
                .lock()
                .map_err(|_| write_err(&std::io::Error::other("log cache lock poisoned")))?;
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(|e| write_err(&e))?;
                let (index, seq, len) = (e.log_id.index, r.next_seq, bytes.len());
                r.next_seq += 1;
                ops.push(WOp::Put(CF_LOG, index_key(index).to_vec(), bytes));
                written.push((index, seq));
                r.bytes += len;
                let old = r.map.insert(
                    index,
                    Cached {
                        entry: e,
                        seq,
                        written: false,
                        bytes: len,
                    },
                );
                if let Some(old) = old {
                    r.bytes -= old.bytes;
                }
            }
        }
        let effect = last.map_or(Effect::None, Effect::Appended);
        if own {
            self.queue(Job {
                ops,
                done: Done::Acked,
                written,
                effect,
            })?;
            // Queued behind everything before it: replication may start now.
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let job = Job {
            ops,
            done: Done::Flushed(callback),
            written,
            effect,
        };
        if self.idle() {
            // A follower's append (openraft waits for its sync before it answers the leader,
            // and sends nothing else meanwhile): synced here, on this thread, rather than
            // handed to the writer thread and back — two thread wake-ups on every replicated
            // write. `block_in_place` moves this worker's other tasks elsewhere meanwhile.
            let res = tokio::task::block_in_place(|| {
                write_jobs(
                    &self.db,
                    std::slice::from_ref(&job),
                    &self.recent,
                    &self.durable_writer,
                    &self.metrics,
                )
            });
            finish(job.done, &res);
            return Ok(());
        }
        self.queue(job)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Ok(mut r) = self.recent.lock() {
            r.cut(|i| i < log_id.index);
        }
        self.write_synced(
            vec![WOp::DeleteRange(
                CF_LOG,
                index_key(log_id.index).to_vec(),
                index_key(u64::MAX).to_vec(),
            )],
            Effect::Truncated(log_id.index),
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Ok(mut r) = self.recent.lock() {
            r.cut(|i| i > log_id.index);
        }
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| write_err(&e))?;
        self.write_synced(
            vec![
                WOp::Put(CF_RAFT_META, KEY_PURGED.to_vec(), bytes),
                WOp::DeleteRange(
                    CF_LOG,
                    index_key(0).to_vec(),
                    index_key(log_id.index + 1).to_vec(),
                ),
            ],
            Effect::None,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn entry_of(term: u64, leader: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
            payload: EntryPayload::Blank,
        }
    }

    fn add(r: &mut Recent, term: u64, index: u64) -> (u64, u64) {
        let seq = r.next_seq;
        r.next_seq += 1;
        r.bytes += 10;
        r.map.insert(
            index,
            Cached {
                entry: entry(term, index),
                seq,
                written: false,
                bytes: 10,
            },
        );
        (index, seq)
    }

    #[test]
    fn the_cache_serves_a_suffix_and_drops_only_written_entries() {
        let mut r = Recent::default();
        assert!(r.covering(0, None).is_none(), "empty: go to disk");
        let mut jobs = Vec::new();
        for i in 1..=(CACHE_ENTRIES as u64 + 10) {
            jobs.push(add(&mut r, 1, i));
        }
        // Nothing written yet: nothing may be dropped, however many.
        r.mark_written(&[]);
        assert_eq!(r.map.len(), CACHE_ENTRIES + 10);
        r.mark_written(&jobs[..20]);
        assert_eq!(r.map.len(), CACHE_ENTRIES);
        assert_eq!(r.map.keys().next(), Some(&11), "oldest written first");
        assert!(r.covering(5, None).is_none(), "starts before the cache");
        let got = r.covering(11, Some(14)).expect("covered");
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, [11, 12, 13]);
        assert_eq!(
            r.covering(20, None).map(|v| v.len()),
            Some(CACHE_ENTRIES - 9)
        );
    }

    #[test]
    fn only_a_leaders_own_new_entries_skip_the_wait_for_the_sync() {
        let leader_2_of_term_5 = Vote::new_committed(5, 2);
        let own = [entry_of(5, 2, 10), entry_of(5, 2, 11)];
        assert!(made_by_leader_me(Some(leader_2_of_term_5), 2, &own));
        // Another node, an uncommitted vote (a candidate), no vote: synced first.
        assert!(!made_by_leader_me(Some(leader_2_of_term_5), 3, &own));
        assert!(!made_by_leader_me(Some(Vote::new(5, 2)), 2, &own));
        assert!(!made_by_leader_me(None, 2, &own));
        // Entries it made under an earlier term, sent back to it by a later leader.
        let old = [entry_of(4, 2, 9)];
        assert!(!made_by_leader_me(Some(Vote::new_committed(6, 3)), 2, &old));
        assert!(!made_by_leader_me(Some(leader_2_of_term_5), 2, &old));
        let mixed = [entry_of(4, 2, 9), entry_of(5, 2, 10)];
        assert!(!made_by_leader_me(Some(leader_2_of_term_5), 2, &mixed));
        assert!(!made_by_leader_me(Some(leader_2_of_term_5), 2, &[]));
    }

    #[test]
    fn a_truncated_and_rewritten_index_is_not_marked_by_the_old_write() {
        let mut r = Recent::default();
        let old = add(&mut r, 1, 7);
        r.cut(|i| i < 7);
        assert!(r.map.is_empty() && r.bytes == 0);
        add(&mut r, 2, 7);
        r.mark_written(&[old]);
        assert!(!r.map[&7].written, "the term-2 entry is still unwritten");
        assert_eq!(
            r.covering(7, None).expect("covered")[0]
                .log_id
                .leader_id
                .term,
            2
        );
        r.cut(|i| i > 7);
        assert!(r.covering(7, None).is_none());
    }
}
