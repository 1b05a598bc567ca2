//! The Raft type configuration, the node record kept in the membership, and the commands the
//! state machine applies.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Raft node ids (never reused within a cluster).
pub type NodeId = u64;

/// What the membership stores about a node: both addresses and the incarnation of its data
/// directory, so traffic meant for a wiped node's predecessor is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `ip:port` of the Raft listener.
    pub raft_addr: String,
    /// `ip:port` of the API listener.
    pub api_addr: String,
    /// Random id of the data directory, created with it.
    pub incarnation: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft={} api={} incarnation={}",
            self.raft_addr, self.api_addr, self.incarnation
        )
    }
}

/// A compare-and-swap condition carried in a write command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cond {
    /// The key's modification revision must equal this.
    Revision(u64),
    /// The key must not exist.
    Absent,
    /// The key must exist.
    Exists,
}

/// A state-machine command (the Raft log's application data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Store `value` under `key` in key space `ks` (`""` is Chainfire's; FlareDB uses the
    /// namespace name).
    Put {
        /// Key space.
        ks: String,
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Optional compare-and-swap condition.
        cond: Option<Cond>,
    },
    /// Delete `key` in `ks`, optionally only at a revision.
    Delete {
        /// Key space.
        ks: String,
        /// Key.
        key: String,
        /// Only delete if the key's revision equals this.
        prev_revision: Option<u64>,
    },
    /// Append time-series points (a point at an existing timestamp replaces it).
    TsAppend {
        /// Series name.
        series: String,
        /// `(unix ms, value)` pairs.
        points: Vec<(i64, f64)>,
    },
    /// Drops every time-series point with `t < before` (unix ms), in every series: FlareDB's
    /// retention. The leader computes `before` from its clock and proposes it
    /// ([`crate::retention`]), so every replica drops exactly the same points.
    TsTrim {
        /// Points older than this (unix ms) go.
        before: i64,
    },
    /// Several commands proposed together, applied in order at one log index (so they share
    /// its revision). The proposer never puts two writes to one key in a batch, so a key's
    /// revision still names exactly one write.
    Batch(Vec<Command>),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { ks, key, cond, .. } => write!(f, "put {ks}/{key} {cond:?}"),
            Command::Delete {
                ks,
                key,
                prev_revision,
            } => write!(f, "delete {ks}/{key} {prev_revision:?}"),
            Command::TsAppend { series, points } => {
                write!(f, "ts append {series} ({} points)", points.len())
            }
            Command::TsTrim { before } => write!(f, "ts trim before {before}"),
            Command::Batch(cmds) => write!(f, "batch of {}", cmds.len()),
        }
    }
}

/// What applying a command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Whether the condition held and the command took effect.
    pub ok: bool,
    /// On success the revision of this write (the log index); on a failed condition the key's
    /// current revision (0 when absent).
    pub revision: u64,
    /// Delete: whether the key existed.
    pub deleted: bool,
    /// Time series: points stored (a trim: the series it dropped points of).
    pub count: u64,
    /// A batch: the result of each of its commands, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<CommandResult>,
}

openraft::declare_raft_types!(
    /// The openraft type configuration of both stores.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of this configuration.
pub type Raft = openraft::Raft<TypeConfig>;
/// Log id.
pub type LogId = openraft::LogId<NodeId>;
/// Vote.
pub type Vote = openraft::Vote<NodeId>;
/// Stored membership.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// Storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// Log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// Snapshot meta.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
/// Snapshot.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// Metrics.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;
