//! `rackctl`: the operator's tool for a rack's life. See the library for each operation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use firstboot::node_args::parse_duration;
use rackctl::boot_view::PxeStatus;
use rackctl::bundle::short;
use rackctl::contract_edit::NewNode;
use rackctl::grow::GrowPlan;
use rackctl::operator::Operator;
use rackctl::replace::ReplacePlan;
use rackctl::retire::RetirePlan;
use rackctl::rollout::RolloutPlan;
use rackctl::{Ctl, CtlConfig, Error};

/// Grow, replace, re-image and retire the nodes of a PlasmaCloud rack, one membership change
/// at a time and never below quorum, with an operator certificate.
#[derive(Debug, Parser)]
#[command(name = "rackctl", version, about)]
struct Cli {
    #[command(flatten)]
    rack: RackArgs,
    /// Log format.
    #[arg(
        long,
        env = "PLASMACLOUD_LOG_FORMAT",
        default_value = "pretty",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Args)]
struct RackArgs {
    /// The contract pxe-server serves (its --cluster); changed here, always validated.
    #[arg(long, env = "PLASMACLOUD_PXE_CLUSTER", global = true)]
    cluster: Option<PathBuf>,
    /// The directory with operator.key, operator.crt and ca.crt (`pxe-server pki issue
    /// --operator NAME --out DIR`).
    #[arg(long, env = "PLASMACLOUD_RACKCTL_TLS_DIR", global = true)]
    tls_dir: Option<PathBuf>,
    /// pxe-server's management URL [default: the contract's boot server, https://ADDRESS:management_port].
    #[arg(long, env = "PLASMACLOUD_RACKCTL_PXE", global = true)]
    pxe: Option<String>,
    /// The bundle path pxe-server serves (its --bundle: a symlink or a directory); new bundles
    /// are written beside it and swapped in.
    #[arg(long, env = "PLASMACLOUD_PXE_BUNDLE", global = true)]
    served_bundle: Option<PathBuf>,
    /// pxe-server's state directory, when on this host: its issued log, and `pki revoke`.
    #[arg(long, env = "PLASMACLOUD_PXE_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// The pxe-server binary (for `pki revoke`).
    #[arg(
        long,
        env = "PLASMACLOUD_PXE_SERVER_BIN",
        default_value = "pxe-server",
        global = true
    )]
    pxe_server_bin: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every node: bundle booted, phase, Raft roles, certificate expiry, last health check.
    Status {
        /// JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Add machines (workers, or voters up to 5), re-bundle, wait for them, reconcile voters.
    Grow {
        /// A new worker: NAME=MAC@IPV4 (repeat).
        #[arg(long = "add", value_name = "NAME=MAC@IPV4")]
        add: Vec<String>,
        /// A new voter: NAME=MAC@IPV4 (repeat; the contract keeps 1, 3 or 5 voters).
        #[arg(long = "add-voter", value_name = "NAME=MAC@IPV4")]
        add_voter: Vec<String>,
        /// An existing node to make a voter (repeat).
        #[arg(long = "voter", value_name = "NAME")]
        voter: Vec<String>,
        /// How long to wait for the new machines to join, and for each change.
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// A new machine takes a dead one's name: contract, bundle, members, certificates.
    Replace {
        /// The node.
        name: String,
        /// The new machine's boot MAC.
        #[arg(long)]
        mac: String,
        /// A serial of the dead machine's certificate to revoke (besides the issued log's).
        #[arg(long = "serial")]
        serials: Vec<String>,
        /// Replace even though the old machine still answers.
        #[arg(long)]
        force: bool,
        /// How long to wait for the new machine to join.
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Roll a bundle across the rack: voters one at a time, workers in waves.
    Rollout {
        /// The new bundle directory (`netboot-image bundle --out DIR`).
        #[arg(long, required_unless_present = "abort")]
        bundle: Option<PathBuf>,
        /// Workers rebooted at once.
        #[arg(long, default_value_t = 1)]
        wave_size: usize,
        /// How long a wave may take, e.g. 600s or 10m.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        wave_timeout: Duration,
        /// Release the lock, withdraw every reboot request, empty the slots.
        #[arg(long, conflicts_with = "bundle")]
        abort: bool,
    },
    /// Reboot one node (it reboots itself; refused while a rollout holds the lock).
    Reboot {
        /// The node.
        name: String,
        /// How long it may take to come back healthy.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Remove a node for good: leadership, membership, certificate, contract, bundle.
    Retire {
        /// The node.
        name: String,
        /// For a voter: the worker that takes its place.
        #[arg(long)]
        promote: Option<String>,
        /// A serial to revoke besides those found.
        #[arg(long = "serial")]
        serials: Vec<String>,
        /// How long each change may take.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => sub.json().init(),
        LogFormat::Pretty => sub.init(),
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rackctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rackctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn ctl(rack: &RackArgs) -> Result<Ctl, Error> {
    let contract = rack.cluster.clone().ok_or_else(|| {
        Error::Config("--cluster FILE is required (the contract pxe-server serves)".into())
    })?;
    let tls = rack.tls_dir.clone().ok_or_else(|| {
        Error::Config(
            "--tls-dir DIR is required (operator.key, operator.crt, ca.crt from `pxe-server pki issue --operator NAME --out DIR`)"
                .into(),
        )
    })?;
    let operator = Operator::load(&tls)?;
    let c = plasmacloud_contract::Contract::load(&contract)?;
    let url = rack.pxe.clone().unwrap_or_else(|| c.management_url());
    let mut config = CtlConfig::new(contract);
    config.bundle = rack.served_bundle.clone();
    config.pxe_state_dir = rack.state_dir.clone();
    config.pxe_server_bin = rack.pxe_server_bin.clone();
    let boot = Arc::new(PxeStatus::new(&url, &operator));
    Ok(Ctl::new(config, operator, boot))
}

async fn run(cli: Cli) -> Result<(), Error> {
    let ctl = ctl(&cli.rack)?;
    match cli.command {
        Cmd::Status { json } => {
            let s = rackctl::status::status(&ctl).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{}", rackctl::status::render(&s));
            }
        }
        Cmd::Grow {
            add,
            add_voter,
            voter,
            timeout,
        } => {
            let mut plan = GrowPlan {
                make_voters: voter,
                ..Default::default()
            };
            for a in &add {
                plan.add.push(NewNode::parse(a, false)?);
            }
            for a in &add_voter {
                plan.add.push(NewNode::parse(a, true)?);
            }
            eprintln!(
                "rackctl: {}: power on (PXE-boot) the new machines once the bundle is in place",
                plan.describe()
            );
            let r = rackctl::grow::grow(&ctl, &plan, timeout).await?;
            for (n, id) in &r.joined {
                println!("joined {n} (raft id {id})");
            }
            for p in &r.promoted {
                println!("{p}");
            }
            println!(
                "grown: {} voters; bundle {}",
                r.voters,
                r.bundle.as_deref().map(short).unwrap_or("unchanged")
            );
        }
        Cmd::Replace {
            name,
            mac,
            serials,
            force,
            timeout,
        } => {
            let plan = ReplacePlan {
                name: name.clone(),
                mac,
                serials,
                force,
            };
            eprintln!(
                "rackctl: replace {name}: power on the new machine once the bundle is in place"
            );
            let r = rackctl::replace::replace(&ctl, &plan, timeout).await?;
            for (s, id) in &r.prepared.removed {
                println!("removed {} member {id}", s.name());
            }
            for s in &r.prepared.revoked {
                println!("revoked {s}");
            }
            if let Some(ip) = &r.prepared.lease_released {
                println!("released the dead machine's lease on {ip}");
            }
            println!("replaced {name}: new raft id {}", r.new_id);
        }
        Cmd::Rollout {
            bundle,
            wave_size,
            wave_timeout,
            abort,
        } => {
            if abort {
                let a = rackctl::rollout::abort(&ctl).await?;
                match &a.lock {
                    Some(l) => println!(
                        "released the rollout lock ({} for {:?}, {:?})",
                        l.holder, l.what, l.state
                    ),
                    None => println!("the rollout lock was free"),
                }
                for (n, s) in &a.requests {
                    println!("withdrew {n}'s reboot request ({s})");
                }
                for (g, n) in &a.slots {
                    println!("released {n}'s {g} slot");
                }
                return Ok(());
            }
            let plan = RolloutPlan {
                bundle,
                wave_size,
                wave_timeout,
            };
            let r = rackctl::rollout::rollout(&ctl, &plan).await?;
            for w in &r.waves {
                println!(
                    "wave {} ({}): {:.1} s{}",
                    w.wave.nodes.join(", "),
                    w.wave.group.as_str(),
                    w.seconds,
                    if w.adopted {
                        " (left under way by a rollout whose lease lapsed; finished)"
                    } else {
                        ""
                    }
                );
            }
            if !r.skipped.is_empty() {
                println!("already on it: {}", r.skipped.join(", "));
            }
            println!("rolled out {}", short(&r.version));
        }
        Cmd::Reboot { name, timeout } => {
            let secs = rackctl::rollout::reboot(&ctl, &name, timeout).await?;
            println!("{name} rebooted and healthy in {secs:.1} s");
        }
        Cmd::Retire {
            name,
            promote,
            serials,
            timeout,
        } => {
            let plan = RetirePlan {
                name: name.clone(),
                promote,
                serials,
            };
            let r = rackctl::retire::retire(&ctl, &plan, timeout).await?;
            for p in &r.promoted {
                println!("{p}");
            }
            for (s, id) in &r.removed {
                println!("removed {} member {id}", s.name());
            }
            for s in &r.revoked {
                println!("revoked {s}");
            }
            if let Some(ip) = &r.lease_released {
                println!("released its lease on {ip}");
            }
            println!("retired {name}: power the machine off");
        }
    }
    Ok(())
}
