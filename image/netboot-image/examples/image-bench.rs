//! Benchmarks of issue 7, as ratios measured side by side in one run:
//!
//! 1. overlays for a 1,000-node contract (the contract and each node's identity file; bundles
//!    carry no secrets since contract version 2): total time and bytes;
//! 2. appliance from cold (packing an existing tree; debootstrap excluded) vs
//!    `find . | cpio -o -H newc | zstd -3 -T0` over the same files (the tree minus what the
//!    appliance leaves out, `PACK_OMIT`, pruned from the `find`) (speed-up, ≥ 1.0 wanted);
//! 3. rebuild after changing one binary vs the cold build of the full appliance (tree, modules,
//!    three binaries, units): ≤ 0.1 wanted. Medians: 3 cold builds into fresh caches, 6 rebuilds
//!    each after changing one binary (a different one each time).
//!
//! ```text
//! cargo run --release -p netboot-image --example image-bench -- \
//!     [--rootfs /var/cache/plasmacloud/rootfs-…] [--kernel /boot/vmlinuz-…] [--nodes 1000]
//! ```

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use netboot_image::appliance::{
    build_appliance, rootfs_cache_dir, ApplianceSpec, RootfsSource, DEFAULT_BINDIR, DEFAULT_MIRROR,
    DEFAULT_PACKAGES, DEFAULT_SUITE, PACK_OMIT,
};
use netboot_image::bundle::{build_bundle, BaseImage, BundleSpec};
use netboot_image::elf::DEFAULT_LIB_DIRS;
use netboot_image::modules::DEFAULT_MODULES;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn newest(dir: &str, prefix: &str) -> Option<PathBuf> {
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(prefix) && !n.contains(".tmp") && !n.ends_with(".json")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    v.sort();
    v.pop().map(|(_, p)| p)
}

/// The argon2id hash of the example admin password (examples/cluster-3.json's).
const ADMIN_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$FCXPgIi1gahS52F7DaMVyw$hXfRVp9txfuCxGVwuE6RSUMu9bH/wtIf/qfEhEWbgWM";

fn contract(n: usize) -> String {
    let voters = netboot_image_voters(n);
    let nodes: Vec<String> = (0..n)
        .map(|i| {
            let role = if i < voters { "control-plane" } else { "worker" };
            format!(
                r#"{{"name":"node{i:04}","mac":"52:54:00:00:{:02x}:{:02x}","ipv4":"10.1.{}.{}","roles":["{role}"]}}"#,
                i / 256,
                i % 256,
                i / 250,
                i % 250 + 2,
            )
        })
        .collect();
    let voter_names: Vec<String> = (0..voters).map(|i| format!("\"node{i:04}\"")).collect();
    format!(
        r#"{{"version":2,"cluster":{{"name":"bench","id":"plasmacloud-bench"}},"boot_server":{{"address":"10.250.0.1"}},"initial_voters":[{}],"iam":{{"admin":{{"username":"admin","password_hash":"{ADMIN_HASH}"}}}},"nodes":[{}]}}"#,
        voter_names.join(","),
        nodes.join(",")
    )
}

fn netboot_image_voters(n: usize) -> usize {
    plasmacloud_contract::voter_count_for_rack(n)
}

