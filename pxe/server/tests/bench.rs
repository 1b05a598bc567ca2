//! Benchmarks against the anchors (root; ignored by default, run by `pxe/bench/run.sh`):
//!
//! - `bench_boot`: power-on to the guest's `/init` (BIOS VM, QEMU TCG), pxe-server (IPv6 RA on
//!   and off) vs dnsmasq's default setup (DHCP + TFTP, iPXE script, kernel and initrd over TFTP);
//! - `bench_tftp`: 64 MiB, 1 and 16 concurrent curl clients at blksize 1432, vs tftpd-hpa and
//!   dnsmasq; atftp windowsize 16 vs 1 against pxe-server;
//! - `bench_http`: 512 MiB, 16 concurrent curl clients, vs nginx;
//! - `bench_dhcp_burst`: 1,000 simulated PXE clients, vs dnsmasq.
//!
//! Each prints `BENCH …` lines with the figures and ratios (ours ÷ anchor for throughput,
//! anchor ÷ ours for time, so above 1.0 means pxe-server is better).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use plasmacloud_testkit::{require, Need, Process};

fn net() -> (Segment, String, String) {
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/16");
    let cli = attach_client(&mut rack, "cli", "52:54:00:ff:00:09", Some("10.77.0.50/16"));
    (rack, srv, cli)
}

/// A benchmark's skip rule: root and every one of `tools`.
fn needs_root_and(test: &str, tools: &[&str]) -> bool {
    let mut needs = vec![Need::Root];
    needs.extend(tools.iter().map(|t| Need::Tool(t)));
    require(test, &needs)
}

fn fx(kernel: &[u8], initrd: &[u8], overlay: &dyn Fn(&str) -> Vec<u8>) -> Fixture {
    Fixture::new(kernel, initrd, "console=ttyS0 panic=-1", overlay)
}

/// dnsmasq on `srv0` in `srv` with `args`, its pid file and log in the fixture's directory.
fn dnsmasq(srv: &str, f: &Fixture, args: &[&str]) -> Process {
    let pid = format!("--pid-file={}", f.d.join("dm.pid").display());
    let mut all = args.to_vec();
    all.push(&pid);
    spawn_dnsmasq(srv, "srv0", &all, &f.d.join("dm.log"))
}

