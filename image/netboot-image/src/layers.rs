//! Layers: compressed cpio archives cached by content hash and concatenated into one initrd.
//!
//! Like nix-netboot-serve's one archive per store path: each layer's key is a sha256 over its
//! members' names, modes, owners and contents, and `CACHE/layers/<key>.cpio.zst` holds its
//! compressed archive. Building an initrd packs only the layers whose key has no archive yet
//! (in parallel, largest first) and concatenates the rest from the cache, so changing one
//! binary re-packs one layer.
//!
//! How a member's content enters the key:
//! - [`Keying::Content`]: its sha256, remembered per file in `CACHE/hashes.json` against the
//!   file's (device, inode, size, mtime, ctime) — git's index trick — so an unchanged file is
//!   not read again, and a file touched but unchanged does not re-pack its layer;
//! - [`Keying::Stat`]: that stat identity itself, for large trees treated as immutable (the
//!   debootstrapped root filesystem, whose cache directory is keyed by its package list):
//!   hashing 200 MB on every build would cost more than the rebuild is allowed to take.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ImageError;
use crate::newc::{Body, Entry, Kind, NewcWriter};

/// Bumped when the archive layout changes, so old cached layers are not reused.
/// v2: layers are compressed in zstd's multi-threaded mode (see [`pack_layer`]).
/// v3: a layer of one file is compressed in jobs of [`SINGLE_FILE_JOB_BYTES`].
const LAYER_FORMAT: &str = "plasmacloud-layer-v3";

/// zstd job size of a layer holding one regular file (a binary: the layer a rebuild re-packs
/// alone). zstd's default at level 3 is 8 MiB, so a binary of a few MiB was one job: its
/// compression started only when the whole input was buffered and ran on one CPU. In 1 MiB
/// jobs it starts after the first MiB and runs on every worker, for about 0.4 % more bytes.
/// Tree chunks keep the default: they are packed in parallel with each other.
pub const SINGLE_FILE_JOB_BYTES: u32 = 1 << 20;

/// How file contents enter a layer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keying {
    /// sha256 of the content (remembered by stat identity).
    Content,
    /// The stat identity (device, inode, size, mtime, ctime) alone.
    Stat,
    /// A key computed by the caller (from the metadata of a tree walk it already did, or from
    /// a snapshot of an immutable tree). A layer with a given key and no entries must already
    /// be in the cache.
    Given(String),
}

/// One layer: a named, ordered list of members.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Name for reports (`rootfs-3`, `bin-chainfire`, `units`).
    pub name: String,
    /// Members in archive order (parents before children).
    pub entries: Vec<Entry>,
    /// How file contents enter the key.
    pub keying: Keying,
}

impl Layer {
    /// Sum of body sizes.
    pub fn input_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::size).sum()
    }
}

/// What happened to one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    /// Layer name.
    pub name: String,
    /// Its key (sha256 hex).
    pub key: String,
    /// Number of members.
    pub entries: usize,
    /// Uncompressed body bytes.
    pub input_bytes: u64,
    /// Compressed archive bytes.
    pub bytes: u64,
    /// Packed in this run (`false`: taken from the cache).
    pub packed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CachedHash {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    sha256: String,
}

fn stat_identity(m: &fs::Metadata) -> (u64, u64, u64, i128, i128) {
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
    )
}

