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
//!
//! One module per seam: `debootstrap` (getting the tree), `walk` (tree → entries), `tree`
//! (placing files in it), `omit` (what is left out or masked), then one module per kind of
//! layer — `rootfs`, `host_files` (modules, libs, binaries), `units`, `boot` (the `appliance`
//! layer); this module plans them in order and packs them ([`crate::layers`]). The modules
//! import only each other's lower rooms (`tree`, `walk`, `omit`), never this one.

use std::fs;
use std::path::{Path, PathBuf};

use crate::elf::library_closure_cached;
use crate::error::ImageError;
use crate::layers::{build_initrd, Layer, LayerReport};

mod boot;
mod debootstrap;
mod host_files;
mod omit;
mod rootfs;
mod tree;
mod units;
mod walk;

pub use boot::READY_MARKER;
pub use debootstrap::{
    ensure_rootfs, rootfs_cache_dir, RootfsSource, DEFAULT_MIRROR, DEFAULT_PACKAGES, DEFAULT_SUITE,
};
pub use omit::{MASKED_GENERATORS, MASKED_UNITS, PACK_OMIT};
pub use rootfs::ROOTFS_CHUNK_BYTES;
pub use tree::APPLIANCE_ZSTD_LEVEL;
pub use units::install_links;
pub use walk::{walk_tree, walk_tree_keyed};

use boot::appliance_layer;
use host_files::{bin_layers, libs_layer, modules_layer};
use rootfs::rootfs_layers;
use units::units_layer;

/// Where binaries go by default (render units with `firstboot units --bindir` the same).
pub const DEFAULT_BINDIR: &str = "/usr/local/bin";

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
    layers.extend(bin_layers(root, &spec.bins, &spec.bindir)?);
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
