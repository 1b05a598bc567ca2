//! Command-line interface: flags shared by every subcommand, and the dispatch.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use plasmacloud_contract::{Contract, ContractError, DEFAULT_CONTRACT_PATH};

use crate::exit;

/// The first-boot oneshots of a PlasmaCloud node.
#[derive(Debug, Parser)]
#[command(name = "firstboot", version, about, long_about = None)]
pub struct Cli {
    /// Log format: `pretty` for people, `json` for machines.
    #[arg(long, env = "PLASMACLOUD_LOG_FORMAT", default_value = "pretty", global = true)]
    pub log_format: LogFormat,
    /// The step to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

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
    #[arg(long, env = "PLASMACLOUD_STATE_DIR", default_value = "/var/lib/plasmacloud")]
    pub state_dir: PathBuf,
    /// The cluster-ready marker the health check writes.
    #[arg(long, env = "PLASMACLOUD_READY_FILE", default_value = "/run/plasmacloud/cluster-ready")]
    pub ready_file: PathBuf,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a contract file: prints `ok: <cluster> (<n> nodes)` or every problem (exit 2).
    Validate {
        /// The contract file.
        file: PathBuf,
    },
    /// Print the JSON Schema of `cluster-config.json` (or of the bundle manifest).
    Schema {
        /// Which schema.
        #[arg(long, default_value = "cluster-config")]
        which: SchemaKind,
    },
}

/// Which JSON Schema to print.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SchemaKind {
    /// `cluster-config.json`.
    ClusterConfig,
    /// The bundle's `manifest.json`.
    BundleManifest,
}

/// Sets up `tracing` (RUST_LOG-style filtering, default `info`), logging to stderr.
pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Schema { which } => {
            let text = match which {
                SchemaKind::ClusterConfig => plasmacloud_contract::schema::cluster_config_schema(),
                SchemaKind::BundleManifest => {
                    plasmacloud_contract::schema::bundle_manifest_schema()
                }
            };
            print!("{text}");
            exit::code(exit::OK)
        }
    }
}

/// `firstboot validate FILE`.
fn validate(file: &Path) -> ExitCode {
    match Contract::load(file) {
        Ok(c) => {
            println!("ok: {} ({} nodes)", c.name(), c.nodes.len());
            exit::code(exit::OK)
        }
        Err(e) => {
            print_contract_error(&e);
            exit::code(exit::CONFIG)
        }
    }
}

/// Prints a contract error the way operators read it: one problem per line.
pub fn print_contract_error(e: &ContractError) {
    match e {
        ContractError::Invalid { origin, problems } => {
            println!("{origin}: {} problem(s)", problems.len());
            for p in problems {
                println!("  {p}");
            }
        }
        other => println!("{other}"),
    }
}
