//! `netboot-image appliance`: the Debian test appliance, one bootable initrd.
//!
//! The root is the initramfs itself (no switch-root): `/init` is a symlink to systemd, which
//! runs as PID 1 and reaches `multi-user.target`. Layers, in unpack order (later ones win):
//!
//! 1. `rootfs-N`: the root filesystem tree (a `debootstrap --variant=minbase` with systemd,
//!    cached under `CACHE/rootfs-<hash of suite, mirror and package list>`), cut into chunks of
//!    about [`ROOTFS_CHUNK_BYTES`] so they compress in parallel; contents of `dev`, `proc`,
//!    `sys` and `run` are left out;
//! 2. `modules`: the kernel's modules for the appliance's hardware and their dependencies,
//!    with the `modules.*` indexes, for the release read from the kernel image;
//! 3. `libs`: the shared libraries the binaries need that the tree does not have;
//! 4. `bin-NAME`: one layer per binary, in `--bindir` (default `/usr/local/bin`);
//! 5. `units`: the systemd units from `--units DIR` in `/etc/systemd/system`, enabled from their
//!    `[Install]` sections the way `systemctl enable` does;
//! 6. `appliance`: `/init`, `/dev/console`, an empty `/etc/machine-id` (each boot gets its own),
//!    systemd-networkd with DHCP on every ethernet, the hostname unit (the contract's node name:
//!    `plasmacloud.node=` on the kernel command line, else the overlay's identity file) and a
//!    console marker once `multi-user.target` is reached ([`READY_MARKER`]); `multi-user.target`
//!    as the default target, and [`MASKED_UNITS`] and [`MASKED_GENERATORS`] masked (less to
//!    start under TCG).
//!
//! The rootfs layers leave out [`PACK_OMIT`] (files an appliance in RAM never reads).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::elf::{library_closure_cached, Library};
use crate::error::ImageError;
use crate::layers::{build_initrd, Keying, Layer, LayerReport};
use crate::newc::{Body, Entry, Kind};

/// Uncompressed size at which the root filesystem is cut into another layer.
pub const ROOTFS_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// zstd level of appliance layers (what `zstd -3` uses).
pub const APPLIANCE_ZSTD_LEVEL: i32 = 3;

/// Printed on the console by `plasmacloud-appliance-ready.service` once `multi-user.target`
/// is reached and the network is online; the line goes on with
/// `hostname=NAME ipv4: IFACE=ADDR/PREFIX …` (every global IPv4 address).
pub const READY_MARKER: &str = "plasmacloud-appliance: multi-user.target reached";

/// Where binaries go by default (render units with `firstboot units --bindir` the same).
pub const DEFAULT_BINDIR: &str = "/usr/local/bin";

/// Debian packages of the appliance on top of `minbase`. Not `xfsprogs`: it pulls in Python and
/// ICU (80 MB, a third of the tree); add it with `--extra-packages xfsprogs` for a contract whose
/// disks are XFS.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "iproute2",
    "kmod",
    "dbus",
    "e2fsprogs",
    "fdisk",
    "gdisk",
    "ca-certificates",
    "procps",
];

/// Default Debian suite.
pub const DEFAULT_SUITE: &str = "bookworm";
/// Default Debian mirror.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// How to get the root filesystem.
#[derive(Debug, Clone)]
pub enum RootfsSource {
    /// An existing tree.
    Dir(PathBuf),
    /// `debootstrap --variant=minbase --include=PACKAGES SUITE DIR MIRROR`, cached.
    Debootstrap {
        /// Debian suite.
        suite: String,
        /// Mirror URL.
        mirror: String,
        /// Packages on top of minbase.
        packages: Vec<String>,
    },
}

/// Everything `appliance` needs.
#[derive(Debug, Clone)]
pub struct ApplianceSpec {
    /// The root filesystem.
    pub rootfs: RootfsSource,
    /// The kernel the appliance boots with (its release picks the modules); `None`: no modules.
    pub kernel: Option<PathBuf>,
    /// `/lib/modules` on this machine.
    pub modules_root: PathBuf,
    /// Modules to pack (with their dependencies).
    pub modules: Vec<String>,
    /// This project's binaries.
    pub bins: Vec<PathBuf>,
    /// Where they go in the appliance.
    pub bindir: String,
    /// Rendered systemd units, if any.
    pub units: Option<PathBuf>,
    /// Library directories to resolve `DT_NEEDED` in.
    pub lib_dirs: Vec<PathBuf>,
    /// The cache directory (root filesystems, layers, hashes).
    pub cache_dir: PathBuf,
    /// The initrd to write.
    pub out: PathBuf,
    /// Worker threads (0: the number of CPUs).
    pub jobs: usize,
}

