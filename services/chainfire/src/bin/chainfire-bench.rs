//! `chainfire-bench`: Chainfire vs etcd 3.4, side by side on this machine.
//!
//! Starts three Chainfire nodes and three etcd nodes on loopback (fsync on for both: Chainfire
//! syncs every log append, etcd 3.4 always fsyncs its WAL), then drives each with the same
//! client code (one reqwest client, N concurrent tasks, 256-byte values, all requests to the
//! leader): puts/s, p50/p99 latency, server CPU time per put (user + system, summed over the
//! three processes) and the peak RSS (VmHWM, summed over the three processes).
//!
//! Both run as they are meant to run: TLS with client-certificate authentication on every
//! port, client and peer. One test CA (plasmacloud-pki's `ClusterCa`, as pxe-server makes the
//! real one) issues a node certificate per server (Chainfire's `--tls-cert/--tls-key/--tls-ca`;
//! etcd's `--cert-file --key-file --client-cert-auth --trusted-ca-file` and the `--peer-…`
//! equivalents) and an operator certificate for the client, which both check.
//!
//! The measured time is split into `--rounds` alternating slices (Chainfire, etcd, Chainfire,
//! …), so that load from elsewhere on the machine falls on both alike.
//! etcd is driven through its HTTP/JSON gateway (`POST /v3/kv/put`), the only HTTP write path
//! of etcd 3.4 with the v2 API off.
//!
//! Run: `cargo build --release -p chainfire && target/release/chainfire-bench` (see `--help`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use clap::Parser;
use plasmacloud_pki::ca::{CertSpec, ClusterCa};
use plasmacloud_pki::tls::TlsMaterial;
use plasmacloud_pki::{Credentials, Identity, TlsFiles};
use plasmacloud_store_client::{Member, StoreClient};

/// Chainfire vs etcd 3.4: puts/s, p50/p99, peak RSS at 1 and 64 clients.
#[derive(Debug, Parser)]
#[command(name = "chainfire-bench", about)]
struct Args {
    /// Seconds measured per system and client count (after a 1 s warm-up), split into rounds.
    #[arg(long, env = "PLASMACLOUD_BENCH_SECONDS", default_value_t = 10)]
    seconds: u64,
    /// Alternating rounds the measured seconds are split into.
    #[arg(long, env = "PLASMACLOUD_BENCH_ROUNDS", default_value_t = 4)]
    rounds: u32,
    /// Concurrent clients, comma-separated.
    #[arg(long, env = "PLASMACLOUD_BENCH_CLIENTS", default_value = "1,64")]
    clients: String,
    /// Value size in bytes.
    #[arg(long, env = "PLASMACLOUD_BENCH_VALUE_SIZE", default_value_t = 256)]
    value_size: usize,
    /// The etcd binary.
    #[arg(long, env = "PLASMACLOUD_BENCH_ETCD", default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// The chainfire-server binary (default: next to this one).
    #[arg(long, env = "PLASMACLOUD_BENCH_CHAINFIRE")]
    chainfire: Option<PathBuf>,
    /// Where data directories and logs go (default: a fresh temporary directory).
    #[arg(long, env = "PLASMACLOUD_BENCH_DIR")]
    dir: Option<PathBuf>,
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// User + system CPU time of the processes so far, in seconds.
    fn cpu_secs(&self) -> f64 {
        // USER_HZ, the unit of /proc/PID/stat times, is 100 on every Linux architecture we run on.
        const TICKS: f64 = 100.0;
        self.0
            .iter()
            .filter_map(|c| std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok())
            .filter_map(|s| {
                // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ut: f64 = f.get(11)?.parse().ok()?;
                let st: f64 = f.get(12)?.parse().ok()?;
                Some((ut + st) / TICKS)
            })
            .sum()
    }

    fn peak_rss_kib(&self) -> u64 {
        self.0
            .iter()
            .map(|c| {
                std::fs::read_to_string(format!("/proc/{}/status", c.id()))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmHWM:"))
                            .and_then(|l| l.split_whitespace().nth(1))
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                    .unwrap_or(0)
            })
            .sum()
    }
}

fn free_addr(ip: Ipv4Addr) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind((ip, 0)).context("while picking a free port")?;
    Ok(l.local_addr()?)
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("while starting {}", bin.display()))
}

async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        if start.elapsed() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The bench's CA: node certificates for the servers, an operator certificate for the client.
struct Pki {
    ca: ClusterCa,
    dir: PathBuf,
}

