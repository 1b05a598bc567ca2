//! `netboot-image bundle`: the directory the PXE server serves as it is.
//!
//! ```text
//! DIR/bzImage                     the kernel (hard-linked from the input when possible)
//! DIR/initrd                      the base initrd (likewise)
//! DIR/overlay-<node>.cpio.zst     one per node: the contract and the node's identity file
//! DIR/manifest.json               every file (size, sha256), one boot entry per node + default
//! ```
//!
//! The rule (shared/DESIGN.md, "Trust"): a bundle is a public artifact. It carries no private
//! key, password or token: a node makes its key on its own disk at enrollment, and the
//! contract holds only a password *hash*. So every file here is an ordinary file (0644 in a
//! 0755 directory, whatever the umask), and pxe-server serves all of them under `/files/`; what
//! a node must not share (its one-boot enrollment token) pxe-server makes per boot and never
//! writes here.
//!
//! Every entry names the kernel's architecture, read from the kernel's header
//! ([`plasmacloud_contract::manifest::kernel_arch`]); a file that is not a kernel the header
//! rule knows (a stand-in in tests, a compressed arm64 `Image.gz`) is taken as `x86_64`, with a
//! warning.
//!
//! The bundle is written to a temporary directory next to `DIR` and renamed into place at the
//! end, so a failure leaves no half-written bundle (and an existing bundle stays as it was).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use plasmacloud_contract::manifest::{
    kernel_arch, overlay_path, Arch, BootEntry, BundleManifest, ManifestFile, DEFAULT_ENTRY,
    KERNEL_HEADER_LEN, MANIFEST_FILE, MANIFEST_VERSION,
};
use plasmacloud_contract::{Contract, DEFAULT_CONTRACT_PATH, IDENTITY_FILE, KERNEL_NODE_PARAM};
use sha2::{Digest, Sha256};

use crate::error::ImageError;
use crate::newc::{Entry, NewcWriter};

/// Mode of every file the bundle writes (public: anyone may read a bundle).
pub const FILE_MODE: u32 = 0o644;
/// Mode of the bundle directory.
pub const DIR_MODE: u32 = 0o755;

/// The zstd level of overlay initrds (fixed, so the same inputs give the same bytes).
pub const OVERLAY_ZSTD_LEVEL: i32 = 3;

/// The kernel's file name inside a bundle.
pub const KERNEL_NAME: &str = "bzImage";
/// The base initrd's file name inside a bundle.
pub const BASE_INITRD_NAME: &str = "initrd";

/// Kernel, base initrd and command line: what every entry of the bundle starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The base initrd.
    pub initrd: PathBuf,
    /// The kernel command line without `initrd=` (e.g. `init=/nix/store/…/init loglevel=4`).
    pub cmdline: String,
}

impl BaseImage {
    /// Reads a `nix build .#netboot` result: `bzImage`, `initrd` and `netboot.ipxe`, whose
    /// `kernel` line gives `init=` and the kernel parameters.
    pub fn from_netboot(dir: &Path) -> Result<Self, ImageError> {
        let script_path = dir.join("netboot.ipxe");
        let script =
            fs::read_to_string(&script_path).map_err(ImageError::io(&script_path, "reading"))?;
        let parsed = parse_netboot_ipxe(&script).map_err(|m| ImageError::bad(&script_path, m))?;
        let base = Self {
            kernel: dir.join(&parsed.kernel),
            initrd: dir.join(&parsed.initrd),
            cmdline: parsed.cmdline,
        };
        for p in [&base.kernel, &base.initrd] {
            if !p.is_file() {
                return Err(ImageError::bad(
                    p,
                    format!("named by {} but not a file", script_path.display()),
                ));
            }
        }
        Ok(base)
    }
}

/// What a `netboot.ipxe` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetbootScript {
    /// The kernel file (relative to the script).
    pub kernel: String,
    /// The (first) initrd file.
    pub initrd: String,
    /// Kernel parameters, without `initrd=` and without iPXE variables (`${cmdline}`).
    pub cmdline: String,
}

