//! The data directory: its marker file, the node id and the incarnation.
//!
//! Layout of `<data-dir>`:
//! - `PLASMACLOUD-STORE.json` — the marker: `{"service":"chainfire","format":1,"incarnation":"…"}`,
//!   written last when the directory is created. A directory holding anything else but no
//!   marker, a marker naming another service or format, or a marker whose database is missing
//!   is refused: nothing is created or overwritten.
//! - `node_id` — the Raft id, decimal, written once (it may be written beforehand by the
//!   first-boot configure step). `--id` must match it when both are given.
//! - `db/` — RocksDB (Raft log, vote, state machine, snapshot).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::types::NodeId;

/// The marker file's name.
pub const MARKER_FILE: &str = "PLASMACLOUD-STORE.json";
/// The node id file's name.
pub const NODE_ID_FILE: &str = "node_id";
/// The on-disk format this build reads and writes.
pub const FORMAT: u32 = 1;

/// The marker file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// `chainfire` or `flaredb`.
    pub service: String,
    /// On-disk format version.
    pub format: u32,
    /// Random id of this directory's incarnation (hex).
    pub incarnation: String,
}

/// An opened, validated data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory.
    pub path: PathBuf,
    /// This node's Raft id.
    pub node_id: NodeId,
    /// This directory's incarnation.
    pub incarnation: String,
    /// Whether the directory was created by this start (RocksDB may be created).
    pub fresh: bool,
}

