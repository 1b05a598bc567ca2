//! The flags every node-side step takes ([`NodeArgs`]): which contract, which node, and where
//! its state, TOMLs and ready file live. They are flags (and env vars) so that a process rack
//! can run many nodes on one host; the loaded step context (`step::Ctx`) carries them.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use plasmacloud_contract::DEFAULT_CONTRACT_PATH;

/// Flags every node-side step takes, so that a process rack can run many nodes on one host.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The cluster contract.
    #[arg(long = "cluster", env = "PLASMACLOUD_CLUSTER", default_value = DEFAULT_CONTRACT_PATH)]
    pub cluster: PathBuf,
    /// This node's name (default: `plasmacloud.node=` on the kernel command line, then the
    /// identity file, then a local MAC).
    #[arg(long, env = "PLASMACLOUD_NODE")]
    pub node: Option<String>,
    /// Where this node's persistent state lives (Raft data, done-markers).
    #[arg(
        long,
        env = "PLASMACLOUD_STATE_DIR",
        default_value = "/var/lib/plasmacloud"
    )]
    pub state_dir: PathBuf,
    /// The cluster-ready marker the health check writes.
    #[arg(
        long,
        env = "PLASMACLOUD_READY_FILE",
        default_value = "/run/plasmacloud/cluster-ready"
    )]
    pub ready_file: PathBuf,
    /// Where `configure` writes the services' TOML files.
    #[arg(long, env = "PLASMACLOUD_ETC_DIR", default_value = "/etc/plasmacloud")]
    pub etc_dir: PathBuf,
    /// How long a step waits for peers before it exits 75 (retry later), e.g. `300s`, `10m`.
    #[arg(long, env = "PLASMACLOUD_DEADLINE", default_value = "10m", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Instead of exiting 75 when the deadline passes, report the failure and start the step
    /// over (what the rendered units ask for: a oneshot that exits 75 fails every unit that
    /// requires it, and systemd does not start those again when a restart succeeds).
    #[arg(long, env = "PLASMACLOUD_RETRY_FOREVER")]
    pub retry_forever: bool,
}

/// Parses `90`, `90s`, `1500ms`, `10m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (expected e.g. 90s, 1500ms, 10m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!(
            "{s:?}: unknown unit {unit:?} (expected ms, s or m)"
        )),
    }
}
