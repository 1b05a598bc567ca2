//! Replacing the bundle under a running pxe-server (root, network namespaces): bundles written
//! side by side behind a symlink are swapped back and forth (SIGHUP, and the manifest poll)
//! while curl clients download kernels and initrds in a loop: no download fails and every one
//! is byte-for-byte one bundle's file. A bad bundle (a file whose sha256 is not the manifest's,
//! a contract of another cluster) is refused with a log line and the old one keeps serving. A
//! node's script names its bundle's version, so a boot that began before a swap finishes on
//! its bundle; a download that began on the old bundle finishes from its files even after its
//! directory is deleted; `/v1/status` shows which bundle each node booted.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use plasmacloud_testkit::{require, wait_until, Need, Process};
use sha2::{Digest, Sha256};

const CONFIGURE_SCRIPT: &str =
    "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/24\" dev \"$interface\"\nexit 0\n";

/// A download loop: `client.sh N URL DIR STOPFILE [CURL ARGS…]` fetches URL until STOPFILE
/// exists, appending "<http code> <sha256>" (or "curl-failed-<exit>") per download to
/// DIR/cN.log.
const CLIENT_SH: &str = r#"#!/bin/sh
n=$1; url=$2; dir=$3; stop=$4; shift 4
while [ ! -e "$stop" ]; do
  code=$(curl -sS --max-time 60 "$@" -o "$dir/c$n.bin" -w '%{http_code}' "$url") || code="curl-failed-$?"
  echo "$code $(sha256sum < "$dir/c$n.bin" | cut -d' ' -f1)" >> "$dir/c$n.log"
done
"#;

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// One bundle written for the test: its directory, version (manifest sha256), file digests.
struct Made {
    dir: PathBuf,
    version: String,
    kernel: String,
    initrd: String,
}

fn make_bundle(parent: &Path, cluster: &Path, seed: u64) -> Made {
    let kernel = pattern(4 * 1024 * 1024 + seed as usize, seed);
    let initrd = pattern(8 * 1024 * 1024 + seed as usize, seed + 1);
    std::fs::create_dir_all(parent).unwrap();
    let dir = write_bundle_with(
        parent,
        cluster,
        &kernel,
        &initrd,
        "console=ttyS0",
        &overlay_bytes,
    );
    let version = sha256_hex(&std::fs::read(dir.join("manifest.json")).unwrap());
    Made {
        dir,
        version,
        kernel: sha256_hex(&kernel),
        initrd: sha256_hex(&initrd),
    }
}

/// Points the symlink `link` at `target` in one step (a new link renamed over the old one).
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

fn hup(server: &Server) {
    sh(&["kill", "-HUP", &server.proc.pid().unwrap().to_string()]);
}

fn count(server: &Server, needle: &str) -> usize {
    server.proc.output().matches(needle).count()
}

/// Waits for the `n`-th log line containing `needle`; the seconds it took.
fn wait_count(server: &Server, needle: &str, n: usize, deadline: Duration) -> f64 {
    let t = Instant::now();
    wait_until(&format!("{n} × {needle:?} in the log"), deadline, || {
        (count(server, needle) >= n).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.proc.output()));
    t.elapsed().as_secs_f64()
}

fn lines_of(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..8 {
        if let Ok(t) = std::fs::read_to_string(dir.join(format!("c{i}.log"))) {
            out.extend(t.lines().map(String::from));
        }
    }
    out
}

