//! The bundle pxe-server serves, re-built and swapped in.
//!
//! pxe-server's `--bundle PATH` is either a symlink to a bundle directory or a directory. A new
//! bundle is always written as a new directory, never into the served one (pxe-server serves
//! from the files it opened at load; see pxe/README.md, "Rolling a new bundle"), then put in
//! place in one step:
//! - **a symlink** is flipped: a new link beside it, renamed over it;
//! - **a directory** is exchanged with the new one (`renameat2(RENAME_EXCHANGE)`): the served
//!   path names the new bundle, the new directory's path the old one.
//!
//! Either way pxe-server picks the change up from its `manifest.json` poll (every 2 s, it
//! follows symlinks) or at once on `SIGHUP`, loads the new bundle whole and swaps it in only
//! when every file checks out. A bundle's version is the sha256 of its `manifest.json` — what
//! pxe-server reports in `/v1/status`.

use std::path::{Path, PathBuf};

use netboot_image::bundle::{build_bundle, BaseImage, BundleSpec};
use plasmacloud_contract::manifest::{BundleManifest, DEFAULT_ENTRY, MANIFEST_FILE};
use sha2::Digest;

use crate::{Error, Result};

/// The version of the bundle in `dir`: the sha256 of its `manifest.json`, lowercase hex.
pub fn version_of(dir: &Path) -> Result<String> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// The first 12 digits of a version, for messages.
pub fn short(version: &str) -> &str {
    &version[..12.min(version.len())]
}

/// How the served path was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// The symlink now points at the new directory.
    SymlinkFlipped,
    /// The served directory and the new one were exchanged.
    DirectoriesExchanged,
}

/// The path pxe-server serves (`--bundle`).
#[derive(Debug, Clone)]
pub struct BundleSite {
    /// pxe-server's `--bundle`.
    pub served: PathBuf,
}

impl BundleSite {
    /// The site at `served`.
    pub fn new(served: impl Into<PathBuf>) -> Self {
        Self {
            served: served.into(),
        }
    }

    /// The directory served now (the symlink followed).
    pub fn current_dir(&self) -> Result<PathBuf> {
        std::fs::canonicalize(&self.served).map_err(Error::io(&self.served))
    }

    /// The version served now (as on disk).
    pub fn current_version(&self) -> Result<String> {
        version_of(&self.current_dir()?)
    }

    /// How the served bundle's boot entries differ from `contract`'s nodes: a node of the
    /// contract it cannot boot, or an entry for a node the contract no longer names — what an
    /// operation that stopped between its contract edit and its bundle leaves (empty when
    /// they agree). Names only: a MAC changed in the contract alone is not seen here.
    pub fn mismatch(&self, contract: &plasmacloud_contract::Contract) -> Result<Vec<String>> {
        let dir = self.current_dir()?;
        let m = BundleManifest::load(&dir)?;
        let mut out: Vec<String> = contract
            .nodes
            .iter()
            .filter(|n| !m.entries.contains_key(&n.name))
            .map(|n| {
                format!(
                    "{} is in the contract but the served bundle has no entry for it",
                    n.name
                )
            })
            .collect();
        out.extend(
            m.entries
                .keys()
                .filter(|k| *k != DEFAULT_ENTRY && !k.starts_with(&format!("{DEFAULT_ENTRY}-")))
                .filter(|k| contract.node(k).is_err())
                .map(|k| {
                    format!("the served bundle still boots {k}, which the contract no longer names")
                }),
        );
        Ok(out)
    }

    fn is_symlink(&self) -> bool {
        std::fs::symlink_metadata(&self.served).is_ok_and(|m| m.file_type().is_symlink())
    }

    /// The kernel, base initrd and command line of the served bundle (its `default` entry):
    /// what a re-bundle for a changed contract reuses.
    pub fn base_image(&self) -> Result<BaseImage> {
        let dir = self.current_dir()?;
        let m = BundleManifest::load(&dir)?;
        let entry = m
            .entries
            .get(DEFAULT_ENTRY)
            .ok_or_else(|| Error::Bundle(format!("{} has no default entry", dir.display())))?;
        let initrd = entry.initrds.first().ok_or_else(|| {
            Error::Bundle(format!(
                "{}: the default entry has no initrd",
                dir.display()
            ))
        })?;
        Ok(BaseImage {
            kernel: dir.join(&entry.kernel),
            initrd: dir.join(initrd),
            cmdline: entry.cmdline.clone(),
        })
    }

    /// Where new bundle directories go: beside the served one's target (a symlink), or
    /// beside the served directory.
    fn new_dir(&self, tag: &str) -> Result<PathBuf> {
        let anchor = if self.is_symlink() {
            self.current_dir()?
        } else {
            self.served.clone()
        };
        let parent = anchor
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let stem = anchor
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("bundle")
            .split(".rackctl-")
            .next()
            .unwrap_or("bundle")
            .to_string();
        Ok(parent.join(format!("{stem}.rackctl-{tag}-{}", crate::now_ms())))
    }