/// Parses nixpkgs' `netboot.ipxe`:
///
/// ```text
/// #!ipxe
/// kernel bzImage init=/nix/store/…/init initrd=initrd nohibernate loglevel=4 ${cmdline}
/// initrd initrd
/// boot
/// ```
pub fn parse_netboot_ipxe(script: &str) -> Result<NetbootScript, String> {
    let mut kernel = None;
    let mut initrd = None;
    for line in script.lines() {
        let mut words = line.split_whitespace();
        let cmd = words.next();
        // iPXE options (`--name x`, `--autofree`) come before the file.
        let mut rest: Vec<&str> = Vec::new();
        let mut file = None;
        let mut skip_value = false;
        for w in words {
            if file.is_none() {
                if skip_value {
                    skip_value = false;
                    continue;
                }
                if let Some(opt) = w.strip_prefix("--") {
                    skip_value = !opt.contains('=') && matches!(opt, "name" | "timeout");
                    continue;
                }
                if w == "-n" || w == "-t" {
                    skip_value = true;
                    continue;
                }
                file = Some(w);
            } else {
                rest.push(w);
            }
        }
        match (cmd, file) {
            (Some("kernel" | "chain" | "imgexec"), Some(f)) if kernel.is_none() => {
                let params: Vec<&str> = rest
                    .into_iter()
                    .filter(|p| !p.starts_with("initrd=") && !p.contains("${"))
                    .collect();
                kernel = Some((f.to_string(), params.join(" ")));
            }
            (Some("initrd" | "imgfetch" | "module"), Some(f)) if initrd.is_none() => {
                initrd = Some(f.to_string())
            }
            _ => {}
        }
    }
    let (kernel, cmdline) =
        kernel.ok_or("no `kernel FILE …` line (expected nixpkgs' netboot.ipxe)")?;
    let initrd = initrd.ok_or("no `initrd FILE` line (expected nixpkgs' netboot.ipxe)")?;
    if !cmdline.split_whitespace().any(|p| p.starts_with("init=")) {
        return Err(format!(
            "the kernel line has no init= parameter (read {cmdline:?}); NixOS cannot boot without it"
        ));
    }
    for f in [&kernel, &initrd] {
        if f.contains('/') || f.contains("://") {
            return Err(format!(
                "{f:?}: expected a file next to netboot.ipxe, not a path or URL"
            ));
        }
    }
    Ok(NetbootScript {
        kernel,
        initrd,
        cmdline,
    })
}

/// Everything `bundle` needs.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// `cluster-config.json`.
    pub cluster: PathBuf,
    /// Kernel, base initrd, command line.
    pub base: BaseImage,
    /// The bundle directory to (re)place.
    pub out: PathBuf,
    /// Worker threads for overlays (0: the number of CPUs).
    pub jobs: usize,
}

/// A file that goes into a node's overlay.
#[derive(Debug, Clone)]
struct OverlayFile {
    on_node: PathBuf,
    perm: u32,
    content: Vec<u8>,
}

/// The overlay entries of every node: the contract as given and the node's identity file,
/// both public (0644).
fn plan_overlays(contract: &Contract, contract_bytes: &[u8]) -> Vec<(String, Vec<Entry>)> {
    contract
        .nodes
        .iter()
        .map(|node| {
            let files = vec![
                OverlayFile {
                    on_node: DEFAULT_CONTRACT_PATH.into(),
                    perm: FILE_MODE,
                    content: contract_bytes.to_vec(),
                },
                OverlayFile {
                    on_node: IDENTITY_FILE.into(),
                    perm: FILE_MODE,
                    content: format!("{}\n", node.name).into_bytes(),
                },
            ];
            (node.name.clone(), overlay_entries(files))
        })
        .collect()
}

