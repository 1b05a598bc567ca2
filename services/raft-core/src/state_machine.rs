//! The replicated state machine: a revisioned key-value store with key spaces (Chainfire uses
//! the empty key space, FlareDB one per namespace), time series, and the record of every node id
//! the cluster has ever had (so ids are never reused).
//!
//! A write's revision is the index of the Raft log entry that made it: global and monotonic.
//! Writes the proposer batched into one entry ([`Command::Batch`]) share its index; a batch
//! never holds two writes to one key, so a key's revision still names exactly one write.
//! Applied state and `last_applied` go in one RocksDB batch; it is made durable by the next
//! synced log write (one shared write-ahead log) or explicitly before a snapshot is built.
//!
//! **Time-series retention** is a command like any other: [`Command::TsTrim`] drops every
//! point older than its `before` in every series, and the highest `before` applied is kept
//! (`ts_horizon` in `sm_meta`, carried in snapshots) so the leader knows what is already
//! trimmed. The leader computes `before` from its own clock ([`crate::retention`]); a replica
//! never consults its clock while applying, so every replica drops exactly the same points.
//! (Trimming relative to the newest point in the state would be deterministic too, but one
//! point stamped in the future by a wrong clock would then wipe every series.) Points appended
//! later with an older `t` are stored like any others and go with the next trim.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use plasmacloud_store_client::KvItem;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::db::{blocking, read_err, write_err, CF_KV, CF_SM_META, CF_TS};
use crate::durability::Durable;
use crate::metrics::StorageMetrics;
use crate::snapshot_store::{self, SnapshotDir, StateLock};
use crate::types::{
    Command, CommandResult, Cond, Entry, LogId, NodeId, NodeInfo, Snapshot, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig,
};

pub(crate) const KEY_APPLIED: &[u8] = b"last_applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const KEY_TS_HORIZON: &[u8] = b"ts_horizon";
pub(crate) const NODE_PREFIX: &[u8] = b"node/";

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name).ok_or_else(|| {
        read_err(&std::io::Error::other(format!(
            "column family {name} missing"
        )))
    })
}

