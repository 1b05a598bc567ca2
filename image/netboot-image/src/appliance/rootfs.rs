//! The `rootfs-N` layers: the tree's walk, minus [`PACK_OMIT`](super::PACK_OMIT), cut into chunks of about
//! [`ROOTFS_CHUNK_BYTES`] so they compress in parallel, each keyed from the walk's metadata. For
//! an immutable (debootstrapped, cached) tree the layers' names and keys are recorded next to
//! it, so a rebuild whose layers are all cached does not walk the tree again.

use std::path::{Path, PathBuf};

use super::omit::{omitted, PACK_VERSION};
use super::tree::APPLIANCE_ZSTD_LEVEL;
use super::walk::walk_tree_keyed;
use crate::error::ImageError;
use crate::layers::{given_key, read_json_or_default, write_json_atomic, Keying, Layer};
use crate::newc::Entry;

/// Uncompressed size at which the root filesystem is cut into another layer.
pub const ROOTFS_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

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
            keying: Keying::Given(given_key(APPLIANCE_ZSTD_LEVEL, &mat)),
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

/// Where an immutable tree's [`TreeSnapshot`] lives: next to the tree.
fn snapshot_path(root: &Path) -> PathBuf {
    root.with_extension("layers.json")
}

/// The rootfs layers: from the snapshot of an immutable tree when every layer it names is
/// cached, else from a walk (and then the snapshot is written, for immutable trees).
pub(super) fn rootfs_layers(
    root: &Path,
    immutable: bool,
    cache_dir: &Path,
) -> Result<Vec<Layer>, ImageError> {
    let snap = snapshot_path(root);
    if immutable {
        let cached: Option<TreeSnapshot> = read_json_or_default(&snap);
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
        if write_json_atomic(&snap, &s).is_err() {
            tracing::warn!(snapshot = %snap.display(), "could not record the tree's layers; the next build walks it again");
        }
    }
    Ok(layers)
}