/// Runs `n` copies of `args` in `ns` at once; returns the wall time for all.
fn parallel(ns: &str, n: usize, args: &dyn Fn(usize) -> Vec<String>) -> f64 {
    let t0 = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            let a = args(i);
            netns::command_in(ns, &a[0])
                .args(&a[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    t0.elapsed().as_secs_f64()
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// Waits until something listens on `port` in `ns`; `proto` is `u` (UDP) or `t` (TCP).
fn wait_port(ns: &str, proto: char, port: u16) {
    plasmacloud_testkit::wait_until(
        &format!("{proto}{port} to listen in {ns}"),
        Duration::from_secs(10),
        || {
            let (_, out) = try_sh_in(ns, &["ss", &format!("-{proto}ln")]);
            out.contains(&format!(":{port} ")).then_some(())
        },
    )
    .unwrap();
}

fn tftp_round(cli: &str, d: &Path, file: &str, size: u64, label: &str) -> (f64, f64) {
    let one = parallel(cli, 1, &|_| {
        vec![
            "curl".into(),
            "-sS".into(),
            "--tftp-blksize".into(),
            "1432".into(),
            "-o".into(),
            d.join("o0").display().to_string(),
            format!("tftp://10.77.0.1/{file}"),
        ]
    });
    let got = std::fs::metadata(d.join("o0"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(got, size, "{label}: short download");
    let sixteen = parallel(cli, 16, &|i| {
        vec![
            "curl".into(),
            "-sS".into(),
            "--tftp-blksize".into(),
            "1432".into(),
            "-o".into(),
            "/dev/null".into(),
            format!("tftp://10.77.0.1/{file}"),
        ]
        .into_iter()
        .chain(std::iter::once(format!("-w{i}")).filter(|_| false))
        .collect()
    });
    let r1 = mib_s(size, one);
    let r16 = mib_s(size * 16, sixteen);
    println!("BENCH tftp {label}: 1 client {r1:.1} MiB/s ({one:.2} s), 16 clients {r16:.1} MiB/s aggregate ({sixteen:.2} s)");
    (r1, r16)
}

#[test]
#[ignore = "benchmark: run pxe/bench/run.sh"]
fn bench_tftp() {
    if !needs_root_and("bench_tftp", &["curl", "in.tftpd", "dnsmasq", "atftp"]) {
        return;
    }
    let f = fx(b"k", b"i", &overlay_bytes);
    let size: u64 = 64 * 1024 * 1024;
    std::fs::write(f.ipxe.join("big.bin"), pattern(size as usize, 7)).unwrap();
    let (rack, srv, cli) = net();

    // pxe-server (proxy mode: TFTP without RA; DHCP idle); the 16 clients share one address,
    // above the default per-address cap of 8
    let args = f.server_args(
        "proxy",
        &f.d.join("state"),
        &["--log-format", "json", "--tftp-max-per-client", "16"],
    );
    let server = start_server(&srv, &args, &f.d.join("srv.log"));
    let ours = tftp_round(&cli, &f.d, "big.bin", size, "pxe-server");
    let mut ws = Vec::new();
    for w in [1u32, 16] {
        let t = parallel(&cli, 1, &|_| {
            vec![
                "atftp".into(),
                "--option".into(),
                "blksize 1432".into(),
                "--option".into(),
                format!("windowsize {w}"),
                "-g".into(),
                "-r".into(),
                "big.bin".into(),
                "-l".into(),
                f.d.join("aw").display().to_string(),
                "10.77.0.1".into(),
            ]
        });
        assert_eq!(std::fs::metadata(f.d.join("aw")).unwrap().len(), size);
        ws.push(mib_s(size, t));
    }
    println!("BENCH tftp pxe-server atftp blksize 1432: windowsize 1 {:.1} MiB/s, windowsize 16 {:.1} MiB/s, gain {:.2}x", ws[0], ws[1], ws[1] / ws[0]);
    drop(server);

    // tftpd-hpa
    let hpa = Process::spawn(
        "in.tftpd",
        exec(
            &srv,
            &[
                "in.tftpd",
                "-L",
                "-s",
                f.ipxe.to_str().unwrap(),
                "--address",
                "10.77.0.1:69",
            ],
        ),
        &f.d.join("hpa.log"),
    )
    .unwrap();
    wait_port(&srv, 'u', 69);
    let hpa_r = tftp_round(&cli, &f.d, "big.bin", size, "tftpd-hpa");
    drop(hpa);

    // dnsmasq (TFTP only)
    let root = format!("--tftp-root={}", f.ipxe.display());
    let dm = dnsmasq(&srv, &f, &["--enable-tftp", &root]);
    wait_port(&srv, 'u', 69);
    let dm_r = tftp_round(&cli, &f.d, "big.bin", size, "dnsmasq");
    drop(dm);
    println!(
        "BENCH tftp ratio pxe-server/tftpd-hpa: 1 client {:.2}x, 16 clients {:.2}x; pxe-server/dnsmasq: 1 client {:.2}x, 16 clients {:.2}x",
        ours.0 / hpa_r.0,
        ours.1 / hpa_r.1,
        ours.0 / dm_r.0,
        ours.1 / dm_r.1
    );
    drop(rack);
}

#[test]
#[ignore = "benchmark: run pxe/bench/run.sh"]
fn bench_http() {
    if !needs_root_and("bench_http", &["curl", "nginx"]) {
        return;
    }
    let f = fx(b"k", b"i", &overlay_bytes);
    let size: u64 = 512 * 1024 * 1024;
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(f.ipxe.join("big.img")).unwrap());
        let chunk = pattern(1 << 20, 9);
        for _ in 0..512 {
            w.write_all(&chunk).unwrap();
        }
    }
    let (rack, srv, cli) = net();
    // Returns (aggregate MiB/s, server CPU seconds per GiB served).
    let run16 = |url: &str, label: &str, pid: u32| -> (f64, f64) {
        // warm the page cache and check the size once
        let (_, n) = curl(&cli, &["-o", "/dev/null", "-w", "%{size_download}", url]);
        assert_eq!(n.trim(), size.to_string(), "{label}");
        let cpu0 = tree_cpu_secs(pid);
        let cli0 = children_cpu_secs();
        let t = parallel(&cli, 16, &|_| {
            vec![
                "curl".into(),
                "-sS".into(),
                "-o".into(),
                "/dev/null".into(),
                url.to_string(),
            ]
        });
        let cpu = (tree_cpu_secs(pid) - cpu0) / 8.0; // 16 x 512 MiB = 8 GiB
        let cli_cpu = (children_cpu_secs() - cli0) / 8.0;
        let r = mib_s(size * 16, t);
        println!("BENCH http {label}: 16 clients x 512 MiB {r:.0} MiB/s aggregate ({t:.2} s), CPU s/GiB: server {cpu:.2}, curl clients {cli_cpu:.2}");
        (r, cpu)
    };
    let args = f.server_args("proxy", &f.d.join("state"), &["--log-format", "json"]);
    let server = start_server(&srv, &args, &f.d.join("srv.log"));
    // nginx beside it on another port, so the rounds can alternate: the machine's load (other
    // builds, VMs) moves by tens of per cent within seconds, and alternating exposes both
    // servers to the same drift.
    let conf = f.d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\nevents {{ worker_connections 1024; }}\nhttp {{ access_log off; sendfile on; tcp_nopush on; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d}; server {{ listen 10.77.0.1:8090; root {root}; }} }}\n",
            d = f.d.display(),
            root = f.ipxe.display()
        ),
    )
    .unwrap();
    let ng = Process::spawn(
        "nginx",
        exec(
            &srv,
            &[
                "nginx",
                "-c",
                conf.to_str().unwrap(),
                "-p",
                f.d.to_str().unwrap(),
            ],
        ),
        &f.d.join("nginx.log"),
    )
    .unwrap();
    wait_port(&srv, 't', 8090);
    let rounds: usize = std::env::var("PXE_BENCH_HTTP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (ours_pid, ng_pid) = (server.proc.pid().unwrap(), ng.pid().unwrap());
    let mut ratios = Vec::new();
    for r in 0..rounds {
        let run_ours = || run16("http://10.77.0.1:8081/ipxe/big.img", "pxe-server", ours_pid);
        let run_nginx = || run16("http://10.77.0.1:8090/big.img", "nginx", ng_pid);
        // alternate which goes first
        let (ours, nginx) = if r % 2 == 0 {
            let o = run_ours();
            (o, run_nginx())
        } else {
            let n = run_nginx();
            (run_ours(), n)
        };
        println!(
            "BENCH http round {}: pxe-server {:.0} MiB/s, nginx {:.0} MiB/s, ratio {:.2}x; server CPU {:.2} vs {:.2} s/GiB",
            r + 1,
            ours.0,
            nginx.0,
            ours.0 / nginx.0,
            ours.1,
            nginx.1
        );
        ratios.push(ours.0 / nginx.0);
    }
    drop(ng);
    drop(server);
    ratios.sort_by(f64::total_cmp);
    println!(
        "BENCH http ratio pxe-server/nginx: median {:.2}x (min {:.2}x, max {:.2}x, {rounds} alternating rounds)",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    drop(rack);
}

/// User + system CPU seconds of `pid` and its direct children (nginx's workers).
fn tree_cpu_secs(pid: u32) -> f64 {
    let ticks = |p: &str| stat_ticks(p, 11);
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let total: f64 = ticks(&pid.to_string()) + children.split_whitespace().map(ticks).sum::<f64>();
    total / 100.0 // USER_HZ
}

/// Two consecutive CPU-tick fields of /proc/`p`/stat, counted from the field after the `)`
/// that closes comm (state is 0: utime+stime at 11, children's cutime+cstime at 13).
fn stat_ticks(p: &str, first: usize) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    get(first) + get(first + 1)
}

/// CPU seconds of this process's reaped children (the curl clients).
fn children_cpu_secs() -> f64 {
    stat_ticks("self", 13) / 100.0
}

fn burst(cli: &str, n: usize) -> serde_json::Value {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/dhcp_burst.py");
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        cli,
        "python3",
        py.to_str().unwrap(),
        "cli0",
        &n.to_string(),
    ]);
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
#[ignore = "benchmark: run pxe/bench/run.sh"]
fn bench_dhcp_burst() {
    if !needs_root_and("bench_dhcp_burst", &["python3", "dnsmasq"]) {
        return;
    }
    let n = 1000;
    let f = fx(b"k", b"i", &overlay_bytes);
    let (mut rack, srv, _) = net();
    let burst_ns = attach_client(&mut rack, "burst", "52:54:00:ff:00:0a", None);
    let args = f.server_args(
        "full",
        &f.d.join("state"),
        &[
            "--dhcp-range",
            "10.77.1.0-10.77.5.255",
            "--log-format",
            "json",
            "--ipv6-ra",
            "off",
        ],
    );
    let mut cmd_server = start_server(&srv, &args, &f.d.join("srv.log"));
    let ours = burst(&burst_ns, n);
    println!("BENCH dhcp burst pxe-server: {ours}");
    assert_eq!(ours["acked"], n, "{ours}");
    assert_eq!(ours["unique_addresses"], n, "{ours}");
    assert_eq!(ours["bad_bootfile"], 0, "{ours}");
    cmd_server.proc.kill();
    let leases = format!("--dhcp-leasefile={}", f.d.join("dm.leases").display());
    let dm = dnsmasq(
        &srv,
        &f,
        &[
            "--dhcp-range=10.77.1.0,10.77.5.255,255.255.0.0,1h",
            "--dhcp-boot=undionly.kpxe",
            "--dhcp-lease-max=5000",
            &leases,
        ],
    );
    wait_port(&srv, 'u', 67);
    let theirs = burst(&burst_ns, n);
    println!("BENCH dhcp burst dnsmasq: {theirs}");
    drop(dm);
    let a = ours["seconds"].as_f64().unwrap();
    let b = theirs["seconds"].as_f64().unwrap();
    println!(
        "BENCH dhcp burst ratio (dnsmasq time / pxe-server time): {:.2}x",
        b / a
    );
    drop(rack);
}

