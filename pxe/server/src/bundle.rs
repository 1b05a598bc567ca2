//! The bundles being served: one loaded and fully checked bundle ([`Bundle`]: the contract, the
//! manifest and every file it lists, open), the current one and the replaced ones still served
//! to boots that began on them ([`Bundles`]).
//!
//! The rule: **every request sees one bundle, the old one or the new one, never a mix or
//! none**, and a boot stays on the bundle its script came from. So:
//! - a bundle is loaded through one open directory handle: `manifest.json` is read (and hashed:
//!   its sha256 is the bundle's *version*) and every file it lists is opened, checked for its
//!   size and sha256 and kept open, all before the bundle is used; any problem refuses it whole;
//! - the served files are those open handles, never a path opened again later: renaming,
//!   replacing or deleting the directory afterwards changes nothing for this bundle, and a
//!   transfer holds its file until it ends;
//! - the current bundle is swapped in one step (a pointer under a lock); each request takes it
//!   once and uses that one throughout;
//! - a node's script names its bundle's version in every URL (`/b/<version>/<path>`), and a
//!   replaced bundle stays servable under those URLs for [`RETAIN`] (at most [`RETAIN_MAX`]
//!   of them), so a boot that fetched its script just before a swap still gets the kernel and
//!   initrds of the same bundle.
//!
//! What this cannot help: a file rewritten *in place* (same inode) while served. Operators
//! write a new bundle beside the old one (pxe/README.md, "Rolling a new bundle").

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use plasmacloud_contract::manifest::{
    kernel_arch, BundleManifest, KERNEL_HEADER_LEN, MANIFEST_FILE,
};
use plasmacloud_contract::Contract;
use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

use crate::ServerError;

/// How long a replaced bundle is still served under its versioned URLs.
pub const RETAIN: Duration = Duration::from_secs(600);
/// At most this many replaced bundles are kept (the oldest goes first).
pub const RETAIN_MAX: usize = 4;

/// One file of a bundle, open.
#[derive(Debug, Clone)]
pub struct BundleFile {
    /// The open file (served by offset: `sendfile` and `pread`, never its file position).
    pub file: Arc<File>,
    /// Its size (checked against the manifest).
    pub size: u64,
    /// Its sha256 (checked), the strong `ETag`.
    pub sha256: String,
}

/// What identifies a version of `manifest.json` on disk (to notice a change by polling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }

    /// The manifest now at `bundle_dir` (following symlinks), if there is one.
    pub fn of_manifest(bundle_dir: &Path) -> Option<Self> {
        std::fs::metadata(bundle_dir.join(MANIFEST_FILE))
            .ok()
            .map(|m| Self::of(&m))
    }
}