/// What `appliance` built.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ApplianceReport {
    /// The initrd.
    pub out: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// The root filesystem used.
    pub rootfs: PathBuf,
    /// The kernel release whose modules were packed.
    pub kernel_release: Option<String>,
    /// Every layer in order.
    pub layers: Vec<LayerReport>,
}

/// The cache directory of a debootstrapped tree: `CACHE/rootfs-<16 hex of sha256(suite,
/// mirror, sorted packages)>`.
pub fn rootfs_cache_dir(cache: &Path, suite: &str, mirror: &str, packages: &[String]) -> PathBuf {
    let mut p: Vec<&str> = packages.iter().map(String::as_str).collect();
    p.sort();
    p.dedup();
    let key = Sha256::digest(format!(
        "minbase\n{suite}\n{mirror}\n{}\nprune-v2",
        p.join(",")
    ));
    cache.join(format!("rootfs-{}", &hex::encode(key)[..16]))
}

/// Returns the tree for `src`, running debootstrap once (into a temporary directory renamed
/// at the end, so an interrupted run is never mistaken for a finished one).
pub fn ensure_rootfs(src: &RootfsSource, cache: &Path) -> Result<PathBuf, ImageError> {
    let (suite, mirror, packages) = match src {
        RootfsSource::Dir(d) => {
            if !d.is_dir() {
                return Err(ImageError::bad(
                    d,
                    "not a directory (expected a root filesystem tree)",
                ));
            }
            return Ok(d.clone());
        }
        RootfsSource::Debootstrap {
            suite,
            mirror,
            packages,
        } => (suite, mirror, packages),
    };
    let dir = rootfs_cache_dir(cache, suite, mirror, packages);
    if dir.is_dir() {
        tracing::info!(rootfs = %dir.display(), "debootstrapped tree from the cache");
        return Ok(dir);
    }
    fs::create_dir_all(cache).map_err(ImageError::io(cache, "creating"))?;
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(ImageError::io(&tmp, "removing"))?;
    }
    let include = packages.join(",");
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={include}"))
        .arg(suite)
        .arg(&tmp)
        .arg(mirror);
    let line = format!("{cmd:?}");
    tracing::info!(command = %line, "debootstrap (once; cached at {})", dir.display());
    let started = std::time::Instant::now();
    let output = cmd.output().map_err(|e| ImageError::Command {
        command: line.clone(),
        status: "could not start".into(),
        log: format!("{e} (install the debootstrap package)"),
    })?;
    if !output.status.success() {
        let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
        log.push_str(&String::from_utf8_lossy(&output.stderr));
        let debootstrap_log =
            fs::read_to_string(tmp.join("debootstrap/debootstrap.log")).unwrap_or_default();
        log.push_str(&debootstrap_log);
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let _ = fs::remove_dir_all(&tmp);
        return Err(ImageError::Command {
            command: line,
            status: output.status.to_string(),
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    prune_rootfs(&tmp)?;
    if let Err(e) = fs::rename(&tmp, &dir) {
        // Another build finished the same tree first: use it.
        let _ = fs::remove_dir_all(&tmp);
        if !dir.is_dir() {
            return Err(ImageError::io(&dir, "renaming into the cache")(e));
        }
    }
    tracing::info!(elapsed = ?started.elapsed(), rootfs = %dir.display(), "debootstrap done");
    Ok(dir)
}

/// Removes what an appliance never reads: apt's package cache and lists, documentation, man
/// pages, translations, udev's hardware database (names and vendor strings only) and glibc's
/// iconv modules.
fn prune_rootfs(root: &Path) -> Result<(), ImageError> {
    for d in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/cache/debconf",
        "usr/lib/udev/hwdb.d",
        "usr/lib/x86_64-linux-gnu/gconv",
    ] {
        let p = root.join(d);
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            let r = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            r.map_err(ImageError::io(&path, "pruning"))?;
        }
    }
    for f in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
    ] {
        let _ = fs::remove_file(root.join(f));
    }
    Ok(())
}

