//! The bundle manifest (`manifest.json`): what `netboot-image bundle` wrote and `pxe-server`
//! serves. Every file with its size and sha256 (hex), and one boot entry per node plus the
//! always-present `default` entry (kernel + base initrd, no secrets) for unknown MACs.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ContractError, Problem};

/// The manifest format version this crate reads and writes.
pub const MANIFEST_VERSION: u32 = 1;

/// The name of the boot entry for machines the contract does not know.
pub const DEFAULT_ENTRY: &str = "default";

/// The manifest file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// `manifest.json` of a bundle directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Manifest format version (`1`).
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
    /// Does it hold a node's secrets (served only to that node)?
    #[serde(default)]
    pub secret: bool,
}

/// How one node (or the default entry) boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootEntry {
    /// The kernel, a path in `files`.
    pub kernel: String,
    /// Initrds in load order (base first, then the node's overlay), paths in `files`.
    pub initrds: Vec<String>,
    /// Kernel command line without `initrd=` (the PXE server adds one per initrd); node entries
    /// carry `plasmacloud.node=NAME`.
    pub cmdline: String,
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
                format!("no {DEFAULT_ENTRY:?} entry (every bundle boots unknown machines without secrets)"),
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
            if name == DEFAULT_ENTRY {
                for p in &e.initrds {
                    if self.file(p).is_some_and(|f| f.secret) {
                        problems.push(Problem::new(
                            format!("entries.{name}.initrds"),
                            format!("{p:?} holds secrets; the default entry must carry none"),
                        ));
                    }
                }
            }
        }
        problems
    }
}
