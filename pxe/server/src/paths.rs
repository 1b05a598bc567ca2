//! Confining a requested name to a served root, for TFTP and the boot plane's `/ipxe/` route:
//! absolute paths, `..`, backslashes, NUL and symlinks that resolve outside the root are
//! refused; only regular files are served.

use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathRefusal {
    /// Absolute, `..`, empty or odd components.
    Unsafe,
    /// Resolves outside the root (a symlink).
    OutsideRoot,
    /// Not there, or not a regular file.
    NotFound,
}

/// Resolves `name` under `root`, refusing anything that escapes it.
pub fn resolve_path(root: &Path, name: &str) -> Result<PathBuf, PathRefusal> {
    if name.is_empty() || name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return Err(PathRefusal::Unsafe);
    }
    let rel = Path::new(name);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => return Err(PathRefusal::Unsafe),
        }
    }
    let root = root.canonicalize().map_err(|_| PathRefusal::NotFound)?;
    let full = root.join(rel);
    let real = full.canonicalize().map_err(|_| PathRefusal::NotFound)?;
    if !real.starts_with(&root) {
        return Err(PathRefusal::OutsideRoot);
    }
    if !real.is_file() {
        return Err(PathRefusal::NotFound);
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("a.efi"), b"x").expect("write");
        std::fs::write(root.join("sub/b"), b"x").expect("write");
        std::fs::write(dir.path().join("secret"), b"s").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).expect("symlink");
        assert!(resolve_path(&root, "a.efi").is_ok());
        assert!(resolve_path(&root, "sub/b").is_ok());
        assert_eq!(resolve_path(&root, "../secret"), Err(PathRefusal::Unsafe));
        assert_eq!(
            resolve_path(&root, "sub/../../secret"),
            Err(PathRefusal::Unsafe)
        );
        assert_eq!(resolve_path(&root, "/etc/passwd"), Err(PathRefusal::Unsafe));
        assert_eq!(resolve_path(&root, "link"), Err(PathRefusal::OutsideRoot));
        assert_eq!(resolve_path(&root, "nope"), Err(PathRefusal::NotFound));
        assert_eq!(resolve_path(&root, "sub"), Err(PathRefusal::NotFound));
    }
}
