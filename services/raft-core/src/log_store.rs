//! The Raft log store: entries, vote, committed id and purge point in RocksDB.
//!
//! Every `append`, `save_vote`, `truncate` and `purge` goes to one writer thread, which drains
//! all queued writes into a single RocksDB batch written with `sync = true` (group commit).
//! openraft is told an append is flushed (and a vote call returns) only after that synced write,
//! so an entry is acknowledged to the leader, and a vote granted, only once it is on disk.
//! Entries queued but not yet written are served to readers from an in-memory overlay.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use crate::db::{blocking, index_key, read_err, write_err, CF_LOG, CF_RAFT_META};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// One queued write: its operations and whom to tell once they are synced.
enum Done {
    Flushed(LogFlushed<TypeConfig>),
    Reply(tokio::sync::oneshot::Sender<Result<(), String>>),
}

enum WOp {
    Put(&'static str, Vec<u8>, Vec<u8>),
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
}

struct Job {
    ops: Vec<WOp>,
    done: Done,
    /// Log indexes to drop from the pending overlay once written.
    written: Vec<u64>,
}

/// Entries handed to the writer but not yet on disk (reads consult them first).
type Pending = Arc<std::sync::Mutex<BTreeMap<u64, Entry>>>;

/// The log store (cheap to clone; clones share the database and the writer thread).
///
/// Writes go to one dedicated thread that drains every queued write into a single RocksDB
/// batch written with `sync = true` (group commit), then reports each as flushed, in order.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    tx: std::sync::mpsc::Sender<Job>,
    pending: Pending,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn writer_loop(db: Arc<DB>, rx: std::sync::mpsc::Receiver<Job>, pending: Pending) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
            if jobs.len() >= 1024 {
                break;
            }
        }
        let mut batch = WriteBatch::default();
        let mut res: Result<(), String> = Ok(());
        for j in &jobs {
            for op in &j.ops {
                let name = match op {
                    WOp::Put(n, _, _) | WOp::DeleteRange(n, _, _) => *n,
                };
                let Some(cf) = db.cf_handle(name) else {
                    res = Err(format!("column family {name} missing"));
                    continue;
                };
                match op {
                    WOp::Put(_, k, v) => batch.put_cf(cf, k, v),
                    WOp::DeleteRange(_, a, b) => batch.delete_range_cf(cf, a, b),
                }
            }
        }
        if res.is_ok() {
            res = db.write_opt(batch, &sync_opts()).map_err(|e| e.to_string());
        }
        if res.is_ok() {
            if let Ok(mut p) = pending.lock() {
                for j in &jobs {
                    for i in &j.written {
                        p.remove(i);
                    }
                }
            }
        }
        for j in jobs {
            match j.done {
                Done::Flushed(cb) => {
                    cb.log_io_completed(res.clone().map_err(std::io::Error::other))
                }
                Done::Reply(tx) => {
                    let _ = tx.send(res.clone());
                }
            }
        }
    }
}

fn sync_opts() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
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
    /// A log store over `db`, starting its writer thread.
    pub fn new(db: Arc<DB>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let pending: Pending = Arc::default();
        let (wdb, wp) = (db.clone(), pending.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(wdb, rx, wp))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the log writer thread: {e}"));
        Self { db, tx, pending }
    }

    /// Queues `ops` and waits until they are synced.
    async fn write_synced(&self, ops: Vec<WOp>) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job {
                ops,
                done: Done::Reply(tx),
                written: Vec::new(),
            })
            .map_err(|_| write_err(&std::io::Error::other("log writer stopped")))?;
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
        // Overlay first, then disk: an entry leaves the overlay only after it is on disk.
        let overlay: Vec<Entry> = match self.pending.lock() {
            Ok(p) => p
                .range(start..end.unwrap_or(u64::MAX))
                .map(|(_, e)| e.clone())
                .collect(),
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
        blocking(move || {
            let last_purged: Option<LogId> = get_json(&db, CF_RAFT_META, KEY_PURGED)?;
            let cf = cf(&db, CF_LOG)?;
            let mut it = db.iterator_cf(cf, IteratorMode::End);
            let last = match it.next() {
                Some(item) => {
                    let (_, v) = item.map_err(|e| read_err(&e))?;
                    let e: Entry = serde_json::from_slice(&v).map_err(|e| read_err(&e))?;
                    Some(e.log_id)
                }
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote).map_err(|e| write_err(&e))?;
        self.write_synced(vec![WOp::Put(CF_RAFT_META, KEY_VOTE.to_vec(), bytes)])
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        blocking(move || get_json(&db, CF_RAFT_META, KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: losing it only means re-applying from the last applied id.
        let db = self.db.clone();
        blocking(move || {
            let cf = cf(&db, CF_RAFT_META)?;
            let bytes = serde_json::to_vec(&committed).map_err(|e| write_err(&e))?;
            db.put_cf(cf, KEY_COMMITTED, bytes)
                .map_err(|e| write_err(&e))
        })
        .await
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
        let mut ops = Vec::new();
        let mut written = Vec::new();
        {
            let mut p = self
                .pending
                .lock()
                .map_err(|_| write_err(&std::io::Error::other("pending log lock poisoned")))?;
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(|e| write_err(&e))?;
                ops.push(WOp::Put(CF_LOG, index_key(e.log_id.index).to_vec(), bytes));
                written.push(e.log_id.index);
                p.insert(e.log_id.index, e);
            }
        }
        self.tx
            .send(Job {
                ops,
                done: Done::Flushed(callback),
                written,
            })
            .map_err(|_| write_err(&std::io::Error::other("log writer stopped")))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Ok(mut p) = self.pending.lock() {
            let _ = p.split_off(&log_id.index);
        }
        self.write_synced(vec![WOp::DeleteRange(
            CF_LOG,
            index_key(log_id.index).to_vec(),
            index_key(u64::MAX).to_vec(),
        )])
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Ok(mut p) = self.pending.lock() {
            *p = p.split_off(&(log_id.index + 1));
        }
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| write_err(&e))?;
        self.write_synced(vec![
            WOp::Put(CF_RAFT_META, KEY_PURGED.to_vec(), bytes),
            WOp::DeleteRange(
                CF_LOG,
                index_key(0).to_vec(),
                index_key(log_id.index + 1).to_vec(),
            ),
        ])
        .await
    }
}