/// Directories whose contents are not packed (the kernel and systemd fill them at boot).
const SKIP_CONTENTS: &[&str] = &["dev", "proc", "sys", "run"];

/// Walks `root` in sorted order (parents first) into archive entries that keep the tree's
/// modes and owners.
pub fn walk_tree(root: &Path) -> Result<Vec<Entry>, ImageError> {
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out, &mut None)?;
    Ok(out)
}

/// [`walk_tree`], with each member's key material (mode, owner, stat identity) from the same
/// `lstat`, so keying the layers costs no second pass over the tree.
pub fn walk_tree_keyed(root: &Path) -> Result<(Vec<Entry>, Vec<String>), ImageError> {
    let mut out = Vec::new();
    let mut material = Some(Vec::new());
    walk(root, Path::new(""), &mut out, &mut material)?;
    Ok((out, material.unwrap_or_default()))
}

fn walk(
    root: &Path,
    rel: &Path,
    out: &mut Vec<Entry>,
    material: &mut Option<Vec<String>>,
) -> Result<(), ImageError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(ImageError::io(&dir, "listing"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(ImageError::io(&dir, "listing"))?;
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let p = root.join(&r);
        let m = fs::symlink_metadata(&p).map_err(ImageError::io(&p, "reading metadata"))?;
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File(Body::File {
                path: p.clone(),
                size: m.len(),
            })
        } else if ft.is_symlink() {
            Kind::Symlink(fs::read_link(&p).map_err(ImageError::io(&p, "reading link"))?)
        } else if ft.is_char_device() || ft.is_block_device() {
            let rdev = m.rdev();
            let (major, minor) = (
                ((rdev >> 8) & 0xfff) as u32 | ((rdev >> 32) & !0xfff) as u32,
                (rdev & 0xff) as u32 | ((rdev >> 12) & !0xff) as u32,
            );
            if ft.is_char_device() {
                Kind::CharDev { major, minor }
            } else {
                Kind::BlockDev { major, minor }
            }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            continue; // sockets
        };
        let is_dir = matches!(kind, Kind::Dir);
        if let Some(mat) = material.as_mut() {
            let what = match &kind {
                Kind::File(_) => crate::layers::stat_key_material(&m),
                Kind::Symlink(t) => t.display().to_string(),
                Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                    format!("{major}:{minor}")
                }
                Kind::Dir | Kind::Fifo => String::new(),
            };
            mat.push(format!(
                "{}\0{:o} {} {} {what}",
                r.display(),
                m.mode(),
                m.uid(),
                m.gid()
            ));
        }
        out.push(Entry {
            path: r.clone(),
            perm: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            kind,
        });
        let skip = rel.as_os_str().is_empty()
            && SKIP_CONTENTS
                .iter()
                .any(|s| name.as_encoded_bytes() == s.as_bytes());
        if is_dir && !skip {
            walk(root, &r, out, material)?;
        }
    }
    Ok(())
}

/// Cuts a tree walk into layers of about [`ROOTFS_CHUNK_BYTES`], each keyed from the walk's
/// metadata.
fn chunk_rootfs(entries: Vec<Entry>, material: Vec<String>) -> Vec<Layer> {
    let mut layers = Vec::new();
    let mut cur = Vec::new();
    let mut cur_mat = Vec::new();
    let mut size = 0u64;
    for (e, m) in entries.into_iter().zip(material) {
        size += e.size();
        cur.push(e);
        cur_mat.push(m);
        if size >= chunk_bytes() {
            layers.push((std::mem::take(&mut cur), std::mem::take(&mut cur_mat)));
            size = 0;
        }
    }
    if !cur.is_empty() {
        layers.push((cur, cur_mat));
    }
    layers
        .into_iter()
        .enumerate()
        .map(|(i, (entries, mat))| Layer {
            name: format!("rootfs-{i}"),
            entries,
            keying: Keying::Given(crate::layers::given_key(APPLIANCE_ZSTD_LEVEL, &mat)),
        })
        .collect()
}

