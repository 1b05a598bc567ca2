//! Snapshots as files, streamed: never whole in memory.
//!
//! A snapshot is a file in `<data-dir>/snapshots/`: the state machine's key spaces, time series
//! and node records as a sequence of records (`tag u8 | key len u32 | key | value len u32 |
//! value`, big-endian), the format the in-memory snapshots had. RocksDB keeps which file is
//! current (`snapshot` column family: the meta and the file's name).
//!
//! - **Building** iterates a RocksDB snapshot of the applied state into `build-*.tmp`, syncs it,
//!   renames it to `<index>-<random>.snap`, syncs the directory, and only then records it as
//!   current (a synced write). A power cut at any point leaves the previous snapshot current.
//! - **Receiving**: openraft writes the leader's chunks, at their offsets, into `recv-*.tmp`
//!   (one receive at a time; a new one removes the file of an abandoned one).
//! - **Installing** publishes the received file the same way, then records an *installing*
//!   marker (a synced write naming the file and the meta) before it deletes the old state, and
//!   writes the new state in batches of [`INSTALL_BATCH_BYTES`] straight from the file. The
//!   last batch sets the applied log id and membership, makes the file current and clears the
//!   marker, synced. A node that loses power in between finds the marker at start and installs
//!   the same file again from the top ([`recover`]), so it never serves a half-installed state.
//!   While an install runs, local reads are refused ([`StateLock`]) and a snapshot build waits.
//! - Old `.snap` files go once another is current; leftover `.tmp` files at start.
//!
//! Memory is what the buffers and RocksDB's memtables hold, whatever the state's size.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rocksdb::{IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::db::{read_err, write_err, CF_KV, CF_SNAPSHOT, CF_TS};
use crate::state_machine::{
    applied_from, cf, cf_meta, KEY_APPLIED, KEY_MEMBERSHIP, KEY_TS_HORIZON, NODE_PREFIX,
};
use crate::types::{SnapshotMeta, StorageError};

/// The snapshots' directory under the data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";
/// A key or a value of one record is at most this long (values are at most 1 MiB; a longer
/// length field means a damaged file, not something to allocate).
const MAX_RECORD_PART: usize = 16 << 20;
/// An install writes the new state in batches of about this many bytes.
pub const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// Buffer of the file reads and writes.
const IO_BUFFER: usize = 256 << 10;

/// `snapshot` column family: the current snapshot's meta (JSON) and file name.
const SNAP_META: &[u8] = b"meta";
const SNAP_FILE: &[u8] = b"file";
/// The whole snapshot, as earlier versions kept it in RocksDB (moved to a file at start).
const SNAP_DATA_LEGACY: &[u8] = b"data";
/// `sm_meta`: an install under way (see the module docs).
const KEY_INSTALLING: &[u8] = b"installing";

/// Tags of the records.
const TAG_KV: u8 = 0;
const TAG_TS: u8 = 1;
const TAG_META: u8 = 2;

/// What the installing marker records.
#[derive(Debug, Serialize, Deserialize)]
struct Installing {
    file: String,
    meta: SnapshotMeta,
}

fn io_read(what: &str, e: io::Error) -> StorageError {
    read_err(&io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn io_write(what: &str, e: io::Error) -> StorageError {
    write_err(&io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Guards the applied state while an install replaces it: readers and snapshot builds share
/// it, an install holds it alone. Reads never wait: while an install runs they are refused.
#[derive(Debug, Clone, Default)]
pub struct StateLock {
    lock: Arc<RwLock<()>>,
    installing: Arc<AtomicBool>,
}

/// The read of the state failed because an install is replacing it.
pub const INSTALLING: &str =
    "this node is installing a snapshot from the leader; ask again in a moment or ask another node";

impl StateLock {
    /// Shared access for a read, or an error while an install runs.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, ()>, StorageError> {
        if self.installing.load(Ordering::Acquire) {
            return Err(read_err(&io::Error::other(INSTALLING)));
        }
        self.lock
            .try_read()
            .map_err(|_| read_err(&io::Error::other(INSTALLING)))
    }

    /// Shared access for a snapshot build: waits for an install to finish.
    fn read_waiting(&self) -> RwLockReadGuard<'_, ()> {
        self.lock.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an install is replacing the state now.
    pub fn installing(&self) -> bool {
        self.installing.load(Ordering::Acquire)
    }

    /// Alone, as an install holds it.
    #[cfg(test)]
    pub(crate) fn write_for_test(&self) -> impl Drop + '_ {
        self.write()
    }

    fn write(&self) -> InstallGuard<'_> {
        self.installing.store(true, Ordering::Release);
        let guard = self.lock.write().unwrap_or_else(|p| p.into_inner());
        InstallGuard {
            flag: &self.installing,
            _guard: guard,
        }
    }
}

struct InstallGuard<'a> {
    flag: &'a AtomicBool,
    _guard: RwLockWriteGuard<'a, ()>,
}

