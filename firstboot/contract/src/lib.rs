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
//! - [`schema`]: the JSON Schemas generated from the types (committed, checked for drift);
//! - an older version is answered with what to change (`migrate`).
//!
//! The crate does no network I/O; it reads files only where a function says so.

pub mod error;
pub mod identity;
pub mod manifest;
mod migrate;
pub mod schema;
mod validate;
pub mod wire;

pub use error::{ContractError, Problem};
pub use identity::{IdentitySources, IDENTITY_FILE, KERNEL_NODE_PARAM};
pub use validate::{voter_count_for_rack, Contract, MacAddr, NodeSpec};
pub use wire::{
    ClusterConfig, DiskLayout, Filesystem, IamAdmin, PkiSettings, Ports, Role, CONTRACT_VERSION,
};

/// Where the contract lives on a node (the overlay initrd puts it there).
pub const DEFAULT_CONTRACT_PATH: &str = "/etc/plasmacloud/cluster-config.json";

/// Where the enrollment initrd (served by pxe-server for one boot of one node) puts its files
/// on the node: [`ENROLL_TOKEN_FILE`] and [`ENROLL_CA_FILE`].
pub const ENROLL_DIR: &str = "/etc/plasmacloud/enroll";
/// The single-use enrollment token of this boot (hex, one line), inside [`ENROLL_DIR`].
pub const ENROLL_TOKEN_FILE: &str = "token";
/// The cluster CA certificate (PEM) the token came with, inside [`ENROLL_DIR`].
pub const ENROLL_CA_FILE: &str = "ca.crt";
/// The directory under a node's state directory that holds its key (`node.key`, 0600), its
/// certificate (`node.crt`) and the cluster CA (`ca.crt`).
pub const NODE_PKI_DIR: &str = "pki";
