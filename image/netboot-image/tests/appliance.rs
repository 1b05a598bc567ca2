//! The Debian test appliance: layer caching (change one binary → one layer re-packed), and a
//! real boot under QEMU (TCG) of appliance + a bundle's node overlay to `multi-user.target`,
//! with systemd as PID 1, the hostname taken from the overlay's identity file, the contract in
//! place, and this project's binary running from a unit.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use netboot_image::appliance::{
    build_appliance, ApplianceSpec, RootfsSource, DEFAULT_BINDIR, READY_MARKER,
};
use netboot_image::elf::DEFAULT_LIB_DIRS;
use plasmacloud_contract::manifest::{BundleManifest, DEFAULT_ENTRY};
use plasmacloud_testkit::{in_ci, require, workspace_binary, Need, Process};

mod command;
use command::run_ok;

fn lib_dirs() -> Vec<PathBuf> {
    DEFAULT_LIB_DIRS.iter().map(PathBuf::from).collect()
}

/// A tiny root filesystem: enough for the appliance layer's checks (systemd present), nothing
/// that boots.
fn tiny_rootfs(root: &Path) {
    fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    fs::write(root.join("usr/lib/systemd/systemd"), b"\x7fELF not really").unwrap();
    fs::write(root.join("etc/os-release"), "ID=tiny\n").unwrap();
    fs::write(root.join("dev/should-not-be-packed"), "x").unwrap();
}

#[test]
fn changing_one_binary_repacks_one_layer() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("rootfs");
    tiny_rootfs(&root);
    let bins = d.path().join("bins");
    fs::create_dir_all(&bins).unwrap();
    let me = workspace_binary("netboot-image");
    for n in ["alpha", "beta"] {
        fs::copy(&me, bins.join(n)).unwrap();
    }
    let spec = ApplianceSpec {
        rootfs: RootfsSource::Dir(root.clone()),
        kernel: None,
        modules_root: "/lib/modules".into(),
        modules: vec![],
        bins: vec![bins.join("alpha"), bins.join("beta")],
        bindir: DEFAULT_BINDIR.into(),
        units: None,
        lib_dirs: lib_dirs(),
        cache_dir: d.path().join("cache"),
        out: d.path().join("appliance.img"),
        jobs: 2,
    };

    // Phase: cold build packs every layer.
    let cold = build_appliance(&spec).unwrap();
    assert!(cold.layers.iter().all(|l| l.packed), "{:?}", cold.layers);
    let names: Vec<&str> = cold.layers.iter().map(|l| l.name.as_str()).collect();
    assert!(
        names.contains(&"bin-alpha") && names.contains(&"bin-beta"),
        "{names:?}"
    );

    // Phase: nothing changed → nothing packed, same bytes.
    let before = fs::read(&spec.out).unwrap();
    let warm = build_appliance(&spec).unwrap();
    assert!(warm.layers.iter().all(|l| !l.packed), "{:?}", warm.layers);
    assert_eq!(fs::read(&spec.out).unwrap(), before);

    // Phase: one binary changes → exactly its layer is re-packed.
    let mut beta = fs::read(bins.join("beta")).unwrap();
    beta.extend_from_slice(b"changed");
    fs::write(bins.join("beta"), &beta).unwrap();
    // The other one is rewritten with the same content (new mtime): not re-packed.
    fs::write(bins.join("alpha"), fs::read(bins.join("alpha")).unwrap()).unwrap();
    let rebuilt = build_appliance(&spec).unwrap();
    let packed: Vec<&str> = rebuilt
        .layers
        .iter()
        .filter(|l| l.packed)
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(packed, ["bin-beta"]);

    // Phase: the result holds the tree, the binaries, /init, but not the tree's /dev files.
    let data = zstd::stream::decode_all(&fs::read(&spec.out).unwrap()[..]).unwrap();
    let members = netboot_image::newc::list(&data).unwrap();
    let has = |n: &str| members.iter().any(|m| m.name == n);
    assert!(has("etc/os-release"));
    assert!(has("usr/local/bin/beta"));
    assert!(has("init"));
    assert!(has("dev/console"));
    assert!(!has("dev/should-not-be-packed"));
    let beta_member = members
        .iter()
        .rev()
        .find(|m| m.name == "usr/local/bin/beta")
        .unwrap();
    assert_eq!(beta_member.data, beta);
    assert_eq!(beta_member.mode, 0o100755);
}

