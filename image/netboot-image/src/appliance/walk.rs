//! Walking a tree into archive entries: sorted, parents first, modes and owners kept, the
//! contents of `dev`, `proc`, `sys` and `run` left out (the kernel and systemd fill them).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::error::ImageError;
use crate::layers::stat_key_material;
use crate::newc::{Body, Entry, Kind};

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
                Kind::File(_) => stat_key_material(&m),
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
