//! The bundle manifest (`manifest.json`): what `netboot-image bundle` wrote and `pxe-server`
//! serves. Every file with its size and sha256 (hex), and one boot entry per node plus the
//! always-present `default` entry (kernel + base initrd) for unknown MACs.
//!
//! Every entry names the CPU architecture of its kernel ([`Arch`], read from the kernel's own
//! header by the builder, [`kernel_arch`]), so a server can refuse to hand an arm64 machine an
//! x86-64 kernel (and the reverse) instead of letting it fail somewhere in firmware. Machines
//! the contract does not know boot the `default` entry, or `default-<arch>` when their
//! architecture is not the default entry's.
//!
//! A bundle is a public artifact: no file in it is secret (version 1 marked node overlays
//! `secret` because they carried keys; version 2 overlays carry only the contract and the
//! node's name, and keys are made on the nodes at enrollment).

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ContractError, Problem};

/// The manifest format version this crate reads and writes.
pub const MANIFEST_VERSION: u32 = 2;

/// The name of the boot entry for machines the contract does not know.
pub const DEFAULT_ENTRY: &str = "default";

/// The manifest file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The path of a node's overlay initrd in a bundle (its contract and identity file).
pub fn overlay_path(node: &str) -> String {
    format!("overlay-{node}.cpio.zst")
}

