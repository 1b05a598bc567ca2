//! `cluster-config.json` as written: the serde types of the file.
//!
//! These types are deliberately lenient where a typo is likely (MACs and addresses are strings,
//! ports are wide integers), so that such mistakes become semantic [`crate::Problem`]s, reported
//! all at once with their paths, rather than one serde error at a time. Unknown fields are
//! always refused.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The contract version this crate reads and writes. Version 1 carried paths of secrets (TLS
/// keys, an IAM password file) that travelled in the nodes' overlays; version 2 carries no
/// secret at all: nodes make their keys at enrollment, and the IAM admin is a password hash.
pub const CONTRACT_VERSION: u32 = 2;

/// One cluster: its identity, its nodes, its voters, its ports. Public data: it holds no
/// secret, and every node's overlay carries all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Contract format version; this release reads `2` (and tells a `1` what to change).
    pub version: u32,
    /// Cluster name and id.
    pub cluster: ClusterIdentity,
    /// The PXE/HTTP boot server, which also receives the nodes' phase reports.
    pub boot_server: BootServer,
    /// Service ports of every node (defaults from the service graph); a node may override.
    #[serde(default)]
    pub ports: Ports,
    /// Names of the control-plane nodes that form the initial Raft voter set (1, 3 or 5).
    /// The first one is the seed: it bootstraps the clusters and seeds IAM.
    pub initial_voters: Vec<String>,
    /// The cluster CA (pxe-server's; every service port speaks mutual TLS with it).
    #[serde(default)]
    pub pki: PkiSettings,
    /// IAM bootstrap settings.
    #[serde(default)]
    pub iam: IamSettings,
    /// Every node of the cluster.
    pub nodes: Vec<NodeConfig>,
}

/// Cluster name and id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterIdentity {
    /// Human name: lowercase letters, digits and `-`, 1 to 63 characters.
    pub name: String,
    /// Stable unique id: lowercase letters, digits and `-`, 1 to 63 characters. Nodes refuse
    /// to join a cluster whose id differs.
    pub id: String,
}

/// The provisioning server as the nodes see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootServer {
    /// IPv4 address of the boot server on the boot network.
    pub address: String,
    /// HTTP port of the boot plane (iPXE scripts, kernels, initrds).
    #[serde(default = "default_boot_http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub http_port: u64,
    /// Port of the management listener (status API, phase reports).
    #[serde(default = "default_boot_management_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub management_port: u64,
    /// Port of the enrollment endpoint (HTTPS with the cluster CA): nodes send a CSR and their
    /// single-use boot token there and get their certificate.
    #[serde(default = "default_boot_enrollment_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub enrollment_port: u64,
}

fn default_boot_http_port() -> u64 {
    8081
}
fn default_boot_management_port() -> u64 {
    8082
}
fn default_boot_enrollment_port() -> u64 {
    8443
}

/// Service ports. Every field defaults to the design's service graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    /// Chainfire client API.
    #[serde(default = "p2379")]
    #[schemars(range(min = 1, max = 65535))]
    pub chainfire_api: u64,
    /// Chainfire Raft RPC.
    #[serde(default = "p2380")]
    #[schemars(range(min = 1, max = 65535))]
    pub chainfire_raft: u64,
    /// Chainfire gossip (reserved).
    #[serde(default = "p2381")]
    #[schemars(range(min = 1, max = 65535))]
    pub chainfire_gossip: u64,
    /// FlareDB client API.
    #[serde(default = "p2479")]
    #[schemars(range(min = 1, max = 65535))]
    pub flaredb_api: u64,
    /// FlareDB Raft RPC.
    #[serde(default = "p2480")]
    #[schemars(range(min = 1, max = 65535))]
    pub flaredb_raft: u64,
    /// IAM API.
    #[serde(default = "p8080")]
    #[schemars(range(min = 1, max = 65535))]
    pub iam_api: u64,
}

fn p2379() -> u64 {
    2379
}
fn p2380() -> u64 {
    2380
}
fn p2381() -> u64 {
    2381
}
fn p2479() -> u64 {
    2479
}
fn p2480() -> u64 {
    2480
}
fn p8080() -> u64 {
    8080
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            chainfire_api: p2379(),
            chainfire_raft: p2380(),
            chainfire_gossip: p2381(),
            flaredb_api: p2479(),
            flaredb_raft: p2480(),
            iam_api: p8080(),
        }
    }
}

impl Ports {
    /// `(field name, value)` for every port, in declaration order.
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("chainfire_api", self.chainfire_api),
            ("chainfire_raft", self.chainfire_raft),
            ("chainfire_gossip", self.chainfire_gossip),
            ("flaredb_api", self.flaredb_api),
            ("flaredb_raft", self.flaredb_raft),
            ("iam_api", self.iam_api),
        ]
    }
}