/// `/etc/x/y` → `etc/x/y`; `None` for relative paths or ones with `..`.
fn relative_on_node(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut comps = p.components();
    if comps.next() != Some(Component::RootDir) {
        return None;
    }
    for c in comps {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Sorted archive entries: every parent directory (0755, root), then the files, owned by root.
fn overlay_entries(files: Vec<OverlayFile>) -> Vec<Entry> {
    let mut by_path: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    for f in files {
        let Some(rel) = relative_on_node(&f.on_node) else {
            continue;
        };
        let mut parent = rel.parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            by_path
                .entry(p.to_path_buf())
                .or_insert_with(|| Entry::dir(p, 0o755));
            parent = p.parent();
        }
        by_path.insert(rel.clone(), Entry::bytes(rel, f.perm, f.content));
    }
    by_path.into_values().collect()
}

/// The compressed overlay of one node: newc, sorted, mtime 0, root-owned, zstd at
/// [`OVERLAY_ZSTD_LEVEL`].
pub fn compress_overlay(entries: &[Entry], name: &str) -> Result<Vec<u8>, ImageError> {
    let enc = zstd::stream::write::Encoder::new(Vec::new(), OVERLAY_ZSTD_LEVEL)
        .map_err(ImageError::io(name, "starting zstd"))?;
    let mut w = NewcWriter::new(enc, name);
    for e in entries {
        w.append(e)?;
    }
    w.finish()?
        .finish()
        .map_err(ImageError::io(name, "finishing zstd"))
}

/// sha256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String), ImageError> {
    let mut f = fs::File::open(path).map_err(ImageError::io(path, "opening"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(ImageError::io(path, "reading"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(h.finalize())))
}

/// Puts `src` at `dst` without copying when possible: a hard link on the same filesystem,
/// else `copy_file_range` (which reflinks on btrfs and XFS), else a copy.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<&'static str, ImageError> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok("hard-linked"),
        Err(e) => {
            tracing::debug!(src = %src.display(), error = %e, "hard link failed; copying");
            fs::copy(src, dst).map_err(ImageError::io(dst, "copying into the bundle"))?;
            Ok("copied")
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(ImageError::io(path, "setting the mode of"))
}

/// Writes a bundle file with [`FILE_MODE`], whatever the umask.
fn write_public(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    fs::write(path, bytes).map_err(ImageError::io(path, "writing"))?;
    set_mode(path, FILE_MODE)
}

/// Removes a temporary directory when dropped, unless disarmed.
struct TempDirGuard(Option<PathBuf>);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

fn temp_sibling(out: &Path, what: &str) -> Result<PathBuf, ImageError> {
    let name = out
        .file_name()
        .ok_or_else(|| ImageError::bad(out, "expected a directory name, not / or .."))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(
        ".{}.{what}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// The architecture of the kernel at `path`, from its header (`x86_64`, with a warning, when
/// the header is not one [`kernel_arch`] knows).
pub fn kernel_arch_of(path: &Path) -> Result<Arch, ImageError> {
    let mut header = Vec::with_capacity(KERNEL_HEADER_LEN);
    fs::File::open(path)
        .and_then(|f| f.take(KERNEL_HEADER_LEN as u64).read_to_end(&mut header))
        .map_err(ImageError::io(path, "reading the kernel's header"))?;
    Ok(kernel_arch(&header).unwrap_or_else(|| {
        tracing::warn!(
            kernel = %path.display(),
            "not an x86 bzImage nor an arm64 Image by its header; its entries say x86_64"
        );
        Arch::X86_64
    }))
}

/// Builds the bundle; returns its manifest.
pub fn build_bundle(spec: &BundleSpec) -> Result<BundleManifest, ImageError> {
    let contract_bytes =
        fs::read(&spec.cluster).map_err(ImageError::io(&spec.cluster, "reading"))?;
    let text = String::from_utf8(contract_bytes.clone())
        .map_err(|_| ImageError::bad(&spec.cluster, "not UTF-8 text"))?;
    let contract = Contract::parse_named(&text, &spec.cluster.display().to_string())?;
    for p in [&spec.base.kernel, &spec.base.initrd] {
        if !p.is_file() {
            return Err(ImageError::bad(
                p,
                "not a file (expected a kernel and a base initrd)",
            ));
        }
    }
    if spec.out.exists() && !spec.out.join(MANIFEST_FILE).is_file() {
        let empty = fs::read_dir(&spec.out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(ImageError::NotABundle {
                path: spec.out.clone(),
            });
        }
    }

    let arch = kernel_arch_of(&spec.base.kernel)?;
    let started = std::time::Instant::now();
    let plans = plan_overlays(&contract, &contract_bytes);

    let tmp = temp_sibling(&spec.out, "tmp")?;
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(ImageError::io(&tmp, "removing a stale temporary"))?;
    }
    fs::create_dir_all(&tmp).map_err(ImageError::io(&tmp, "creating"))?;
    set_mode(&tmp, DIR_MODE)?;
    let mut guard = TempDirGuard(Some(tmp.clone()));

    let mut files = Vec::new();
    for (src, name) in [
        (&spec.base.kernel, KERNEL_NAME),
        (&spec.base.initrd, BASE_INITRD_NAME),
    ] {
        let how = link_or_copy(src, &tmp.join(name))?;
        tracing::info!(file = name, from = %src.display(), how, "base file");
        let (size, sha256) = hash_file(&tmp.join(name))?;
        files.push(ManifestFile {
            path: name.to_string(),
            size,
            sha256,
        });
    }

    tracing::debug!(elapsed = ?started.elapsed(), "base files in place");
    let overlays = write_overlays(&tmp, &plans, spec.jobs)?;
    tracing::debug!(elapsed = ?started.elapsed(), "overlays written");
    files.extend(overlays);
    files.sort_by(|a, b| a.path.cmp(&b.path));

    let mut entries = BTreeMap::new();
    let base_cmdline = spec.base.cmdline.trim().to_string();
    entries.insert(
        DEFAULT_ENTRY.to_string(),
        BootEntry {
            kernel: KERNEL_NAME.to_string(),
            initrds: vec![BASE_INITRD_NAME.to_string()],
            cmdline: base_cmdline.clone(),
            arch,
        },
    );
    for node in &contract.nodes {
        let node_param = format!("{KERNEL_NODE_PARAM}={}", node.name);
        let cmdline = if base_cmdline.is_empty() {
            node_param
        } else {
            format!("{base_cmdline} {node_param}")
        };
        entries.insert(
            node.name.clone(),
            BootEntry {
                kernel: KERNEL_NAME.to_string(),
                initrds: vec![BASE_INITRD_NAME.to_string(), overlay_path(&node.name)],
                cmdline,
                arch,
            },
        );
    }
    let manifest = BundleManifest {
        version: MANIFEST_VERSION,
        cluster_id: contract.id().to_string(),
        cluster_name: contract.name().to_string(),
        contract_version: contract.config.version,
        files,
        entries,
    };
    let problems = manifest.problems();
    if !problems.is_empty() {
        return Err(ImageError::bad(
            &spec.out,
            format!(
                "internal error: the manifest breaks its own rules: {}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    let json = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    write_public(&tmp.join(MANIFEST_FILE), json.as_bytes())?;

    // Swap into place: old bundle aside, new one in, old one removed.
    let old = temp_sibling(&spec.out, "old")?;
    if spec.out.exists() {
        if old.exists() {
            fs::remove_dir_all(&old).map_err(ImageError::io(&old, "removing"))?;
        }
        fs::rename(&spec.out, &old).map_err(ImageError::io(&spec.out, "moving aside"))?;
    }
    if let Err(e) = fs::rename(&tmp, &spec.out) {
        if old.exists() {
            let _ = fs::rename(&old, &spec.out);
        }
        return Err(ImageError::io(
            &spec.out,
            "renaming the new bundle into place",
        )(e));
    }
    guard.0 = None;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(ImageError::io(&old, "removing the previous bundle"))?;
    }
    tracing::info!(out = %spec.out.display(), nodes = contract.nodes.len(), "bundle written");
    Ok(manifest)
}

fn write_overlays(
    dir: &Path,
    plans: &[(String, Vec<Entry>)],
    jobs: usize,
) -> Result<Vec<ManifestFile>, ImageError> {
    let jobs = crate::jobs(jobs).min(plans.len().max(1));
    let chunk = plans.len().div_ceil(jobs).max(1);
    let results: Vec<Result<Vec<ManifestFile>, ImageError>> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (node, entries) in part {
                        let name = overlay_path(node);
                        let bytes = compress_overlay(entries, &name)?;
                        write_public(&dir.join(&name), &bytes)?;
                        out.push(ManifestFile {
                            path: name,
                            size: bytes.len() as u64,
                            sha256: hex::encode(Sha256::digest(&bytes)),
                        });
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ImageError::bad(
                        dir,
                        "internal error: an overlay worker panicked",
                    ))
                })
            })
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn netboot_ipxe_from_nixpkgs_is_read() {
        let s = "#!ipxe\n# Use the cmdline variable to allow the user to specify custom kernel params\n\
                 kernel bzImage init=/nix/store/abc-nixos-system/init initrd=initrd nohibernate loglevel=4 ${cmdline}\n\
                 initrd initrd\nboot\n";
        let p = parse_netboot_ipxe(s).unwrap();
        assert_eq!(p.kernel, "bzImage");
        assert_eq!(p.initrd, "initrd");
        assert_eq!(
            p.cmdline,
            "init=/nix/store/abc-nixos-system/init nohibernate loglevel=4"
        );
    }

    #[test]
    fn netboot_ipxe_without_init_is_refused() {
        let e = parse_netboot_ipxe("#!ipxe\nkernel bzImage quiet\ninitrd initrd\n").unwrap_err();
        assert!(e.contains("init="), "{e}");
        let e = parse_netboot_ipxe("#!ipxe\nboot\n").unwrap_err();
        assert!(e.contains("kernel"), "{e}");
    }

    #[test]
    fn on_node_paths_must_be_absolute_and_clean() {
        assert_eq!(
            relative_on_node(Path::new("/etc/a/b")),
            Some(PathBuf::from("etc/a/b"))
        );
        assert_eq!(relative_on_node(Path::new("etc/a")), None);
        assert_eq!(relative_on_node(Path::new("/etc/../x")), None);
        assert_eq!(relative_on_node(Path::new("/")), None);
    }

    #[test]
    fn overlay_entries_have_parents_first_and_sorted() {
        let e = overlay_entries(vec![
            OverlayFile {
                on_node: "/var/lib/x/key".into(),
                perm: 0o600,
                content: b"k".to_vec(),
            },
            OverlayFile {
                on_node: "/etc/plasmacloud/node".into(),
                perm: 0o644,
                content: b"n\n".to_vec(),
            },
        ]);
        let names: Vec<_> = e.iter().map(|e| e.path.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/plasmacloud",
                "etc/plasmacloud/node",
                "var",
                "var/lib",
                "var/lib/x",
                "var/lib/x/key"
            ]
        );
    }
}