/// CPU seconds (user + system) of this process and of its waited-for children, from
/// /proc/self/stat (clock ticks of 1/100 s).
fn cpu_seconds() -> (f64, f64) {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // After the ")": state is [0]; utime [11], stime [12], cutime [13], cstime [14].
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0) / 100.0;
    (get(11) + get(12), get(13) + get(14))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    // `RUST_LOG=netboot_image=debug` shows each layer's packing time.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let n: usize = arg("--nodes").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let work = tempfile::tempdir_in(arg("--work").unwrap_or_else(|| "/var/tmp".into())).unwrap();
    let w = work.path();

    // 1. Overlays for n nodes.
    let text2 = contract(n);
    fs::write(w.join("cluster.json"), &text2).unwrap();
    fs::write(w.join("bzImage"), vec![1u8; 1 << 20]).unwrap();
    fs::write(w.join("initrd"), vec![2u8; 1 << 20]).unwrap();
    let spec = BundleSpec {
        cluster: w.join("cluster.json"),
        base: BaseImage {
            kernel: w.join("bzImage"),
            initrd: w.join("initrd"),
            cmdline: "console=ttyS0".into(),
        },
        out: w.join("bundle"),
        jobs: 0,
    };
    let t = Instant::now();
    let m = build_bundle(&spec).unwrap();
    let overlay_time = t.elapsed();
    let overlays: Vec<_> = m
        .files
        .iter()
        .filter(|f| f.path.starts_with("overlay-"))
        .collect();
    let bytes: u64 = overlays.iter().map(|f| f.size).sum();
    println!(
        "overlays: {} nodes in {:.2} s ({:.2} ms/node), {} bytes total ({} B/overlay avg), contract {} bytes",
        overlays.len(),
        secs(overlay_time),
        secs(overlay_time) * 1000.0 / n as f64,
        bytes,
        bytes / overlays.len().max(1) as u64,
        text2.len()
    );

    // 2. Appliance from cold vs find | cpio | zstd -3 -T0 over the same tree.
    let Some(rootfs) = arg("--rootfs")
        .map(PathBuf::from)
        .or_else(|| newest("/var/cache/plasmacloud", "rootfs-"))
    else {
        println!("appliance: no root filesystem (pass --rootfs, or build one with netboot-image appliance --debootstrap)");
        return;
    };
    // Warm the page cache for both contenders.
    Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && tar cf - . > /dev/null", rootfs.display()))
        .status()
        .unwrap();
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut our_bytes = 0;
    let mut base_bytes = 0;
    let (mut our_cpu, mut base_cpu) = (0.0, 0.0);
    let rounds = 5;
    // The same files as ours: prune what the appliance leaves out.
    let prune = PACK_OMIT
        .iter()
        .map(|p| format!("-path ./{p}"))
        .collect::<Vec<_>>()
        .join(" -o ");
    for round in 0..rounds {
        let out = w.join(format!("baseline-{round}.img"));
        let t = Instant::now();
        let c0 = cpu_seconds();
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && find . \\( {prune} \\) -prune -o -print | cpio --quiet -o -H newc | zstd -q -3 -T0 > {}",
                rootfs.display(),
                out.display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
        base.push(secs(t.elapsed()));
        base_cpu += cpu_seconds().1 - c0.1;
        base_bytes = fs::metadata(&out).unwrap().len();
        fs::remove_file(&out).unwrap();

        let spec = ApplianceSpec {
            rootfs: RootfsSource::Dir(rootfs.clone()),
            kernel: None,
            modules_root: "/lib/modules".into(),
            modules: vec![],
            bins: vec![],
            bindir: DEFAULT_BINDIR.into(),
            units: None,
            lib_dirs: DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect(),
            cache_dir: w.join(format!("cache-tree-{round}")),
            out: w.join(format!("ours-{round}.img")),
            jobs: 0,
        };
        let t = Instant::now();
        let c0 = cpu_seconds();
        let r = build_appliance(&spec).unwrap();
        ours.push(secs(t.elapsed()));
        our_cpu += cpu_seconds().0 - c0.0;
        our_bytes = r.bytes;
        fs::remove_dir_all(&spec.cache_dir).unwrap();
        fs::remove_file(&spec.out).unwrap();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (o, b) = (median(&mut ours), median(&mut base));
    println!(
        "appliance cold, tree only ({}): ours {o:.2} s ({our_bytes} B) vs find|cpio|zstd -3 -T0 {b:.2} s ({base_bytes} B): speed-up {:.2}x (median of {rounds}); CPU time per build: ours {:.2} s vs {:.2} s ({:.2}x less)",
        rootfs.display(),
        b / o,
        our_cpu / rounds as f64,
        base_cpu / rounds as f64,
        base_cpu / our_cpu.max(0.001)
    );

    // 3. Full appliance cold, then rebuild after changing one binary.
    let me = std::env::current_exe().unwrap();
    let bin_src = me
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("netboot-image"))
        .filter(|p| p.is_file())
        .unwrap_or(me.clone());
    let bins = w.join("bins");
    fs::create_dir_all(&bins).unwrap();
    let names = ["alpha", "beta", "gamma"];
    for n in names {
        fs::copy(&bin_src, bins.join(n)).unwrap();
    }
    let units = w.join("units");
    fs::create_dir_all(&units).unwrap();
    fs::write(
        units.join("bench.service"),
        "[Service]\nType=oneshot\nExecStart=/usr/local/bin/alpha --version\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let kernel = arg("--kernel")
        .map(PathBuf::from)
        .or_else(|| newest("/boot", "vmlinuz-"));
    let packages: Vec<String> = DEFAULT_PACKAGES.iter().map(|s| s.to_string()).collect();
    let full_spec = |cache_dir: PathBuf| ApplianceSpec {
        rootfs: RootfsSource::Debootstrap {
            suite: DEFAULT_SUITE.into(),
            mirror: DEFAULT_MIRROR.into(),
            packages: packages.clone(),
        },
        kernel: kernel.clone(),
        modules_root: "/lib/modules".into(),
        modules: DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
        bins: names.iter().map(|n| bins.join(n)).collect(),
        bindir: DEFAULT_BINDIR.into(),
        units: Some(units.clone()),
        lib_dirs: DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect(),
        cache_dir,
        out: w.join("full.img"),
        jobs: 0,
    };
    // Cold builds into fresh caches. The tree as `--debootstrap` finds it: a cache directory
    // entry named by the package list (a symlink here), which the builder treats as immutable.
    let mut colds = Vec::new();
    let mut cold = None;
    for round in 0..3 {
        let cache = w.join(format!("cache-full-{round}"));
        fs::create_dir_all(&cache).unwrap();
        std::os::unix::fs::symlink(
            &rootfs,
            rootfs_cache_dir(&cache, DEFAULT_SUITE, DEFAULT_MIRROR, &packages),
        )
        .unwrap();
        let t = Instant::now();
        cold = Some(build_appliance(&full_spec(cache)).unwrap());
        colds.push(secs(t.elapsed()));
    }
    let cold = cold.unwrap();
    // Rebuilds in the last cache, each after changing one binary (a different one each time).
    let spec = full_spec(w.join("cache-full-2"));
    let mut warms = Vec::new();
    let mut packed = Vec::new();
    for round in 0..6 {
        let name = names[round % names.len()];
        let mut bytes = fs::read(bins.join(name)).unwrap();
        bytes.extend_from_slice(format!("one more byte {round}").as_bytes());
        fs::write(bins.join(name), bytes).unwrap();
        let t = Instant::now();
        let warm = build_appliance(&spec).unwrap();
        warms.push(secs(t.elapsed()));
        packed = warm
            .layers
            .iter()
            .filter(|l| l.packed)
            .map(|l| l.name.clone())
            .collect();
        assert_eq!(packed, [format!("bin-{name}")]);
    }
    let warm_all = warms
        .iter()
        .map(|x| format!("{:.3}", x))
        .collect::<Vec<_>>();
    let (cold_t, warm_t) = (median(&mut colds), median(&mut warms));
    println!(
        "appliance full ({} layers, {} B, kernel {}): cold {cold_t:.2} s (median of 3); rebuild after changing one binary {warm_t:.3} s (median of 6: {warm_all:?}; last re-packed {packed:?}): {:.3}x cold",
        cold.layers.len(),
        cold.bytes,
        cold.kernel_release.as_deref().unwrap_or("none"),
        warm_t / cold_t
    );
    println!(
        "load average during the run (1/5/15 min, {} CPUs): {}",
        netboot_image::jobs(0),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