    /// Builds a bundle for `contract` (the served bundle's kernel and initrd, or `base`) into
    /// a new directory and returns it with its version; serves nothing yet.
    pub fn build(&self, contract: &Path, base: Option<BaseImage>) -> Result<(PathBuf, String)> {
        let base = match base {
            Some(b) => b,
            None => self.base_image()?,
        };
        let out = self.new_dir("build")?;
        let spec = BundleSpec {
            cluster: contract.to_path_buf(),
            base,
            out: out.clone(),
            jobs: 0,
        };
        build_bundle(&spec).map_err(|e| Error::Bundle(format!("netboot-image: {e}")))?;
        let v = version_of(&out)?;
        Ok((out, v))
    }

    /// Puts `dir` in place of the served bundle in one step; returns how, and the directory
    /// that now holds the bundle served before (for a directory, `dir` itself).
    pub fn swap_in(&self, dir: &Path) -> Result<(Swap, PathBuf)> {
        BundleManifest::load(dir)?;
        let dir = std::fs::canonicalize(dir).map_err(Error::io(dir))?;
        if self.is_symlink() || !self.served.exists() {
            let before = self.current_dir().unwrap_or_default();
            let parent = self
                .served
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = parent.join(format!(
                ".{}.rackctl-link",
                self.served
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("bundle")
            ));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&dir, &tmp).map_err(Error::io(&tmp))?;
            std::fs::rename(&tmp, &self.served).map_err(Error::io(&self.served))?;
            Ok((Swap::SymlinkFlipped, before))
        } else {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &dir,
                rustix::fs::CWD,
                &self.served,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(|e| Error::Bundle(format!(
                "cannot exchange {} with {}: {e} (on a filesystem without RENAME_EXCHANGE make --bundle a symlink, as pxe/README.md shows)",
                dir.display(),
                self.served.display()
            )))?;
            Ok((Swap::DirectoriesExchanged, dir))
        }
    }

    /// Builds a bundle for `contract` and swaps it in; returns its version.
    pub fn rebuild(&self, contract: &Path, base: Option<BaseImage>) -> Result<String> {
        let (dir, version) = self.build(contract, base)?;
        let (how, old) = self.swap_in(&dir)?;
        tracing::info!(
            version = short(&version),
            served = %self.served.display(),
            ?how,
            "new bundle in place"
        );
        // An exchanged directory now holds the old bundle: pxe-server keeps serving it from
        // its open files for the boots under way, so it is left for the operator to delete.
        let _ = old;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(dir: &Path) -> PathBuf {
        let text = serde_json::json!({
            "version": 2,
            "cluster": {"name": "t", "id": "t-1"},
            "boot_server": {"address": "10.0.0.1"},
            "initial_voters": ["node01"],
            "nodes": [{"name": "node01", "mac": "52:54:00:00:00:01", "ipv4": "10.0.0.11", "roles": ["control-plane"]}],
        });
        let p = dir.join("cluster-config.json");
        std::fs::write(&p, text.to_string()).expect("write");
        p
    }

    #[test]
    fn a_rebuilt_bundle_replaces_a_symlink_or_a_directory_in_one_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = contract(dir.path());
        let k = dir.path().join("kernel");
        let i = dir.path().join("initrd");
        std::fs::write(&k, b"kernel one").expect("k");
        std::fs::write(&i, b"initrd one").expect("i");
        let base = BaseImage {
            kernel: k.clone(),
            initrd: i.clone(),
            cmdline: "console=ttyS0".into(),
        };
        for symlink in [true, false] {
            let served = dir
                .path()
                .join(if symlink { "served-link" } else { "served-dir" });
            let site = BundleSite::new(&served);
            let (first, v1) = site.build(&c, Some(base.clone())).expect("builds");
            if symlink {
                std::os::unix::fs::symlink(&first, &served).expect("link");
            } else {
                std::fs::rename(&first, &served).expect("dir");
            }
            assert_eq!(site.current_version().expect("v"), v1);
            // The same contract and base again: the same version.
            let (_, again) = site.build(&c, None).expect("builds from the served base");
            assert_eq!(again, v1, "a bundle's version is its manifest's hash");
            // (A new file: bundles hard-link their inputs, so rewriting one in place would
            // change the served bundle under pxe-server.)
            let k2 = dir.path().join(format!("kernel-two-{symlink}"));
            std::fs::write(&k2, b"kernel two").expect("k2");
            let two = BaseImage {
                kernel: k2,
                ..base.clone()
            };
            let (second, v2) = site.build(&c, Some(two)).expect("builds");
            assert_ne!(v1, v2);
            let (how, old) = site.swap_in(&second).expect("swaps");
            assert_eq!(
                how,
                if symlink {
                    Swap::SymlinkFlipped
                } else {
                    Swap::DirectoriesExchanged
                }
            );
            assert_eq!(site.current_version().expect("v"), v2);
            assert_eq!(version_of(&old).expect("old kept"), v1);
        }
    }
}
