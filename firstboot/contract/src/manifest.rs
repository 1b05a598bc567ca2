//! The bundle manifest (`manifest.json`): what `netboot-image bundle` wrote and `pxe-server`
//! serves. Every file with its size and sha256 (hex), and one boot entry per node plus the
//! always-present `default` entry (kernel + base initrd) for unknown MACs.
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
        // A stranger must not boot as some node: the default entry carries no node's overlay.
        if let Some(d) = self.entries.get(DEFAULT_ENTRY) {
            for p in &d.initrds {
                let node_only = self
                    .entries
                    .keys()
                    .any(|n| n.as_str() != DEFAULT_ENTRY && *p == overlay_path(n));
                if node_only {
                    problems.push(Problem::new(
                        format!("entries.{DEFAULT_ENTRY}.initrds"),
                        format!("{p:?} is a node's overlay; the default entry must carry no node's overlay"),
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
