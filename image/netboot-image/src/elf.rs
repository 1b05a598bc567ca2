//! The shared-library closure of ELF binaries, read from their dynamic sections (`DT_NEEDED`,
//! `DT_RUNPATH`/`DT_RPATH`, `PT_INTERP`) with `goblin` and resolved the way `ld.so` would in
//! the standard library directories. No `ldd`: it runs the binary's interpreter, which is
//! neither safe on untrusted inputs nor possible across architectures.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use goblin::elf::Elf;

use crate::error::ImageError;

/// Where `ld.so` looks on Debian x86-64 (after any `RUNPATH`).
pub const DEFAULT_LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// What one ELF file asks of the dynamic loader.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DynamicInfo {
    /// `PT_INTERP`, for executables.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` and `DT_RPATH` directories (`$ORIGIN` expanded).
    pub search: Vec<PathBuf>,
    /// 64-bit?
    pub is_64: bool,
    /// `e_machine`.
    pub machine: u16,
}

/// Reads the dynamic section of `path`.
pub fn dynamic_info(path: &Path) -> Result<DynamicInfo, ImageError> {
    let bytes = fs::read(path).map_err(ImageError::io(path, "reading"))?;
    let elf = Elf::parse(&bytes)
        .map_err(|e| ImageError::bad(path, format!("not an ELF file this tool can read: {e}")))?;
    let origin = path
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let search = elf
        .runpaths
        .iter()
        .chain(elf.rpaths.iter())
        .flat_map(|r| r.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d.replace("$ORIGIN", &origin).replace("${ORIGIN}", &origin)))
        .collect();
    Ok(DynamicInfo {
        interpreter: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        search,
        is_64: elf.is_64,
        machine: elf.header.e_machine,
    })
}

/// ELF class (64-bit?) and machine from the first 20 bytes of the header, without reading the
/// whole file.
fn elf_class(path: &Path) -> Option<(bool, u16)> {
    use std::io::Read;
    let mut h = [0u8; 20];
    fs::File::open(path).ok()?.read_exact(&mut h).ok()?;
    if &h[..4] != b"\x7fELF" {
        return None;
    }
    let machine = if h[5] == 2 {
        u16::from_be_bytes([h[18], h[19]])
    } else {
        u16::from_le_bytes([h[18], h[19]])
    };
    Some((h[4] == 2, machine))
}

/// A library to install: where it is on this machine, and where it goes in the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Library {
    /// The absolute path the loader will open (`/lib/x86_64-linux-gnu/libssl.so.3`); the image
    /// gets a regular file there.
    pub install_as: PathBuf,
    /// The file on this machine (symlinks resolved).
    pub source: PathBuf,
}

/// Every shared library (and interpreter) `binaries` need, transitively, resolved in their
/// `RUNPATH`s, then `lib_dirs`. A library of the wrong class or machine is skipped, as `ld.so`
/// does. A library found nowhere is an error naming who needs it.
pub fn library_closure(
    binaries: &[PathBuf],
    lib_dirs: &[PathBuf],
) -> Result<Vec<Library>, ImageError> {
    library_closure_cached(binaries, lib_dirs, None)
}

/// `CACHE/elf.json`: each file's [`DynamicInfo`] against its stat identity (device, inode,
/// size, mtime, ctime), so a rebuild reads again only the ELF files that changed. The
/// binaries and their libraries are tens of MB; their dynamic sections are a few hundred
/// bytes.
#[derive(Debug, Default)]
struct InfoCache {
    path: Option<PathBuf>,
    map: BTreeMap<String, (String, DynamicInfo)>,
    dirty: bool,
}

impl InfoCache {
    fn load(cache_dir: Option<&Path>) -> Self {
        let Some(dir) = cache_dir else {
            return Self::default();
        };
        let path = dir.join("elf.json");
        Self {
            map: crate::layers::read_json_or_default(&path),
            path: Some(path),
            dirty: false,
        }
    }

    fn info(&mut self, file: &Path) -> Result<DynamicInfo, ImageError> {
        if self.path.is_none() {
            return dynamic_info(file);
        }
        let m = fs::metadata(file).map_err(ImageError::io(file, "reading metadata"))?;
        let id = crate::layers::stat_key_material(&m);
        let key = file.display().to_string();
        if let Some((cached_id, info)) = self.map.get(&key) {
            if *cached_id == id {
                return Ok(info.clone());
            }
        }
        let info = dynamic_info(file)?;
        self.map.insert(key, (id, info.clone()));
        self.dirty = true;
        Ok(info)
    }

