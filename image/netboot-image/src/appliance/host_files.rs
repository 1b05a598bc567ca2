//! The layers of files taken from this machine: the kernel's modules (`modules`), the shared
//! libraries the binaries need that the tree lacks (`libs`), and one layer per binary
//! (`bin-NAME`), so changing one binary re-packs one small layer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::tree::{file_entry, in_tree, layer_from};
use crate::elf::{Library, DEFAULT_LIB_DIRS};
use crate::error::ImageError;
use crate::layers::Layer;
use crate::modules::{kernel_release, module_files};

/// The `modules` layer for `kernel`'s release, read from its image: `wanted` and their
/// dependencies from `modules_root`, with the `modules.*` indexes. Returns the release too.
pub(super) fn modules_layer(
    root: &Path,
    kernel: &Path,
    modules_root: &Path,
    wanted: &[String],
) -> Result<(String, Layer), ImageError> {
    let release = kernel_release(kernel)?;
    let dir = modules_root.join(&release);
    if !dir.is_dir() {
        return Err(ImageError::bad(
            &dir,
            format!(
                "no modules for kernel {release} (install its linux-image package, or pass --modules-root)"
            ),
        ));
    }
    let (files, missing) = module_files(&dir, wanted)?;
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

/// The `libs` layer: the libraries of `libs` that no standard directory of the tree has.
pub(super) fn libs_layer(root: &Path, libs: &[Library]) -> Result<Layer, ImageError> {
    let mut entries = Vec::new();
    for l in libs {
        let name = l
            .install_as
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        // Already in the tree, in any standard directory? Then the tree's copy serves.
        let present = DEFAULT_LIB_DIRS
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

/// One `bin-NAME` layer per binary, installed in `bindir` (0755); two binaries of one name are
/// an error.
pub(super) fn bin_layers(
    root: &Path,
    bins: &[PathBuf],
    bindir: &str,
) -> Result<Vec<Layer>, ImageError> {
    let bindir = in_tree(root, Path::new(bindir));
    let mut names = BTreeSet::new();
    let mut layers = Vec::new();
    for b in bins {
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
    Ok(layers)
}
