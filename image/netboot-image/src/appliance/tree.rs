//! Placing files in the appliance's tree: paths as the tree spells them (merged `/usr`), the
//! parent directories a layer must carry, file entries taken from this machine, and layers
//! made of them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::ImageError;
use crate::layers::{Keying, Layer};
use crate::newc::{Body, Entry, Kind};

/// zstd level of appliance layers (what `zstd -3` uses).
pub const APPLIANCE_ZSTD_LEVEL: i32 = 3;

/// Maps an absolute path on this machine to its name in the tree, following the tree's
/// top-level symlinks (`/lib/x` → `usr/lib/x` on a merged-/usr Debian).
pub(super) fn in_tree(root: &Path, abs: &Path) -> PathBuf {
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
pub(super) fn with_parents(root: &Path, path: &Path, seen: &mut BTreeMap<PathBuf, Entry>) {
    let mut p = path.parent();
    while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty()) {
        if fs::symlink_metadata(root.join(dir)).is_err() {
            seen.entry(dir.to_path_buf())
                .or_insert_with(|| Entry::dir(dir, 0o755));
        }
        p = dir.parent();
    }
}

/// A root-owned file entry at `path` in the tree with the contents of `src` (a regular file).
pub(super) fn file_entry(path: PathBuf, src: &Path, perm: u32) -> Result<Entry, ImageError> {
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

/// A content-keyed layer of `files`, with every parent directory the tree lacks.
pub(super) fn layer_from(name: String, root: &Path, files: Vec<Entry>) -> Layer {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
