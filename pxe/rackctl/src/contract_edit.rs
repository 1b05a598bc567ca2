//! Changing the contract: nodes added, a MAC replaced, a node removed, the voter set changed —
//! always through `plasmacloud-contract`'s validation, so a change that would make the
//! contract invalid is refused with every problem listed and nothing written.
//!
//! The file is replaced in one step (a temporary file beside it, fsynced, renamed over it), so
//! pxe-server and the nodes never read half a contract.

use std::io::Write;
use std::path::{Path, PathBuf};

use plasmacloud_contract::wire::{NodeConfig, Role};
use plasmacloud_contract::{ClusterConfig, Contract};

use crate::{Error, Result};

/// A node to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    /// Its name.
    pub name: String,
    /// Its boot MAC.
    pub mac: String,
    /// Its address.
    pub ipv4: String,
    /// A Raft voter (role `control-plane`, listed in `initial_voters`), or a worker.
    pub voter: bool,
}

impl NewNode {
    /// Parses `NAME=MAC@IPV4` (e.g. `node04=52:54:00:00:00:04@10.99.0.14`).
    pub fn parse(s: &str, voter: bool) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "{s:?}: expected NAME=MAC@IPV4, e.g. node04=52:54:00:00:00:04@10.99.0.14"
            ))
        };
        let (name, rest) = s.split_once('=').ok_or_else(bad)?;
        let (mac, ipv4) = rest.split_once('@').ok_or_else(bad)?;
        if name.is_empty() || mac.is_empty() || ipv4.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            name: name.trim().into(),
            mac: mac.trim().to_lowercase(),
            ipv4: ipv4.trim().into(),
            voter,
        })
    }
}

/// A contract being changed.
#[derive(Debug, Clone)]
pub struct ContractEdit {
    path: PathBuf,
    /// The document as it will be written.
    pub config: ClusterConfig,
}

impl ContractEdit {
    /// Loads (and validates) the contract at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let c = Contract::load(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            config: c.config,
        })
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut NodeConfig> {
        let known: Vec<String> = self.config.nodes.iter().map(|n| n.name.clone()).collect();
        self.config
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "{name} is not in the contract (nodes: {})",
                    known.join(", ")
                ))
            })
    }

    /// Does the contract hold `n` already, exactly as asked: its name with the same MAC,
    /// address and voter role? (What an earlier `grow` that stopped after its contract edit
    /// leaves behind.)
    pub fn holds(&self, n: &NewNode) -> bool {
        let voter = self.config.initial_voters.contains(&n.name);
        self.config.nodes.iter().any(|x| {
            x.name == n.name
                && x.mac.eq_ignore_ascii_case(&n.mac)
                && x.ipv4 == n.ipv4
                && x.roles.contains(&Role::ControlPlane) == n.voter
                && voter == n.voter
        })
    }

    /// Adds a node (at the end of the contract).
    pub fn add_node(&mut self, n: &NewNode) -> Result<()> {
        if self.config.nodes.iter().any(|x| x.name == n.name) {
            return Err(Error::Config(format!(
                "{} is in the contract already; `rackctl replace {} --mac MAC` gives a name to a new machine",
                n.name, n.name
            )));
        }
        self.config.nodes.push(NodeConfig {
            name: n.name.clone(),
            mac: n.mac.clone(),
            ipv4: n.ipv4.clone(),
            roles: vec![if n.voter {
                Role::ControlPlane
            } else {
                Role::Worker
            }],
            disk: None,
            ports: None,
            labels: Default::default(),
        });
        if n.voter {
            self.config.initial_voters.push(n.name.clone());
        }
        Ok(())
    }

    /// Gives node `name` a new boot MAC (a new machine takes the name).
    pub fn set_mac(&mut self, name: &str, mac: &str) -> Result<()> {
        self.node_mut(name)?.mac = mac.trim().to_lowercase();
        Ok(())
    }

    /// Makes an existing node a voter: role `control-plane`, listed in `initial_voters` (in
    /// `at`'s place when given, else at the end).
    pub fn make_voter(&mut self, name: &str, at: Option<&str>) -> Result<()> {
        let node = self.node_mut(name)?;
        if !node.roles.contains(&Role::ControlPlane) {
            node.roles.push(Role::ControlPlane);
            node.roles.sort();
        }
        if self.config.initial_voters.iter().any(|v| v == name) {
            return Ok(());
        }
        match at.and_then(|a| self.config.initial_voters.iter().position(|v| v == a)) {
            Some(i) => self.config.initial_voters.insert(i, name.into()),
            None => self.config.initial_voters.push(name.into()),
        }
        Ok(())
    }

    /// Removes a node (and its place among the voters).
    pub fn remove_node(&mut self, name: &str) -> Result<()> {
        self.node_mut(name)?;
        self.config.nodes.retain(|n| n.name != name);
        self.config.initial_voters.retain(|v| v != name);
        Ok(())
    }

    /// Validates the document as it stands.
    pub fn validate(&self) -> Result<Contract> {
        Ok(Contract::from_config(
            self.config.clone(),
            &format!("{} (as changed)", self.path.display()),
        )?)
    }

    /// Writes the document to `path` in one step (after validating it).
    pub fn write_to(&self, path: &Path) -> Result<Contract> {
        let contract = self.validate()?;
        write_atomic(path, contract.to_json().as_bytes())?;
        Ok(contract)
    }

    /// Writes the document over the file it came from.
    pub fn save(&self) -> Result<Contract> {
        self.write_to(&self.path.clone())
    }
}

