//! The Raft log store: entries, vote, committed id and purge point in RocksDB.
//!
//! Every `append` and `save_vote` is one RocksDB write batch with `sync = true`, done on a
//! blocking thread; openraft is told an append is flushed only after that write returned, so an
//! entry is acknowledged to the leader only once it is on disk.

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

/// The log store (cheap to clone; clones share the database).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DB>,
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

fn put_json_sync<T: serde::Serialize>(
    db: &DB,
    cf_name: &str,
    key: &[u8],
    v: &T,
) -> Result<(), StorageError> {
    let cf = cf(db, cf_name)?;
    let bytes = serde_json::to_vec(v).map_err(|e| write_err(&e))?;
    db.put_cf_opt(cf, key, bytes, &sync_opts())
        .map_err(|e| write_err(&e))
}

impl LogStore {
    /// A log store over `db`.
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
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
        let db = self.db.clone();
        blocking(move || Self::read_range(&db, start, end)).await
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
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || put_json_sync(&db, CF_RAFT_META, KEY_VOTE, &vote)).await
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.db.clone();
        let res = blocking(move || {
            let cf = cf(&db, CF_LOG)?;
            let mut batch = WriteBatch::default();
            for e in &entries {
                let bytes = serde_json::to_vec(e).map_err(|e| write_err(&e))?;
                batch.put_cf(cf, index_key(e.log_id.index), bytes);
            }
            db.write_opt(batch, &sync_opts()).map_err(|e| write_err(&e))
        })
        .await;
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let cf = cf(&db, CF_LOG)?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
            db.write_opt(batch, &sync_opts()).map_err(|e| write_err(&e))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let meta = cf(&db, CF_RAFT_META)?;
            let log = cf(&db, CF_LOG)?;
            let mut batch = WriteBatch::default();
            let bytes = serde_json::to_vec(&Some(log_id)).map_err(|e| write_err(&e))?;
            batch.put_cf(meta, KEY_PURGED, bytes);
            batch.delete_range_cf(log, index_key(0), index_key(log_id.index + 1));
            db.write_opt(batch, &sync_opts()).map_err(|e| write_err(&e))
        })
        .await
    }
}