impl Drop for InstallGuard<'_> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
    }
}

/// The snapshots' directory, shared by the clones of a state machine.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    path: PathBuf,
    /// Serialises making a snapshot current.
    publish: Arc<Mutex<()>>,
    /// The file the receive under way writes to.
    receiving: Arc<Mutex<Option<PathBuf>>>,
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl SnapshotDir {
    /// The directory at `path` (created by [`SnapshotDir::ensure`]).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            publish: Arc::default(),
            receiving: Arc::default(),
        }
    }

    /// Where the snapshots live.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ensure(&self) -> io::Result<()> {
        if !self.path.is_dir() {
            fs::create_dir_all(&self.path)?;
            if let Some(parent) = self.path.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    fn file(&self, name: &str) -> Result<PathBuf, StorageError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with('.');
        if !ok {
            return Err(read_err(&io::Error::other(format!(
                "snapshot file name {name:?} is not one this store writes"
            ))));
        }
        Ok(self.path.join(name))
    }

    /// A new temporary file, `<what>-<random>.tmp`, open for reading and writing.
    fn temp(&self, what: &str) -> io::Result<(PathBuf, File)> {
        self.ensure()?;
        let path = self.path.join(format!(
            "{what}-{}.tmp",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, f))
    }

    /// Renames the synced `tmp` to a new `.snap` name and syncs the directory: its name.
    fn publish(&self, tmp: &Path, index: u64) -> io::Result<String> {
        let name = format!("{index}-{}.snap", hex::encode(rand::random::<[u8; 6]>()));
        fs::rename(tmp, self.path.join(&name))?;
        sync_dir(&self.path)?;
        Ok(name)
    }

    /// Removes every `.snap` file but `keep`, and with `temps` every `.tmp` file too.
    fn sweep(&self, keep: Option<&str>, temps: bool) {
        let Ok(rd) = fs::read_dir(&self.path) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = (name.ends_with(".snap") && Some(name.as_str()) != keep)
                || (temps && name.ends_with(".tmp"));
            if stale {
                if let Err(err) = fs::remove_file(e.path()) {
                    tracing::warn!(file = %e.path().display(), "removing an old snapshot file: {err}");
                }
            }
        }
    }

    /// A new file for a snapshot about to be received (the previous receive's file, if one was
    /// abandoned, is removed).
    pub fn begin_receiving(&self) -> Result<File, StorageError> {
        let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = receiving.take() {
            let _ = fs::remove_file(old);
        }
        let (path, f) = self
            .temp("recv")
            .map_err(|e| io_write("creating a file for a snapshot to receive", e))?;
        *receiving = Some(path);
        Ok(f)
    }

    /// The received file if `f` is it (openraft hands back what it was given to write into).
    fn take_received(&self, f: &File) -> Option<PathBuf> {
        let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        let path = receiving.as_ref()?;
        let (a, b) = (f.metadata().ok()?, fs::metadata(path).ok()?);
        if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
            receiving.take()
        } else {
            None
        }
    }
}

/// Appends one record.
fn write_record(w: &mut impl Write, tag: u8, k: &[u8], v: &[u8]) -> io::Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&(k.len() as u32).to_be_bytes())?;
    w.write_all(k)?;
    w.write_all(&(v.len() as u32).to_be_bytes())?;
    w.write_all(v)
}

/// One record: its tag, key and value.
type Record = (u8, Vec<u8>, Vec<u8>);

/// Reads records one by one.
struct Records<R> {
    r: R,
    at: u64,
}