/// A JSON cache file's contents, or the default when it is missing or unreadable (a cache
/// that cannot be read only costs work).
pub(crate) fn read_json_or_default<T: serde::de::DeserializeOwned + Default>(path: &Path) -> T {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes `value` as JSON to `path` through a temporary file renamed at the end (creating the
/// directory), so a reader sees the old or the new contents, never a part.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    let json = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let r = fs::write(&tmp, json).and_then(|_| fs::rename(&tmp, path));
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// `CACHE/hashes.json`: path → stat identity + sha256.
#[derive(Debug, Default)]
struct HashCache {
    path: PathBuf,
    map: BTreeMap<String, CachedHash>,
    dirty: bool,
}

impl HashCache {
    fn load(cache_dir: &Path) -> Self {
        let path = cache_dir.join("hashes.json");
        Self {
            map: read_json_or_default(&path),
            path,
            dirty: false,
        }
    }

    fn sha256(&mut self, file: &Path) -> Result<String, ImageError> {
        let m = fs::metadata(file).map_err(ImageError::io(file, "reading metadata"))?;
        let (dev, ino, size, mtime_ns, ctime_ns) = stat_identity(&m);
        let key = file.display().to_string();
        if let Some(c) = self.map.get(&key) {
            if (c.dev, c.ino, c.size, c.mtime_ns, c.ctime_ns)
                == (dev, ino, size, mtime_ns, ctime_ns)
            {
                return Ok(c.sha256.clone());
            }
        }
        let (_, sha256) = crate::bundle::hash_file(file)?;
        self.map.insert(
            key,
            CachedHash {
                dev,
                ino,
                size,
                mtime_ns,
                ctime_ns,
                sha256: sha256.clone(),
            },
        );
        self.dirty = true;
        Ok(sha256)
    }

    fn save(&self) -> Result<(), ImageError> {
        if !self.dirty {
            return Ok(());
        }
        write_json_atomic(&self.path, &self.map).map_err(ImageError::io(&self.path, "writing"))
    }
}

/// The stat identity of a file as key material (what [`Keying::Stat`] hashes).
pub fn stat_key_material(m: &fs::Metadata) -> String {
    format!("{:?} {}", stat_identity(m), m.size())
}

/// A key over `material` (one string per member, in order) for [`Keying::Given`].
pub fn given_key(level: i32, material: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(format!("{LAYER_FORMAT}\nzstd={level}\ngiven\n"));
    for m in material {
        h.update(m.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

fn layer_key(layer: &Layer, level: i32, hashes: &mut HashCache) -> Result<String, ImageError> {
    if let Keying::Given(k) = &layer.keying {
        return Ok(k.clone());
    }
    let mut h = Sha256::new();
    h.update(format!("{LAYER_FORMAT}\nzstd={level}\n"));
    for e in &layer.entries {
        h.update(e.path.as_os_str().as_bytes());
        h.update(format!("\0{:o} {} {}\0", e.mode(), e.uid, e.gid));
        match &e.kind {
            Kind::File(Body::Bytes(b)) => h.update(Sha256::digest(b)),
            Kind::File(Body::File { path, size }) => match layer.keying {
                Keying::Content => h.update(hashes.sha256(path)?),
                Keying::Stat | Keying::Given(_) => {
                    let m = fs::metadata(path).map_err(ImageError::io(path, "reading metadata"))?;
                    h.update(format!("{:?} {size}", stat_identity(&m)));
                }
            },
            Kind::Symlink(t) => h.update(t.as_os_str().as_bytes()),
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                h.update(format!("{major}:{minor}"))
            }
            Kind::Dir | Kind::Fifo => {}
        }
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

/// Packs one layer into `dst` (through a temporary file renamed at the end), compressing with
/// `workers` zstd threads.
///
/// Always zstd's multi-threaded mode (at least one worker): its output is the same for any
/// number of workers (unlike single-threaded mode's), so the bytes do not depend on the CPUs
/// of the machine that built them, and a rebuild that re-packs one big layer can still use
/// every CPU.
pub fn pack_layer(layer: &Layer, dst: &Path, level: i32, workers: u32) -> Result<u64, ImageError> {
    let tmp = dst.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let file = fs::File::create(&tmp).map_err(ImageError::io(&tmp, "creating"))?;
        let mut enc =
            zstd::stream::write::Encoder::new(BufWriter::with_capacity(1 << 20, file), level)
                .map_err(ImageError::io(&tmp, "starting zstd"))?;
        enc.multithread(workers.max(1))
            .map_err(ImageError::io(&tmp, "starting zstd workers"))?;
        let files = layer
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::File(_)))
            .count();
        if files == 1 {
            enc.set_parameter(zstd::stream::raw::CParameter::JobSize(
                SINGLE_FILE_JOB_BYTES,
            ))
            .map_err(ImageError::io(&tmp, "setting the zstd job size"))?;
        }
        let mut w = NewcWriter::new(BufWriter::with_capacity(256 * 1024, enc), &tmp);
        for e in &layer.entries {
            w.append(e)?;
        }
        let enc = w
            .finish()?
            .into_inner()
            .map_err(|e| ImageError::io(&tmp, "compressing")(e.into_error()))?;
        let mut out = enc
            .finish()
            .map_err(ImageError::io(&tmp, "finishing zstd"))?;
        out.flush().map_err(ImageError::io(&tmp, "writing"))?;
        drop(out);
        fs::rename(&tmp, dst).map_err(ImageError::io(dst, "renaming into the cache"))?;
        let size = fs::metadata(dst)
            .map_err(ImageError::io(dst, "reading metadata"))?
            .len();
        Ok(size)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Puts `new` in place of `dst` atomically: `dst` always names either the old or the new
/// content.
///
/// An existing `dst` is swapped with `new` (`renameat2(RENAME_EXCHANGE)`), then the old
/// content is unlinked. A plain `rename` over an existing file would cost more on ext4: its
/// `auto_da_alloc` treats replace-by-rename as a request to allocate and start writing every
/// block of the new file at once (about 45 ms for a 39 MB initrd here, more than half a
/// rebuild); an exchange leaves that to the writeback threads. Falls back to `rename` where
/// the filesystem cannot exchange.
pub fn replace_file(new: &Path, dst: &Path) -> Result<(), ImageError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, new, CWD, dst, RenameFlags::EXCHANGE) {
        Ok(()) => {
            // `new` now names the old content.
            fs::remove_file(new).map_err(ImageError::io(new, "removing the previous version"))
        }
        Err(_) => fs::rename(new, dst).map_err(ImageError::io(dst, "renaming into place")),
    }
}

/// Keys every layer, packs the missing ones (`jobs` at a time, largest first), and writes the
/// concatenation to `out` (through a temporary file renamed at the end).
pub fn build_initrd(
    layers: &[Layer],
    cache_dir: &Path,
    out: &Path,
    level: i32,
    jobs: usize,
) -> Result<Vec<LayerReport>, ImageError> {
    let layer_dir = cache_dir.join("layers");
    fs::create_dir_all(&layer_dir).map_err(ImageError::io(&layer_dir, "creating"))?;
    let mut hashes = HashCache::load(cache_dir);
    let started = Instant::now();
    let mut keys = Vec::with_capacity(layers.len());
    for l in layers {
        keys.push(layer_key(l, level, &mut hashes)?);
    }
    hashes.save()?;
    tracing::debug!(elapsed = ?started.elapsed(), "layer keys");
    let paths: Vec<PathBuf> = keys
        .iter()
        .map(|k| layer_dir.join(format!("{k}.cpio.zst")))
        .collect();
    let mut todo: Vec<usize> = (0..layers.len()).filter(|&i| !paths[i].is_file()).collect();
    if let Some(&i) = todo
        .iter()
        .find(|&&i| layers[i].entries.is_empty() && matches!(layers[i].keying, Keying::Given(_)))
    {
        return Err(ImageError::bad(
            &paths[i],
            format!("layer {} was planned from a snapshot but is not in the cache; remove the snapshot (*.layers.json) to re-walk the tree", layers[i].name),
        ));
    }
    todo.sort_by_key(|&i| std::cmp::Reverse(layers[i].input_bytes()));
    let next = AtomicUsize::new(0);
    let errors: Mutex<Vec<ImageError>> = Mutex::new(Vec::new());
    let cpus = crate::jobs(jobs);
    let jobs = cpus.min(todo.len()).max(1);
    // CPUs left over when fewer layers than CPUs need packing go to zstd workers.
    let workers = u32::try_from(cpus / jobs).unwrap_or(1).max(1);
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
    // The output is written while layers are still being packed: each layer is appended as
    // soon as it and every layer before it are in the cache.
    let result = std::thread::scope(|s| {
        for _ in 0..jobs {
            let done_tx = done_tx.clone();
            let (next, errors, todo, paths) = (&next, &errors, &todo, &paths);
            s.spawn(move || loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = todo.get(n) else { break };
                let t = Instant::now();
                match pack_layer(&layers[i], &paths[i], level, workers) {
                    Ok(bytes) => {
                        tracing::info!(layer = %layers[i].name, bytes, elapsed = ?t.elapsed(), "packed");
                        let _ = done_tx.send(i);
                    }
                    Err(e) => {
                        if let Ok(mut errs) = errors.lock() {
                            errs.push(e);
                        }
                        // Stop the others early.
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let mut ready: Vec<bool> = (0..layers.len()).map(|i| !todo.contains(&i)).collect();
        let mut dst = fs::File::create(&tmp).map_err(ImageError::io(&tmp, "creating"))?;
        let mut written = 0;
        loop {
            while written < layers.len() && ready[written] {
                let p = &paths[written];
                let mut src = fs::File::open(p).map_err(ImageError::io(p, "opening"))?;
                std::io::copy(&mut src, &mut dst).map_err(ImageError::io(&tmp, "writing"))?;
                tracing::trace!(layer = %layers[written].name, elapsed = ?started.elapsed(), "copied");
                written += 1;
            }
            if written == layers.len() {
                break;
            }
            match done_rx.recv() {
                Ok(i) => ready[i] = true,
                // Every worker has stopped and a layer is missing: one failed.
                Err(_) => break,
            }
        }
        if written < layers.len() {
            return Err(errors
                .lock()
                .ok()
                .and_then(|mut v| v.pop())
                .unwrap_or_else(|| {
                    ImageError::bad(out, "internal error: a layer was not packed")
                }));
        }
        drop(dst);
        replace_file(&tmp, out)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    tracing::debug!(elapsed = ?started.elapsed(), "initrd written");

    let mut reports = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let bytes = fs::metadata(&paths[i])
            .map_err(ImageError::io(&paths[i], "reading metadata"))?
            .len();
        reports.push(LayerReport {
            name: l.name.clone(),
            key: keys[i].clone(),
            entries: l.entries.len(),
            input_bytes: l.input_bytes(),
            bytes,
            packed: todo.contains(&i),
        });
    }
    Ok(reports)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn changing_one_file_repacks_one_layer_and_touching_none() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        fs::write(&a, b"aaaa").unwrap();
        fs::write(&b, b"bbbb").unwrap();
        let layer = |name: &str, p: &Path| Layer {
            name: name.into(),
            entries: vec![Entry {
                path: PathBuf::from(name),
                perm: 0o755,
                uid: 0,
                gid: 0,
                kind: Kind::File(Body::File {
                    path: p.to_path_buf(),
                    size: fs::metadata(p).unwrap().len(),
                }),
            }],
            keying: Keying::Content,
        };
        let cache = d.path().join("cache");
        let out = d.path().join("initrd");
        let r1 = build_initrd(&[layer("a", &a), layer("b", &b)], &cache, &out, 3, 2).unwrap();
        assert!(r1.iter().all(|r| r.packed));
        fs::write(&b, b"bbbc").unwrap();
        let r2 = build_initrd(&[layer("a", &a), layer("b", &b)], &cache, &out, 3, 2).unwrap();
        assert_eq!(r2.iter().filter(|r| r.packed).count(), 1);
        assert!(r2[1].packed);
        // Rewritten with the same content: new mtime, same hash, nothing packed.
        fs::write(&b, b"bbbc").unwrap();
        let r3 = build_initrd(&[layer("a", &a), layer("b", &b)], &cache, &out, 3, 2).unwrap();
        assert!(r3.iter().all(|r| !r.packed));
        let data = zstd::stream::decode_all(fs::File::open(&out).unwrap()).unwrap();
        let l = crate::newc::list(&data).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].data, b"bbbc");
    }

    #[test]
    fn replacing_swaps_in_the_new_content_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let (new, dst) = (d.path().join("new"), d.path().join("dst"));
        fs::write(&new, b"first").unwrap();
        replace_file(&new, &dst).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"first");
        fs::write(&new, b"second").unwrap();
        replace_file(&new, &dst).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"second");
        assert!(!new.exists());
        let e = replace_file(&d.path().join("missing"), &dst).unwrap_err();
        assert!(e.to_string().contains("dst"), "{e}");
        assert_eq!(fs::read(&dst).unwrap(), b"second");
    }

    #[test]
    fn packed_bytes_do_not_depend_on_the_number_of_zstd_workers() {
        let d = tempfile::tempdir().unwrap();
        // 12 MiB of compressible but not trivial data: several zstd jobs.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..12 << 20)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 3 == 0 {
                    b'a' + (x % 8) as u8
                } else {
                    (x % 251) as u8
                }
            })
            .collect();
        let big = d.path().join("big");
        fs::write(&big, &data).unwrap();
        let layer = Layer {
            name: "big".into(),
            entries: vec![Entry {
                path: PathBuf::from("big"),
                perm: 0o644,
                uid: 0,
                gid: 0,
                kind: Kind::File(Body::File {
                    path: big.clone(),
                    size: data.len() as u64,
                }),
            }],
            keying: Keying::Content,
        };
        let packed: Vec<Vec<u8>> = [1, 2, 4]
            .iter()
            .map(|&w| {
                let dst = d.path().join(format!("w{w}.cpio.zst"));
                pack_layer(&layer, &dst, 3, w).unwrap();
                fs::read(&dst).unwrap()
            })
            .collect();
        assert!(packed[0] == packed[1] && packed[1] == packed[2]);
        let cpio = zstd::stream::decode_all(&packed[0][..]).unwrap();
        let l = crate::newc::list(&cpio).unwrap();
        assert_eq!(l[0].data, data);
    }
}