/// `ks \0 key`.
pub fn kv_key(ks: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ks.len() + 1 + key.len());
    k.extend_from_slice(ks.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn ts_key(series: &str, t: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(series.len() + 9);
    k.extend_from_slice(series.as_bytes());
    k.push(0);
    k.extend_from_slice(&((t as u64) ^ (1u64 << 63)).to_be_bytes());
    k
}

fn node_key(id: NodeId) -> Vec<u8> {
    let mut k = NODE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn kv_value(rev: u64, value: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&rev.to_be_bytes());
    v.extend_from_slice(value.as_bytes());
    v
}

fn split_kv_value(v: &[u8]) -> Option<(u64, String)> {
    if v.len() < 8 {
        return None;
    }
    let (r, rest) = v.split_at(8);
    let rev = u64::from_be_bytes(r.try_into().ok()?);
    Some((rev, String::from_utf8_lossy(rest).into_owned()))
}

/// Read access to the applied state, shared with the API (cheap to clone).
#[derive(Debug, Clone)]
pub struct StateReader {
    db: Arc<DB>,
    /// Refuses reads while a snapshot install replaces the state.
    state: StateLock,
}

impl StateReader {
    /// Reads one key: `(revision, value)`. Blocking.
    pub fn get(&self, ks: &str, key: &str) -> Result<Option<(u64, String)>, StorageError> {
        let _shared = self.state.read()?;
        let cf = cf(&self.db, CF_KV)?;
        Ok(self
            .db
            .get_cf(cf, kv_key(ks, key))
            .map_err(|e| read_err(&e))?
            .and_then(|v| split_kv_value(&v)))
    }

    /// Lists keys of `ks` starting with `prefix` and greater than `after`, in key order, with
    /// the store revision: at most `limit` items and, past `max_bytes` of keys and values, no
    /// more (but always one). The flag says whether more keys match. Blocking.
    pub fn list(
        &self,
        ks: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(u64, Vec<KvItem>, bool), StorageError> {
        let snap = {
            let _shared = self.state.read()?;
            self.db.snapshot()
        };
        let cf = cf(&self.db, CF_KV)?;
        let meta = cf_meta(&self.db)?;
        let applied: Option<LogId> =
            match snap.get_cf(meta, KEY_APPLIED).map_err(|e| read_err(&e))? {
                Some(v) => serde_json::from_slice(&v).map_err(|e| read_err(&e))?,
                None => None,
            };
        let prefix_key = kv_key(ks, prefix);
        let after_key = after.map(|a| kv_key(ks, a));
        let start = match &after_key {
            Some(a) if *a > prefix_key => a.clone(),
            _ => prefix_key.clone(),
        };
        let ks_len = ks.len() + 1;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        let it = self
            .db
            .iterator_cf_opt(cf, ro, IteratorMode::From(&start, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(|e| read_err(&e))?;
            if !k.starts_with(&prefix_key) {
                break;
            }
            if after_key.as_deref() == Some(&*k) {
                continue;
            }
            if items.len() >= limit || (bytes >= max_bytes && !items.is_empty()) {
                more = true;
                break;
            }
            if let Some((revision, value)) = split_kv_value(&v) {
                bytes += k.len() + value.len();
                items.push(KvItem {
                    key: String::from_utf8_lossy(&k[ks_len..]).into_owned(),
                    value,
                    revision,
                });
            }
        }
        Ok((applied.map(|l| l.index).unwrap_or(0), items, more))
    }

    /// Visits the points of `series` with `from <= t < to` in time order until `visit` returns
    /// false (so a caller holds only what it keeps). Blocking.
    pub fn ts_scan(
        &self,
        series: &str,
        from: i64,
        to: i64,
        mut visit: impl FnMut(i64, f64) -> bool,
    ) -> Result<(), StorageError> {
        let _shared = self.state.read()?;
        let cf = cf(&self.db, CF_TS)?;
        let start = ts_key(series, from);
        let end = ts_key(series, to);
        let it = self
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(|e| read_err(&e))?;
            if k.as_ref() >= end.as_slice() || k.len() != series.len() + 9 {
                break;
            }
            let t = u64::from_be_bytes(
                k[series.len() + 1..]
                    .try_into()
                    .map_err(|_| read_err(&std::io::Error::other("bad ts key")))?,
            ) ^ (1u64 << 63);
            let v = f64::from_bits(u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| read_err(&std::io::Error::other("bad ts value")))?,
            ));
            if !visit(t as i64, v) {
                break;
            }
        }
        Ok(())
    }

    /// The highest `before` of a [`Command::TsTrim`] applied here (no point older is left but
    /// those appended since), `None` before the first. Blocking.
    pub fn ts_horizon(&self) -> Result<Option<i64>, StorageError> {
        let _shared = self.state.read()?;
        ts_horizon(&self.db)
    }

    /// Whether a snapshot install is replacing the state (reads are refused meanwhile).
    pub fn installing(&self) -> bool {
        self.state.installing()
    }

    /// The node record for `id` if that id was ever a member. Blocking.
    pub fn node_ever(&self, id: NodeId) -> Result<Option<NodeInfo>, StorageError> {
        let _shared = self.state.read()?;
        let meta = cf_meta(&self.db)?;
        match self
            .db
            .get_cf(meta, node_key(id))
            .map_err(|e| read_err(&e))?
        {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| read_err(&e)),
            None => Ok(None),
        }
    }
}

fn ts_horizon(db: &DB) -> Result<Option<i64>, StorageError> {
    match db
        .get_cf(cf_meta(db)?, KEY_TS_HORIZON)
        .map_err(|e| read_err(&e))?
    {
        Some(v) => {
            let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                read_err(&std::io::Error::other("sm_meta ts_horizon is not 8 bytes"))
            })?;
            Ok(Some(i64::from_be_bytes(b)))
        }
        None => Ok(None),
    }
}

/// The series that have a stored point older than `before`, in key order (one seek per
/// series). Blocking.
fn series_older_than(
    db: &DB,
    ts: &rocksdb::ColumnFamily,
    before: i64,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut out = Vec::new();
    let mut it = db.raw_iterator_cf(ts);
    it.seek_to_first();
    while let Some(k) = it.key() {
        // `series \0 t`: series names never hold a byte below `\x01`.
        let end = k.iter().position(|&b| b == 0).unwrap_or(k.len());
        let series = k[..end].to_vec();
        // Its oldest point is the first key: a series with none to drop gets no tombstone.
        if k < ts_key(&String::from_utf8_lossy(&series), before).as_slice() {
            out.push(series.clone());
        }
        let mut next = series;
        next.push(1);
        it.seek(&next);
    }
    it.status().map_err(|e| read_err(&e))?;
    Ok(out)
}