impl<R: Read> Records<R> {
    fn part(&mut self) -> Result<Vec<u8>, String> {
        let mut len = [0u8; 4];
        self.r
            .read_exact(&mut len)
            .map_err(|e| format!("truncated record at byte {}: {e}", self.at))?;
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_RECORD_PART {
            return Err(format!(
                "record at byte {} claims {n} bytes (at most {MAX_RECORD_PART}): the file is damaged",
                self.at
            ));
        }
        let mut buf = vec![0u8; n];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| format!("truncated record at byte {}: {e}", self.at))?;
        self.at += 4 + n as u64;
        Ok(buf)
    }

    /// The next record, `None` at the end.
    fn next(&mut self) -> Result<Option<Record>, String> {
        let mut tag = [0u8; 1];
        match self.r.read(&mut tag) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(format!("reading at byte {}: {e}", self.at)),
        }
        let at = self.at;
        self.at += 1;
        if tag[0] > TAG_META {
            return Err(format!("unknown record tag {} at byte {at}", tag[0]));
        }
        let k = self.part()?;
        let v = self.part()?;
        Ok(Some((tag[0], k, v)))
    }
}

/// The current snapshot: its meta and an open file, if there is one.
pub fn current(db: &DB, dir: &SnapshotDir) -> Result<Option<(SnapshotMeta, File)>, StorageError> {
    let c = cf(db, CF_SNAPSHOT)?;
    let meta = db.get_cf(c, SNAP_META).map_err(|e| read_err(&e))?;
    let file = db.get_cf(c, SNAP_FILE).map_err(|e| read_err(&e))?;
    let (Some(meta), Some(file)) = (meta, file) else {
        return Ok(None);
    };
    let meta: SnapshotMeta = serde_json::from_slice(&meta).map_err(|e| read_err(&e))?;
    let name = String::from_utf8_lossy(&file).into_owned();
    let path = dir.file(&name)?;
    match File::open(&path) {
        Ok(f) => Ok(Some((meta, f))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(file = %path.display(), "the current snapshot's file is missing; building a new one when needed");
            Ok(None)
        }
        Err(e) => Err(io_read(&format!("opening {}", path.display()), e)),
    }
}

/// When [`make_current`] records a snapshot.
enum Making {
    /// Only if it is at least as new as the current one (a build, which may lose a race to an
    /// install).
    IfNewer,
    /// Always, in one synced write with `batch` (an install, which openraft ordered).
    With(WriteBatch),
}

/// Records `name` (already published) as the current snapshot, as `when` says: whether it
/// did. Holds the publish lock.
fn make_current(
    db: &DB,
    dir: &SnapshotDir,
    meta: &SnapshotMeta,
    name: &str,
    when: Making,
) -> Result<bool, StorageError> {
    let _g = dir.publish.lock().unwrap_or_else(|p| p.into_inner());
    let c = cf(db, CF_SNAPSHOT)?;
    let mut batch = match when {
        Making::With(batch) => batch,
        Making::IfNewer => {
            if let Some(old) = db.get_cf(c, SNAP_META).map_err(|e| read_err(&e))? {
                let old: SnapshotMeta = serde_json::from_slice(&old).map_err(|e| read_err(&e))?;
                if old.last_log_id > meta.last_log_id {
                    return Ok(false);
                }
            }
            WriteBatch::default()
        }
    };
    batch.put_cf(
        c,
        SNAP_META,
        serde_json::to_vec(meta).map_err(|e| write_err(&e))?,
    );
    batch.put_cf(c, SNAP_FILE, name.as_bytes());
    batch.delete_cf(c, SNAP_DATA_LEGACY);
    let mut o = WriteOptions::default();
    o.set_sync(true);
    db.write_opt(batch, &o).map_err(|e| write_err(&e))?;
    dir.sweep(Some(name), false);
    Ok(true)
}

