//! The `units` layer: the rendered systemd units from `--units DIR` in `/etc/systemd/system`,
//! enabled from their `[Install]` sections the way `systemctl enable` does (template units are
//! not enabled: they need an instance).

use std::fs;
use std::path::{Path, PathBuf};

use super::tree::{file_entry, layer_from};
use super::walk::walk_tree;
use crate::error::ImageError;
use crate::layers::Layer;
use crate::newc::{Entry, Kind};

/// `[Install]` targets of a unit file: `WantedBy=` → `.wants`, `RequiredBy=` → `.requires`.
pub fn install_links(unit_text: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit_text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[Install]" {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let suffix = match k.trim() {
                "WantedBy" => "wants",
                "RequiredBy" => "requires",
                _ => continue,
            };
            for t in v.split_whitespace() {
                out.push((t.to_string(), suffix.to_string()));
            }
        }
    }
    out
}

/// The `units` layer of the unit files (and drop-in directories, as they are) in `units`.
pub(super) fn units_layer(root: &Path, units: &Path) -> Result<Layer, ImageError> {
    let base = PathBuf::from("etc/systemd/system");
    let mut entries = Vec::new();
    let mut rd: Vec<_> = fs::read_dir(units)
        .map_err(ImageError::io(units, "listing"))?
        .collect::<Result<_, _>>()
        .map_err(ImageError::io(units, "listing"))?;
    rd.sort_by_key(|e| e.file_name());
    for e in rd {
        let p = e.path();
        let name = e.file_name();
        let ft = e
            .file_type()
            .map_err(ImageError::io(&p, "reading metadata"))?;
        if ft.is_dir() {
            // Drop-ins (`x.service.d/`) and prepared `.wants/` directories, as they are.
            for sub in walk_tree(&p)? {
                let mut sub = sub;
                sub.path = base.join(&name).join(&sub.path);
                sub.uid = 0;
                sub.gid = 0;
                if matches!(sub.kind, Kind::File(_)) {
                    sub.perm = 0o644;
                }
                entries.push(sub);
            }
            entries.push(Entry::dir(base.join(&name), 0o755));
            continue;
        }
        if ft.is_symlink() {
            let t = fs::read_link(&p).map_err(ImageError::io(&p, "reading link"))?;
            entries.push(Entry::symlink(base.join(&name), t));
            continue;
        }
        let text = fs::read_to_string(&p).map_err(ImageError::io(&p, "reading"))?;
        let unit = name.to_string_lossy().into_owned();
        entries.push(file_entry(base.join(&name), &p, 0o644)?);
        for (target, suffix) in install_links(&text) {
            if unit.contains("@.") {
                tracing::warn!(
                    unit,
                    "template unit with [Install]; not enabled (needs an instance)"
                );
                continue;
            }
            entries.push(Entry::symlink(
                base.join(format!("{target}.{suffix}")).join(&unit),
                format!("/etc/systemd/system/{unit}"),
            ));
        }
    }
    Ok(layer_from("units".into(), root, entries))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn install_sections_become_links() {
        let t = "[Unit]\nWantedBy=nope.target\n[Install]\nWantedBy=multi-user.target cluster-ready.target\nRequiredBy=x.target\n";
        assert_eq!(
            install_links(t),
            [
                ("multi-user.target".to_string(), "wants".to_string()),
                ("cluster-ready.target".to_string(), "wants".to_string()),
                ("x.target".to_string(), "requires".to_string())
            ]
        );
    }
}