/// [`ROOTFS_CHUNK_BYTES`], or `PLASMACLOUD_IMAGE_CHUNK_MIB` MiB (for measurements; changing
/// it re-keys every rootfs layer).
fn chunk_bytes() -> u64 {
    std::env::var("PLASMACLOUD_IMAGE_CHUNK_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&m| m > 0)
        .map(|m| m * 1024 * 1024)
        .unwrap_or(ROOTFS_CHUNK_BYTES)
}

/// A record of the layers of an immutable (debootstrapped, cached) tree: their names and keys,
/// so a rebuild whose layers are all cached need not walk the tree again.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TreeSnapshot {
    layers: Vec<(String, String)>,
    /// [`PACK_VERSION`] when recorded (a snapshot of another version is walked again).
    #[serde(default)]
    pack: u32,
}

/// Version of what the rootfs layers leave out ([`PACK_OMIT`]); bump it when that changes.
const PACK_VERSION: u32 = 1;

/// Paths of the root filesystem tree (and everything under them) that are not packed: an
/// appliance that boots into RAM never reads them, and every byte costs its transfer and
/// unpacking on every boot. udev's compiled hardware database (vendor and model names only),
/// Perl (maintainer scripts), dpkg's and apt's state and libraries, time zones (without them
/// the clock is UTC), shell completions and licence texts.
pub const PACK_OMIT: &[&str] = &[
    "usr/lib/udev/hwdb.bin",
    "usr/bin/perl",
    "usr/bin/perl5.36.0",
    "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/share/perl5",
    "var/lib/dpkg",
    "var/lib/apt",
    "usr/lib/apt",
    "usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0",
    "usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0.0",
    "usr/lib/x86_64-linux-gnu/libapt-private.so.0.0",
    "usr/lib/x86_64-linux-gnu/libapt-private.so.0.0.0",
    "usr/share/zoneinfo",
    "usr/share/bash-completion",
    "usr/share/lintian",
    "usr/share/common-licenses",
];

fn omitted(path: &Path) -> bool {
    PACK_OMIT.iter().any(|o| path.starts_with(o))
}

fn snapshot_path(root: &Path) -> PathBuf {
    root.with_extension("layers.json")
}

/// The rootfs layers: from the snapshot of an immutable tree when every layer it names is
/// cached, else from a walk (and then the snapshot is written, for immutable trees).
fn rootfs_layers(root: &Path, immutable: bool, cache_dir: &Path) -> Result<Vec<Layer>, ImageError> {
    let snap = snapshot_path(root);
    if immutable {
        let cached: Option<TreeSnapshot> = crate::layers::read_json_or_default(&snap);
        if let Some(s) = cached.filter(|s| s.pack == PACK_VERSION) {
            let all_cached = s.layers.iter().all(|(_, k)| {
                cache_dir
                    .join("layers")
                    .join(format!("{k}.cpio.zst"))
                    .is_file()
            });
            if all_cached {
                return Ok(s
                    .layers
                    .into_iter()
                    .map(|(name, k)| Layer {
                        name,
                        entries: Vec::new(),
                        keying: Keying::Given(k),
                    })
                    .collect());
            }
        }
    }
    let (entries, material) = walk_tree_keyed(root)?;
    let (entries, material): (Vec<Entry>, Vec<String>) = entries
        .into_iter()
        .zip(material)
        .filter(|(e, _)| !omitted(&e.path))
        .unzip();
    let layers = chunk_rootfs(entries, material);
    if immutable {
        let s = TreeSnapshot {
            layers: layers
                .iter()
                .filter_map(|l| match &l.keying {
                    Keying::Given(k) => Some((l.name.clone(), k.clone())),
                    _ => None,
                })
                .collect(),
            pack: PACK_VERSION,
        };
        if crate::layers::write_json_atomic(&snap, &s).is_err() {
            tracing::warn!(snapshot = %snap.display(), "could not record the tree's layers; the next build walks it again");
        }
    }
    Ok(layers)
}

/// Maps an absolute path on this machine to its name in the tree, following the tree's
/// top-level symlinks (`/lib/x` → `usr/lib/x` on a merged-/usr Debian).
fn in_tree(root: &Path, abs: &Path) -> PathBuf {
    let rel: PathBuf = abs.components().skip(1).collect();
    let mut comps = rel.components();
    if let Some(first) = comps.next() {
        if let Ok(target) = fs::read_link(root.join(first.as_os_str())) {
            if target.is_relative() && !target.as_os_str().as_encoded_bytes().contains(&b'.') {
                return target.join(comps.as_path());
            }
        }
    }
    rel
}