/// Why a preparation stopped.
enum Stop {
    /// A read needed the disk, and only memory was allowed (nothing was written).
    NeedsDisk,
    /// Storage failed.
    Failed(Box<StorageError>),
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Self {
        Stop::Failed(Box::new(e))
    }
}

/// Applies commands of one apply call into one RocksDB batch.
struct Applier<'a> {
    db: &'a DB,
    kv: &'a rocksdb::ColumnFamily,
    ts: &'a rocksdb::ColumnFamily,
    meta: &'a rocksdb::ColumnFamily,
    batch: WriteBatch,
    /// Series appended to earlier in this batch (a trim must reach them too, though they may
    /// not be in the database yet: how entries are grouped into apply calls differs between
    /// replicas, what a trim drops must not).
    appended: BTreeSet<String>,
    /// The time-series horizon as a trim earlier in this batch left it.
    horizon: Option<i64>,
    /// Keys written earlier in this batch: key -> Some(revision) or None (deleted).
    overlay: HashMap<Vec<u8>, Option<u64>>,
    /// Reads from memory only (memtables, block cache): a read that needs the disk stops.
    memory_only: bool,
}

impl Applier<'_> {
    fn current_rev(&self, k: &[u8]) -> Result<Option<u64>, Stop> {
        if let Some(r) = self.overlay.get(k) {
            return Ok(*r);
        }
        let mut ro = ReadOptions::default();
        if self.memory_only {
            ro.set_read_tier(rocksdb::ReadTier::BlockCache);
        }
        match self.db.get_cf_opt(self.kv, k, &ro) {
            Ok(v) => Ok(v.and_then(|v| split_kv_value(&v).map(|(r, _)| r))),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Err(Stop::NeedsDisk),
            Err(e) => Err(Stop::Failed(Box::new(read_err(&e)))),
        }
    }

    /// Applies one command made by the log entry at `index` (its revision).
    fn apply(&mut self, cmd: &Command, index: u64) -> Result<CommandResult, Stop> {
        Ok(match cmd {
            Command::Put {
                ks,
                key,
                value,
                cond,
            } => {
                let k = kv_key(ks, key);
                let cur = self.current_rev(&k)?;
                let holds = match cond {
                    None => true,
                    Some(Cond::Revision(r)) => cur == Some(*r),
                    Some(Cond::Absent) => cur.is_none(),
                    Some(Cond::Exists) => cur.is_some(),
                };
                if holds {
                    self.batch.put_cf(self.kv, &k, kv_value(index, value));
                    self.overlay.insert(k, Some(index));
                    CommandResult {
                        ok: true,
                        revision: index,
                        ..Default::default()
                    }
                } else {
                    CommandResult {
                        ok: false,
                        revision: cur.unwrap_or(0),
                        ..Default::default()
                    }
                }
            }
            Command::Delete {
                ks,
                key,
                prev_revision,
            } => {
                let k = kv_key(ks, key);
                let cur = self.current_rev(&k)?;
                match prev_revision {
                    Some(p) if cur != Some(*p) => CommandResult {
                        ok: false,
                        revision: cur.unwrap_or(0),
                        ..Default::default()
                    },
                    _ => {
                        let existed = cur.is_some();
                        if existed {
                            self.batch.delete_cf(self.kv, &k);
                            self.overlay.insert(k, None);
                        }
                        CommandResult {
                            ok: true,
                            revision: index,
                            deleted: existed,
                            ..Default::default()
                        }
                    }
                }
            }
            Command::TsAppend { series, points } => {
                self.appended.insert(series.clone());
                for (t, v) in points {
                    self.batch
                        .put_cf(self.ts, ts_key(series, *t), v.to_bits().to_be_bytes());
                }
                CommandResult {
                    ok: true,
                    revision: index,
                    count: points.len() as u64,
                    ..Default::default()
                }
            }
            Command::TsTrim { before } => {
                if self.memory_only {
                    // It scans every series: rare, and for the blocking pool.
                    return Err(Stop::NeedsDisk);
                }
                // Range tombstones only where there is something to drop (what is visible
                // afterwards is the same either way).
                let mut series: BTreeSet<Vec<u8>> = series_older_than(self.db, self.ts, *before)?
                    .into_iter()
                    .collect();
                series.extend(self.appended.iter().map(|s| s.as_bytes().to_vec()));
                let mut trimmed = 0u64;
                for s in &series {
                    let name = String::from_utf8_lossy(s);
                    let (from, to) = (ts_key(&name, i64::MIN), ts_key(&name, *before));
                    self.batch.delete_range_cf(self.ts, from, to);
                    trimmed += 1;
                }
                let current = match self.horizon {
                    Some(h) => Some(h),
                    None => ts_horizon(self.db)?,
                };
                let horizon = current.map_or(*before, |h| h.max(*before));
                self.batch
                    .put_cf(self.meta, KEY_TS_HORIZON, horizon.to_be_bytes());
                self.horizon = Some(horizon);
                CommandResult {
                    ok: true,
                    revision: index,
                    count: trimmed,
                    ..Default::default()
                }
            }
            // The proposer's batches (never nested).
            Command::Batch(cmds) => {
                let mut batch = Vec::with_capacity(cmds.len());
                for c in cmds {
                    batch.push(self.apply(c, index)?);
                }
                CommandResult {
                    ok: true,
                    revision: index,
                    batch,
                    ..Default::default()
                }
            }
        })
    }
}

