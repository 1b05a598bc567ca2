//! The first-boot chain of a PlasmaCloud node, one subcommand per systemd unit.
//!
//! Each step reads `cluster-config.json` through [`plasmacloud_contract`], finds *self*, does
//! its one job idempotently, and exits with a code systemd can act on ([`exit`]):
//! 0 done, 2 the configuration is wrong (units carry `RestartPreventExitStatus=2`), 75 retry
//! later (a peer is not there yet).
//!
//! Layers, bottom up (a module imports only modules below it, never one that imports it back):
//!
//! - [`exit`] (the exit codes) and [`node_args`] (the flags of a node-side step);
//! - [`step`]: the loaded context every step shares (contract, *self*, service URLs and
//!   clients, waits, progress, done-markers);
//! - what several steps read: [`ids`] (the Raft ids and the cluster id, and where they live)
//!   and [`pristine`] (a pristine voter answering the seed while it waits); [`reboots`] (the
//!   reboot requests and slots in Chainfire, shared with the operator's tool `rackctl`);
//! - the steps, one per unit, which never import each other: [`disk`], [`enroll`],
//!   [`configure`], [`join`], [`iam_setup`], [`health`], and the long-running
//!   [`reboot_agent`]; and [`units`], which renders the unit graph;
//! - [`cli`]: the subcommands and the dispatch to the steps.

pub mod cli;
pub mod configure;
pub mod disk;
pub mod enroll;
pub mod exit;
pub mod health;
pub mod iam_setup;
pub mod ids;
pub mod join;
pub mod node_args;
pub mod pristine;
pub mod reboot_agent;
pub mod reboots;
pub mod step;
pub mod units;
