//! What the outer process hands the inner run ([`Plan`], written as JSON into the work
//! directory) and what the inner run leaves for it ([`Outcome`], from which the outer process
//! prints the harness's last line).

use std::path::{Path, PathBuf};

use crate::scenario::Scenario;

/// Which server boots the rack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BootServer {
    /// Our pxe-server, full DHCP mode, IPv6 RA on.
    Pxe,
    /// dnsmasq (DHCP + TFTP) with equivalent iPXE scripts; a small sink takes the phase reports.
    Dnsmasq,
}

/// Everything the inner run needs (written by the outer process as JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Label of this run (file names).
    pub label: String,
    /// Work directory.
    pub work: PathBuf,
    /// Where pxe-server is.
    pub bin_dir: PathBuf,
    /// Contract.
    pub contract: PathBuf,
    /// Bundle.
    pub bundle: PathBuf,
    /// The boot server.
    pub server: BootServer,
    /// MiB per VM.
    pub memory_mib: u32,
    /// Seconds until the rack must be ready.
    pub timeout_secs: u64,
    /// Live view on stderr.
    pub progress: bool,
}

/// The result the inner run leaves for the outer one (which prints the last line).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Nodes ready.
    pub ready: usize,
    /// Nodes expected.
    pub nodes: usize,
    /// First QEMU start to the last node ready (or to now, when not all are).
    pub secs: f64,
    /// Did the scenario pass?
    pub passed: bool,
    /// Why not.
    pub error: Option<String>,
    /// Mean share of each phase of power-on to cluster-ready: (phase, mean seconds, share).
    pub phases: Vec<(String, f64, f64)>,
}

impl Outcome {
    /// Where the outcome of run `label` is written.
    pub fn path(work: &Path, label: &str) -> PathBuf {
        work.join(format!("outcome-{label}.json"))
    }
}
