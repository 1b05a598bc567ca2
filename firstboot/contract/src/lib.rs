//! The cluster contract: `cluster-config.json`, and the bundle manifest that the image builder
//! writes and the PXE server reads.
//!
//! Every program of the appliance that reads either file goes through this crate, so there is
//! exactly one definition of the format, one set of rules, and one wording of every error:
//!
//! - [`wire`]: the serde types of the file as written (`deny_unknown_fields`, a `version`);
//! - [`Contract::parse`] / [`Contract::load`]: parse, then check every semantic rule and report
//!   *all* problems at once, each naming its JSON path and what would be valid;
//! - [`Contract`]: the validated view (typed MACs and addresses, ports resolved per node, the
//!   voter set and the seed rule);
//! - [`identity`]: which node am I (`plasmacloud.node=` on the kernel command line, then the
//!   overlay's identity file, then a local MAC);
//! - [`manifest`]: the bundle manifest (`manifest.json`) types;
//! - [`schema`]: the JSON Schemas generated from the types (committed, checked for drift).
//!
//! The crate does no network I/O; it reads files only where a function says so.

pub mod error;
pub mod identity;
pub mod manifest;
pub mod schema;
mod validate;
pub mod wire;

pub use error::{ContractError, Problem};
pub use identity::{IdentitySources, IDENTITY_FILE, KERNEL_NODE_PARAM};
pub use validate::{voter_count_for_rack, Contract, MacAddr, NodeSpec};
pub use wire::{ClusterConfig, DiskLayout, Filesystem, Ports, Role, CONTRACT_VERSION};

/// Where the contract lives on a node (the overlay initrd puts it there).
pub const DEFAULT_CONTRACT_PATH: &str = "/etc/plasmacloud/cluster-config.json";