    /// Best effort: a cache that cannot be written only costs the next build a re-read.
    fn save(&self) {
        let Some(path) = self.path.as_ref().filter(|_| self.dirty) else {
            return;
        };
        let _ = crate::layers::write_json_atomic(path, &self.map);
    }
}

/// [`library_closure`], remembering each ELF file's dynamic section in `cache_dir` (see
/// [`InfoCache`]).
pub fn library_closure_cached(
    binaries: &[PathBuf],
    lib_dirs: &[PathBuf],
    cache_dir: Option<&Path>,
) -> Result<Vec<Library>, ImageError> {
    let mut cache = InfoCache::load(cache_dir);
    let r = closure(binaries, lib_dirs, &mut cache);
    cache.save();
    r
}

fn closure(
    binaries: &[PathBuf],
    lib_dirs: &[PathBuf],
    cache: &mut InfoCache,
) -> Result<Vec<Library>, ImageError> {
    let mut found: BTreeMap<String, Library> = BTreeMap::new();
    let mut queue: VecDeque<PathBuf> = binaries.iter().cloned().collect();
    let mut seen_files = std::collections::HashSet::new();
    while let Some(file) = queue.pop_front() {
        if !seen_files.insert(file.clone()) {
            continue;
        }
        let info = cache.info(&file)?;
        if let Some(interp) = &info.interpreter {
            let key = format!("interp:{interp}");
            if let std::collections::btree_map::Entry::Vacant(slot) = found.entry(key) {
                let p = PathBuf::from(interp);
                let source = fs::canonicalize(&p).map_err(|_| ImageError::LibraryNotFound {
                    binary: file.clone(),
                    library: interp.clone(),
                    searched: "(PT_INTERP is an absolute path)".into(),
                })?;
                slot.insert(Library {
                    install_as: p,
                    source,
                });
            }
        }
        for name in &info.needed {
            if found.contains_key(name) {
                continue;
            }
            let dirs: Vec<PathBuf> = info
                .search
                .iter()
                .cloned()
                .chain(lib_dirs.iter().cloned())
                .collect();
            let hit = dirs.iter().find_map(|d| {
                let cand = d.join(name);
                if !cand.exists() {
                    return None;
                }
                // Same class and machine as the one that needs it.
                match elf_class(&cand) {
                    Some((is_64, machine)) if is_64 == info.is_64 && machine == info.machine => {
                        Some(cand)
                    }
                    _ => None,
                }
            });
            let Some(path) = hit else {
                return Err(ImageError::LibraryNotFound {
                    binary: file.clone(),
                    library: name.clone(),
                    searched: dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let source = fs::canonicalize(&path).map_err(ImageError::io(&path, "resolving"))?;
            found.insert(
                name.clone(),
                Library {
                    install_as: path,
                    source: source.clone(),
                },
            );
            queue.push_back(source);
        }
    }
    let mut libs: Vec<Library> = found.into_values().collect();
    libs.sort();
    libs.dedup_by(|a, b| a.install_as == b.install_as);
    Ok(libs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn closure_of_a_system_binary_has_libc_and_the_interpreter() {
        let ls = PathBuf::from("/bin/ls");
        if !ls.exists() {
            return;
        }
        let dirs: Vec<PathBuf> = DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect();
        let libs = library_closure(&[ls], &dirs).unwrap();
        let names: Vec<String> = libs
            .iter()
            .map(|l| l.install_as.display().to_string())
            .collect();
        assert!(names.iter().any(|n| n.ends_with("/libc.so.6")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("ld-linux")), "{names:?}");
    }

    #[test]
    fn the_cache_answers_like_a_fresh_read_and_notices_a_changed_file() {
        let ls = PathBuf::from("/bin/ls");
        if !ls.exists() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("ls");
        std::fs::copy(&ls, &bin).unwrap();
        let cache = d.path().join("cache");
        let dirs: Vec<PathBuf> = DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect();
        let fresh = library_closure(std::slice::from_ref(&bin), &dirs).unwrap();
        let first =
            library_closure_cached(std::slice::from_ref(&bin), &dirs, Some(&cache)).unwrap();
        assert!(cache.join("elf.json").is_file());
        let second =
            library_closure_cached(std::slice::from_ref(&bin), &dirs, Some(&cache)).unwrap();
        assert_eq!(fresh, first);
        assert_eq!(first, second);
        // Replaced by something that is not ELF: read again, not answered from the cache.
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        let e = library_closure_cached(&[bin], &dirs, Some(&cache)).unwrap_err();
        assert!(e.to_string().contains("not an ELF"), "{e}");
    }

    #[test]
    fn a_text_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("script");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        let e = library_closure(&[p], &[]).unwrap_err();
        assert!(e.to_string().contains("not an ELF"), "{e}");
    }
}