/// The last applied log id and the membership, read with `get` (from the database or one of
/// its snapshots) out of `sm_meta`.
pub(crate) fn applied_from(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<(Option<LogId>, StoredMembership), StorageError> {
    let applied = match get(KEY_APPLIED).map_err(|e| read_err(&e))? {
        Some(v) => serde_json::from_slice(&v).map_err(|e| read_err(&e))?,
        None => None,
    };
    let membership = match get(KEY_MEMBERSHIP).map_err(|e| read_err(&e))? {
        Some(v) => serde_json::from_slice(&v).map_err(|e| read_err(&e))?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

pub(crate) fn cf_meta(db: &DB) -> Result<&rocksdb::ColumnFamily, StorageError> {
    cf(db, CF_SM_META)
}

/// What applying some entries will write, and answer.
struct Prepared {
    batch: WriteBatch,
    results: Vec<CommandResult>,
    /// The time-series horizon after a trim among the entries.
    horizon: Option<i64>,
}

/// The state machine handed to openraft.
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: Arc<DB>,
    /// Where snapshots are built, received and kept ([`crate::snapshot_store`]).
    snaps: SnapshotDir,
    /// Held alone by an install, shared by reads and builds.
    state: StateLock,
    /// When set, an entry is applied only once the log is on disk up to it (the rule of
    /// [`crate::durability`]; a node's state machine always has it).
    durable: Option<Durable>,
    /// Snapshots built and installed, for `/metrics`.
    metrics: StorageMetrics,
}

impl StateMachine {
    /// A state machine over `db`, with its snapshots in `snapshot_dir`, that applies what it
    /// is given at once (openraft's storage suite, which applies entries that were never in a
    /// log). Blocking: it first finishes an install a power cut interrupted
    /// ([`snapshot_store::recover`]).
    pub fn open(db: Arc<DB>, snapshot_dir: PathBuf) -> Result<Self, StorageError> {
        let sm = Self {
            db,
            snaps: SnapshotDir::new(snapshot_dir),
            state: StateLock::default(),
            durable: None,
            metrics: StorageMetrics::default(),
        };
        snapshot_store::recover(&sm.db, &sm.snaps, &sm.state)?;
        Ok(sm)
    }

    /// Counts the snapshots it builds and installs into `metrics` (and keeps its time-series
    /// horizon there, starting from the stored one).
    pub fn counting_into(mut self, metrics: StorageMetrics) -> Self {
        if let Ok(Some(h)) = ts_horizon(&self.db) {
            metrics.ts_horizon.set(h);
        }
        self.metrics = metrics;
        self
    }

    /// Applies an entry only once `durable` has reached it.
    pub fn applying_only_durable(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
    }

    /// A reader for the API.
    pub fn reader(&self) -> StateReader {
        StateReader {
            db: self.db.clone(),
            state: self.state.clone(),
        }
    }

    /// The batch that applies `entries` (and records the last as applied), and their results;
    /// with `memory_only`, stops with [`Stop::NeedsDisk`] rather than read from the disk.
    fn prepare(db: &DB, entries: &[Entry], memory_only: bool) -> Result<Prepared, Stop> {
        let meta = cf_meta(db)?;
        let mut ap = Applier {
            db,
            kv: cf(db, CF_KV)?,
            ts: cf(db, CF_TS)?,
            meta,
            batch: WriteBatch::default(),
            appended: BTreeSet::new(),
            horizon: None,
            overlay: HashMap::new(),
            memory_only,
        };
        let mut results = Vec::with_capacity(entries.len());
        let mut last: Option<LogId> = None;
        for entry in entries {
            let index = entry.log_id.index;
            last = Some(entry.log_id);
            let res = match &entry.payload {
                EntryPayload::Blank => CommandResult::default(),
                EntryPayload::Membership(m) => {
                    for (id, node) in m.nodes() {
                        let bytes = serde_json::to_vec(node).map_err(|e| write_err(&e))?;
                        ap.batch.put_cf(meta, node_key(*id), bytes);
                    }
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    let bytes = serde_json::to_vec(&stored).map_err(|e| write_err(&e))?;
                    ap.batch.put_cf(meta, KEY_MEMBERSHIP, bytes);
                    CommandResult::default()
                }
                EntryPayload::Normal(cmd) => ap.apply(cmd, index)?,
            };
            results.push(res);
        }
        let horizon = ap.horizon;
        let mut batch = ap.batch;
        if let Some(l) = last {
            let bytes = serde_json::to_vec(&Some(l)).map_err(|e| write_err(&e))?;
            batch.put_cf(meta, KEY_APPLIED, bytes);
        }
        Ok(Prepared {
            batch,
            results,
            horizon,
        })
    }

    /// Applies `entries` in one batch, reading from the disk where needed. Blocking.
    fn apply_blocking(
        db: &DB,
        metrics: &StorageMetrics,
        entries: Vec<Entry>,
    ) -> Result<Vec<CommandResult>, StorageError> {
        let p = match Self::prepare(db, &entries, false) {
            Ok(r) => r,
            Err(Stop::Failed(e)) => return Err(*e),
            Err(Stop::NeedsDisk) => {
                return Err(read_err(&std::io::Error::other(
                    "internal: a read allowed to use the disk asked for it",
                )))
            }
        };
        db.write(p.batch).map_err(|e| write_err(&e))?;
        if let Some(h) = p.horizon {
            metrics.ts_horizon.set(h);
        }
        Ok(p.results)
    }

    /// Applies `entries` here and now if that needs no disk read and no wait in RocksDB
    /// (`None`: nothing was written; apply them off the runtime).
    fn apply_in_memory(
        db: &DB,
        entries: &[Entry],
    ) -> Result<Option<Vec<CommandResult>>, StorageError> {
        // A trim never runs in memory, so `horizon` stays `None` here.
        let Prepared { batch, results, .. } = match Self::prepare(db, entries, true) {
            Ok(r) => r,
            Err(Stop::NeedsDisk) => return Ok(None),
            Err(Stop::Failed(e)) => return Err(*e),
        };
        let mut fast = WriteOptions::default();
        fast.set_no_slowdown(true);
        match db.write_opt(batch, &fast) {
            Ok(()) => Ok(Some(results)),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(None),
            Err(e) => Err(write_err(&e)),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (db, snaps, state) = (self.db.clone(), self.snaps.clone(), self.state.clone());
        let (meta, file) = blocking(move || snapshot_store::build(&db, &snaps, &state)).await?;
        self.metrics.snapshots_built.inc();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let meta = cf_meta(&db)?;
            applied_from(|k| db.get_cf(meta, k))
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let last = entries.last().map(|e| e.log_id.index);
        if let (Some(d), Some(last)) = (&self.durable, last) {
            d.wait_for(last).await;
        }
        // Here and now when that needs neither a disk read nor a wait in RocksDB: the reads
        // come from memtables and the block cache, the write is a memtable insert and an
        // append to the WAL buffer (see `db`), tens of µs. Handing it to the blocking pool and
        // back cost two thread wake-ups, ~115 µs of every write. Otherwise (a key only on
        // disk, a write stall) it goes to the blocking pool.
        if let Some(results) = Self::apply_in_memory(&self.db, &entries)? {
            return Ok(results);
        }
        let db = self.db.clone();
        let metrics = self.metrics.clone();
        blocking(move || Self::apply_blocking(&db, &metrics, entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let snaps = self.snaps.clone();
        let f = blocking(move || snaps.begin_receiving()).await?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let (db, snaps, state) = (self.db.clone(), self.snaps.clone(), self.state.clone());
        let meta = meta.clone();
        // Writes openraft made through the handle are complete once it is turned back into a
        // std file.
        let file = snapshot.into_std().await;
        let horizon = blocking(move || {
            snapshot_store::install(&db, &snaps, &state, &meta, file)?;
            ts_horizon(&db)
        })
        .await?;
        self.metrics.ts_horizon.set(horizon.unwrap_or(0));
        self.metrics.snapshots_installed.inc();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let (db, snaps) = (self.db.clone(), self.snaps.clone());
        let current = blocking(move || snapshot_store::current(&db, &snaps)).await?;
        Ok(current.map(|(meta, f)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(f)),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use openraft::CommittedLeaderId;

    fn normal(index: u64, cmd: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    fn put(key: &str, value: &str, cond: Option<Cond>) -> Command {
        Command::Put {
            ks: String::new(),
            key: key.into(),
            value: value.into(),
            cond,
        }
    }

    #[test]
    fn a_batch_applies_each_command_at_its_entry_index() {
        let tmp = tempfile::tempdir().unwrap();
        let db = crate::db::open_db(tmp.path(), true).unwrap();
        let sm = StateMachine::open(db.clone(), tmp.path().join("snapshots")).unwrap();
        let r = StateMachine::apply_blocking(
            &db,
            &StorageMetrics::default(),
            vec![normal(3, put("x", "old", None))],
        )
        .unwrap();
        assert_eq!(r[0].revision, 3);
        let batch = Command::Batch(vec![
            put("y", "new", None),
            put("x", "lost", Some(Cond::Absent)),
            Command::Delete {
                ks: String::new(),
                key: "gone".into(),
                prev_revision: None,
            },
            put("z", "cas", Some(Cond::Revision(3))),
        ]);
        let r =
            StateMachine::apply_blocking(&db, &StorageMetrics::default(), vec![normal(4, batch)])
                .unwrap();
        let b = &r[0].batch;
        assert_eq!(b.len(), 4, "{r:?}");
        assert!(b[0].ok && b[0].revision == 4);
        assert!(!b[1].ok && b[1].revision == 3, "x exists at 3: {:?}", b[1]);
        assert!(b[2].ok && !b[2].deleted);
        assert!(!b[3].ok && b[3].revision == 0, "z is absent");
        let reader = sm.reader();
        assert_eq!(reader.get("", "y").unwrap(), Some((4, "new".into())));
        assert_eq!(reader.get("", "x").unwrap(), Some((3, "old".into())));
        assert_eq!(reader.get("", "z").unwrap(), None);
    }

    #[test]
    fn an_apply_that_would_read_the_disk_is_left_to_the_blocking_pool() {
        let tmp = tempfile::tempdir().unwrap();
        let db = crate::db::open_db(tmp.path(), true).unwrap();
        StateMachine::apply_blocking(
            &db,
            &StorageMetrics::default(),
            vec![normal(3, put("x", "on disk", None))],
        )
        .unwrap();
        // From the memtable: done in memory.
        let r = StateMachine::apply_in_memory(&db, &[normal(4, put("x", "v", None))]).unwrap();
        assert_eq!(r.map(|r| r[0].revision), Some(4));
        // Only in an SST file, not yet in the block cache: nothing written, and no answer.
        db.flush_cf(cf(&db, CF_KV).unwrap()).unwrap();
        let cas = normal(5, put("x", "cas", Some(Cond::Revision(4))));
        assert!(
            StateMachine::apply_in_memory(&db, std::slice::from_ref(&cas))
                .unwrap()
                .is_none()
        );
        let reader = StateMachine::open(db.clone(), tmp.path().join("snapshots"))
            .unwrap()
            .reader();
        assert_eq!(reader.get("", "x").unwrap(), Some((4, "v".into())));
        // The blocking pool reads it from the disk.
        let r = StateMachine::apply_blocking(&db, &StorageMetrics::default(), vec![cas]).unwrap();
        assert!(r[0].ok && r[0].revision == 5, "{r:?}");
    }

    fn points(reader: &StateReader, series: &str) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        reader
            .ts_scan(series, i64::MIN, i64::MAX, |t, v| {
                out.push((t, v));
                true
            })
            .unwrap();
        out
    }

    #[test]
    fn a_trim_drops_the_same_points_however_entries_are_grouped_into_applies() {
        let entries = [
            normal(
                1,
                Command::TsAppend {
                    series: "a".into(),
                    points: vec![(-5, 0.0), (1, 1.0), (5, 5.0), (10, 10.0)],
                },
            ),
            normal(
                2,
                Command::TsAppend {
                    series: "a.b".into(),
                    points: vec![(2, 2.0), (7, 7.0)],
                },
            ),
            normal(3, Command::TsTrim { before: 6 }),
            normal(
                4,
                Command::TsAppend {
                    series: "c".into(),
                    points: vec![(3, 3.0)],
                },
            ),
        ];
        let mut seen = Vec::new();
        for split in [0, 1, 2, 3, 4] {
            let tmp = tempfile::tempdir().unwrap();
            let db = crate::db::open_db(tmp.path(), true).unwrap();
            let metrics = StorageMetrics::default();
            let (first, second) = entries.split_at(split);
            for part in [first, second] {
                if !part.is_empty() {
                    StateMachine::apply_blocking(&db, &metrics, part.to_vec()).unwrap();
                }
            }
            let reader = StateMachine::open(db.clone(), tmp.path().join("snapshots"))
                .unwrap()
                .reader();
            let got = (
                points(&reader, "a"),
                points(&reader, "a.b"),
                points(&reader, "c"),
                reader.ts_horizon().unwrap(),
                metrics.ts_horizon.get(),
            );
            assert_eq!(got.0, vec![(10, 10.0)], "split at {split}");
            assert_eq!(got.1, vec![(7, 7.0)], "split at {split}");
            // Appended after the trim: kept until the next one.
            assert_eq!(got.2, vec![(3, 3.0)], "split at {split}");
            assert_eq!((got.3, got.4), (Some(6), 6), "split at {split}");
            // In memory only, a trim is left to the blocking pool.
            assert!(StateMachine::apply_in_memory(
                &db,
                &[normal(5, Command::TsTrim { before: 7 })]
            )
            .unwrap()
            .is_none());
            seen.push(got);
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]));
    }

    fn snapshot_dir(tmp: &tempfile::TempDir) -> SnapshotDir {
        SnapshotDir::new(tmp.path().join("snapshots"))
    }

    #[test]
    fn a_snapshot_carries_the_horizon() {
        let tmp = tempfile::tempdir().unwrap();
        let db = crate::db::open_db(tmp.path(), true).unwrap();
        let metrics = StorageMetrics::default();
        StateMachine::apply_blocking(
            &db,
            &metrics,
            vec![normal(1, Command::TsTrim { before: 42 })],
        )
        .unwrap();
        let (meta, file) =
            snapshot_store::build(&db, &snapshot_dir(&tmp), &StateLock::default()).unwrap();
        let tmp2 = tempfile::tempdir().unwrap();
        let db2 = crate::db::open_db(tmp2.path(), true).unwrap();
        snapshot_store::install(
            &db2,
            &snapshot_dir(&tmp2),
            &StateLock::default(),
            &meta,
            file,
        )
        .unwrap();
        assert_eq!(
            StateMachine::open(db2, tmp2.path().join("snapshots"))
                .unwrap()
                .reader()
                .ts_horizon()
                .unwrap(),
            Some(42)
        );
    }

    fn snapshot_files(tmp: &tempfile::TempDir) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(tmp.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A leader's state of many install batches, installed over a follower's own state, with
    /// the install cut short after its first batches: the next start installs it again.
    #[test]
    fn an_install_cut_short_is_finished_at_the_next_start() {
        let leader = tempfile::tempdir().unwrap();
        let ldb = crate::db::open_db(leader.path(), true).unwrap();
        let value = "v".repeat(64 << 10);
        let n = 3 * snapshot_store::INSTALL_BATCH_BYTES / value.len();
        let entries = (0..n)
            .map(|i| normal(i as u64 + 1, put(&format!("k{i:05}"), &value, None)))
            .collect();
        StateMachine::apply_blocking(&ldb, &StorageMetrics::default(), entries).unwrap();
        let (meta, file) =
            snapshot_store::build(&ldb, &snapshot_dir(&leader), &StateLock::default()).unwrap();
        assert_eq!(snapshot_files(&leader).len(), 1);

        let follower = tempfile::tempdir().unwrap();
        let fdb = crate::db::open_db(follower.path(), true).unwrap();
        StateMachine::apply_blocking(
            &fdb,
            &StorageMetrics::default(),
            vec![normal(1, put("only-here", "x", None))],
        )
        .unwrap();
        snapshot_store::install(
            &fdb,
            &snapshot_dir(&follower),
            &StateLock::default(),
            &meta,
            file,
        )
        .unwrap();
        // As if the power went after the marker and the first batches: the marker back, the
        // state half replaced (the old key back, the last keys gone, applied not moved).
        let installing = {
            let (m, _) = snapshot_store::current(&fdb, &snapshot_dir(&follower))
                .unwrap()
                .unwrap();
            assert_eq!(m, meta);
            m
        };
        let name = snapshot_files(&follower).pop().unwrap();
        let marker = serde_json::json!({ "file": name, "meta": installing });
        let sm_cf = cf_meta(&fdb).unwrap();
        fdb.put_cf(sm_cf, b"installing", serde_json::to_vec(&marker).unwrap())
            .unwrap();
        fdb.put_cf(
            sm_cf,
            KEY_APPLIED,
            serde_json::to_vec(&Some(LogId::new(CommittedLeaderId::new(1, 1), 1))).unwrap(),
        )
        .unwrap();
        let kv = cf(&fdb, CF_KV).unwrap();
        fdb.put_cf(kv, kv_key("", "only-here"), kv_value(1, "x"))
            .unwrap();
        fdb.delete_cf(kv, kv_key("", &format!("k{:05}", n - 1)))
            .unwrap();
        std::fs::write(
            follower.path().join("snapshots/recv-abandoned.tmp"),
            b"junk",
        )
        .unwrap();
        drop(fdb);

        let fdb = crate::db::open_db(follower.path(), false).unwrap();
        let mut sm = StateMachine::open(fdb.clone(), follower.path().join("snapshots")).unwrap();
        let reader = sm.reader();
        assert_eq!(reader.get("", "only-here").unwrap(), None);
        for i in [0, n / 2, n - 1] {
            assert_eq!(
                reader.get("", &format!("k{i:05}")).unwrap(),
                Some((i as u64 + 1, value.clone()))
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (applied, _) = rt.block_on(sm.applied_state()).unwrap();
        assert_eq!(applied, meta.last_log_id);
        assert!(fdb
            .get_cf(cf_meta(&fdb).unwrap(), b"installing")
            .unwrap()
            .is_none());
        assert_eq!(
            snapshot_files(&follower),
            vec![name],
            "the abandoned file is gone"
        );
    }

    #[test]
    fn reads_are_refused_while_an_install_replaces_the_state() {
        let tmp = tempfile::tempdir().unwrap();
        let db = crate::db::open_db(tmp.path(), true).unwrap();
        let sm = StateMachine::open(db, tmp.path().join("snapshots")).unwrap();
        let reader = sm.reader();
        assert_eq!(reader.get("", "x").unwrap(), None);
        let guard = sm.state.write_for_test();
        assert!(reader.installing());
        let e = reader.get("", "x").unwrap_err().to_string();
        assert!(e.contains("installing a snapshot"), "{e}");
        assert!(reader.list("", "", None, 10, 1000).is_err());
        drop(guard);
        assert_eq!(reader.get("", "x").unwrap(), None);
    }

    #[test]
    fn a_snapshot_kept_in_the_database_by_an_earlier_version_moves_to_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let db = crate::db::open_db(tmp.path(), true).unwrap();
        StateMachine::apply_blocking(
            &db,
            &StorageMetrics::default(),
            vec![normal(7, put("a", "1", None))],
        )
        .unwrap();
        let (meta, mut file) =
            snapshot_store::build(&db, &snapshot_dir(&tmp), &StateLock::default()).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut data).unwrap();
        let c = cf(&db, crate::db::CF_SNAPSHOT).unwrap();
        db.delete_cf(c, b"file").unwrap();
        db.put_cf(c, b"data", &data).unwrap();
        std::fs::remove_dir_all(tmp.path().join("snapshots")).unwrap();

        let mut sm = StateMachine::open(db.clone(), tmp.path().join("snapshots")).unwrap();
        assert!(db.get_cf(c, b"data").unwrap().is_none());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let snap = rt.block_on(sm.get_current_snapshot()).unwrap().unwrap();
        assert_eq!(snap.meta, meta);
        let moved =
            std::fs::read(tmp.path().join("snapshots").join(&snapshot_files(&tmp)[0])).unwrap();
        assert_eq!(moved, data);
    }
}
