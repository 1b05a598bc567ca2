//! `vm-rack SCENARIO`: see the crate docs ([`vm_rack`]) and `vm-rack --help`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use vm_rack::prepare;
use vm_rack::rack::{self, BootServer, Outcome, Plan};
use vm_rack::scenario::{Scenario, ALL};

/// Default MiB of RAM per VM (the appliance runs from its initramfs).
const DEFAULT_MEMORY_MIB: u32 = 1536;
/// Default seconds from the first power-on until every node must be ready, per node in the
/// contract (at least [`MIN_TIMEOUT_SECS`]): TCG VMs share the host's cores, so five nodes on a
/// 2-core host take about twice as long as three.
const TIMEOUT_SECS_PER_NODE: u64 = 120;
/// The least default timeout.
const MIN_TIMEOUT_SECS: u64 = 300;

/// PXE-boot a rack of QEMU VMs from pxe-server into a ready cluster. Root required.
#[derive(Debug, Parser)]
#[command(name = "vm-rack", version)]
struct Cli {
    /// cold-3, reboot, leader-loss, unknown-mac, cold-5, uefi-3, uefi-http-3, secureboot-1,
    /// or day 2: grow, replace, rolling-reimage, retire.
    scenario: String,
    /// Where firstboot, chainfire-server, flaredb-server, iam-server, pxe-server and
    /// netboot-image are [default: this executable's directory].
    #[arg(long, env = "PLASMACLOUD_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Work directory (bundle, disks, consoles, logs) [default: /tmp/vm-rack-SCENARIO-PID].
    #[arg(long, env = "PLASMACLOUD_RACK_WORK")]
    work_dir: Option<PathBuf>,
    /// Debian kernel for the appliance [default: the newest /boot/vmlinuz-*-cloud-amd64, else
    /// the newest /boot/vmlinuz-*]; its modules come from /lib/modules.
    #[arg(long, env = "PLASMACLOUD_RACK_KERNEL")]
    kernel: Option<PathBuf>,
    /// MiB of RAM per VM.
    #[arg(long, env = "PLASMACLOUD_RACK_MEMORY_MIB", default_value_t = DEFAULT_MEMORY_MIB)]
    memory_mib: u32,
    /// Seconds from the first power-on until every node must be ready (also the deadline of
    /// each later step that waits for a node) [default: 120 per node, at least 300].
    #[arg(long, env = "PLASMACLOUD_RACK_TIMEOUT_SECS")]
    timeout_secs: Option<u64>,
    /// After the run, boot the same rack through dnsmasq (DHCP + TFTP, equivalent iPXE
    /// scripts) and print the ratio (the benchmark).
    #[arg(long, env = "PLASMACLOUD_RACK_COMPARE_DNSMASQ")]
    compare_dnsmasq: bool,
    /// Keep the work directory on success too (it is always kept on failure).
    #[arg(long, env = "PLASMACLOUD_RACK_KEEP")]
    keep: bool,
    /// No live view (one line per change instead is still printed when not a terminal).
    #[arg(long, env = "PLASMACLOUD_RACK_QUIET")]
    quiet: bool,
    /// Internal: run the plan in FILE inside the namespace.
    #[arg(long, hide = true)]
    inner: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return bad_command_line(&e),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vm-rack: cannot start tokio: {e}");
            println!("cluster-ready: 0/? nodes in 0.0 s");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(plan) = cli.inner.clone() {
        return rt.block_on(inner(&plan));
    }
    let n = Scenario::parse(&cli.scenario).map_or(0, |s| s.nodes());
    let (ok, last) = match rt.block_on(outer(&cli)) {
        Ok((ok, line)) => (ok, line),
        Err(e) => {
            eprintln!("vm-rack: error: {e:#}");
            (false, format!("cluster-ready: 0/{n} nodes in 0.0 s"))
        }
    };
    println!("{last}");
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

async fn inner(plan_file: &Path) -> std::process::ExitCode {
    let plan: Plan = match std::fs::read(plan_file)
        .map_err(anyhow::Error::from)
        .and_then(|b| serde_json::from_slice(&b).map_err(anyhow::Error::from))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vm-rack: cannot read the plan {}: {e}", plan_file.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    match rack::run_inner(plan).await {
        Ok(o) if o.passed => std::process::ExitCode::SUCCESS,
        Ok(o) => {
            eprintln!(
                "vm-rack: FAILED: {}",
                o.error.unwrap_or_else(|| "unknown".into())
            );
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("vm-rack: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A command line clap refused: its message, then (for a usage error, not for `--help` or
/// `--version`) the harness's last line, with no rack planned.
fn bad_command_line(e: &clap::Error) -> std::process::ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        println!("cluster-ready: 0/0 nodes in 0.0 s");
    }
    std::process::ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

fn last_line(o: &Outcome) -> String {
    format!(
        "cluster-ready: {}/{} nodes in {:.1} s",
        o.ready, o.nodes, o.secs
    )
}

/// Runs one plan in a fresh namespace; returns its outcome.
async fn run_in_namespace(plan: &Plan, taps: usize) -> anyhow::Result<Outcome> {
    let file = plan.work.join(format!("plan-{}.json", plan.label));
    std::fs::write(&file, serde_json::to_vec_pretty(plan)?)?;
    let _ = std::fs::remove_file(Outcome::path(&plan.work, &plan.label));
    let mut ns = prepare::network(taps).context("while creating the rack's namespace")?;
    eprintln!(
        "vm-rack: namespace {} (br0 {}/24, {taps} taps)",
        ns.name(),
        prepare::SERVER_IP
    );
    let exe = std::env::current_exe().context("while finding vm-rack itself")?;
    let mut cmd = tokio::process::Command::from(ns.command(&exe));
    cmd.arg(plan.scenario.name())
        .arg("--inner")
        .arg(&file)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .context("while starting the rack inside the namespace")?;
    let interrupted = tokio::select! {
        _ = child.wait() => false,
        _ = rack::shutdown_signal() => true,
    };
    if interrupted {
        eprintln!("vm-rack: interrupted; tearing down");
        // Ask the inner run to stop (it writes its outcome and kills its children); it got
        // the signal already when it came from the terminal.
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    ns.teardown().context("while tearing down the namespace")?;
    eprintln!("vm-rack: namespace {} removed", ns.name());
    let o: Outcome = std::fs::read(Outcome::path(&plan.work, &plan.label))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| Outcome {
            nodes: plan.scenario.nodes(),
            error: Some("the rack ended without an outcome".into()),
            ..Outcome::default()
        });
    if interrupted {
        return Ok(Outcome {
            passed: false,
            error: Some("interrupted".into()),
            ..o
        });
    }
    Ok(o)
}

async fn outer(cli: &Cli) -> anyhow::Result<(bool, String)> {
    let scenario = Scenario::parse(&cli.scenario).ok_or_else(|| {
        anyhow!(
            "unknown scenario {:?}; one of: {}",
            cli.scenario,
            ALL.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let n = scenario.nodes();
    let fail = |o: &Outcome| last_line(o);
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("vm-rack has no directory"))?,
    };
    let kernel = cli
        .kernel
        .clone()
        .or_else(prepare::default_kernel)
        .ok_or_else(|| {
            anyhow!("no /boot/vmlinuz-*: install linux-image-cloud-amd64 or pass --kernel")
        })?;
    let work = cli.work_dir.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "/tmp/vm-rack-{}-{}",
            scenario.name(),
            std::process::id()
        ))
    });
    if !plasmacloud_is_root() {
        bail!("vm-rack needs root (network namespaces, taps)");
    }
    std::fs::create_dir_all(&work)?;
    eprintln!("vm-rack: {scenario}: work directory {}", work.display());
    let art = {
        let (w, b, k) = (work.clone(), bin_dir.clone(), kernel.clone());
        tokio::task::spawn_blocking(move || prepare::build(&w, &b, &k, n)).await??
    };
    let plan = Plan {
        scenario,
        label: "pxe".into(),
        work: work.clone(),
        bin_dir,
        contract: art.contract.clone(),
        bundle: art.bundle.clone(),
        server: BootServer::Pxe,
        memory_mib: cli.memory_mib,
        timeout_secs: cli
            .timeout_secs
            .unwrap_or((TIMEOUT_SECS_PER_NODE * n as u64).max(MIN_TIMEOUT_SECS)),
        progress: !cli.quiet,
    };
    let taps = (n + scenario.spares()).max(1);
    let o = run_in_namespace(&plan, taps).await?;
    print_phases("pxe-server", &o);
    if !o.passed {
        eprintln!(
            "vm-rack: {scenario} FAILED: {}; consoles and logs kept in {}",
            o.error.clone().unwrap_or_default(),
            work.display()
        );
        return Ok((false, fail(&o)));
    }
    if cli.compare_dnsmasq {
        let dplan = Plan {
            label: "dnsmasq".into(),
            server: BootServer::Dnsmasq,
            ..plan.clone()
        };
        let d = run_in_namespace(&dplan, taps).await?;
        print_phases("dnsmasq", &d);
        if d.passed {
            eprintln!(
                "vm-rack: benchmark: pxe-server {:.1} s, dnsmasq {:.1} s: dnsmasq/pxe-server = {:.2}",
                o.secs,
                d.secs,
                d.secs / o.secs.max(0.001)
            );
        } else {
            eprintln!(
                "vm-rack: benchmark: the dnsmasq run failed after {:.1} s: {}",
                d.secs,
                d.error.unwrap_or_default()
            );
        }
    }
    eprintln!("vm-rack: {scenario} PASSED");
    if !cli.keep {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("vm-rack: work directory kept: {}", work.display());
    }
    Ok((true, last_line(&o)))
}

fn print_phases(label: &str, o: &Outcome) {
    if o.phases.is_empty() {
        return;
    }
    eprintln!("phases ({label}, mean over nodes, power-on to cluster-ready):");
    for (p, s, share) in &o.phases {
        eprintln!("  {p:<46} {s:6.1} s  {:5.1} %", share * 100.0);
    }
}

fn plasmacloud_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
