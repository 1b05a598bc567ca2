//! `local-rack N`: N nodes as processes on 127.0.x.y, each running its first-boot chain in unit
//! order; exits 0 only when every node is cluster-ready. The last line is always
//! `cluster-ready: <k>/<n> nodes in <s> s`. Nothing is left running, whatever happens.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use local_rack::{Rack, RackSpec};
use rand::seq::SliceRandom;
use rand::Rng;

/// Start N nodes as processes and run their first-boot chains.
#[derive(Debug, Parser)]
#[command(name = "local-rack", version, about)]
struct Cli {
    /// Number of nodes (1 voter below 3 nodes, 3 below 5, else 5).
    nodes: usize,
    /// Third octet of the nodes' loopback addresses: 127.0.<subnet>.<10+i>.
    #[arg(long, env = "PLASMACLOUD_RACK_SUBNET", default_value_t = 10)]
    subnet: u8,
    /// Where the binaries are (default: next to this one).
    #[arg(long, env = "PLASMACLOUD_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Working directory (default: a fresh temporary directory, removed on success).
    #[arg(long, env = "PLASMACLOUD_RACK_WORK")]
    work: Option<PathBuf>,
    /// Start nodes in random order with random delays up to this many milliseconds.
    #[arg(long, default_value_t = 0)]
    shuffle_ms: u64,
    /// Overall deadline in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A usage error still ends with the harness's last line (no rack was planned);
            // `--help` and `--version` print only themselves.
            let _ = e.print();
            if e.use_stderr() {
                println!("cluster-ready: 0/0 nodes in 0.0 s");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("local-rack: cannot start the runtime: {e}");
            println!("cluster-ready: 0/{} nodes in 0.0 s", cli.nodes);
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let n = cli.nodes;
    let fail = |msg: String| {
        eprintln!("local-rack: {msg}");
        println!("cluster-ready: 0/{n} nodes in 0.0 s");
        ExitCode::FAILURE
    };
    if n == 0 || n > 200 {
        return fail(format!("{n} nodes: expected 1 to 200"));
    }
    let bin_dir = match cli.bin_dir.clone().or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
    }) {
        Some(d) => d,
        None => return fail("cannot find the binaries; pass --bin-dir".into()),
    };
    for b in [
        "firstboot",
        "chainfire-server",
        "flaredb-server",
        "iam-server",
    ] {
        if !bin_dir.join(b).is_file() {
            return fail(format!(
                "{} missing; build with `cargo build --release --workspace` or pass --bin-dir",
                bin_dir.join(b).display()
            ));
        }
    }
    let temp = match &cli.work {
        Some(_) => None,
        None => match tempdir() {
            Ok(t) => Some(t),
            Err(e) => return fail(format!("cannot create a work directory: {e}")),
        },
    };
    let work = cli
        .work
        .clone()
        .or_else(|| temp.clone())
        .unwrap_or_default();
    let mut delays = vec![Duration::ZERO; n];
    if cli.shuffle_ms > 0 {
        let mut rng = rand::thread_rng();
        for d in delays.iter_mut() {
            *d = Duration::from_millis(rng.gen_range(0..=cli.shuffle_ms));
        }
        delays.shuffle(&mut rng);
    }
    let spec = RackSpec {
        nodes: n,
        subnet: cli.subnet,
        work: work.clone(),
        bin_dir,
        delays,
        timeout: Duration::from_secs(cli.timeout),
        verbose: true,
        agents: false,
        voters: None,
    };
    let rack = match Rack::new(spec) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            return fail(format!(
                "cannot write the contract under {}: {e}",
                work.display()
            ))
        }
    };
    eprintln!(
        "local-rack: {n} nodes, contract {}, logs under {}",
        rack.contract.display(),
        work.display()
    );
    let ready = tokio::select! {
        r = rack.run_all() => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("local-rack: interrupted");
            rack.ready_count()
        }
    };
    rack.shutdown().await;
    print_timeline(&rack);
    let ok = ready == n;
    if ok {
        if let Some(t) = temp {
            let _ = std::fs::remove_dir_all(t);
        }
    } else {
        eprintln!("local-rack: logs kept under {}", work.display());
    }
    println!("{}", rack.summary_line());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_timeline(rack: &Rack) {
    let Ok(tl) = rack.timelines.lock() else {
        return;
    };
    eprintln!("timeline (seconds since start):");
    for (name, t) in tl.iter() {
        let phases: Vec<String> = t
            .phases
            .iter()
            .map(|(p, s)| format!("{p} {s:.1}"))
            .collect();
        eprintln!(
            "  {name:<7} {}{}",
            phases.join(" | "),
            if t.ready { "" } else { "  (NOT READY)" }
        );
    }
}

fn tempdir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("local-rack-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(base)
}
