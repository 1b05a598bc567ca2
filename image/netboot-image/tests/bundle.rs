//! `netboot-image bundle`, through the real binary: determinism, overlay contents as the kernel
//! will see them (listed with Debian's `cpio -t` from the concatenated initrd), secret rules,
//! and a manifest the contract crate accepts.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use plasmacloud_contract::manifest::{BundleManifest, DEFAULT_ENTRY};
use plasmacloud_testkit::{require, workspace_binary, Need};

mod command;
use command::{assert_success, run_ok};

const TLS_KEY: &str = "/etc/plasmacloud/tls/node.key";
const TLS_CERT: &str = "/etc/plasmacloud/tls/node.crt";
const CA: &str = "/etc/plasmacloud/tls/ca.crt";
const IAM: &str = "/var/lib/plasmacloud/iam-bootstrap.json";

/// A 3-node contract with TLS and an IAM bootstrap credential; node02 is the seed (listed
/// first in initial_voters), to make sure "seed" is not "first node".
fn contract(with_secrets: bool) -> String {
    let nodes: Vec<String> = (1..=3)
        .map(|i| {
            let tls = if with_secrets {
                format!(r#", "tls": {{ "cert": "{TLS_CERT}", "key": "{TLS_KEY}" }}"#)
            } else {
                String::new()
            };
            format!(
                r#"{{ "name": "node0{i}", "mac": "52:54:00:00:00:0{i}", "ipv4": "10.99.0.1{i}", "roles": ["control-plane"]{tls} }}"#
            )
        })
        .collect();
    let extra = if with_secrets {
        format!(r#""tls": {{ "ca_cert": "{CA}" }}, "iam": {{ "bootstrap_credential": "{IAM}" }},"#)
    } else {
        String::new()
    };
    format!(
        r#"{{
  "version": 1,
  "cluster": {{ "name": "t3", "id": "plasmacloud-t3" }},
  "boot_server": {{ "address": "10.99.0.1" }},
  "initial_voters": ["node02", "node01", "node03"],
  {extra}
  "nodes": [{}]
}}
"#,
        nodes.join(",\n    ")
    )
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A kernel, a base initrd (made with Debian's cpio + zstd) and, with secrets, a secrets
    /// directory holding every node's TLS files and the seed's IAM credential.
    fn new(with_secrets: bool) -> Self {
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
        fs::write(d.join("cluster.json"), contract(with_secrets)).unwrap();
        if with_secrets {
            for i in 1..=3 {
                let n = format!("node0{i}");
                put(d, &n, TLS_KEY, &format!("key of {n}"), 0o600);
                put(d, &n, TLS_CERT, &format!("cert of {n}"), 0o644);
                put(d, &n, CA, "the CA", 0o644);
            }
            put(
                d,
                "node02",
                IAM,
                r#"{"username":"admin","password":"s3cret"}"#,
                0o600,
            );
        }
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn bundle(&self, out: &str, with_secrets: bool) -> Output {
        let d = self.path();
        let mut cmd = Command::new(workspace_binary("netboot-image"));
        cmd.arg("bundle")
            .arg("--cluster")
            .arg(d.join("cluster.json"))
            .arg("--kernel")
            .arg(d.join("bzImage"))
            .arg("--initrd")
            .arg(d.join("initrd"))
            .arg("--cmdline")
            .arg("console=ttyS0")
            .arg("--out")
            .arg(d.join(out));
        if with_secrets {
            cmd.arg("--secrets").arg(d.join("secrets"));
        }
        cmd.output().unwrap()
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

fn put(d: &Path, node: &str, on_node: &str, content: &str, mode: u32) {
    let p = d
        .join("secrets")
        .join(node)
        .join(on_node.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
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

#[test]
fn same_inputs_give_the_same_bytes() {
    if !require(
        "same_inputs_give_the_same_bytes",
        &[Need::Tool("cpio"), Need::Tool("zstd")],
    ) {
        return;
    }
    let f = Fixture::new(true);
    ok(&f.bundle("a", true));
    ok(&f.bundle("b", true));
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
    ok(&f.bundle("a", true));
    assert_eq!(files_of(&f.path().join("a")), b);
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn overlays_land_after_the_base_and_only_the_seed_gets_the_iam_credential() {
    if !require(
        "overlays_land_after_the_base",
        &[Need::Tool("cpio"), Need::Tool("zstd")],
    ) {
        return;
    }
    let f = Fixture::new(true);
    ok(&f.bundle("out", true));
    let out = f.path().join("out");
    let m = BundleManifest::load(&out).expect("the contract crate accepts the manifest");
    assert!(m.problems().is_empty());
    assert_eq!(m.cluster_id, "plasmacloud-t3");
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
        let paths: Vec<PathBuf> = e.initrds.iter().map(|i| out.join(i)).collect();
        assert_eq!(e.initrds[0], "initrd");
        assert!(m.file(&e.initrds[1]).unwrap().secret);
        let listing = list_concatenated(&paths, 2);
        // The base first, then the overlay.
        let base_at = listing.find("etc/motd").expect("base listed");
        let node_at = listing
            .find("etc/plasmacloud/node")
            .expect("overlay listed");
        assert!(base_at < node_at, "{listing}");
        assert!(line_for(&listing, "etc/plasmacloud/cluster-config.json").is_some());
        let key = line_for(&listing, "etc/plasmacloud/tls/node.key").expect("key in overlay");
        assert!(key.starts_with("-rw-------"), "{key}");
        assert!(
            key.contains(" root ") && key.contains("Jan  1  1970"),
            "{key}"
        );
        let cred = line_for(&listing, "var/lib/plasmacloud/iam-bootstrap.json");
        if node == "node02" {
            let cred = cred.expect("the seed carries the IAM credential");
            assert!(cred.starts_with("-rw-------"), "{cred}");
        } else {
            assert!(
                cred.is_none(),
                "{node} must not carry the IAM credential:\n{listing}"
            );
        }
        // Content: the node's own key, identity and the contract as given.
        let members = netboot_image::newc::list(
            &zstd::stream::decode_all(&fs::read(&paths[1]).unwrap()[..]).unwrap(),
        )
        .unwrap();
        let get = |n: &str| members.iter().find(|m| m.name == n).map(|m| m.data.clone());
        assert_eq!(
            get("etc/plasmacloud/node").unwrap(),
            format!("{node}\n").as_bytes()
        );
        assert_eq!(
            get("etc/plasmacloud/tls/node.key").unwrap(),
            format!("key of {node}").as_bytes()
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

#[test]
fn a_contract_without_secrets_bundles_without_a_secrets_dir() {
    if !require(
        "a_contract_without_secrets",
        &[Need::Tool("cpio"), Need::Tool("zstd")],
    ) {
        return;
    }
    let f = Fixture::new(false);
    ok(&f.bundle("out", false));
    let m = BundleManifest::load(&f.path().join("out")).unwrap();
    assert_eq!(m.entries.len(), 4);
    assert_eq!(m.files.len(), 5);
}

fn expect_failure(f: &Fixture, words: &[&str]) {
    let o = f.bundle("out", true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure");
    for w in words {
        assert!(err.contains(w), "{w:?} not in:\n{err}");
    }
    assert!(
        !f.path().join("out").exists(),
        "nothing may be written on failure"
    );
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn secret_rules_fail_clearly_and_write_nothing() {
    if !require("secret_rules", &[Need::Tool("cpio"), Need::Tool("zstd")]) {
        return;
    }
    // Missing.
    let f = Fixture::new(true);
    fs::remove_file(
        f.path()
            .join("secrets/node03")
            .join(TLS_KEY.trim_start_matches('/')),
    )
    .unwrap();
    expect_failure(&f, &["node03", "nodes[2].tls.key", "does not exist"]);

    // World-readable.
    let f = Fixture::new(true);
    put(f.path(), "node02", IAM, "{}", 0o644);
    expect_failure(
        &f,
        &[
            "node02",
            "iam.bootstrap_credential",
            "world-readable",
            "chmod o-rwx",
        ],
    );

    // Larger than sane.
    let f = Fixture::new(true);
    put(
        f.path(),
        "node01",
        TLS_KEY,
        &"k".repeat(2 * 1024 * 1024),
        0o600,
    );
    expect_failure(
        &f,
        &["node01", "nodes[0].tls.key", "over the 1048576 byte limit"],
    );

    // Secrets named, no --secrets.
    let f = Fixture::new(true);
    let o = f.bundle("out", false);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no --secrets DIR"));
    assert!(!f.path().join("out").exists());
}

#[test]
fn a_failed_rebuild_keeps_the_previous_bundle() {
    if !require(
        "a_failed_rebuild",
        &[Need::Tool("cpio"), Need::Tool("zstd")],
    ) {
        return;
    }
    let f = Fixture::new(true);
    ok(&f.bundle("out", true));
    let before = files_of(&f.path().join("out"));
    put(f.path(), "node01", TLS_KEY, "x", 0o604);
    assert!(!f.bundle("out", true).status.success());
    assert_eq!(files_of(&f.path().join("out")), before);
    // A directory that is not a bundle is never replaced.
    fs::create_dir_all(f.path().join("home")).unwrap();
    fs::write(f.path().join("home/precious"), "x").unwrap();
    put(f.path(), "node01", TLS_KEY, "x", 0o600);
    let o = f.bundle("home", true);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a bundle"));
    assert!(f.path().join("home/precious").exists());
}

#[test]
fn netboot_result_gives_init_and_kernel_params() {
    let f = Fixture::new(false);
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