/// `manifest.json` of a bundle directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Manifest format version (`2`).
    pub version: u32,
    /// The contract's `cluster.id`.
    pub cluster_id: String,
    /// The contract's `cluster.name`.
    pub cluster_name: String,
    /// The contract's `version`.
    pub contract_version: u32,
    /// Every file of the bundle, sorted by path.
    pub files: Vec<ManifestFile>,
    /// Boot entries by node name, plus [`DEFAULT_ENTRY`].
    pub entries: BTreeMap<String, BootEntry>,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Path relative to the bundle directory, `/`-separated, no `..`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// The CPU architecture of a boot entry's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum Arch {
    /// x86-64 (an x86 `bzImage`; BIOS and x86-64 UEFI clients).
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    /// ARM64 (an arm64 `Image`; ARM64 UEFI clients).
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    /// Every architecture, in a fixed order.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// `x86_64` or `aarch64`, as the manifest spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The architecture a name from the manifest, a URL or iPXE's `${buildarch}` stands for
    /// (`x86_64`, `i386` — iPXE's BIOS build, which boots 64-bit kernels — `aarch64`, `arm64`).
    pub fn parse(name: &str) -> Option<Arch> {
        match name {
            "x86_64" | "x86-64" | "amd64" | "i386" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The name of the entry machines of this architecture that the contract does not know
    /// boot when the `default` entry is of another architecture.
    pub fn default_entry(self) -> String {
        format!("{DEFAULT_ENTRY}-{}", self.as_str())
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many bytes of a kernel [`kernel_arch`] needs.
pub const KERNEL_HEADER_LEN: usize = 0x206;

/// The architecture a kernel image is built for, from its header: an x86 boot-protocol image
/// (`bzImage`: `HdrS` at 0x202) or an arm64 `Image` (`ARM\x64` at 0x38). `None` for anything
/// else (a compressed `Image.gz`, or not a kernel at all).
pub fn kernel_arch(header: &[u8]) -> Option<Arch> {
    if header.get(0x202..0x206) == Some(b"HdrS") {
        Some(Arch::X86_64)
    } else if header.get(0x38..0x3c) == Some(b"ARM\x64") {
        Some(Arch::Aarch64)
    } else {
        None
    }
}

/// How one node (or the default entry) boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootEntry {
    /// The kernel, a path in `files`.
    pub kernel: String,
    /// Initrds in load order (base first, then the node's overlay), paths in `files`.
    /// pxe-server appends one more for each boot of a node: its enrollment initrd.
    pub initrds: Vec<String>,
    /// Kernel command line without `initrd=` (the PXE server adds one per initrd); node entries
    /// carry `plasmacloud.node=NAME`.
    pub cmdline: String,
    /// The kernel's architecture (`x86_64` when absent: bundles written before the field).
    #[serde(default)]
    pub arch: Arch,
}

impl BundleManifest {
    /// Reads and checks `DIR/manifest.json`.
    pub fn load(bundle_dir: &Path) -> Result<Self, ContractError> {
        let path = bundle_dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ContractError::Read {
            path: path.clone(),
            source,
        })?;
        let origin = path.display().to_string();
        let version = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
        if version.is_some_and(|v| v < u64::from(MANIFEST_VERSION)) {
            return Err(ContractError::Invalid {
                origin,
                problems: vec![Problem::new(
                    "version",
                    format!("{} is an older bundle format whose node overlays carried secrets; rebuild the bundle with this release's `netboot-image bundle` (version {MANIFEST_VERSION} bundles carry none)", version.unwrap_or(0)),
                )],
            });
        }
        let manifest: BundleManifest = crate::validate::parse_json(&text, &origin)?;
        let problems = manifest.problems();
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(ContractError::Invalid { origin, problems })
        }
    }

    /// The file entry for `path`.
    pub fn file(&self, path: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The entry for a node, or the default entry.
    pub fn entry_for(&self, node: Option<&str>) -> Option<&BootEntry> {
        node.and_then(|n| self.entries.get(n))
            .or_else(|| self.entries.get(DEFAULT_ENTRY))
    }

    /// The entry a machine the contract does not know boots, with its name: `default` when it
    /// is of `arch` (or `arch` is not known), else `default-<arch>`; `None` when the bundle has
    /// no kernel for that architecture.
    pub fn default_entry_for(&self, arch: Option<Arch>) -> Option<(String, &BootEntry)> {
        let d = self.entries.get(DEFAULT_ENTRY)?;
        match arch {
            None => Some((DEFAULT_ENTRY.to_string(), d)),
            Some(a) if d.arch == a => Some((DEFAULT_ENTRY.to_string(), d)),
            Some(a) => {
                let name = a.default_entry();
                let e = self.entries.get(&name)?;
                Some((name, e))
            }
        }
    }

    /// Every rule the manifest must meet.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.version != MANIFEST_VERSION {
            problems.push(Problem::new(
                "version",
                format!("{} is not a known manifest version (expected {MANIFEST_VERSION}); rebuild the bundle with this release's netboot-image", self.version),
            ));
        }
        for (i, f) in self.files.iter().enumerate() {
            let safe = !f.path.is_empty()
                && !f.path.starts_with('/')
                && f.path
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..");
            if !safe {
                problems.push(Problem::new(
                    format!("files[{i}].path"),
                    format!("{:?} is not a relative path inside the bundle", f.path),
                ));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(Problem::new(
                    format!("files[{i}].sha256"),
                    "expected 64 lowercase hex digits",
                ));
            }
        }
        if !self.entries.contains_key(DEFAULT_ENTRY) {
            problems.push(Problem::new(
                "entries",
                format!("no {DEFAULT_ENTRY:?} entry (every bundle boots machines the contract does not know with it)"),
            ));
        }
        for (name, e) in &self.entries {
            for (what, p) in std::iter::once(("kernel", &e.kernel))
                .chain(e.initrds.iter().map(|p| ("initrds", p)))
            {
                if self.file(p).is_none() {
                    problems.push(Problem::new(
                        format!("entries.{name}.{what}"),
                        format!("{p:?} is not listed in files"),
                    ));
                }
            }
        }
        for a in Arch::ALL {
            if let Some(e) = self.entries.get(&a.default_entry()) {
                if e.arch != a {
                    problems.push(Problem::new(
                        format!("entries.{}.arch", a.default_entry()),
                        format!(
                            "{} is the default entry of {a} machines, but its kernel is {}",
                            a.default_entry(),
                            e.arch
                        ),
                    ));
                }
            }
        }
        // A stranger must not boot as some node: no default entry carries a node's overlay.
        let defaults = std::iter::once(DEFAULT_ENTRY.to_string())
            .chain(Arch::ALL.iter().map(|a| a.default_entry()));
        for name in defaults {
            let Some(d) = self.entries.get(&name) else {
                continue;
            };
            for p in &d.initrds {
                let node_only = self
                    .entries
                    .keys()
                    .any(|n| n.as_str() != DEFAULT_ENTRY && *p == overlay_path(n));
                if node_only {
                    problems.push(Problem::new(
                        format!("entries.{name}.initrds"),
                        format!("{p:?} is a node's overlay; a default entry must carry no node's overlay"),
                    ));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> BundleManifest {
        let file = |p: &str| ManifestFile {
            path: p.into(),
            size: 1,
            sha256: "0".repeat(64),
        };
        let entry = |initrds: &[&str]| BootEntry {
            kernel: "bzImage".into(),
            initrds: initrds.iter().map(|s| s.to_string()).collect(),
            cmdline: String::new(),
            arch: Arch::X86_64,
        };
        BundleManifest {
            version: MANIFEST_VERSION,
            cluster_id: "c".into(),
            cluster_name: "c".into(),
            contract_version: crate::CONTRACT_VERSION,
            files: vec![
                file("bzImage"),
                file("initrd"),
                file("overlay-node01.cpio.zst"),
            ],
            entries: [
                (
                    "node01".to_string(),
                    entry(&["initrd", "overlay-node01.cpio.zst"]),
                ),
                (DEFAULT_ENTRY.to_string(), entry(&["initrd"])),
            ]
            .into(),
        }
    }

    #[test]
    fn the_default_entry_never_boots_a_nodes_overlay() {
        assert!(manifest().problems().is_empty());
        let mut m = manifest();
        if let Some(d) = m.entries.get_mut(DEFAULT_ENTRY) {
            d.initrds.push("overlay-node01.cpio.zst".into());
        }
        let p = m.problems();
        assert!(
            p.iter()
                .any(|p| p.path == "entries.default.initrds"
                    && p.message.contains("no node's overlay")),
            "{p:?}"
        );
    }

    #[test]
    fn strangers_boot_the_default_entry_of_their_architecture() {
        let mut m = manifest();
        let x86 = m.default_entry_for(Some(Arch::X86_64)).map(|(n, _)| n);
        assert_eq!(x86.as_deref(), Some(DEFAULT_ENTRY));
        assert_eq!(
            m.default_entry_for(None).map(|(n, _)| n).as_deref(),
            Some(DEFAULT_ENTRY)
        );
        assert!(
            m.default_entry_for(Some(Arch::Aarch64)).is_none(),
            "no arm64 kernel"
        );
        let mut arm = m.entries[DEFAULT_ENTRY].clone();
        arm.arch = Arch::Aarch64;
        m.entries.insert("default-aarch64".into(), arm.clone());
        assert!(m.problems().is_empty(), "{:?}", m.problems());
        let (name, e) = m
            .default_entry_for(Some(Arch::Aarch64))
            .expect("arm64 default");
        assert_eq!((name.as_str(), e.arch), ("default-aarch64", Arch::Aarch64));
        arm.arch = Arch::X86_64;
        m.entries.insert("default-aarch64".into(), arm);
        let p = m.problems();
        assert!(
            p.iter().any(|p| p.path == "entries.default-aarch64.arch"),
            "{p:?}"
        );
    }

    #[test]
    fn an_entry_without_arch_is_x86_64_and_an_unknown_arch_is_refused() {
        let e: BootEntry =
            serde_json::from_str(r#"{"kernel":"k","initrds":[],"cmdline":""}"#).expect("parse");
        assert_eq!(e.arch, Arch::X86_64);
        let e: BootEntry =
            serde_json::from_str(r#"{"kernel":"k","initrds":[],"cmdline":"","arch":"aarch64"}"#)
                .expect("parse");
        assert_eq!(e.arch, Arch::Aarch64);
        serde_json::from_str::<BootEntry>(
            r#"{"kernel":"k","initrds":[],"cmdline":"","arch":"riscv64"}"#,
        )
        .expect_err("riscv64 is not a known arch");
    }

    #[test]
    fn kernel_headers_name_their_architecture() {
        let mut x86 = vec![0u8; KERNEL_HEADER_LEN];
        x86[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_arch(&x86), Some(Arch::X86_64));
        let mut arm = vec![0u8; 64];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_arch(&arm), Some(Arch::Aarch64));
        assert_eq!(kernel_arch(b"not really a kernel"), None);
        assert_eq!(kernel_arch(&[]), None);
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.as_str()), Some(a));
        }
        assert_eq!(Arch::parse("arm64"), Some(Arch::Aarch64));
        assert_eq!(Arch::parse("i386"), Some(Arch::X86_64));
        assert_eq!(Arch::parse("riscv64"), None);
    }

    #[test]
    fn an_old_bundle_is_told_to_rebuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            r#"{"version":1,"files":[{"path":"x","size":1,"sha256":"0","secret":true}]}"#,
        )
        .expect("write");
        let e = BundleManifest::load(dir.path()).expect_err("old");
        assert!(e.to_string().contains("rebuild the bundle"), "{e}");
    }
}