/// Builds a snapshot of the applied state: its meta and the published file, open at its start.
pub fn build(
    db: &DB,
    dir: &SnapshotDir,
    state: &StateLock,
) -> Result<(SnapshotMeta, File), StorageError> {
    db.flush_wal(true).map_err(|e| write_err(&e))?;
    let snap = {
        let _shared = state.read_waiting();
        db.snapshot()
    };
    let meta_cf = cf_meta(db)?;
    let (applied, membership) = applied_from(|k| snap.get_cf(meta_cf, k))?;
    let (tmp, f) = dir
        .temp("build")
        .map_err(|e| io_write("creating a snapshot file", e))?;
    let written = (|| -> Result<File, StorageError> {
        let mut w = BufWriter::with_capacity(IO_BUFFER, f);
        for (tag, cf_name) in [
            (TAG_KV, CF_KV),
            (TAG_TS, CF_TS),
            (TAG_META, crate::db::CF_SM_META),
        ] {
            let c = cf(db, cf_name)?;
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snap);
            for item in db.iterator_cf_opt(c, ro, IteratorMode::Start) {
                let (k, v) = item.map_err(|e| read_err(&e))?;
                if tag == TAG_META && !k.starts_with(NODE_PREFIX) && &*k != KEY_TS_HORIZON {
                    continue;
                }
                write_record(&mut w, tag, &k, &v)
                    .map_err(|e| io_write("writing a snapshot file", e))?;
            }
        }
        let f = w
            .into_inner()
            .map_err(|e| io_write("writing a snapshot file", e.into_error()))?;
        f.sync_all()
            .map_err(|e| io_write("syncing a snapshot file", e))?;
        Ok(f)
    })();
    let mut f = match written {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let index = applied.map(|l| l.index).unwrap_or(0);
    let name = dir
        .publish(&tmp, index)
        .map_err(|e| io_write("publishing a snapshot file", e))?;
    let snapshot_id = match applied {
        Some(l) => format!(
            "{}-{}-{}",
            l.leader_id.term,
            l.index,
            hex::encode(rand::random::<[u8; 4]>())
        ),
        None => format!("0-0-{}", hex::encode(rand::random::<[u8; 4]>())),
    };
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id,
    };
    if !make_current(db, dir, &meta, &name, Making::IfNewer)? {
        // A newer snapshot was installed meanwhile; this one is still handed to openraft.
        let _ = fs::remove_file(dir.path.join(&name));
    }
    f.seek(SeekFrom::Start(0))
        .map_err(|e| io_read("rewinding a snapshot file", e))?;
    Ok((meta, f))
}

/// Installs the snapshot `meta` whose data is `f` (the received file, or any other file
/// holding a snapshot: then it is copied first).
pub fn install(
    db: &DB,
    dir: &SnapshotDir,
    state: &StateLock,
    meta: &SnapshotMeta,
    mut f: File,
) -> Result<(), StorageError> {
    let tmp = match dir.take_received(&f) {
        Some(p) => {
            f.sync_all()
                .map_err(|e| io_write("syncing the received snapshot", e))?;
            p
        }
        None => {
            let (p, mut copy) = dir
                .temp("copy")
                .map_err(|e| io_write("creating a snapshot file", e))?;
            f.seek(SeekFrom::Start(0))
                .and_then(|_| io::copy(&mut f, &mut copy))
                .and_then(|_| copy.sync_all())
                .map_err(|e| io_write("copying a snapshot to install", e))?;
            p
        }
    };
    drop(f);
    let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
    let name = dir
        .publish(&tmp, index)
        .map_err(|e| io_write("publishing the received snapshot", e))?;
    let marker = Installing {
        file: name.clone(),
        meta: meta.clone(),
    };
    let mut o = WriteOptions::default();
    o.set_sync(true);
    db.put_cf_opt(
        cf_meta(db)?,
        KEY_INSTALLING,
        serde_json::to_vec(&marker).map_err(|e| write_err(&e))?,
        &o,
    )
    .map_err(|e| write_err(&e))?;
    replace_state(db, dir, state, &marker)
}

/// Replaces the applied state with the file of `m`, in batches, and makes it current.
fn replace_state(
    db: &DB,
    dir: &SnapshotDir,
    state: &StateLock,
    m: &Installing,
) -> Result<(), StorageError> {
    let path = dir.file(&m.file)?;
    let f = File::open(&path).map_err(|e| {
        io_read(
            &format!(
                "opening {} to install (the installing marker names it)",
                path.display()
            ),
            e,
        )
    })?;
    let _alone = state.write();
    let kv = cf(db, CF_KV)?;
    let ts = cf(db, CF_TS)?;
    let sm = cf_meta(db)?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(kv, [0u8].as_slice(), [0xffu8; 8].as_slice());
    batch.delete_range_cf(ts, [0u8].as_slice(), [0xffu8; 8].as_slice());
    batch.delete_range_cf(sm, NODE_PREFIX, b"node0".as_slice());
    batch.delete_cf(sm, KEY_TS_HORIZON);
    let mut records = Records {
        r: BufReader::with_capacity(IO_BUFFER, f),
        at: 0,
    };
    let bad = |e: String| {
        read_err(&io::Error::other(format!(
            "snapshot {}: {e}",
            path.display()
        )))
    };
    while let Some((tag, k, v)) = records.next().map_err(bad)? {
        let c = match tag {
            TAG_KV => kv,
            TAG_TS => ts,
            _ => sm,
        };
        batch.put_cf(c, k, v);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut batch))
                .map_err(|e| write_err(&e))?;
        }
    }
    batch.put_cf(
        sm,
        KEY_APPLIED,
        serde_json::to_vec(&m.meta.last_log_id).map_err(|e| write_err(&e))?,
    );
    batch.put_cf(
        sm,
        KEY_MEMBERSHIP,
        serde_json::to_vec(&m.meta.last_membership).map_err(|e| write_err(&e))?,
    );
    batch.delete_cf(sm, KEY_INSTALLING);
    make_current(db, dir, &m.meta, &m.file, Making::With(batch))?;
    Ok(())
}

