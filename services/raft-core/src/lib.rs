//! The Raft core shared by Chainfire and FlareDB.
//!
//! - [`log_store`] and [`state_machine`]: openraft 0.9 (`storage-v2`) storage on one RocksDB
//!   database; every log append and vote is written with `sync = true` before openraft is told
//!   it is durable. Snapshots are built every [`NodeConfig::snapshot_logs`] entries and the log
//!   is purged behind them, so a node that joins late or falls far behind catches up by
//!   snapshot. [`snapshot_store`] keeps snapshots as files, built, received and installed as
//!   streams (crash-safe, never whole in memory).
//! - [`network`]: Raft RPC as JSON over HTTP on the Raft port (axum server, reqwest client),
//!   with the target's id and data-directory incarnation on every request.
//! - [`bounds`]: the bounds on both ports (handshake, header and idle timeouts, body caps and
//!   deadlines, connections, Raft requests per peer) and the ports' one accept loop.
//! - [`access`]: who may call what — mutual TLS on both ports with the node's certificate,
//!   node-only Raft, public `/health`, `/readyz` and `/metrics`, FlareDB's node-only namespaces.
//! - [`metrics`]: the series served at `/metrics` (Raft, the log's syncs, API requests).
//! - [`retention`]: FlareDB's time-series retention — the leader proposes a trim of points
//!   older than the retention by its clock, applied identically on every replica.
//! - [`revocation`]: the revoked serials (Chainfire `pki/revoked/`) every node refuses,
//!   re-read every two seconds.
//! - [`proposer`]: client writes, batched into single entries while earlier ones are in
//!   flight (one fsync and one replicated entry for many concurrent writes).
//! - [`handover`]: a leader hands its leadership to the most caught-up voter before it stops
//!   (SIGTERM) or when asked (`POST /v1/cluster/leader`).
//! - [`durability`]: the leader syncs its own log beside replication; applying an entry and
//!   telling followers it is committed wait for that sync.
//! - [`node`]: starting a node (data directory, listeners, Raft, TLS, sd-notify, role logging);
//!   a node whose Raft stops on a storage error exits non-zero, for its service manager to
//!   start it again from its data, and [`space`] holds a start until the data disk has room.
//! - [`cluster_view`]: the role and the members as this node sees them (for `node` and `api`).
//! - [`serve`]: the body of both servers' `main`: shared flags and their environment
//!   variables, logs, `--config` merge, `--check`, exit codes.
//! - [`api`]: the HTTP API both services share: `/health`, `/readyz?verbose`, the membership
//!   calls under `/v1/cluster`, and the revisioned key-value handlers (Chainfire mounts them at
//!   `/v1/kv`, FlareDB per namespace at `/v1/ns/{ns}/kv`) plus FlareDB's time series; one
//!   module per resource under `api/`.
//! - [`config`] (the `--config` file and the flag merge), [`datadir`] (the data directory's
//!   marker, `node_id` and incarnation), [`db`] (the RocksDB column families), [`types`], and
//!   [`Error`] (in [`error`]).
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

pub mod access;
pub mod api;
pub mod bounds;
pub mod cluster_view;
pub mod config;
pub mod datadir;
pub mod db;
pub mod durability;
pub mod error;
pub mod handover;
pub mod log_store;
pub mod metrics;
pub mod network;
pub mod node;
pub mod proposer;
pub mod retention;
pub mod revocation;
pub mod serve;
pub mod snapshot_store;
pub mod space;
pub mod state_machine;
pub mod types;

pub use error::Error;
pub use node::{NodeConfig, StoreNode};
pub use types::{NodeId, NodeInfo, Raft, TypeConfig};