/// Adds directory entries (0755, root) for every ancestor of `path` that the tree lacks.
fn with_parents(root: &Path, path: &Path, seen: &mut BTreeMap<PathBuf, Entry>) {
    let mut p = path.parent();
    while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
        if fs::symlink_metadata(root.join(dir)).is_err() {
            seen.entry(dir.to_path_buf())
                .or_insert_with(|| Entry::dir(dir, 0o755));
        }
        p = dir.parent();
    }
}

fn file_entry(path: PathBuf, src: &Path, perm: u32) -> Result<Entry, ImageError> {
    let m = fs::metadata(src).map_err(ImageError::io(src, "reading metadata"))?;
    if !m.is_file() {
        return Err(ImageError::bad(src, "not a regular file"));
    }
    Ok(Entry {
        path,
        perm,
        uid: 0,
        gid: 0,
        kind: Kind::File(Body::File {
            path: src.to_path_buf(),
            size: m.len(),
        }),
    })
}

fn layer_from(name: String, root: &Path, files: Vec<Entry>) -> Layer {
    let mut all: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    for f in files {
        with_parents(root, &f.path, &mut all);
        all.insert(f.path.clone(), f);
    }
    Layer {
        name,
        entries: all.into_values().collect(),
        keying: Keying::Content,
    }
}

fn modules_layer(
    root: &Path,
    kernel: &Path,
    modules_root: &Path,
    wanted: &[String],
) -> Result<(String, Layer), ImageError> {
    let release = crate::modules::kernel_release(kernel)?;
    let dir = modules_root.join(&release);
    if !dir.is_dir() {
        return Err(ImageError::bad(
            &dir,
            format!(
                "no modules for kernel {release} (install its linux-image package, or pass --modules-root)"
            ),
        ));
    }
    let (files, missing) = crate::modules::module_files(&dir, wanted)?;
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            release,
            "modules neither built nor built-in; left out"
        );
    }
    let base = in_tree(root, &Path::new("/lib/modules").join(&release));
    let entries = files
        .into_iter()
        .map(|f| file_entry(base.join(&f), &dir.join(&f), 0o644))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((release, layer_from("modules".into(), root, entries)))
}

fn libs_layer(root: &Path, libs: &[Library]) -> Result<Layer, ImageError> {
    let mut entries = Vec::new();
    for l in libs {
        let name = l
            .install_as
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        // Already in the tree, in any standard directory? Then the tree's copy serves.
        let present = crate::elf::DEFAULT_LIB_DIRS
            .iter()
            .chain(std::iter::once(&"/lib64"))
            .any(|d| root.join(in_tree(root, &Path::new(d).join(&name))).exists());
        if present {
            continue;
        }
        entries.push(file_entry(in_tree(root, &l.install_as), &l.source, 0o755)?);
    }
    Ok(layer_from("libs".into(), root, entries))
}

/// `[Install]` targets of a unit file: `WantedBy=` → `.wants`, `RequiredBy=` → `.requires`.
pub fn install_links(unit_text: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit_text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[Install]" {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let suffix = match k.trim() {
                "WantedBy" => "wants",
                "RequiredBy" => "requires",
                _ => continue,
            };
            for t in v.split_whitespace() {
                out.push((t.to_string(), suffix.to_string()));
            }
        }
    }
    out
}