/// At start: finishes an install a power cut interrupted, moves a snapshot kept in RocksDB by
/// an earlier version to a file, and removes files nothing refers to.
pub fn recover(db: &DB, dir: &SnapshotDir, state: &StateLock) -> Result<(), StorageError> {
    dir.ensure()
        .map_err(|e| io_write(&format!("creating {}", dir.path.display()), e))?;
    let c = cf(db, CF_SNAPSHOT)?;
    if let Some(data) = db.get_cf(c, SNAP_DATA_LEGACY).map_err(|e| read_err(&e))? {
        if let Some(meta) = db.get_cf(c, SNAP_META).map_err(|e| read_err(&e))? {
            let meta: SnapshotMeta = serde_json::from_slice(&meta).map_err(|e| read_err(&e))?;
            let (tmp, mut f) = dir
                .temp("legacy")
                .map_err(|e| io_write("creating a snapshot file", e))?;
            f.write_all(&data)
                .and_then(|_| f.sync_all())
                .map_err(|e| io_write("moving the snapshot to a file", e))?;
            let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
            let name = dir
                .publish(&tmp, index)
                .map_err(|e| io_write("moving the snapshot to a file", e))?;
            make_current(db, dir, &meta, &name, Making::With(WriteBatch::default()))?;
            tracing::info!(file = %name, "moved the snapshot out of the database into a file");
        }
    }
    if let Some(raw) = db
        .get_cf(cf_meta(db)?, KEY_INSTALLING)
        .map_err(|e| read_err(&e))?
    {
        let m: Installing = serde_json::from_slice(&raw).map_err(|e| read_err(&e))?;
        tracing::warn!(file = %m.file, snapshot = %m.meta.snapshot_id, "an install was cut short; installing the snapshot again");
        replace_state(db, dir, state, &m)?;
    }
    let keep = db
        .get_cf(c, SNAP_FILE)
        .map_err(|e| read_err(&e))?
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    dir.sweep(keep.as_deref(), true);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_named() {
        let mut buf = Vec::new();
        write_record(&mut buf, TAG_KV, b"k", b"value").unwrap();
        write_record(&mut buf, TAG_TS, b"", b"").unwrap();
        let mut r = Records {
            r: buf.as_slice(),
            at: 0,
        };
        assert_eq!(
            r.next().unwrap(),
            Some((TAG_KV, b"k".to_vec(), b"value".to_vec()))
        );
        assert_eq!(r.next().unwrap(), Some((TAG_TS, vec![], vec![])));
        assert_eq!(r.next().unwrap(), None);

        let cut = &buf[..buf.len() - 3];
        let mut r = Records { r: cut, at: 0 };
        r.next().unwrap();
        let e = r.next().unwrap_err();
        assert!(e.contains("truncated record at byte 20"), "{e}");

        let mut huge = vec![TAG_KV];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let e = Records {
            r: huge.as_slice(),
            at: 0,
        }
        .next()
        .unwrap_err();
        assert!(e.contains("the file is damaged"), "{e}");

        let e = Records {
            r: [9u8].as_slice(),
            at: 0,
        }
        .next()
        .unwrap_err();
        assert!(e.contains("unknown record tag 9"), "{e}");
    }

    #[test]
    fn file_names_from_the_database_are_checked() {
        let d = SnapshotDir::new(PathBuf::from("/x"));
        assert!(d.file("12-abcdef.snap").is_ok());
        for bad in ["", "../x", ".hidden", "a/b", &"x".repeat(65)] {
            assert!(d.file(bad).is_err(), "{bad:?}");
        }
    }
}
