//! The RocksDB instance shared by the log store and the state machine, and the blocking helper.
//!
//! One database, several column families: `log` (index → entry), `raft_meta` (vote, committed,
//! last purged), `kv`, `ts`, `sm_meta` (last applied, membership, ids ever used) and `snapshot`
//! (the latest built or received snapshot). One database means one write-ahead log: the log
//! store's synced writes also make every earlier state-machine write durable.
//!
//! The write-ahead log is flushed by hand (`manual_wal_flush`): a write lands in RocksDB's WAL
//! buffer, and the log writer pushes the buffer out and syncs it (`flush_wal(true)`) for the
//! entries and votes it must make durable. That sync runs without holding RocksDB's write
//! path, so a state-machine write is a memory-only step that never queues behind an fsync
//! (it may be lost in a crash before the next sync, and is then applied again from the log).
//! Writes with `sync = true` (snapshots) still sync everything before them.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

use crate::error::Error;

/// Column family names.
pub const CF_LOG: &str = "log";
/// Vote, committed, last purged.
pub const CF_RAFT_META: &str = "raft_meta";
/// Key-value data.
pub const CF_KV: &str = "kv";
/// Time-series data.
pub const CF_TS: &str = "ts";
/// State machine metadata.
pub const CF_SM_META: &str = "sm_meta";
/// Current snapshot.
pub const CF_SNAPSHOT: &str = "snapshot";

const ALL_CFS: [&str; 6] = [CF_LOG, CF_RAFT_META, CF_KV, CF_TS, CF_SM_META, CF_SNAPSHOT];

/// Opens (or, for a fresh directory, creates) the database.
pub fn open_db(path: &Path, create: bool) -> Result<Arc<DB>, Error> {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_max_background_jobs(2);
    opts.set_manual_wal_flush(true);
    let cfs = ALL_CFS
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
    DB::open_cf_descriptors(&opts, path, cfs)
        .map(Arc::new)
        .map_err(|e| Error::DataDir {
            path: path.to_path_buf(),
            problem: format!(
                "cannot open the database: {e} (another process using it? a damaged directory?)"
            ),
        })
}

/// Runs blocking storage work off the async runtime.
pub async fn blocking<T, F>(f: F) -> Result<T, openraft::StorageError<u64>>
where
    F: FnOnce() -> Result<T, openraft::StorageError<u64>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(write_err(&std::io::Error::other(e.to_string()))),
    }
}

/// A storage read error.
pub fn read_err<E: std::error::Error + 'static>(e: &E) -> openraft::StorageError<u64> {
    openraft::StorageError::IO {
        source: openraft::StorageIOError::read_logs(openraft::AnyError::new(e)),
    }
}

/// A storage write error.
pub fn write_err<E: std::error::Error + 'static>(e: &E) -> openraft::StorageError<u64> {
    openraft::StorageError::IO {
        source: openraft::StorageIOError::write_logs(openraft::AnyError::new(e)),
    }
}

/// Big-endian index key.
pub fn index_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}