fn units_layer(root: &Path, units: &Path) -> Result<Layer, ImageError> {
    let base = PathBuf::from("etc/systemd/system");
    let mut entries = Vec::new();
    let mut rd: Vec<_> = fs::read_dir(units)
        .map_err(ImageError::io(units, "listing"))?
        .collect::<Result<_, _>>()
        .map_err(ImageError::io(units, "listing"))?;
    rd.sort_by_key(|e| e.file_name());
    for e in rd {
        let p = e.path();
        let name = e.file_name();
        let ft = e
            .file_type()
            .map_err(ImageError::io(&p, "reading metadata"))?;
        if ft.is_dir() {
            // Drop-ins (`x.service.d/`) and prepared `.wants/` directories, as they are.
            for sub in walk_tree(&p)? {
                let mut sub = sub;
                sub.path = base.join(&name).join(&sub.path);
                sub.uid = 0;
                sub.gid = 0;
                if matches!(sub.kind, Kind::File(_)) {
                    sub.perm = 0o644;
                }
                entries.push(sub);
            }
            entries.push(Entry::dir(base.join(&name), 0o755));
            continue;
        }
        if ft.is_symlink() {
            let t = fs::read_link(&p).map_err(ImageError::io(&p, "reading link"))?;
            entries.push(Entry::symlink(base.join(&name), t));
            continue;
        }
        let text = fs::read_to_string(&p).map_err(ImageError::io(&p, "reading"))?;
        let unit = name.to_string_lossy().into_owned();
        entries.push(file_entry(base.join(&name), &p, 0o644)?);
        for (target, suffix) in install_links(&text) {
            if unit.contains("@.") {
                tracing::warn!(
                    unit,
                    "template unit with [Install]; not enabled (needs an instance)"
                );
                continue;
            }
            entries.push(Entry::symlink(
                base.join(format!("{target}.{suffix}")).join(&unit),
                format!("/etc/systemd/system/{unit}"),
            ));
        }
    }
    Ok(layer_from("units".into(), root, entries))
}

const NETWORK_FILE: &str = "\
# netboot-image appliance: DHCP on every ethernet (the design's \"Small ones\").
[Match]
Type=ether
Name=en* eth*

[Network]
DHCP=ipv4
IPv6AcceptRA=no
LinkLocalAddressing=no

[DHCPv4]
# The hostname comes from the contract (plasmacloud-hostname.service), not from DHCP.
UseHostname=no
ClientIdentifier=mac
";

const HOSTNAME_SCRIPT: &str = r#"#!/bin/sh
# netboot-image appliance: the hostname is the contract's node name, found like
# plasmacloud_contract::identity does: plasmacloud.node= on the kernel command line, then the
# overlay's identity file /etc/plasmacloud/node.
name=
for arg in $(cat /proc/cmdline); do
  case "$arg" in plasmacloud.node=*) name="${arg#plasmacloud.node=}" ;; esac
done
if [ -z "$name" ] && [ -r /etc/plasmacloud/node ]; then
  read -r name < /etc/plasmacloud/node
fi
[ -n "$name" ] || exit 0
echo "$name" > /proc/sys/kernel/hostname
echo "$name" > /etc/hostname
"#;

const HOSTNAME_UNIT: &str = "\
[Unit]
Description=Hostname from the PlasmaCloud contract (netboot-image appliance)
DefaultDependencies=no
Before=sysinit.target systemd-networkd.service network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /usr/local/lib/plasmacloud/appliance-hostname

[Install]
WantedBy=sysinit.target
";

fn ready_script() -> String {
    format!(
        r#"#!/bin/sh
# netboot-image appliance: one console line once multi-user.target is reached and the network
# is online (or systemd-networkd-wait-online gave up): the hostname and every global IPv4
# address, for test harnesses reading the serial console.
addrs=$(ip -4 -o addr show scope global | while read -r _ dev _ addr _; do printf ' %s=%s' "$dev" "$addr"; done)
echo "{READY_MARKER} hostname=$(cat /proc/sys/kernel/hostname) ipv4:$addrs" > /dev/console
"#
    )
}

const READY_UNIT: &str = "\
[Unit]
Description=Console marker: multi-user.target reached (netboot-image appliance)
After=multi-user.target network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/lib/plasmacloud/appliance-ready

[Install]
WantedBy=multi-user.target
";

/// Units the appliance masks: under TCG every unit started costs a fork and exec at boot, and
/// none of these serves a node that runs from RAM with no console login (timers for apt, dpkg
/// and filesystem maintenance, kernel filesystems nobody mounts, module loads for hardware a
/// node does not have, utmp, the random seed and pstore of a disk it does not have, journal
/// flushing to a /var that is RAM anyway, logins).
pub const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "getty@tty1.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "modprobe@dm_mod.service",
    "modprobe@configfs.service",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "kmod-static-nodes.service",
    "systemd-pstore.service",
    "systemd-random-seed.service",
    "systemd-journal-flush.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-remount-fs.service",
    "systemd-logind.service",
    // Every user and group Debian's sysusers.d declares is already in the tree's passwd and
    // group, and the static device permissions it sets are for devices (sound, kvm, fuse, tun)
    // a node does not have; both run before udevd starts, so they delay every device.
    "systemd-sysusers.service",
    "systemd-tmpfiles-setup-dev.service",
    // Nothing on a node talks D-Bus (systemctl uses systemd's private socket; networkd runs
    // without a bus), and starting the bus costs seconds of CPU under TCG.
    "dbus.service",
    "dbus.socket",
];