impl Pki {
    /// A node certificate for `name` at `ip` (and `also`), written under the bench directory.
    fn node(&self, name: &str, ip: Ipv4Addr, also: &[Ipv4Addr]) -> anyhow::Result<TlsFiles> {
        let mut spec = CertSpec::node(Identity::node(name)?, ip.into());
        spec.ips
            .extend(also.iter().map(|a| std::net::IpAddr::V4(*a)));
        let (issued, key) = self.ca.issue_with_new_key(&spec)?;
        let creds = Credentials::node(self.dir.join(name));
        creds.write_all(&key, &issued.cert_pem, self.ca.cert_pem())?;
        Ok(TlsFiles::from(&creds))
    }

    /// The client's operator certificate.
    fn client(&self) -> anyhow::Result<TlsMaterial> {
        let spec = CertSpec::operator(Identity::operator("chainfire-bench")?);
        let (issued, key) = self.ca.issue_with_new_key(&spec)?;
        Ok(TlsMaterial::from_pem(
            "bench client",
            &issued.cert_pem,
            &key,
            self.ca.cert_pem(),
        )?)
    }
}

/// Starts three Chainfire nodes, forms the cluster, returns the leader's API URL.
async fn start_chainfire(
    bin: &Path,
    dir: &Path,
    pki: &Pki,
    client: &TlsMaterial,
) -> anyhow::Result<(Procs, String)> {
    let mut procs = Procs(Vec::new());
    let mut members = Vec::new();
    for id in 1..=3u64 {
        let ip = Ipv4Addr::new(127, 0, 10, id as u8);
        let (api, raft) = (free_addr(ip)?, free_addr(ip)?);
        let tls = pki.node(&format!("cf{id}"), ip, &[])?;
        let args = vec![
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            dir.join(format!("cf{id}")).display().to_string(),
            "--api-addr".into(),
            api.to_string(),
            "--raft-addr".into(),
            raft.to_string(),
            "--tls-cert".into(),
            tls.cert.display().to_string(),
            "--tls-key".into(),
            tls.key.display().to_string(),
            "--tls-ca".into(),
            tls.ca.display().to_string(),
        ];
        procs
            .0
            .push(spawn(bin, &args, &dir.join(format!("cf{id}.log")))?);
        members.push(Member {
            id,
            raft_addr: raft.to_string(),
            api_addr: api.to_string(),
        });
    }
    let seed = StoreClient::builder([members[0].api_addr.clone()])
        .tls(client.clone())
        .timeout(Duration::from_secs(20))
        .build()?;
    wait_for("chainfire to listen", Duration::from_secs(30), || {
        let seed = seed.clone();
        async move { seed.health().await.is_ok() }
    })
    .await?;
    seed.init(&members[..1])
        .await
        .context("while initialising chainfire")?;
    for m in &members[1..] {
        wait_for("chainfire node to listen", Duration::from_secs(30), || {
            let c = StoreClient::builder([m.api_addr.clone()])
                .tls(client.clone())
                .build();
            async move {
                match c {
                    Ok(c) => c.health().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await?;
        seed.add_learner(m)
            .await
            .context("while adding a learner")?;
    }
    seed.promote_voters(&[2, 3])
        .await
        .context("while promoting")?;
    let leader = seed
        .members()
        .await?
        .leader
        .context("no chainfire leader")?;
    let api = members
        .iter()
        .find(|m| m.id == leader)
        .map(|m| m.api_addr.clone())
        .context("leader not in members")?;
    Ok((procs, format!("https://{api}")))
}

/// Starts three etcd nodes, returns the leader's client URL.
async fn start_etcd(
    bin: &Path,
    dir: &Path,
    pki: &Pki,
    http: &reqwest::Client,
) -> anyhow::Result<(Procs, String)> {
    let mut procs = Procs(Vec::new());
    let mut nodes = Vec::new();
    for i in 1..=3u8 {
        let ip = Ipv4Addr::new(127, 0, 11, i);
        nodes.push((format!("e{i}"), free_addr(ip)?, free_addr(ip)?));
    }
    let cluster = nodes
        .iter()
        .map(|(n, _, p)| format!("{n}=https://{p}"))
        .collect::<Vec<_>>()
        .join(",");
    for (i, (name, client, peer)) in nodes.iter().enumerate() {
        // etcd checks a peer's client certificate against the address it connects from,
        // and its peers dial from 127.0.0.1.
        let tls = pki.node(
            name,
            Ipv4Addr::new(127, 0, 11, i as u8 + 1),
            &[Ipv4Addr::LOCALHOST],
        )?;
        let (cert, key, ca) = (
            tls.cert.display().to_string(),
            tls.key.display().to_string(),
            tls.ca.display().to_string(),
        );
        let mut args = vec![
            "--cert-file".into(),
            cert.clone(),
            "--key-file".into(),
            key.clone(),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            ca.clone(),
            "--peer-cert-file".into(),
            cert,
            "--peer-key-file".into(),
            key,
            "--peer-client-cert-auth".into(),
            "--peer-trusted-ca-file".into(),
            ca,
        ];
        args.extend::<Vec<String>>(vec![
            "--name".into(),
            name.clone(),
            "--data-dir".into(),
            dir.join(name).display().to_string(),
            "--listen-client-urls".into(),
            format!("https://{client}"),
            "--advertise-client-urls".into(),
            format!("https://{client}"),
            "--listen-peer-urls".into(),
            format!("https://{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("https://{peer}"),
            "--initial-cluster".into(),
            cluster.clone(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            "bench".into(),
        ]);
        procs
            .0
            .push(spawn(bin, &args, &dir.join(format!("{name}.log")))?);
    }
    let mut leader_url = None;
    let start = Instant::now();
    while leader_url.is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("etcd did not elect a leader");
        }
        for (_, client, _) in &nodes {
            let url = format!("https://{client}");
            let st: Option<serde_json::Value> = match http
                .post(format!("{url}/v3/maintenance/status"))
                .body("{}")
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            if let Some(st) = st {
                let member = st["header"]["member_id"].as_str().map(str::to_string);
                let leader = st["leader"].as_str().map(str::to_string);
                if member.is_some() && member == leader {
                    leader_url = Some(url);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = leader_url.context("etcd leader")?;
    Ok((procs, url))
}

#[derive(Clone, Copy)]
enum Target {
    Chainfire,
    Etcd,
}

/// What one system did over all its rounds at one client count.
#[derive(Default)]
struct Tally {
    lat_us: Vec<u64>,
    errors: u64,
    secs: f64,
    cpu_secs: f64,
}

struct RunResult {
    puts_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Mean, p90 and p99.9 latency (the tail explains a throughput ratio at one client).
    mean_ms: f64,
    p90_ms: f64,
    p999_ms: f64,
    /// Server CPU milliseconds per put.
    cpu_ms_per_put: f64,
    errors: u64,
}

impl Tally {
    fn result(mut self) -> RunResult {
        self.lat_us.sort_unstable();
        let lat = &self.lat_us;
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return f64::NAN;
            }
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i] as f64 / 1000.0
        };
        RunResult {
            puts_per_s: lat.len() as f64 / self.secs,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            mean_ms: lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64 / 1000.0,
            p90_ms: pct(0.90),
            p999_ms: pct(0.999),
            cpu_ms_per_put: self.cpu_secs * 1000.0 / lat.len().max(1) as f64,
            errors: self.errors,
        }
    }
}

async fn put_once(
    http: &reqwest::Client,
    target: Target,
    base: &str,
    key: &str,
    value: &str,
) -> bool {
    let req = match target {
        Target::Chainfire => http
            .put(format!("{base}/v1/kv/{key}"))
            .body(value.to_string()),
        Target::Etcd => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let body = serde_json::json!({"key": b64.encode(key), "value": b64.encode(value)});
            http.post(format!("{base}/v3/kv/put"))
                .body(body.to_string())
        }
    };
    match req.send().await {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// One system under test: how to talk to it, its leader's URL, its processes.
struct System<'a> {
    target: Target,
    base: &'a str,
    procs: &'a Procs,
}

/// Drives `clients` concurrent writers for `measure` and adds what happened to `tally`.
async fn drive(
    http: &reqwest::Client,
    sys: &System<'_>,
    clients: usize,
    value: &str,
    measure: Duration,
    tally: &mut Tally,
) {
    let (target, base, procs) = (sys.target, sys.base, sys.procs);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, base, value, stop) = (
            http.clone(),
            base.to_string(),
            value.to_string(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("bench/{c}/{}", i % 1000);
                let t = Instant::now();
                if put_once(&http, target, &base, &key, &value).await {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let (t, cpu) = (Instant::now(), procs.cpu_secs());
    tokio::time::sleep(measure).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        if let Ok((l, e)) = task.await {
            tally.lat_us.extend(l);
            tally.errors += e;
        }
    }
    tally.secs += t.elapsed().as_secs_f64();
    tally.cpu_secs += procs.cpu_secs() - cpu;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let clients: Vec<usize> = args
        .clients
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .context("--clients must be comma-separated numbers")?;
    let chainfire = match &args.chainfire {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("chainfire-server"),
    };
    if !chainfire.is_file() {
        bail!(
            "{} not found; run `cargo build --release -p chainfire`",
            chainfire.display()
        );
    }
    if !args.etcd.is_file() {
        bail!(
            "{} not found; install Debian's etcd-server",
            args.etcd.display()
        );
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let max_clients = clients.iter().copied().max().unwrap_or(1);
    let pki = Pki {
        ca: ClusterCa::generate("chainfire-bench")?,
        dir: dir.join("pki"),
    };
    let client_cert = pki.client()?;
    // One client for both systems: TLS, presenting the operator certificate.
    let http = client_cert
        .reqwest_builder()?
        .pool_max_idle_per_host(max_clients * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?;

    eprintln!(
        "starting 3 chainfire nodes and 3 etcd nodes under {}, all with TLS and client certificates",
        dir.display()
    );
    let (cf_procs, cf_url) = start_chainfire(&chainfire, &dir, &pki, &client_cert).await?;
    let (etcd_procs, etcd_url) = start_etcd(&args.etcd, &dir, &pki, &http).await?;
    eprintln!("chainfire leader {cf_url}, etcd leader {etcd_url}");

    println!(
        "{:>8} | {:>12} {:>9} {:>9} | {:>12} {:>9} {:>9} | {:>9} {:>9} {:>9}",
        "clients",
        "cf puts/s",
        "cf p50ms",
        "cf p99ms",
        "etcd puts/s",
        "etcd p50",
        "etcd p99",
        "tput x",
        "p50 x",
        "p99 x"
    );
    let value = "x".repeat(args.value_size);
    let rounds = args.rounds.max(1);
    let slice = Duration::from_secs_f64(args.seconds as f64 / f64::from(rounds));
    let mut cpu_lines = Vec::new();
    let cf_sys = System {
        target: Target::Chainfire,
        base: &cf_url,
        procs: &cf_procs,
    };
    let etcd_sys = System {
        target: Target::Etcd,
        base: &etcd_url,
        procs: &etcd_procs,
    };
    for &n in &clients {
        let (mut cf, mut et) = (Tally::default(), Tally::default());
        // Warm-up (not counted), then alternating slices.
        let mut scratch = Tally::default();
        let warm = Duration::from_secs(1);
        drive(&http, &cf_sys, n, &value, warm, &mut scratch).await;
        drive(&http, &etcd_sys, n, &value, warm, &mut scratch).await;
        for _ in 0..rounds {
            drive(&http, &cf_sys, n, &value, slice, &mut cf).await;
            drive(&http, &etcd_sys, n, &value, slice, &mut et).await;
        }
        let (cf, et) = (cf.result(), et.result());
        println!(
            "{:>8} | {:>12.0} {:>9.2} {:>9.2} | {:>12.0} {:>9.2} {:>9.2} | {:>9.2} {:>9.2} {:>9.2}",
            n,
            cf.puts_per_s,
            cf.p50_ms,
            cf.p99_ms,
            et.puts_per_s,
            et.p50_ms,
            et.p99_ms,
            cf.puts_per_s / et.puts_per_s,
            cf.p50_ms / et.p50_ms,
            cf.p99_ms / et.p99_ms
        );
        if cf.errors + et.errors > 0 {
            println!(
                "         (errors: chainfire {}, etcd {})",
                cf.errors, et.errors
            );
        }
        cpu_lines.push(format!(
            "server CPU per put at {n} clients: chainfire {:.3} ms, etcd {:.3} ms, ratio {:.2}",
            cf.cpu_ms_per_put,
            et.cpu_ms_per_put,
            cf.cpu_ms_per_put / et.cpu_ms_per_put
        ));
        cpu_lines.push(format!(
            "latency at {n} clients, mean / p90 / p99.9 ms: chainfire {:.2} / {:.2} / {:.2}, etcd {:.2} / {:.2} / {:.2}",
            cf.mean_ms, cf.p90_ms, cf.p999_ms, et.mean_ms, et.p90_ms, et.p999_ms
        ));
    }
    for l in cpu_lines {
        println!("{l}");
    }
    let (cf_rss, et_rss) = (cf_procs.peak_rss_kib(), etcd_procs.peak_rss_kib());
    println!(
        "peak RSS (3 nodes): chainfire {:.1} MiB, etcd {:.1} MiB, ratio {:.2}",
        cf_rss as f64 / 1024.0,
        et_rss as f64 / 1024.0,
        cf_rss as f64 / et_rss as f64
    );
    println!("(ratios are chainfire / etcd: throughput higher is better, latency and RSS lower is better)");
    drop(cf_procs);
    drop(etcd_procs);
    Ok(())
}