fn debian_kernel() -> Option<PathBuf> {
    let mut ks: Vec<PathBuf> = fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    ks.sort();
    ks.pop()
}

const CONTRACT: &str = r#"{
  "version": 2,
  "cluster": { "name": "boot-test", "id": "plasmacloud-boot-test" },
  "boot_server": { "address": "10.0.2.2" },
  "initial_voters": ["node01"],
  "nodes": [
    { "name": "node01", "mac": "52:54:00:00:00:01", "ipv4": "10.0.2.11", "roles": ["control-plane"] },
    { "name": "node02", "mac": "52:54:00:00:00:02", "ipv4": "10.0.2.12", "roles": ["worker"] }
  ]
}
"#;

const DUMMY_UNIT: &str = r#"[Unit]
Description=Stand-in for the first-boot chain: runs this project's binary, reads the contract

[Service]
Type=oneshot
RemainAfterExit=yes
# The hardening the first-boot units carry must work with the initramfs as root.
ProtectSystem=strict
PrivateTmp=yes
NoNewPrivileges=yes
ProtectHome=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
StateDirectory=dummy
StateDirectoryMode=0700
ExecStart=/bin/sh -c 'echo "dummy-unit: $(/usr/local/bin/netboot-image --version) contract=$(grep -o plasmacloud-boot-test /etc/plasmacloud/cluster-config.json)" > /dev/console'

[Install]
WantedBy=multi-user.target
"#;

