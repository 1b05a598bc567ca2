//! `rackctl`: the operator's tool for a rack's life after its first boot — status, grow,
//! replace, rolling re-image, retire — and the library the VM harness drives the same way.
//!
//! It speaks to the cluster (Chainfire, FlareDB, the nodes' `/health`) and to pxe-server's
//! management listener with an operator certificate (`pxe-server pki issue --operator NAME`),
//! edits the contract through `plasmacloud-contract` (nothing invalid is ever written),
//! re-bundles with `netboot-image` and swaps the bundle in under pxe-server atomically.
//!
//! The rules every operation keeps:
//! - **one membership change at a time**, each waited for before the next, and **never below
//!   quorum** ([`cluster`] checks before each change);
//! - **one operation at a time**: every operation that changes the rack holds the rollout lock
//!   in Chainfire ([`lock`]), so two rollouts, or a rollout and a human's reboot, never run
//!   together;
//! - **nodes reboot themselves**: a rollout writes reboot requests, and each node's agent
//!   (`firstboot reboot-agent`) reboots when it holds a slot ([`firstboot::reboots`]);
//! - **a failed health gate stops a rollout**, leaving the lock held and saying why.
//!
//! Modules, bottom up: [`operator`] (the certificate and the clients), [`contract_edit`],
//! [`bundle`] (re-bundle, swap), [`boot_view`] (what pxe-server says each node booted),
//! [`certs`] (expiry, the issued log, revocation), [`cluster`] (members, health, changes),
//! [`lock`]; then the operations, which never import each other: [`status`], [`grow`],
//! [`replace`], [`retire`], [`rollout`]; [`ctl`] ties them to one rack.

pub mod boot_view;
pub mod bundle;
pub mod certs;
pub mod cluster;
pub mod contract_edit;
pub mod ctl;
pub mod grow;
pub mod lock;
pub mod operator;
pub mod replace;
pub mod retire;
pub mod rollout;
pub mod status;

use std::path::PathBuf;
use std::time::Duration;

pub use ctl::{Ctl, CtlConfig, Operation};

/// Everything an operation can fail with; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or an input is wrong; the message names it and the fix.
    #[error("{0}")]
    Config(String),
    /// The contract (as it is, or as the change would make it) is invalid.
    #[error("{0}")]
    Contract(Box<plasmacloud_contract::ContractError>),
    /// The operator certificate cannot be used.
    #[error("operator certificate: {0}")]
    Tls(String),
    /// A store call failed.
    #[error("{what}: {source}")]
    Store {
        /// The call.
        what: String,
        /// The store client's error.
        #[source]
        source: Box<plasmacloud_store_client::Error>,
    },
    /// A coordination key could not be read or written.
    #[error("{0}")]
    Coordination(#[from] firstboot::reboots::CoordinationError),
    /// Another operation holds the rollout lock.
    #[error("{}", lock_held_message(.0))]
    LockHeld(Box<lock::LockRecord>),
    /// The lock was taken over or removed while this operation ran; it stopped.
    #[error("the rollout lock was lost while {0} ran (removed by `--abort`, or taken over after its lease lapsed); stopped")]
    LockLost(String),
    /// A change would leave a store below quorum, or a store has no leader now.
    #[error("quorum: {0}")]
    Quorum(String),
    /// The stores cannot do this yet.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Building or swapping a bundle failed.
    #[error("bundle: {0}")]
    Bundle(String),
    /// A wait ran out.
    #[error("gave up after {after:?} waiting for {what}: {detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline.
        after: Duration,
        /// The last thing seen.
        detail: String,
    },
    /// A rollout stopped at a node that failed its health gate.
    #[error("{0}")]
    RolloutStopped(Box<Stopped>),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Revoking a certificate failed.
    #[error("revocation: {0}")]
    Revoke(String),
}

impl From<plasmacloud_contract::ContractError> for Error {
    fn from(e: plasmacloud_contract::ContractError) -> Self {
        Error::Contract(Box::new(e))
    }
}

/// Where a rollout stopped.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// The node that failed its health gate.
    pub node: String,
    /// Why.
    pub reason: String,
    /// Nodes rebooted into the new bundle.
    pub done: Vec<String>,
    /// Nodes not asked to reboot.
    pub pending: Vec<String>,
    /// The lock's id.
    pub lock_id: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rollout stopped: {node} did not pass its health gate: {reason}\n  done: {}\n  not started: {}\n  the rollout lock stays held (id {id}, state stopped): fix {node}, then `rackctl rollout --abort` releases the lock, and the same rollout again skips the nodes already on the new bundle",
            list(&self.done),
            list(&self.pending),
            node = self.node,
            reason = self.reason,
            id = self.lock_id,
        )
    }
}

fn lock_held_message(r: &lock::LockRecord) -> String {
    format!(
        "the rollout lock is held by {} for {:?} since {} ({}, id {}); wait for it, or run `rackctl rollout --abort` if it is stopped or its holder is gone",
        r.holder,
        r.what,
        utc_ms(r.since_ms),
        match r.state {
            lock::LockState::Running => "running".to_string(),
            lock::LockState::Stopped => format!("stopped: {}", r.detail),
        },
        r.id
    )
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

impl Error {
    /// The process exit code: 2 for a wrong input, 75 for "another operation holds the lock"
    /// (retry later), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Contract(_) | Error::Tls(_) => 2,
            Error::LockHeld { .. } => 75,
            _ => 1,
        }
    }

    pub(crate) fn store(what: impl Into<String>, source: plasmacloud_store_client::Error) -> Self {
        Error::Store {
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    firstboot::reboots::now_ms()
}

/// A Unix time in milliseconds as RFC 3339 UTC.
pub fn utc_ms(ms: u64) -> String {
    plasmacloud_pki::identity::utc((ms / 1000) as i64)
}
