//! Command-line interface: the subcommands, logging set-up, and the dispatch to each step
//! (the flags every node-side step takes are [`crate::node_args::NodeArgs`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use plasmacloud_contract::{Contract, ContractError};

use crate::exit;
use crate::node_args::NodeArgs;
use crate::step::{Ctx, StepResult, Store};

/// The first-boot oneshots of a PlasmaCloud node.
#[derive(Debug, Parser)]
#[command(name = "firstboot", version, about, long_about = None)]
pub struct Cli {
    /// Log format: `pretty` for people, `json` for machines.
    #[arg(
        long,
        env = "PLASMACLOUD_LOG_FORMAT",
        default_value = "pretty",
        global = true
    )]
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

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a contract file: prints `ok: <cluster> (<n> nodes)` or every problem (exit 2).
    Validate {
        /// The contract file.
        file: PathBuf,
    },
    /// Prepare the Raft data disk (GPT, labelled filesystem, mount); never reformats ours.
    Disk(NodeArgs),
    /// Make this node's key and obtain its certificate (nothing to do when it holds one).
    Enroll(NodeArgs),
    /// Decide this node's Raft id and write the services' TOML from the contract.
    Configure(NodeArgs),
    /// Form (seed) or join (everyone else) the Chainfire cluster.
    ChainfireJoin(NodeArgs),
    /// Form (seed) or join (everyone else) the FlareDB cluster.
    FlaredbJoin(NodeArgs),
    /// Bootstrap the IAM admin (seed) or check that IAM answers (everyone else).
    IamSetup(NodeArgs),
    /// Check the node and the cluster, write the report, mark cluster-ready.
    HealthCheck(NodeArgs),
    /// Run the reboot agent: reboot this node when Chainfire holds a reboot request for it
    /// and a reboot slot is free (long-running; a unit after cluster-ready.target).
    RebootAgent(crate::reboot_agent::AgentArgs),
    /// Render the systemd unit graph (one source of truth) into a directory.
    Units {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Where the binaries are installed (used in `ExecStart=`).
        #[arg(long, default_value = "/usr/bin")]
        bindir: PathBuf,
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
        Command::Disk(a) => step("disk", &a, |ctx| async move {
            crate::disk::run(&ctx).await.map(|_| ())
        }),
        Command::Enroll(a) => step("enroll", &a, |ctx| async move {
            crate::enroll::run(&ctx, ctx.args.deadline).await
        }),
        Command::Configure(a) => step("configure", &a, |ctx| async move {
            crate::configure::run(&ctx, ctx.args.deadline).await
        }),
        Command::ChainfireJoin(a) => step("chainfire-join", &a, |ctx| async move {
            crate::join::run(&ctx, Store::Chainfire, ctx.args.deadline).await
        }),
        Command::FlaredbJoin(a) => step("flaredb-join", &a, |ctx| async move {
            crate::join::run(&ctx, Store::Flaredb, ctx.args.deadline).await
        }),
        Command::IamSetup(a) => step("iam-setup", &a, |ctx| async move {
            crate::iam_setup::run(&ctx, ctx.args.deadline).await
        }),
        Command::HealthCheck(a) => step("health-check", &a, |ctx| async move {
            crate::health::run(&ctx, ctx.args.deadline)
                .await
                .map(|_| ())
        }),
        Command::RebootAgent(a) => step("reboot-agent", &a.node, |ctx| {
            let a = a.clone();
            async move { crate::reboot_agent::run(&ctx, &a).await }
        }),
        Command::Validate { file } => validate(&file),
        Command::Units { out, bindir } => match crate::units::write_all(&out, &bindir) {
            Ok(names) => {
                for n in names {
                    println!("{}", out.join(n).display());
                }
                exit::code(exit::OK)
            }
            Err(e) => {
                eprintln!("cannot write units to {}: {e}", out.display());
                exit::code(exit::CONFIG)
            }
        },
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

/// Runs one node-side step on a small runtime and maps its outcome to the exit code.
fn step<F, Fut>(name: &str, args: &NodeArgs, body: F) -> ExitCode
where
    F: Fn(Ctx) -> Fut,
    Fut: std::future::Future<Output = StepResult<()>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return exit::code(exit::RETRY);
        }
    };
    let result = rt.block_on(async {
        let ctx = Ctx::load(args)?;
        let span = tracing::info_span!("step", step = name, node = %ctx.me.name);
        let _guard = span.enter();
        let mut pause = Duration::from_secs(2);
        loop {
            let out = body(ctx.clone()).await;
            match &out {
                Err(e @ crate::step::StepError::Retry(_)) if ctx.args.retry_forever => {
                    // Report, then start over: the units that require this one keep waiting
                    // for it instead of failing (see `--retry-forever`).
                    let msg = format!("{e}; starting over in {pause:.0?}");
                    tracing::warn!(step = name, "{msg}");
                    ctx.progress(name, "failed", &msg).await;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    ctx.progress(name, "failed", &e.to_string()).await;
                    return out;
                }
                Ok(()) => return out,
            }
        }
    });
    match result {
        Ok(()) => exit::code(exit::OK),
        Err(e) => {
            tracing::error!(step = name, error = %e, "step failed");
            eprintln!("{name}: {e}");
            let _ = sd_notify::notify(
                false,
                &[sd_notify::NotifyState::Status(&format!("{name}: {e}"))],
            );
            exit::code(e.exit_code())
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
