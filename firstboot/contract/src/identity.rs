//! Finding *self*: which node of the contract is this machine?
//!
//! Precedence (the design's "Interfaces decided"): `plasmacloud.node=NAME` on the kernel command
//! line, then the overlay's identity file ([`IDENTITY_FILE`], which holds the node name), then a
//! MAC address of a local interface. A name that is given but unknown is an error, never a
//! fall-through: a typo on the command line must not silently boot some other node's identity.

use std::path::{Path, PathBuf};

use crate::error::ContractError;
use crate::validate::{Contract, MacAddr, NodeSpec};

/// Kernel command line parameter naming the node.
pub const KERNEL_NODE_PARAM: &str = "plasmacloud.node";

/// The identity file the overlay initrd carries: the node name and a newline.
pub const IDENTITY_FILE: &str = "/etc/plasmacloud/node";

/// What can tell us who we are. Build it from the system with [`IdentitySources::from_system`],
/// or by hand in tests.
#[derive(Debug, Clone, Default)]
pub struct IdentitySources {
    /// An explicit name (a `--node` flag); wins over everything.
    pub explicit: Option<String>,
    /// The kernel command line, as read.
    pub cmdline: Option<String>,
    /// Where the command line came from (for messages).
    pub cmdline_origin: String,
    /// Contents of the identity file, if it exists.
    pub identity_file: Option<String>,
    /// Where the identity file was looked for.
    pub identity_origin: String,
    /// MACs of local interfaces, with their interface names.
    pub macs: Vec<(String, MacAddr)>,
}

impl IdentitySources {
    /// Reads `/proc/cmdline`, [`IDENTITY_FILE`] and `/sys/class/net/*/address` under `root`
    /// (`/` on a node; a temporary directory in tests).
    pub fn from_system(root: &Path, explicit: Option<String>) -> Self {
        let cmdline_path = root.join("proc/cmdline");
        let identity_path = root.join(IDENTITY_FILE.trim_start_matches('/'));
        Self {
            explicit,
            cmdline: std::fs::read_to_string(&cmdline_path).ok(),
            cmdline_origin: cmdline_path.display().to_string(),
            identity_file: std::fs::read_to_string(&identity_path).ok(),
            identity_origin: identity_path.display().to_string(),
            macs: local_macs(&root.join("sys/class/net")),
        }
    }
}

/// `plasmacloud.node=NAME` from a kernel command line.
pub fn node_from_cmdline(cmdline: &str) -> Option<&str> {
    cmdline.split_whitespace().find_map(|arg| {
        arg.strip_prefix(KERNEL_NODE_PARAM)
            .and_then(|rest| rest.strip_prefix('='))
            .filter(|v| !v.is_empty())
    })
}

fn local_macs(sys_class_net: &Path) -> Vec<(String, MacAddr)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(sys_class_net) else {
        return out;
    };
    for entry in dir.flatten() {
        let iface = entry.file_name().to_string_lossy().into_owned();
        let addr: PathBuf = entry.path().join("address");
        if let Ok(text) = std::fs::read_to_string(addr) {
            if let Ok(mac) = text.trim().parse::<MacAddr>() {
                if mac.0 != [0; 6] {
                    out.push((iface, mac));
                }
            }
        }
    }
    out.sort();
    out
}

impl Contract {
    /// Finds this machine's node entry from `sources`, in the documented precedence.
    pub fn find_self(&self, sources: &IdentitySources) -> Result<&NodeSpec, ContractError> {
        if let Some(name) = &sources.explicit {
            return self.node(name);
        }
        if let Some(name) = sources.cmdline.as_deref().and_then(node_from_cmdline) {
            return self.node(name);
        }
        if let Some(text) = &sources.identity_file {
            let name = text.trim();
            if !name.is_empty() {
                return self.node(name);
            }
        }
        if let Some(node) = sources
            .macs
            .iter()
            .find_map(|(_, mac)| self.node_by_mac(*mac))
        {
            return Ok(node);
        }
        let cmdline = match &sources.cmdline {
            Some(_) => format!("no {KERNEL_NODE_PARAM}= in {}", sources.cmdline_origin),
            None => format!("{} unreadable", sources.cmdline_origin),
        };
        let identity = match &sources.identity_file {
            Some(_) => format!("{} is empty", sources.identity_origin),
            None => format!("no {}", sources.identity_origin),
        };
        let macs = if sources.macs.is_empty() {
            "no local interface with a MAC".to_string()
        } else {
            format!(
                "local MACs {} match no node",
                sources
                    .macs
                    .iter()
                    .map(|(i, m)| format!("{i}={m}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(ContractError::SelfNotFound {
            cluster: self.name().to_string(),
            looked_at: format!(
                "{cmdline}; {identity}; {macs} (fix: boot with {KERNEL_NODE_PARAM}=NAME, or add this machine's MAC to the contract)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_parameter_is_found_among_others() {
        assert_eq!(
            node_from_cmdline("init=/init console=ttyS0 plasmacloud.node=node02 quiet\n"),
            Some("node02")
        );
        assert_eq!(
            node_from_cmdline("plasmacloud.nodes=x plasmacloud.node="),
            None
        );
    }
}
