//! The part that runs inside the rack's namespace. Every child is killed when this process
//! ends. By room:
//!
//! - [`plan`]: what the outer process hands in ([`Plan`]) and gets back ([`Outcome`]);
//! - `run`: the run from start to outcome, and the rack state the rooms below share;
//! - `boot_server`: pxe-server, or dnsmasq for the comparison;
//! - `vm`: one VM's lifecycle (QEMU on its tap, power on, power off);
//! - `console`: the serial consoles and the marks read from them;
//! - `events`: the boot server's events and the nodes' phase reports;
//! - `timeline`: each node's timeline and the boot phases' shares;
//! - `view`: the live one-line-per-node view;
//! - `http`: the one path of every HTTP request to the nodes and the boot server;
//! - `checks`: the host-side checks through the services' APIs;
//! - `scenarios`: the scenarios' own steps after the cold boot;
//! - `day2`: the rack's life after day one under `rackctl` (grow, replace, rolling re-image,
//!   retire), with a client writing throughout;
//! - `boot_paths`: checks that the rack booted the way its scenario says (UEFI HTTP boot).

mod boot_paths;
mod boot_server;
mod checks;
mod console;
mod day2;
mod events;
mod http;
pub mod plan;
mod run;
mod scenarios;
mod timeline;
mod view;
mod vm;

pub use plan::{BootServer, Outcome, Plan};
pub use run::{run_inner, shutdown_signal};