fn boot_once(rack: &Segment, d: &Path, tag: &str, node: usize) -> f64 {
    let serial = d.join(format!("serial-{tag}.log"));
    let t0 = Instant::now();
    let mut vm = start_vm(rack, "tap0", NODES[node].1, Firmware::Bios, d, &serial);
    // When each stage first shows on the serial console (whatever the firmware prints there).
    let stages = ["iPXE", "PlasmaCloud netboot", "Linux version", INIT_MARKER];
    let mut seen: Vec<Option<f64>> = vec![None; stages.len()];
    let secs = plasmacloud_testkit::wait_until(
        "serial console to show the init marker",
        Duration::from_secs(180),
        || {
            let text = std::fs::read(&serial).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            for (s, t) in stages.iter().zip(seen.iter_mut()) {
                if t.is_none() && text.contains(s) {
                    *t = Some(t0.elapsed().as_secs_f64());
                }
            }
            seen[stages.len() - 1]
        },
    )
    .unwrap();
    vm.kill();
    let marks: Vec<String> = stages
        .iter()
        .zip(&seen)
        .filter_map(|(s, t)| t.map(|t| format!("{s:?} {t:.1} s")))
        .collect();
    println!(
        "BENCH boot {tag}: power-on to /init {secs:.1} s (first seen on serial: {})",
        marks.join(", ")
    );
    secs
}

