//! The Raft core shared by Chainfire and FlareDB.
//!
//! - [`log_store`] and [`state_machine`]: openraft 0.9 (`storage-v2`) storage on one RocksDB
//!   database; every log append and vote is written with `sync = true` before openraft is told
//!   it is durable. Snapshots are built every [`NodeConfig::snapshot_logs`] entries and the log
//!   is purged behind them, so a node that joins late or falls far behind catches up by
//!   snapshot.
//! - [`network`]: Raft RPC as JSON over HTTP on the Raft port (axum server, reqwest client),
//!   with the target's id and data-directory incarnation on every request.
//! - [`proposer`]: client writes, batched into single entries while earlier ones are in
//!   flight (one fsync and one replicated entry for many concurrent writes).
//! - [`node`]: starting a node (data directory, listeners, Raft, TLS, sd-notify, role logging).
//! - [`serve`]: the body of both servers' `main`: shared flags and their environment
//!   variables, logs, `--config` merge, `--check`, exit codes.
//! - [`api`]: the HTTP API both services share: `/health`, `/readyz?verbose`, the membership
//!   calls under `/v1/cluster`, and the revisioned key-value handlers (Chainfire mounts them at
//!   `/v1/kv`, FlareDB per namespace at `/v1/ns/{ns}/kv`) plus FlareDB's time series.
//!
//! # Followers forward
//!
//! A follower (or learner) that receives a write, a linearizable read or a membership change
//! **forwards it to the leader** and relays the leader's answer; it never answers 307. When no
//! leader is known, or the leader cannot be reached, it answers 503 with `"retryable": true`
//! (the request was certainly not applied). `plasmacloud-store-client` retries those on another
//! endpoint and also follows 307/308, so a future redirecting server stays compatible.
//! `GET …?consistency=serializable` reads the local replica without going to the leader.
//!
//! # Node ids are never reused
//!
//! Each data directory gets a random *incarnation* when it is created. The membership stores
//! it with the node's addresses, the state machine remembers every id the cluster ever had, and
//! a node refuses Raft traffic addressed to another incarnation. So a node whose data directory
//! was wiped comes back pristine and stays out: adding it as a learner under its old id is
//! refused (409, naming the rule), and it must join under a new id. `<data-dir>/node_id` keeps
//! the id once assigned, so `--id` is optional after the first start.

// openraft's StorageError and axum's Response are large by design; boxing them everywhere
// would only add noise on paths that are not hot.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;

pub mod api;
pub mod config;
pub mod datadir;
pub mod db;
pub mod log_store;
pub mod network;
pub mod node;
pub mod proposer;
pub mod serve;
pub mod state_machine;
pub mod types;

pub use node::{NodeConfig, StoreNode, TlsConfig};
pub use types::{NodeId, NodeInfo, Raft, TypeConfig};

/// Errors of starting or running a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is wrong; the message names the flag and the fix.
    #[error("configuration: {0}")]
    Config(String),
    /// The data directory is foreign, damaged or unusable; nothing in it was changed.
    #[error("data directory {path}: {problem}")]
    DataDir {
        /// The offending path.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// `--id` disagrees with the id stored in the data directory.
    #[error("{path} says this node is id {stored}, but --id {given} was given; ids are never reused or changed — drop --id, or use a fresh data directory for a new id")]
    IdMismatch {
        /// The node_id file.
        path: PathBuf,
        /// Its id.
        stored: NodeId,
        /// The flag's id.
        given: NodeId,
    },
    /// A listener could not bind (port in use, address not local).
    #[error(
        "cannot listen on {which} address {addr}: {source} (is another process using the port?)"
    )]
    Bind {
        /// `api` or `raft`.
        which: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The Raft core failed.
    #[error("raft: {0}")]
    Raft(String),
}

impl Error {
    /// The process exit code for this error: 2 for configuration and data-directory problems
    /// (retrying will not help), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::DataDir { .. } | Error::IdMismatch { .. } | Error::Tls(_) => {
                2
            }
            _ => 1,
        }
    }
}