impl DataDir {
    /// The RocksDB directory.
    pub fn db_path(&self) -> PathBuf {
        self.path.join("db")
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::DataDir {
        path: path.to_path_buf(),
        problem: format!("{what}: {e}"),
    }
}

fn read_node_id(path: &Path) -> Result<Option<NodeId>, Error> {
    let f = path.join(NODE_ID_FILE);
    match fs::read_to_string(&f) {
        Ok(s) => s
            .trim()
            .parse::<NodeId>()
            .map(Some)
            .map_err(|_| Error::DataDir {
                path: f.clone(),
                problem: format!(
                    "holds {:?}, not a node id (a decimal number); fix or remove the file",
                    s.trim()
                ),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&f, "reading", e)),
    }
}

fn write_file_durably(path: &Path, content: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, "creating", e))?;
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(&tmp, "writing", e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, "renaming into place", e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn new_incarnation() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// Resolves the node id from `--id` and `<data-dir>/node_id`.
fn resolve_id(path: &Path, cli_id: Option<NodeId>) -> Result<(NodeId, bool), Error> {
    let stored = read_node_id(path)?;
    match (stored, cli_id) {
        (Some(s), Some(c)) if s != c => Err(Error::IdMismatch {
            path: path.join(NODE_ID_FILE),
            stored: s,
            given: c,
        }),
        (Some(s), _) => Ok((s, false)),
        (None, Some(c)) => Ok((c, true)),
        (None, None) => Err(Error::Config(format!(
            "no node id: pass --id (first start) or write {}",
            path.join(NODE_ID_FILE).display()
        ))),
    }
}

/// Opens `path` for `service`, creating it when it is empty or missing, refusing it when it is
/// foreign or damaged. Blocking (file I/O).
pub fn open_data_dir(path: &Path, service: &str, cli_id: Option<NodeId>) -> Result<DataDir, Error> {
    if cli_id == Some(0) {
        return Err(Error::Config("--id must be at least 1".into()));
    }
    if path.exists() && !path.is_dir() {
        return Err(Error::DataDir {
            path: path.to_path_buf(),
            problem: "exists and is not a directory".into(),
        });
    }
    let marker_path = path.join(MARKER_FILE);
    if marker_path.exists() {
        let raw = fs::read(&marker_path).map_err(|e| io_err(&marker_path, "reading", e))?;
        let marker: Marker = serde_json::from_slice(&raw).map_err(|e| Error::DataDir {
            path: marker_path.clone(),
            problem: format!(
                "corrupt marker ({e}); this directory cannot be trusted — restore it or wipe it and join under a new id"
            ),
        })?;
        if marker.service != service {
            return Err(Error::DataDir {
                path: path.to_path_buf(),
                problem: format!(
                    "belongs to {:?}, not {service:?}; point --data-dir at this service's own directory",
                    marker.service
                ),
            });
        }
        if marker.format != FORMAT {
            return Err(Error::DataDir {
                path: path.to_path_buf(),
                problem: format!(
                    "has on-disk format {} but this build reads format {FORMAT}",
                    marker.format
                ),
            });
        }
        if !path.join("db").join("CURRENT").is_file() {
            return Err(Error::DataDir {
                path: path.to_path_buf(),
                problem: "the marker is present but the database (db/CURRENT) is missing; the directory is damaged — wipe it and join under a new id".into(),
            });
        }
        let (node_id, write_id) = resolve_id(path, cli_id)?;
        if write_id {
            write_file_durably(&path.join(NODE_ID_FILE), format!("{node_id}\n").as_bytes())?;
        }
        return Ok(DataDir {
            path: path.to_path_buf(),
            node_id,
            incarnation: marker.incarnation,
            fresh: false,
        });
    }
    // No marker: only an empty directory (or one holding just node_id / lost+found) is ours.
    if path.exists() {
        let entries = fs::read_dir(path).map_err(|e| io_err(path, "listing", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(path, "listing", e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name != NODE_ID_FILE && name != "lost+found" {
                return Err(Error::DataDir {
                    path: path.to_path_buf(),
                    problem: format!(
                        "is not empty (holds {name:?}) and has no {MARKER_FILE}; refusing to use it — not a {service} data directory (or an interrupted first start: remove it by hand)"
                    ),
                });
            }
        }
    }
    let (node_id, _) = resolve_id(path, cli_id)?;
    fs::create_dir_all(path).map_err(|e| io_err(path, "creating", e))?;
    write_file_durably(&path.join(NODE_ID_FILE), format!("{node_id}\n").as_bytes())?;
    Ok(DataDir {
        path: path.to_path_buf(),
        node_id,
        incarnation: new_incarnation(),
        fresh: true,
    })
}

/// Writes the marker once the database exists (the last step of creating a directory).
pub fn write_marker(dir: &DataDir, service: &str) -> Result<(), Error> {
    let marker = Marker {
        service: service.to_string(),
        format: FORMAT,
        incarnation: dir.incarnation.clone(),
    };
    let body = serde_json::to_vec_pretty(&marker).map_err(|e| Error::DataDir {
        path: dir.path.clone(),
        problem: format!("encoding marker: {e}"),
    })?;
    write_file_durably(&dir.path.join(MARKER_FILE), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_dir_needs_an_id_and_refuses_foreign_content() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d");
        assert!(matches!(
            open_data_dir(&p, "chainfire", None),
            Err(Error::Config(_))
        ));
        let d = open_data_dir(&p, "chainfire", Some(3)).unwrap();
        assert!(d.fresh);
        assert_eq!(d.node_id, 3);
        // node_id alone: still fresh, id from the file
        let d2 = open_data_dir(&p, "chainfire", None).unwrap();
        assert_eq!(d2.node_id, 3);
        assert!(matches!(
            open_data_dir(&p, "chainfire", Some(4)),
            Err(Error::IdMismatch {
                stored: 3,
                given: 4,
                ..
            })
        ));
        fs::write(p.join("junk"), "x").unwrap();
        let e = open_data_dir(&p, "chainfire", Some(3)).unwrap_err();
        assert!(e.to_string().contains("no PLASMACLOUD-STORE.json"), "{e}");
    }

    #[test]
    fn marker_rules() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        fs::write(p.join(MARKER_FILE), "{not json").unwrap();
        let e = open_data_dir(p, "chainfire", Some(1)).unwrap_err();
        assert!(e.to_string().contains("corrupt marker"), "{e}");
        let m = Marker {
            service: "flaredb".into(),
            format: FORMAT,
            incarnation: "ab".into(),
        };
        fs::write(p.join(MARKER_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = open_data_dir(p, "chainfire", Some(1)).unwrap_err();
        assert!(e.to_string().contains("belongs to \"flaredb\""), "{e}");
        let e = open_data_dir(p, "flaredb", Some(1)).unwrap_err();
        assert!(
            e.to_string().contains("database (db/CURRENT) is missing"),
            "{e}"
        );
        // nothing was overwritten
        assert_eq!(
            serde_json::from_slice::<Marker>(&fs::read(p.join(MARKER_FILE)).unwrap()).unwrap(),
            m
        );
    }
}