#[test]
#[ignore = "benchmark: run pxe/bench/run.sh"]
fn bench_boot() {
    if !needs_root_and("bench_boot", &["qemu-system-x86_64", "dnsmasq"]) {
        return;
    }
    let kernel = std::fs::read(debian_kernel().expect("linux-image-amd64")).unwrap();
    let initrd = test_initrd();
    let f = fx(&kernel, &initrd, &test_overlay);
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    rack.tap("tap0").unwrap();
    let mut times = Vec::new();
    for (tag, ra) in [
        ("pxe-server (ipv6-ra on)", "on"),
        ("pxe-server (ipv6-ra off)", "off"),
    ] {
        let state = f.d.join(format!("state-{ra}"));
        let args = f.server_args(
            "full",
            &state,
            &["--dhcp-range", "10.77.0.100-10.77.0.150", "--ipv6-ra", ra],
        );
        let server = start_server(&srv, &args, &f.d.join(format!("srv-{ra}.log")));
        times.push(boot_once(&rack, &f.d, tag, 0));
        drop(server);
    }
    // dnsmasq's default PXE setup: DHCP + TFTP; iPXE gets boot.ipxe over TFTP, which loads the
    // kernel and initrds over TFTP too.
    let root = f.d.join("dnsmasq-root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(root.join("initrd.img"), &initrd).unwrap();
    std::fs::write(root.join("node.cpio"), test_overlay(NODES[0].0)).unwrap();
    std::fs::copy(f.ipxe.join("undionly.kpxe"), root.join("undionly.kpxe")).unwrap();
    std::fs::write(
        root.join("boot.ipxe"),
        "#!ipxe\nkernel vmlinuz initrd=initrd.img initrd=node.cpio console=ttyS0 panic=-1\ninitrd initrd.img\ninitrd node.cpio\nboot\n",
    )
    .unwrap();
    let tftp_root = format!("--tftp-root={}", root.display());
    let leases = format!("--dhcp-leasefile={}", f.d.join("dm.leases").display());
    let dm = dnsmasq(
        &srv,
        &f,
        &[
            "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
            "--enable-tftp",
            &tftp_root,
            "--dhcp-userclass=set:ipxe,iPXE",
            "--dhcp-boot=tag:!ipxe,undionly.kpxe",
            "--dhcp-boot=tag:ipxe,boot.ipxe",
            &leases,
        ],
    );
    wait_port(&srv, 'u', 67);
    let dm_t = boot_once(&rack, &f.d, "dnsmasq (DHCP+TFTP default)", 0);
    drop(dm);
    println!(
        "BENCH boot ratio pxe-server/dnsmasq (time, lower is better): ra on {:.2}x, ra off {:.2}x",
        times[0] / dm_t,
        times[1] / dm_t
    );
    drop(rack);
}