#[test]
fn appliance_with_a_node_overlay_boots_to_multi_user() {
    if !require(
        "appliance_with_a_node_overlay_boots_to_multi_user",
        &[
            Need::Root,
            Need::Tool("debootstrap"),
            Need::Tool("qemu-system-x86_64"),
        ],
    ) {
        return;
    }
    let Some(kernel) = debian_kernel() else {
        if in_ci() {
            panic!("no /boot/vmlinuz-*: install linux-image-amd64 (CI must not skip)");
        }
        eprintln!("SKIP: no /boot/vmlinuz-* (apt-get install linux-image-amd64)");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let units = d.path().join("units");
    fs::create_dir_all(&units).unwrap();
    fs::write(units.join("dummy-firstboot.service"), DUMMY_UNIT).unwrap();
    let img = d.path().join("appliance.img");
    let cache = std::env::var("PLASMACLOUD_IMAGE_CACHE")
        .unwrap_or_else(|_| "/var/cache/plasmacloud".to_string());
    let bin = workspace_binary("netboot-image");

    // Phase: build the appliance (debootstrap runs once per machine; cached in CACHE).
    let t = Instant::now();
    run_ok(
        Command::new(&bin)
            .arg("appliance")
            .arg("--debootstrap")
            .arg("--kernel")
            .arg(&kernel)
            .arg("--bin")
            .arg(&bin)
            .arg("--units")
            .arg(&units)
            .arg("--cache")
            .arg(&cache)
            .arg("--out")
            .arg(&img),
        "netboot-image appliance",
    );
    eprintln!("appliance built in {:?}", t.elapsed());

    // Phase: a bundle of it for the contract.
    fs::write(d.path().join("cluster.json"), CONTRACT).unwrap();
    let bundle = d.path().join("bundle");
    run_ok(
        Command::new(&bin)
            .arg("bundle")
            .arg("--cluster")
            .arg(d.path().join("cluster.json"))
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initrd")
            .arg(&img)
            .arg("--cmdline")
            .arg("console=ttyS0 panic=-1")
            .arg("--out")
            .arg(&bundle),
        "netboot-image bundle",
    );
    let m = BundleManifest::load(&bundle).unwrap();

    // Phase: boot node02's initrds (base + overlay) with the default command line, so the
    // hostname can only come from the overlay's identity file. QEMU takes one initrd file, so
    // they are concatenated, as the kernel would see them from iPXE.
    let entry = &m.entries["node02"];
    let mut initrd = Vec::new();
    for i in &entry.initrds {
        initrd.extend(fs::read(bundle.join(i)).unwrap());
    }
    let concat = d.path().join("node02.initrd");
    fs::write(&concat, initrd).unwrap();
    let cmdline = &m.entries[DEFAULT_ENTRY].cmdline;
    let mut qemu = Process::start(
        "qemu",
        Path::new("qemu-system-x86_64"),
        [
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-m",
            "1024",
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-kernel",
            &bundle.join(&entry.kernel).display().to_string(),
            "-initrd",
            &concat.display().to_string(),
            "-append",
            cmdline,
        ],
        &d.path().join("serial.log"),
    )
    .unwrap();
    let t = Instant::now();
    let marker = format!("{READY_MARKER} hostname=node02");
    qemu.wait_for_output(&marker, Duration::from_secs(300))
        .unwrap();
    eprintln!(
        "multi-user.target reached {:?} after QEMU start",
        t.elapsed()
    );
    let log = qemu.output();
    qemu.kill();
    // systemd-networkd's DHCP lease from QEMU's user network.
    let ready = log
        .lines()
        .find(|l| l.contains(&marker))
        .unwrap_or_default();
    assert!(ready.contains("=10.0.2.15/24"), "no DHCP address: {ready}");
    assert!(log.contains("Run /init as init process"), "no /init");
    assert!(log.contains("systemd[1]"), "systemd is not PID 1");
    assert!(
        log.contains("dummy-unit: netboot-image") && log.contains("contract=plasmacloud-boot-test"),
        "the unit from --units did not run the packed binary with the contract in place:\n{log}"
    );
}

#[test]
fn a_cached_debootstrap_tree_is_walked_once() {
    use netboot_image::appliance::{rootfs_cache_dir, DEFAULT_MIRROR, DEFAULT_SUITE};
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    tiny_rootfs(&tree);
    let cache = d.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    let packages = vec!["systemd".to_string()];
    // As if debootstrap had run: the cache entry named by the package list.
    std::os::unix::fs::symlink(
        &tree,
        rootfs_cache_dir(&cache, DEFAULT_SUITE, DEFAULT_MIRROR, &packages),
    )
    .unwrap();
    let spec = ApplianceSpec {
        rootfs: RootfsSource::Debootstrap {
            suite: DEFAULT_SUITE.into(),
            mirror: DEFAULT_MIRROR.into(),
            packages,
        },
        kernel: None,
        modules_root: "/lib/modules".into(),
        modules: vec![],
        bins: vec![],
        bindir: DEFAULT_BINDIR.into(),
        units: None,
        lib_dirs: lib_dirs(),
        cache_dir: cache.clone(),
        out: d.path().join("appliance.img"),
        jobs: 2,
    };
    let first = build_appliance(&spec).unwrap();
    let snapshot = first.rootfs.with_extension("layers.json");
    assert!(snapshot.is_file(), "{}", snapshot.display());
    let before = fs::read(&spec.out).unwrap();

    // The cached tree is immutable by contract: a rebuild takes its layers from the snapshot.
    fs::write(tree.join("etc/added-later"), "x").unwrap();
    let second = build_appliance(&spec).unwrap();
    assert!(second.layers.iter().all(|l| !l.packed));
    assert_eq!(fs::read(&spec.out).unwrap(), before);

    // Removing the snapshot re-walks it.
    fs::remove_file(&snapshot).unwrap();
    let third = build_appliance(&spec).unwrap();
    let packed: Vec<&str> = third
        .layers
        .iter()
        .filter(|l| l.packed)
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(packed, ["rootfs-0"]);
}
