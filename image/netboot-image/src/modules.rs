//! The kernel side of the appliance: which kernel release a `bzImage` is (so its modules can be
//! packed), and the `modules.dep` closure of the modules the appliance needs.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::ImageError;

/// Modules the appliance loads under QEMU (virtio and e1000 NICs and disks, the filesystems the
/// first-boot disk step makes, autofs for systemd). Builtins and absent ones are skipped.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "virtio_console",
    "virtio_rng",
    "e1000",
    "e1000e",
    "ahci",
    "ata_piix",
    "sd_mod",
    "ext4",
    // ext4 names crc32c only as a soft dependency, which the closure does not follow; without
    // it mounting an ext4 filesystem fails ("Cannot load crc32c driver").
    "crc32c_generic",
    // The accelerated implementation, used instead when the CPU has SSE4.2.
    "crc32c-intel",
    "xfs",
    "autofs4",
    "binfmt_misc",
];

/// The index files `modprobe` and udev read, copied as they are.
const INDEX_FILES: &[&str] = &[
    "modules.alias",
    "modules.alias.bin",
    "modules.builtin",
    "modules.builtin.alias.bin",
    "modules.builtin.bin",
    "modules.builtin.modinfo",
    "modules.dep",
    "modules.dep.bin",
    "modules.devname",
    "modules.order",
    "modules.softdep",
    "modules.symbols",
    "modules.symbols.bin",
];

/// The release string of an x86 `bzImage` (`6.1.0-56-amd64`), from its setup header: the
/// `kernel_version` field at 0x20e points (minus 0x200) at a NUL-terminated version string.
pub fn kernel_release(bzimage: &Path) -> Result<String, ImageError> {
    let mut head = vec![0u8; 64 * 1024];
    let mut f = fs::File::open(bzimage).map_err(ImageError::io(bzimage, "opening"))?;
    let n = f
        .read(&mut head)
        .map_err(ImageError::io(bzimage, "reading"))?;
    head.truncate(n);
    let bad = |m: &str| ImageError::bad(bzimage, format!("{m} (expected an x86 bzImage)"));
    if head.len() < 0x210 || &head[0x202..0x206] != b"HdrS" {
        return Err(bad("no Linux setup header"));
    }
    let ptr = u16::from_le_bytes([head[0x20e], head[0x20f]]) as usize + 0x200;
    let s = head
        .get(ptr..)
        .ok_or_else(|| bad("kernel_version points past the header"))?;
    let end = s.iter().position(|&b| b == 0 || b == b' ').unwrap_or(0);
    let rel = std::str::from_utf8(&s[..end]).map_err(|_| bad("kernel_version is not text"))?;
    if rel.is_empty() {
        return Err(bad("empty kernel_version"));
    }
    Ok(rel.to_string())
}

/// Normalised module name: `virtio-net` and `virtio_net` are one module.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/fs/xfs/xfs.ko.xz` → `xfs` (not normalised).
fn module_stem(rel: &str) -> &str {
    let base = rel.rsplit('/').next().unwrap_or(rel);
    base.split(".ko").next().unwrap_or(base)
}

fn module_name(rel: &str) -> String {
    norm(module_stem(rel))
}

/// Files (relative to `/lib/modules/<release>`) to pack: the index files and `wanted` with
/// their dependencies from `modules.dep`. Returns the files and the names that were neither
/// modules nor builtins (for a warning).
pub fn module_files(
    modules_dir: &Path,
    wanted: &[String],
) -> Result<(Vec<PathBuf>, Vec<String>), ImageError> {
    let dep_path = modules_dir.join("modules.dep");
    let deps = fs::read_to_string(&dep_path).map_err(ImageError::io(&dep_path, "reading"))?;
    // One pass over modules.dep (thousands of lines), allocating only for the wanted ones: its
    // lines already list every dependency, transitively.
    let mut want: HashMap<String, bool> = wanted.iter().map(|w| (norm(w), false)).collect();
    let mut files: BTreeSet<&str> = BTreeSet::new();
    for line in deps.lines() {
        let Some((m, rest)) = line.split_once(':') else {
            continue;
        };
        let name = module_stem(m);
        let hit = if name.contains('-') {
            want.get_mut(&norm(name))
        } else {
            want.get_mut(name)
        };
        if let Some(found) = hit {
            *found = true;
            files.insert(m);
            files.extend(rest.split_whitespace());
        }
    }
    let missing_names: Vec<&String> = wanted
        .iter()
        .filter(|w| want.get(&norm(w)) == Some(&false))
        .collect();
    let missing = if missing_names.is_empty() {
        Vec::new()
    } else {
        let builtin: BTreeSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        missing_names
            .into_iter()
            .filter(|w| !builtin.contains(&norm(w)))
            .cloned()
            .collect()
    };
    let mut out: Vec<PathBuf> = INDEX_FILES
        .iter()
        .filter(|f| modules_dir.join(f).is_file())
        .map(PathBuf::from)
        .collect();
    out.extend(files.into_iter().map(PathBuf::from));
    Ok((out, missing))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn module_names_normalise() {
        assert_eq!(
            module_name("kernel/drivers/net/virtio_net.ko"),
            "virtio_net"
        );
        assert_eq!(module_name("kernel/fs/xfs/xfs.ko.xz"), "xfs");
        assert_eq!(norm("virtio-net"), "virtio_net");
    }

    #[test]
    fn dep_closure_and_builtins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("modules.dep"),
            "kernel/a/virtio_net.ko: kernel/b/net_failover.ko kernel/b/failover.ko\nkernel/b/net_failover.ko: kernel/b/failover.ko\nkernel/b/failover.ko:\n",
        )
        .unwrap();
        std::fs::write(d.path().join("modules.builtin"), "kernel/c/ext4.ko\n").unwrap();
        let (files, missing) = module_files(
            d.path(),
            &["virtio-net".into(), "ext4".into(), "nosuch".into()],
        )
        .unwrap();
        let f: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert!(f.contains(&"kernel/b/failover.ko".to_string()), "{f:?}");
        assert!(f.contains(&"kernel/a/virtio_net.ko".to_string()), "{f:?}");
        assert_eq!(missing, ["nosuch"]);
    }

    #[test]
    fn release_of_an_installed_debian_kernel() {
        let Some(k) = std::fs::read_dir("/boot").ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
        }) else {
            return;
        };
        let rel = kernel_release(&k).unwrap();
        assert!(
            k.to_string_lossy().ends_with(&rel),
            "{} vs {rel}",
            k.display()
        );
    }
}