/// A loaded, checked bundle and the contract it was checked against.
#[derive(Debug)]
pub struct Bundle {
    /// The sha256 (hex) of its `manifest.json`.
    pub version: String,
    /// The bundle directory as configured (`--bundle`).
    pub dir: PathBuf,
    /// The contract file.
    pub cluster_path: PathBuf,
    /// The sha256 (hex) of the contract file.
    pub contract_sha256: String,
    /// The contract.
    pub contract: Contract,
    /// The manifest.
    pub manifest: BundleManifest,
    /// Which `manifest.json` this was.
    pub manifest_id: FileId,
    /// When it was loaded (unix milliseconds).
    pub loaded_at_ms: u64,
    files: HashMap<String, BundleFile>,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn missing(path: PathBuf, message: impl Into<String>) -> ServerError {
    ServerError::MissingArtifact {
        path,
        message: message.into(),
    }
}

fn bundle_err(message: String) -> ServerError {
    ServerError::Config {
        field: "bundle".into(),
        message,
    }
}

/// Refuses a bundle whose entry says one architecture while its kernel's header says another:
/// an arm64 machine is never handed an x86-64 kernel (nor the reverse). A kernel whose header
/// names no architecture (a stand-in) is taken at the entry's word.
fn check_kernel_archs(
    bundle_dir: &Path,
    manifest: &BundleManifest,
    files: &HashMap<String, BundleFile>,
) -> Result<(), ServerError> {
    use std::os::unix::fs::FileExt;
    for (name, e) in &manifest.entries {
        let Some(f) = files.get(&e.kernel) else {
            continue;
        };
        let mut header = vec![0u8; KERNEL_HEADER_LEN.min(f.size as usize)];
        f.file
            .read_exact_at(&mut header, 0)
            .map_err(|err| missing(bundle_dir.join(&e.kernel), err.to_string()))?;
        if let Some(found) = kernel_arch(&header) {
            if found != e.arch {
                return Err(bundle_err(format!(
                    "{}/manifest.json: entry {name} says {}, but its kernel {} is an {found} kernel by its header; rebuild the bundle with netboot-image (it reads the architecture from the kernel)",
                    bundle_dir.display(),
                    e.arch,
                    e.kernel
                )));
            }
        }
    }
    Ok(())
}

impl Bundle {
    /// Loads the contract at `cluster_path` and the bundle at `bundle_dir`, opening and
    /// checking every file (size and sha256), and the bundle against the contract (cluster
    /// id, an entry for every node). Blocking: it reads every file once.
    pub fn load(bundle_dir: &Path, cluster_path: &Path) -> Result<Self, ServerError> {
        let contract_text = std::fs::read(cluster_path).map_err(|e| ServerError::Contract {
            path: cluster_path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        let contract_sha256 = sha256_hex(&contract_text);
        let contract = Contract::parse_named(
            &String::from_utf8_lossy(&contract_text),
            &cluster_path.display().to_string(),
        )
        .map_err(|e| ServerError::Contract {
            path: cluster_path.to_path_buf(),
            message: e.to_string(),
        })?;
        let dir = rustix::fs::open(
            bundle_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            bundle_err(format!(
                "cannot open {}: {e}; pass --bundle DIR (netboot-image's output)",
                bundle_dir.display()
            ))
        })?;
        let open_in = |rel: &str| -> Result<File, ServerError> {
            rustix::fs::openat(&dir, rel, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map(File::from)
                .map_err(|e| {
                    missing(
                        bundle_dir.join(rel),
                        format!("listed in manifest.json but not readable: {e}"),
                    )
                })
        };
        let manifest_path = bundle_dir.join(MANIFEST_FILE);
        let mut mf = open_in(MANIFEST_FILE).map_err(|_| ServerError::Contract {
            path: manifest_path.clone(),
            message: "no manifest.json here: is this netboot-image's output?".into(),
        })?;
        let manifest_id = FileId::of(&mf.metadata().map_err(|e| ServerError::Contract {
            path: manifest_path.clone(),
            message: e.to_string(),
        })?);
        let mut text = Vec::new();
        mf.read_to_end(&mut text)
            .map_err(|e| ServerError::Contract {
                path: manifest_path.clone(),
                message: e.to_string(),
            })?;
        let version = sha256_hex(&text);
        let manifest = match serde_json::from_slice::<BundleManifest>(&text) {
            Ok(m) if m.problems().is_empty() => m,
            _ => {
                // The contract crate words the problem (naming the field); it reads the file
                // by its path, which is the same file unless it is being replaced right now.
                let message = match BundleManifest::load(bundle_dir) {
                    Err(e) => e.to_string(),
                    Ok(_) => "changed while it was read; try again".into(),
                };
                return Err(ServerError::Contract {
                    path: manifest_path,
                    message,
                });
            }
        };
        if manifest.cluster_id != contract.id() {
            return Err(bundle_err(format!(
                "{} was built for cluster {:?}, the contract is {:?}; rebuild the bundle from this contract",
                bundle_dir.display(),
                manifest.cluster_id,
                contract.id()
            )));
        }
        for n in &contract.nodes {
            if !manifest.entries.contains_key(&n.name) {
                return Err(bundle_err(format!(
                    "{}/manifest.json has no entry for node {}; rebuild the bundle from this contract",
                    bundle_dir.display(),
                    n.name
                )));
            }
        }
        let mut files = HashMap::new();
        let mut buf = vec![0u8; 1 << 20];
        for f in &manifest.files {
            let p = bundle_dir.join(&f.path);
            let mut file = open_in(&f.path)?;
            let meta = file
                .metadata()
                .map_err(|e| missing(p.clone(), e.to_string()))?;
            if !meta.is_file() {
                return Err(missing(p, "is not a regular file"));
            }
            if meta.len() != f.size {
                return Err(missing(
                    p,
                    format!(
                        "is {} bytes, manifest.json says {}; rebuild the bundle (or finish copying it)",
                        meta.len(),
                        f.size
                    ),
                ));
            }
            let mut h = Sha256::new();
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| missing(p.clone(), e.to_string()))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            let sha = hex::encode(h.finalize());
            if !sha.eq_ignore_ascii_case(&f.sha256) {
                return Err(missing(
                    p,
                    format!(
                        "has sha256 {sha}, manifest.json says {}; rebuild the bundle (or finish copying it)",
                        f.sha256
                    ),
                ));
            }
            files.insert(
                f.path.clone(),
                BundleFile {
                    file: Arc::new(file),
                    size: f.size,
                    sha256: f.sha256.to_ascii_lowercase(),
                },
            );
        }
        check_kernel_archs(bundle_dir, &manifest, &files)?;
        Ok(Self {
            version,
            dir: bundle_dir.to_path_buf(),
            cluster_path: cluster_path.to_path_buf(),
            contract_sha256,
            contract,
            manifest,
            manifest_id,
            loaded_at_ms: crate::leases::now_unix().saturating_mul(1000),
            files,
        })
    }

    /// The open file at `path` (a path of the manifest).
    pub fn file(&self, path: &str) -> Option<&BundleFile> {
        self.files.get(path)
    }

    /// The first 12 hex digits of the version, for logs.
    pub fn short(&self) -> &str {
        &self.version[..12.min(self.version.len())]
    }

    /// The phase a fetch of `path` is: `kernel`, `overlay` or `initrd`.
    pub fn phase_of(&self, path: &str) -> &'static str {
        if self.manifest.entries.values().any(|e| e.kernel == path) {
            "kernel"
        } else if self
            .contract
            .nodes
            .iter()
            .any(|n| path == plasmacloud_contract::manifest::overlay_path(&n.name))
        {
            "overlay"
        } else {
            "initrd"
        }
    }
}

/// The current bundle and the replaced ones still served.
#[derive(Debug)]
pub struct Bundles {
    current: RwLock<Arc<Bundle>>,
    retired: Mutex<VecDeque<(Arc<Bundle>, Instant)>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bundles {
    /// Serving `first`.
    pub fn new(first: Bundle) -> Self {
        Self {
            current: RwLock::new(Arc::new(first)),
            retired: Mutex::new(VecDeque::new()),
        }
    }

    /// The bundle a request uses (take it once per request).
    pub fn current(&self) -> Arc<Bundle> {
        read(&self.current).clone()
    }

    /// The bundle of `version`: the current one, or a replaced one still retained.
    pub fn by_version(&self, version: &str) -> Option<Arc<Bundle>> {
        let cur = self.current();
        if cur.version == version {
            return Some(cur);
        }
        lock(&self.retired)
            .iter()
            .rev()
            .find(|(b, _)| b.version == version)
            .map(|(b, _)| b.clone())
    }

    /// Makes `new` current in one step; the old one is retained for [`RETAIN`]. Returns the
    /// old one, and the bundles dropped to keep at most [`RETAIN_MAX`].
    pub fn swap(&self, new: Arc<Bundle>) -> (Arc<Bundle>, Vec<Arc<Bundle>>) {
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            new,
        );
        let mut r = lock(&self.retired);
        r.push_back((old.clone(), Instant::now()));
        let mut dropped = Vec::new();
        while r.len() > RETAIN_MAX {
            if let Some((b, _)) = r.pop_front() {
                dropped.push(b);
            }
        }
        (old, dropped)
    }

    /// Drops the replaced bundles retained longer than [`RETAIN`]; returns them.
    pub fn prune(&self, now: Instant) -> Vec<Arc<Bundle>> {
        let mut r = lock(&self.retired);
        let mut dropped = Vec::new();
        while r
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= RETAIN)
        {
            if let Some((b, _)) = r.pop_front() {
                dropped.push(b);
            }
        }
        dropped
    }

    /// The versions of the replaced bundles still served, oldest first.
    pub fn retained(&self) -> Vec<String> {
        lock(&self.retired)
            .iter()
            .map(|(b, _)| b.version.clone())
            .collect()
    }
}