/// systemd generators the appliance masks (each runs at every boot and daemon-reload, before
/// any unit starts): no fstab, no crypt/verity/integrity devices, no SysV scripts that lack a
/// unit, no gettys, no rc.local, no hibernation, no `systemd.run=` or debug shell.
pub const MASKED_GENERATORS: &[&str] = &[
    "systemd-cryptsetup-generator",
    "systemd-debug-generator",
    "systemd-fstab-generator",
    "systemd-getty-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
    "systemd-veritysetup-generator",
];

fn appliance_layer(root: &Path) -> Result<Layer, ImageError> {
    let systemd = in_tree(root, Path::new("/lib/systemd/systemd"));
    if !root.join(&systemd).is_file() {
        return Err(ImageError::bad(
            root,
            "no /lib/systemd/systemd in the root filesystem (include the systemd and systemd-sysv packages)",
        ));
    }
    let sys = PathBuf::from("etc/systemd/system");
    let lib_units = "/lib/systemd/system";
    let mut entries = vec![
        Entry::symlink("init", "/lib/systemd/systemd"),
        Entry {
            path: "dev/console".into(),
            perm: 0o600,
            uid: 0,
            gid: 0,
            kind: Kind::CharDev { major: 5, minor: 1 },
        },
        Entry {
            path: "dev/null".into(),
            perm: 0o666,
            uid: 0,
            gid: 0,
            kind: Kind::CharDev { major: 1, minor: 3 },
        },
        Entry::bytes("etc/machine-id", 0o444, Vec::new()),
        Entry::bytes("etc/hostname", 0o644, b"plasmacloud-appliance\n".to_vec()),
        Entry::bytes(
            "etc/systemd/network/80-plasmacloud-dhcp.network",
            0o644,
            NETWORK_FILE,
        ),
        Entry::bytes(
            "usr/local/lib/plasmacloud/appliance-hostname",
            0o755,
            HOSTNAME_SCRIPT,
        ),
        Entry::bytes(
            sys.join("plasmacloud-hostname.service"),
            0o644,
            HOSTNAME_UNIT,
        ),
        Entry::bytes(
            "usr/local/lib/plasmacloud/appliance-ready",
            0o755,
            ready_script(),
        ),
        Entry::bytes(
            sys.join("plasmacloud-appliance-ready.service"),
            0o644,
            READY_UNIT,
        ),
        Entry::symlink(
            sys.join("sysinit.target.wants/plasmacloud-hostname.service"),
            "/etc/systemd/system/plasmacloud-hostname.service",
        ),
        Entry::symlink(
            sys.join("multi-user.target.wants/plasmacloud-appliance-ready.service"),
            "/etc/systemd/system/plasmacloud-appliance-ready.service",
        ),
        Entry::symlink(
            sys.join("multi-user.target.wants/systemd-networkd.service"),
            format!("{lib_units}/systemd-networkd.service"),
        ),
        Entry::symlink(
            sys.join("sockets.target.wants/systemd-networkd.socket"),
            format!("{lib_units}/systemd-networkd.socket"),
        ),
        Entry::symlink(
            sys.join("network-online.target.wants/systemd-networkd-wait-online.service"),
            format!("{lib_units}/systemd-networkd-wait-online.service"),
        ),
        Entry::symlink(
            sys.join("dbus-org.freedesktop.network1.service"),
            format!("{lib_units}/systemd-networkd.service"),
        ),
    ];
    entries.push(Entry::symlink(
        sys.join("default.target"),
        format!("{lib_units}/multi-user.target"),
    ));
    for unit in MASKED_UNITS {
        entries.push(Entry::symlink(sys.join(unit), "/dev/null"));
    }
    for g in MASKED_GENERATORS {
        entries.push(Entry::symlink(
            Path::new("etc/systemd/system-generators").join(g),
            "/dev/null",
        ));
    }
    // The tree's own /dev contents are skipped; keep the directory itself.
    entries.push(Entry::dir("dev", 0o755));
    let mut l = layer_from("appliance".into(), root, Vec::new());
    let mut all: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    for e in entries.drain(..) {
        with_parents(root, &e.path, &mut all);
        all.insert(e.path.clone(), e);
    }
    l.entries = all.into_values().collect();
    Ok(l)
}

