//! `netboot-image bundle`, through the real binary: determinism, overlay contents as the kernel
//! will see them (listed with Debian's `cpio -t` from the concatenated initrd), a bundle that
//! holds no secret and only ordinary files, and a manifest the contract crate accepts.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use plasmacloud_contract::manifest::{overlay_path, Arch, BundleManifest, DEFAULT_ENTRY};
use plasmacloud_testkit::{require, workspace_binary, Need};

mod command;
use command::{assert_success, run_ok};

/// The password whose argon2id hash examples/cluster-3.json carries.
const EXAMPLE_PASSWORD: &str = "Example-Admin-Passphrase-2026";

/// examples/cluster-3.json (version 2, with the IAM admin's hash), with node02 made the seed
/// (listed first in initial_voters), to make sure "seed" is not "first node".
fn contract() -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster-3.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(example).unwrap()).unwrap();
    v["cluster"]["name"] = "t3".into();
    v["cluster"]["id"] = "plasmacloud-t3".into();
    v["initial_voters"] = serde_json::json!(["node02", "node01", "node03"]);
    assert!(
        v["iam"]["admin"]["password_hash"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$"),
        "the example carries the admin's hash"
    );
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

/// A version 1 contract (TLS paths, an IAM credential file): refused with what to change.
const OLD_CONTRACT: &str = r#"{
  "version": 1,
  "cluster": { "name": "t3", "id": "plasmacloud-t3" },
  "boot_server": { "address": "10.99.0.1" },
  "initial_voters": ["node01"],
  "tls": { "ca_cert": "/etc/plasmacloud/tls/ca.crt" },
  "iam": { "bootstrap_credential": "/var/lib/plasmacloud/iam-bootstrap.json" },
  "nodes": [{ "name": "node01", "mac": "52:54:00:00:00:01", "ipv4": "10.99.0.11",
              "roles": ["control-plane"],
              "tls": { "cert": "/etc/plasmacloud/tls/node.crt", "key": "/etc/plasmacloud/tls/node.key" } }]
}
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A kernel, a base initrd (made with Debian's cpio + zstd) and the contract.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("base/etc")).unwrap();
        fs::write(d.join("base/etc/motd"), "base initrd\n").unwrap();
        let st = Command::new("sh")
            .arg("-c")
            .arg("cd base && find . | LC_ALL=C sort | cpio --quiet -o -H newc | zstd -q -c > ../initrd")
            .current_dir(d)
            .status()
            .unwrap();
        assert!(st.success());
        fs::write(d.join("bzImage"), b"not really a kernel").unwrap();
        for f in ["bzImage", "initrd"] {
            fs::set_permissions(d.join(f), fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::write(d.join("cluster.json"), contract()).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `netboot-image bundle … --out DIR/out` under `umask`, with `extra` flags.
    fn bundle_with(&self, out: &str, umask: &str, extra: &[&str]) -> Output {
        let d = self.path();
        let mut args = vec![
            workspace_binary("netboot-image").display().to_string(),
            "bundle".into(),
            "--cluster".into(),
            d.join("cluster.json").display().to_string(),
            "--kernel".into(),
            d.join("bzImage").display().to_string(),
            "--initrd".into(),
            d.join("initrd").display().to_string(),
            "--cmdline".into(),
            "console=ttyS0".into(),
            "--out".into(),
            d.join(out).display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$@\""))
            .arg("sh")
            .args(&args)
            .output()
            .unwrap()
    }

    fn bundle(&self, out: &str) -> Output {
        self.bundle_with(out, "022", &[])
    }

    /// Only the expected entries in the fixture dir (no temporaries left behind).
    fn leftovers(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        v.sort();
        v
    }
}

fn ok(o: &Output) {
    assert_success(o, "netboot-image");
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `cpio -tv` of each archive in `kernel order`: the files concatenated, decompressed by zstd
/// (which reads concatenated frames), then listed archive after archive.
fn list_concatenated(parts: &[PathBuf], archives: usize) -> String {
    let mut cat = Vec::new();
    for p in parts {
        cat.extend(fs::read(p).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("concat.img");
    fs::write(&img, cat).unwrap();
    let listing = vec!["cpio -tv --quiet"; archives].join("; ");
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | ( {listing} )", img.display())),
        "zstd | cpio -t",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line_for<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    listing.lines().find(|l| l.ends_with(&format!(" {name}")))
}

/// The members of a node's overlay (name, mode, content).
fn overlay_members(path: &Path) -> Vec<netboot_image::newc::Listed> {
    netboot_image::newc::list(&zstd::stream::decode_all(&fs::read(path).unwrap()[..]).unwrap())
        .unwrap()
}

#[test]
fn same_inputs_give_the_same_bytes() {
    if !require(
        "same_inputs_give_the_same_bytes",
        &[Need::Tool("cpio"), Need::Tool("zstd")],
    ) {
        return;
    }
    let f = Fixture::new();
    ok(&f.bundle("a"));
    ok(&f.bundle("b"));
    let a = files_of(&f.path().join("a"));
    let b = files_of(&f.path().join("b"));
    assert_eq!(
        a.len(),
        6,
        "{:?}",
        a.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    assert_eq!(a, b, "two builds from the same inputs differ");
    // Rebuilding over an existing bundle replaces it whole, with the same bytes.
    ok(&f.bundle("a"));
    assert_eq!(files_of(&f.path().join("a")), b);
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// Every entry names the kernel's architecture, read from its header: a stand-in that is no
/// kernel says x86_64, an arm64 `Image` says aarch64 on every entry.
#[test]
fn entries_carry_the_kernels_architecture() {
    if !require(
        "entries_carry_the_kernels_architecture",
        &[Need::Tool("cpio"), Need::Tool("zstd")],
    ) {
        return;
    }
    let f = Fixture::new();
    ok(&f.bundle("x86"));
    let m = BundleManifest::load(&f.path().join("x86")).unwrap();
    assert!(m.entries.values().all(|e| e.arch == Arch::X86_64));
    let mut arm = vec![0u8; 4096];
    arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
    fs::write(f.path().join("bzImage"), arm).unwrap();
    ok(&f.bundle("arm"));
    let m = BundleManifest::load(&f.path().join("arm")).unwrap();
    assert_eq!(m.entries.len(), 4);
    assert!(
        m.entries.values().all(|e| e.arch == Arch::Aarch64),
        "{:?}",
        m.entries
    );
}

#[test]
fn overlays_land_after_the_base_and_carry_only_the_contract_and_the_name() {
    if !require(
        "overlays_land_after_the_base",
        &[Need::Tool("cpio"), Need::Tool("zstd")],
    ) {
        return;
    }
    let f = Fixture::new();
    ok(&f.bundle("out"));
    let out = f.path().join("out");
    let m = BundleManifest::load(&out).expect("the contract crate accepts the manifest");
    assert!(m.problems().is_empty());
    assert_eq!(m.cluster_id, "plasmacloud-t3");
    assert_eq!(m.contract_version, 2);
    assert_eq!(m.entries[DEFAULT_ENTRY].initrds, ["initrd"]);
    assert_eq!(m.entries[DEFAULT_ENTRY].cmdline, "console=ttyS0");
    for node in ["node01", "node02", "node03"] {
        let e = &m.entries[node];
        assert_eq!(e.kernel, "bzImage");
        assert!(e
            .cmdline
            .split_whitespace()
            .any(|p| p == format!("plasmacloud.node={node}")));
        assert!(
            !e.cmdline.contains("initrd="),
            "pxe-server adds initrd=: {}",
            e.cmdline
        );
        assert_eq!(e.initrds, ["initrd".to_string(), overlay_path(node)]);
        assert!(m.file(&overlay_path(node)).is_some());
        let paths: Vec<PathBuf> = e.initrds.iter().map(|i| out.join(i)).collect();
        let listing = list_concatenated(&paths, 2);
        // The base first, then the overlay.
        let base_at = listing.find("etc/motd").expect("base listed");
        let node_at = listing
            .find("etc/plasmacloud/node")
            .expect("overlay listed");
        assert!(base_at < node_at, "{listing}");
        for name in [
            "etc/plasmacloud/cluster-config.json",
            "etc/plasmacloud/node",
        ] {
            let line = line_for(&listing, name).unwrap_or_else(|| panic!("{name}:\n{listing}"));
            assert!(line.starts_with("-rw-r--r--"), "{line}");
            assert!(
                line.contains(" root ") && line.contains("Jan  1  1970"),
                "{line}"
            );
        }
        // Exactly the contract as given and the node's name, and their directories.
        let members = overlay_members(&paths[1]);
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/plasmacloud",
                "etc/plasmacloud/cluster-config.json",
                "etc/plasmacloud/node"
            ]
        );
        let get = |n: &str| members.iter().find(|m| m.name == n).map(|m| m.data.clone());
        assert_eq!(
            get("etc/plasmacloud/node").unwrap(),
            format!("{node}\n").as_bytes()
        );
        assert_eq!(
            get("etc/plasmacloud/cluster-config.json").unwrap(),
            fs::read(f.path().join("cluster.json")).unwrap()
        );
        assert!(members
            .iter()
            .all(|m| m.uid == 0 && m.gid == 0 && m.mtime == 0));
    }
    // Base files are hard links (same filesystem), not copies.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(out.join("initrd")).unwrap().ino(),
        fs::metadata(f.path().join("initrd")).unwrap().ino()
    );
}

/// What must never be in a bundle: a private key, the admin's password (the contract holds
/// only its hash), a plaintext password field, an enrollment token.
fn secrets_in(what: &str, bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut found = Vec::new();
    for needle in [
        "PRIVATE KEY",
        EXAMPLE_PASSWORD,
        "\"password\"",
        "bootstrap_credential",
        "enroll/token",
    ] {
        if text.contains(needle) {
            found.push(format!("{what}: {needle:?}"));
        }
    }
    found
}

#[test]
fn a_bundle_holds_no_secret_and_only_ordinary_files() {
    if !require("a_bundle_holds_no_secret", &[Need::Tool("zstd")]) {
        return;
    }
    let f = Fixture::new();
    // A tight umask on the build machine must not make a public artifact private.
    ok(&f.bundle_with("out", "077", &[]));
    let out = f.path().join("out");
    let dir_mode = fs::metadata(&out).unwrap().permissions().mode() & 0o7777;
    assert_eq!(dir_mode, 0o755, "bundle directory mode {dir_mode:o}");
    let m = BundleManifest::load(&out).unwrap();
    let mut found = Vec::new();
    let mut seen = 0;
    for e in fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = e.metadata().unwrap();
        assert!(meta.is_file(), "{name} is not a regular file");
        let mode = meta.permissions().mode() & 0o7777;
        assert_eq!(
            mode, 0o644,
            "{name} has mode {mode:o}; every bundle file is public"
        );
        let bytes = fs::read(e.path()).unwrap();
        found.extend(secrets_in(&name, &bytes));
        seen += 1;
        if name.starts_with("overlay-") {
            for member in overlay_members(&e.path()) {
                let what = format!("{name}:{}", member.name);
                assert!(
                    member.mode & 0o004 != 0,
                    "{what} has mode {:o}: nothing in an overlay is private",
                    member.mode
                );
                found.extend(secrets_in(&what, &member.data));
            }
        }
    }
    assert_eq!(
        seen,
        m.files.len() + 1,
        "every file is listed, plus the manifest"
    );
    assert!(found.is_empty(), "secrets in the bundle: {found:?}");
    // The check itself sees a secret where there is one.
    assert!(!secrets_in("probe", b"-----BEGIN PRIVATE KEY-----").is_empty());
}

#[test]
fn old_flags_and_old_contracts_are_told_what_changed_and_write_nothing() {
    let f = Fixture::new();
    let o = f.bundle_with("out", "022", &["--secrets", "/secure/secrets"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--secrets") && err.contains("carry no secrets"),
        "{err}"
    );
    assert!(!f.path().join("out").exists());

    fs::write(f.path().join("cluster.json"), OLD_CONTRACT).unwrap();
    let o = f.bundle("out");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("version"), "{err}");
    assert!(
        !f.path().join("out").exists(),
        "nothing may be written on failure"
    );
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn a_failed_rebuild_keeps_the_previous_bundle() {
    if !require(
        "a_failed_rebuild",
        &[Need::Tool("cpio"), Need::Tool("zstd")],
    ) {
        return;
    }
    let f = Fixture::new();
    ok(&f.bundle("out"));
    let before = files_of(&f.path().join("out"));
    let good = fs::read_to_string(f.path().join("cluster.json")).unwrap();
    fs::write(f.path().join("cluster.json"), OLD_CONTRACT).unwrap();
    assert!(!f.bundle("out").status.success());
    assert_eq!(files_of(&f.path().join("out")), before);
    // A directory that is not a bundle is never replaced.
    fs::write(f.path().join("cluster.json"), good).unwrap();
    fs::create_dir_all(f.path().join("home")).unwrap();
    fs::write(f.path().join("home/precious"), "x").unwrap();
    let o = f.bundle("home");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a bundle"));
    assert!(f.path().join("home/precious").exists());
}

#[test]
fn netboot_result_gives_init_and_kernel_params() {
    let f = Fixture::new();
    let nb = f.path().join("netboot");
    fs::create_dir_all(&nb).unwrap();
    fs::copy(f.path().join("bzImage"), nb.join("bzImage")).unwrap();
    fs::copy(f.path().join("initrd"), nb.join("initrd")).unwrap();
    fs::write(
        nb.join("netboot.ipxe"),
        "#!ipxe\nkernel bzImage init=/nix/store/abc-nixos-system/init initrd=initrd loglevel=4 ${cmdline}\ninitrd initrd\nboot\n",
    )
    .unwrap();
    run_ok(
        Command::new(workspace_binary("netboot-image"))
            .args(["bundle", "--netboot"])
            .arg(&nb)
            .arg("--cluster")
            .arg(f.path().join("cluster.json"))
            .arg("--out")
            .arg(f.path().join("out")),
        "netboot-image bundle --netboot",
    );
    let m = BundleManifest::load(&f.path().join("out")).unwrap();
    assert_eq!(
        m.entries["node01"].cmdline,
        "init=/nix/store/abc-nixos-system/init loglevel=4 plasmacloud.node=node01"
    );
    assert_eq!(
        m.entries[DEFAULT_ENTRY].cmdline,
        "init=/nix/store/abc-nixos-system/init loglevel=4"
    );
}