/// Per-node port overrides; an absent field keeps the cluster's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortOverrides {
    /// Chainfire client API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chainfire_api: Option<u64>,
    /// Chainfire Raft RPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chainfire_raft: Option<u64>,
    /// Chainfire gossip (reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chainfire_gossip: Option<u64>,
    /// FlareDB client API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flaredb_api: Option<u64>,
    /// FlareDB Raft RPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flaredb_raft: Option<u64>,
    /// IAM API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_api: Option<u64>,
}

impl PortOverrides {
    /// Names of the fields this override sets.
    pub fn fields_set(&self) -> Vec<&'static str> {
        [
            ("chainfire_api", self.chainfire_api),
            ("chainfire_raft", self.chainfire_raft),
            ("chainfire_gossip", self.chainfire_gossip),
            ("flaredb_api", self.flaredb_api),
            ("flaredb_raft", self.flaredb_raft),
            ("iam_api", self.iam_api),
        ]
        .into_iter()
        .filter_map(|(f, v)| v.map(|_| f))
        .collect()
    }

    /// The cluster's ports with these overrides applied.
    pub fn apply(&self, base: &Ports) -> Ports {
        Ports {
            chainfire_api: self.chainfire_api.unwrap_or(base.chainfire_api),
            chainfire_raft: self.chainfire_raft.unwrap_or(base.chainfire_raft),
            chainfire_gossip: self.chainfire_gossip.unwrap_or(base.chainfire_gossip),
            flaredb_api: self.flaredb_api.unwrap_or(base.flaredb_api),
            flaredb_raft: self.flaredb_raft.unwrap_or(base.flaredb_raft),
            iam_api: self.iam_api.unwrap_or(base.iam_api),
        }
    }
}

/// The cluster CA as the contract knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PkiSettings {
    /// SHA-256 of the cluster CA certificate (DER), 64 lowercase hex digits, as
    /// `pxe-server pki show` prints it. When set, nodes refuse an enrollment CA that does not
    /// match, and pxe-server refuses to serve with another CA. Absent: nodes trust the CA that
    /// came with their enrollment token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_sha256: Option<String>,
}

/// IAM bootstrap settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IamSettings {
    /// The first administrator, created once by the seed. Absent: no administrator is
    /// created at first boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<IamAdmin>,
}

/// The first IAM administrator: a name and an argon2id password hash (never a password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IamAdmin {
    /// User name: 1-64 of lowercase letters, digits, `.`, `_`, `-`, starting with a letter or
    /// digit.
    pub username: String,
    /// argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`); make one with
    /// `iam-server hash-password` (reads the password from stdin).
    pub password_hash: String,
}

/// What a node does in the cluster.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs the Raft stores; may be an initial voter.
    ControlPlane,
    /// Joins the stores as a non-voting learner; runs application services.
    Worker,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name and hostname: lowercase letters, digits and `-`, 1 to 63 characters.
    pub name: String,
    /// MAC address of the boot interface, six hex pairs separated by `:`.
    pub mac: String,
    /// IPv4 address of the node on the cluster network.
    pub ipv4: String,
    /// At least one of `control-plane`, `worker`.
    pub roles: Vec<Role>,
    /// The Raft data disk. Absent: the data directory is used as it is (process racks, nodes
    /// with a disk prepared otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskLayout>,
    /// Port overrides for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortOverrides>,
    /// Free-form labels (rack, row, …), carried to the services as they are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The Raft data disk, described the way disko does: a whole disk, a GPT with one partition,
/// a filesystem with a PlasmaCloud label, a mount point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskLayout {
    /// The whole disk, e.g. `/dev/vdb` or `/dev/disk/by-id/…`.
    pub device: String,
    /// Filesystem of the data partition.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Filesystem and GPT partition label; at most 16 characters.
    #[serde(default = "default_disk_label")]
    pub label: String,
    /// Where the filesystem is mounted; under `/var/lib`.
    #[serde(default = "default_mount_point")]
    pub mount_point: String,
    /// May a disk holding someone else's data (another filesystem or partition table) be wiped?
    /// A disk that already carries our label is never reformatted, whatever this says.
    #[serde(default)]
    pub wipe_foreign: bool,
}

fn default_disk_label() -> String {
    "plasmacloud".to_string()
}
fn default_mount_point() -> String {
    "/var/lib/plasmacloud".to_string()
}

/// Filesystems the disk step can make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    /// ext4 (the default).
    #[default]
    Ext4,
    /// XFS.
    Xfs,
}

impl Filesystem {
    /// The name `mkfs.NAME` and `blkid` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}