/// Plans every layer of the appliance (see the module docs), in unpack order.
pub fn plan_layers(
    spec: &ApplianceSpec,
    root: &Path,
) -> Result<(Vec<Layer>, Option<String>), ImageError> {
    let t = std::time::Instant::now();
    let immutable = matches!(spec.rootfs, RootfsSource::Debootstrap { .. });
    let mut layers = rootfs_layers(root, immutable, &spec.cache_dir)?;
    tracing::debug!(elapsed = ?t.elapsed(), "walked the tree");
    let mut release = None;
    if spec.kernel.is_none() {
        tracing::warn!("no --kernel: no kernel modules packed (virtio and e1000 NICs are modules in Debian's kernel)");
    }
    if let Some(kernel) = &spec.kernel {
        let (rel, l) = modules_layer(root, kernel, &spec.modules_root, &spec.modules)?;
        release = Some(rel);
        layers.push(l);
    }
    tracing::debug!(elapsed = ?t.elapsed(), "modules planned");
    let libs = library_closure_cached(&spec.bins, &spec.lib_dirs, Some(&spec.cache_dir))?;
    tracing::debug!(elapsed = ?t.elapsed(), "library closure");
    layers.push(libs_layer(root, &libs)?);
    let bindir = in_tree(root, Path::new(&spec.bindir));
    let mut names = std::collections::BTreeSet::new();
    for b in &spec.bins {
        let name = b
            .file_name()
            .ok_or_else(|| ImageError::bad(b, "expected a file"))?
            .to_os_string();
        if !names.insert(name.clone()) {
            return Err(ImageError::bad(b, "two --bin files with the same name"));
        }
        let e = file_entry(bindir.join(&name), b, 0o755)?;
        layers.push(layer_from(
            format!("bin-{}", name.to_string_lossy()),
            root,
            vec![e],
        ));
    }
    if let Some(units) = &spec.units {
        layers.push(units_layer(root, units)?);
    }
    layers.push(appliance_layer(root)?);
    Ok((layers, release))
}

/// Builds the appliance initrd.
pub fn build_appliance(spec: &ApplianceSpec) -> Result<ApplianceReport, ImageError> {
    let root = ensure_rootfs(&spec.rootfs, &spec.cache_dir)?;
    let (layers, kernel_release) = plan_layers(spec, &root)?;
    let reports = build_initrd(
        &layers,
        &spec.cache_dir,
        &spec.out,
        APPLIANCE_ZSTD_LEVEL,
        spec.jobs,
    )?;
    let bytes = fs::metadata(&spec.out)
        .map_err(ImageError::io(&spec.out, "reading metadata"))?
        .len();
    Ok(ApplianceReport {
        out: spec.out.clone(),
        bytes,
        rootfs: root,
        kernel_release,
        layers: reports,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn install_sections_become_links() {
        let t = "[Unit]\nWantedBy=nope.target\n[Install]\nWantedBy=multi-user.target cluster-ready.target\nRequiredBy=x.target\n";
        assert_eq!(
            install_links(t),
            [
                ("multi-user.target".to_string(), "wants".to_string()),
                ("cluster-ready.target".to_string(), "wants".to_string()),
                ("x.target".to_string(), "requires".to_string())
            ]
        );
    }

    #[test]
    fn merged_usr_paths_follow_the_tree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", d.path().join("lib")).unwrap();
        assert_eq!(
            in_tree(d.path(), Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
            PathBuf::from("usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(
            in_tree(d.path(), Path::new("/usr/local/bin/x")),
            PathBuf::from("usr/local/bin/x")
        );
    }

    #[test]
    fn rootfs_cache_key_ignores_package_order() {
        let a = rootfs_cache_dir(Path::new("/c"), "bookworm", "m", &["a".into(), "b".into()]);
        let b = rootfs_cache_dir(Path::new("/c"), "bookworm", "m", &["b".into(), "a".into()]);
        assert_eq!(a, b);
    }
}