/// Writes `path` through a temporary sibling, fsynced, renamed over it, directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.rackctl-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(bytes).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(Error::io(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(dir: &Path) -> PathBuf {
        let text = serde_json::json!({
            "version": 2,
            "cluster": {"name": "t", "id": "t-1"},
            "boot_server": {"address": "10.0.0.1"},
            "initial_voters": ["node01", "node02", "node03"],
            "nodes": (1..=3).map(|i| serde_json::json!({
                "name": format!("node{i:02}"),
                "mac": format!("52:54:00:00:00:{i:02x}"),
                "ipv4": format!("10.0.0.{}", 10 + i),
                "roles": ["control-plane"],
            })).collect::<Vec<_>>(),
        });
        let p = dir.join("cluster-config.json");
        std::fs::write(&p, text.to_string()).expect("write");
        p
    }

    #[test]
    fn new_nodes_parse_or_say_the_shape() {
        let n = NewNode::parse("node04=52:54:00:AA:00:04@10.0.0.14", false).expect("parses");
        assert_eq!(n.mac, "52:54:00:aa:00:04");
        assert_eq!(n.ipv4, "10.0.0.14");
        let e = NewNode::parse("node04@10.0.0.14", false).unwrap_err();
        assert!(e.to_string().contains("NAME=MAC@IPV4"), "{e}");
    }

    #[test]
    fn changes_are_validated_and_written_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = contract(dir.path());
        let mut e = ContractEdit::load(&path).expect("loads");
        e.add_node(&NewNode::parse("node04=52:54:00:00:00:04@10.0.0.14", false).expect("p"))
            .expect("adds");
        e.save().expect("saves");
        let c = Contract::load(&path).expect("valid");
        assert_eq!(c.nodes.len(), 4);
        assert!(!c.node("node04").expect("there").voter);

        // One voter more: four voters is not a valid contract, nothing is written.
        let mut e = ContractEdit::load(&path).expect("loads");
        e.make_voter("node04", None).expect("edits");
        let err = e.save().unwrap_err().to_string();
        assert!(err.contains("initial_voters"), "{err}");
        assert_eq!(Contract::load(&path).expect("valid").voters().len(), 3);

        // A duplicate MAC is refused with the contract's own message.
        let mut e = ContractEdit::load(&path).expect("loads");
        e.set_mac("node04", "52:54:00:00:00:01").expect("edits");
        let err = e.save().unwrap_err().to_string();
        assert!(err.contains("duplicate"), "{err}");

        // A voter retired with a worker promoted in its place keeps three voters, in order.
        let mut e = ContractEdit::load(&path).expect("loads");
        e.make_voter("node04", Some("node02")).expect("edits");
        e.remove_node("node02").expect("removes");
        let c = e.save().expect("saves");
        assert_eq!(c.config.initial_voters, ["node01", "node04", "node03"]);
        assert!(e
            .add_node(&NewNode::parse("node01=52:54:00:00:00:09@10.0.0.19", false).expect("p"))
            .is_err());
    }
}
