//! The first-boot chain of a PlasmaCloud node, one subcommand per systemd unit.
//!
//! Each step reads `cluster-config.json` through [`plasmacloud_contract`], finds *self*, does
//! its one job idempotently, and exits with a code systemd can act on ([`exit`]):
//! 0 done, 2 the configuration is wrong (units carry `RestartPreventExitStatus=2`), 75 retry
//! later (a peer is not there yet).

pub mod cli;
pub mod configure;
pub mod disk;
pub mod exit;
pub mod health;
pub mod iam_setup;
pub mod join;
pub mod step;
pub mod units;