#[test]
fn bundles_swap_under_load_with_no_failed_or_mixed_download() {
    if !require(
        "bundles_swap_under_load_with_no_failed_or_mixed_download",
        &[
            Need::Root,
            Need::Tool("curl"),
            Need::Tool("udhcpc"),
            Need::Tool("sha256sum"),
        ],
    ) {
        return;
    }
    let fx = Fixture::new(b"k", b"i", "console=ttyS0", &overlay_bytes);
    let d = fx.d.as_path();
    let a = make_bundle(&d.join("a"), &fx.cluster, 11);
    let b = make_bundle(&d.join("b"), &fx.cluster, 21);
    let current = d.join("current");
    point(&current, &a.dir);
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let n1 = attach_client(&mut rack, "n1", NODES[0].1, None);
    let cli = attach_client(&mut rack, "cli", "52:54:00:cc:00:70", Some("10.77.0.70/24"));
    let state = d.join("state");
    let args = server_args(
        "full",
        &fx.cluster,
        &current,
        &fx.ipxe,
        &state,
        &["--ipv6-ra", "off"],
    );
    let server = start_server(&srv, &args, &d.join("server.log"));
    assert!(
        server.proc.output().contains(&a.version),
        "the ready line names the bundle"
    );
    let op = issue_operator(&state, "tests", &d.join("op"));
    let status = || -> serde_json::Value {
        let (ok, s) = curl_as(&srv, &op, &[&mgmt_url("/v1/status")]);
        assert!(ok, "{s}");
        serde_json::from_str(&s).unwrap()
    };
    let fetch = |ns: &str, url: &str, extra: &[&str]| -> String {
        let out = d.join(format!("fetch-{}.bin", sha256_hex(url.as_bytes())));
        let mut args = extra.to_vec();
        let o = out.to_str().unwrap().to_string();
        args.extend(["-o", &o, "-w", "%{http_code}", url]);
        let (ok, code) = curl(ns, &args);
        assert!(ok && code == "200", "{url}: {code}");
        sha256_hex(&std::fs::read(&out).unwrap())
    };
    let kernel_url = "http://10.77.0.1:8081/files/vmlinuz";
    let initrd_url = "http://10.77.0.1:8081/files/initrd.img";
    assert_eq!(status()["bundle"]["version"], a.version.as_str());

    eprintln!("phase: node01 boots from bundle A: its script names A's version, its kernel fetch records it");
    let script = d.join("configure.sh");
    write_script(&script, CONFIGURE_SCRIPT);
    let (ok, log) = udhcpc_once(&n1, &script, 6, Some(BIOS_PXE_CLIENT), &[]);
    assert!(ok, "udhcpc: {log}");
    let script_url = "http://10.77.0.1:8081/boot/52-54-00-aa-00-01.ipxe";
    let kernel_of = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("kernel "))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .to_string()
    };
    let (ok, text_a) = curl(&n1, &[script_url]);
    assert!(ok, "{text_a}");
    let kurl_a = kernel_of(&text_a);
    assert_eq!(
        kurl_a,
        format!("http://10.77.0.1:8081/b/{}/vmlinuz", a.version)
    );

    eprintln!("phase: swapped to B before node01 fetched its kernel: the script's URLs still give A's files");
    point(&current, &b.dir);
    hup(&server);
    wait_count(&server, "bundle loaded", 1, Duration::from_secs(10));
    assert_eq!(status()["bundle"]["version"], b.version.as_str());
    assert_eq!(
        fetch(&n1, &kurl_a, &[]),
        a.kernel,
        "a boot stays on its script's bundle"
    );
    assert_eq!(fetch(&cli, kernel_url, &[]), b.kernel, "new fetches get B");
    let st = status();
    let node01 = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node01")
        .unwrap()
        .clone();
    assert_eq!(node01["bundle"]["version"], a.version.as_str(), "{st}");
    assert_eq!(st["bundle"]["retained"][0], a.version.as_str(), "{st}");
    let (_, ev) = curl_as(&srv, &op, &[&mgmt_url("/v1/events")]);
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    let kernel_ev = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["phase"] == "kernel" && e["node"] == "node01")
        .unwrap_or_else(|| panic!("no kernel event for node01: {ev}"));
    assert_eq!(kernel_ev["bundle"], a.version.as_str(), "{kernel_ev}");
    let (ok, text_b) = curl(&n1, &[script_url]);
    assert!(ok);
    let kurl_b = kernel_of(&text_b);
    assert!(kurl_b.contains(&b.version), "{kurl_b}");
    assert_eq!(fetch(&n1, &kurl_b, &[]), b.kernel);
    let st = status();
    let node01 = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node01")
        .unwrap()
        .clone();
    assert_eq!(node01["bundle"]["version"], b.version.as_str(), "{st}");

    eprintln!("phase: 4 curl clients loop on kernels and initrds while the bundle is swapped 30 times (SIGHUP)");
    let client = d.join("client.sh");
    write_script(&client, CLIENT_SH);
    let logs = d.join("clients");
    std::fs::create_dir_all(&logs).unwrap();
    let stop = d.join("stop");
    let specs: [(&str, &[&str]); 4] = [
        (kernel_url, &[]),
        (initrd_url, &[]),
        (kernel_url, &["--limit-rate", "20M"]),
        (initrd_url, &["--limit-rate", "40M"]),
    ];
    let mut clients: Vec<Process> = specs
        .iter()
        .enumerate()
        .map(|(i, (url, extra))| {
            let n = i.to_string();
            let mut args = vec![
                client.to_str().unwrap(),
                &n,
                url,
                logs.to_str().unwrap(),
                stop.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            Process::spawn(
                &format!("client{i}"),
                exec(&cli, &args),
                &d.join(format!("client{i}.out")),
            )
            .unwrap()
        })
        .collect();
    let rounds = 30;
    let mut load_secs = Vec::new();
    let t_load = Instant::now();
    for round in 0..rounds {
        let target = if round % 2 == 0 { &a } else { &b };
        let before = lines_of(&logs).len();
        point(&current, &target.dir);
        hup(&server);
        load_secs.push(wait_count(
            &server,
            "bundle loaded",
            2 + round,
            Duration::from_secs(10),
        ));
        // Downloads under way on both sides of the swap: wait for a few more to finish.
        wait_until("downloads after the swap", Duration::from_secs(30), || {
            (lines_of(&logs).len() >= before + 4).then_some(())
        })
        .unwrap();
    }
    let swap_secs = t_load.elapsed().as_secs_f64();
    std::fs::write(&stop, b"").unwrap();
    for c in &mut clients {
        c.wait_exit(Duration::from_secs(60)).unwrap();
    }
    let lines = lines_of(&logs);
    let (mut from_a, mut from_b, mut bad) = (0, 0, Vec::new());
    for (i, (url, _)) in specs.iter().enumerate() {
        let text = std::fs::read_to_string(logs.join(format!("c{i}.log"))).unwrap();
        let (wa, wb) = if url.ends_with("vmlinuz") {
            (&a.kernel, &b.kernel)
        } else {
            (&a.initrd, &b.initrd)
        };
        for l in text.lines() {
            match l.split_once(' ') {
                Some(("200", sha)) if sha == wa.as_str() => from_a += 1,
                Some(("200", sha)) if sha == wb.as_str() => from_b += 1,
                _ => bad.push(format!("client {i}: {l}")),
            }
        }
    }
    eprintln!(
        "measured: {} downloads over {rounds} swaps in {swap_secs:.1} s ({from_a} from A, {from_b} from B), {} failed or mixed; each swap loaded in {:.2}–{:.2} s after SIGHUP",
        lines.len(),
        bad.len(),
        load_secs.iter().cloned().fold(f64::MAX, f64::min),
        load_secs.iter().cloned().fold(0.0, f64::max),
    );
    assert!(bad.is_empty(), "failed or mixed downloads: {bad:?}");
    assert!(from_a > 0 && from_b > 0, "both bundles were served");
    assert_eq!(count(&server, "bundle refused"), 0);

    eprintln!("phase: the manifest poll alone notices a swap (no signal)");
    let now = status()["bundle"]["version"].as_str().unwrap().to_string();
    let target = if now == a.version { &b } else { &a };
    let loaded = count(&server, "bundle loaded");
    point(&current, &target.dir);
    let poll_secs = wait_count(
        &server,
        "bundle loaded",
        loaded + 1,
        Duration::from_secs(10),
    );
    assert!(server.proc.output().contains("manifest.json changed"));
    assert_eq!(status()["bundle"]["version"], target.version.as_str());
    eprintln!("measured: the poll loaded the new bundle {poll_secs:.2} s after the symlink flip");
    assert!(poll_secs < 5.0);
    let good = target;

    eprintln!(
        "phase: a bundle whose kernel is not the manifest's is refused; the old one keeps serving"
    );
    let bad_bundle = make_bundle(&d.join("bad"), &fx.cluster, 31);
    let k = std::fs::read(bad_bundle.dir.join("vmlinuz")).unwrap();
    std::fs::write(bad_bundle.dir.join("vmlinuz"), pattern(k.len(), 99)).unwrap();
    point(&current, &bad_bundle.dir);
    hup(&server);
    wait_count(&server, "bundle refused", 1, Duration::from_secs(10));
    let log = server.proc.output();
    assert!(
        log.contains("vmlinuz: has sha256")
            && log.contains(&format!("still serving {}", &good.version[..12])),
        "{log}"
    );
    assert_eq!(status()["bundle"]["version"], good.version.as_str());
    assert_eq!(fetch(&cli, kernel_url, &[]), good.kernel);
    let (_, m) = curl_as(&srv, &op, &[&mgmt_url("/metrics")]);
    assert!(
        m.contains("pxe_bundle_reloads_total{result=\"refused\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "pxe_bundle_info{{version=\"{}\"}} 1",
            good.version
        )),
        "{m}"
    );

    eprintln!("phase: a contract of another cluster is refused too");
    point(&current, &good.dir);
    let original = std::fs::read(&fx.cluster).unwrap();
    let mut other: serde_json::Value = serde_json::from_slice(&original).unwrap();
    other["cluster"]["id"] = "another-cluster".into();
    std::fs::write(&fx.cluster, serde_json::to_vec_pretty(&other).unwrap()).unwrap();
    hup(&server);
    wait_count(&server, "bundle refused", 2, Duration::from_secs(10));
    assert!(
        server.proc.output().contains("was built for cluster"),
        "{}",
        server.proc.output()
    );
    std::fs::write(&fx.cluster, &original).unwrap();
    assert_eq!(fetch(&cli, kernel_url, &[]), good.kernel);

    eprintln!("phase: a download begun on the old bundle finishes from its files after its directory is deleted");
    let old = good;
    let new = if old.version == a.version { &b } else { &a };
    let slow_out = d.join("slow.bin");
    let mut slow = Process::spawn(
        "slow",
        exec(
            &cli,
            &[
                "curl",
                "-sS",
                "--limit-rate",
                "2M",
                "-o",
                slow_out.to_str().unwrap(),
                initrd_url,
            ],
        ),
        &d.join("slow.log"),
    )
    .unwrap();
    wait_until(
        "the slow download to begin",
        Duration::from_secs(10),
        || (std::fs::metadata(&slow_out).map(|m| m.len()).unwrap_or(0) > 0).then_some(()),
    )
    .unwrap();
    let loaded = count(&server, "bundle loaded");
    point(&current, &new.dir);
    hup(&server);
    wait_count(
        &server,
        "bundle loaded",
        loaded + 1,
        Duration::from_secs(10),
    );
    std::fs::remove_dir_all(&old.dir).unwrap();
    assert_eq!(
        slow.wait_exit(Duration::from_secs(30)).unwrap(),
        Some(0),
        "{}",
        slow.output()
    );
    assert_eq!(sha256_hex(&std::fs::read(&slow_out).unwrap()), old.initrd);
    let versioned = format!("http://10.77.0.1:8081/b/{}/initrd.img", old.version);
    assert_eq!(
        fetch(&cli, &versioned, &[]),
        old.initrd,
        "the replaced bundle is served from its open files"
    );
    drop(server);
    drop(rack);
}
