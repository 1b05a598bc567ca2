//! Architectures (root, udhcpc, curl): an arm64 machine is never handed an x86-64 kernel.
//!
//! - A bundle whose entry says `aarch64` while its kernel is an x86 `bzImage` by its header is
//!   refused at start, naming the entry.
//! - iPXE's DHCP request names its architecture (option 93); the script URL in the answer
//!   carries it (`?arch=`), for x86 and arm64 alike.
//! - node01's entry is x86_64: its script asked for as aarch64 is a refusal script (no kernel,
//!   no enrollment token minted), recorded as a failed `ipxe-script` event; as x86_64 it boots.
//! - A machine the contract does not know boots `default` as x86_64 and `default-aarch64`
//!   (the arm64 kernel) as aarch64; an architecture no bundle has is refused by name.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plasmacloud_contract::manifest::{Arch, BundleManifest, ManifestFile, MANIFEST_FILE};
use plasmacloud_testkit::{require, workspace_binary, Need};
use sha2::{Digest, Sha256};

/// `len` bytes that are an x86 boot-protocol image by their header.
fn bz_image(len: usize) -> Vec<u8> {
    let mut k = pattern(len, 1);
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

/// `len` bytes that are an arm64 `Image` by their header.
fn arm64_image(len: usize) -> Vec<u8> {
    let mut k = pattern(len, 9);
    k[0x38..0x3c].copy_from_slice(b"ARM\x64");
    k
}

fn edit_manifest(bundle: &std::path::Path, edit: impl FnOnce(&mut BundleManifest)) {
    let path = bundle.join(MANIFEST_FILE);
    let mut m: BundleManifest =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut m);
    m.files.sort_by(|a, b| a.path.cmp(&b.path));
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn add_file(bundle: &std::path::Path, m: &mut BundleManifest, path: &str, bytes: &[u8]) {
    std::fs::write(bundle.join(path), bytes).unwrap();
    m.files.push(ManifestFile {
        path: path.into(),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    });
}

/// A DHCP exchange of an iPXE client (user class `iPXE`) with option 93 = `arch_code` from
/// `ns`; returns the boot file it was given.
fn ipxe_boot_file(ns: &str, d: &std::path::Path, who: &str, arch_code: &str) -> String {
    let opt93 = format!("0x5d:{arch_code}");
    dhcp_boot_file(ns, d, who, &["-x", "0x4d:69505845", "-x", &opt93])
}

#[test]
fn arm64_machines_never_get_an_x86_kernel() {
    if !require(
        "arm64_machines_never_get_an_x86_kernel",
        &[Need::Root, Need::Tool("udhcpc"), Need::Tool("curl")],
    ) {
        return;
    }
    let fx = Fixture::new(
        &bz_image(64 * 1024),
        &pattern(10_000, 2),
        "console=ttyS0",
        &overlay_bytes,
    );
    let d = fx.d.as_path();
    let state = d.join("state");
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let n1 = attach_client(&mut rack, "n1", NODES[0].1, None);
    // The test contract hands out no addresses to strangers: it has one of its own.
    let stranger = attach_client(&mut rack, "x", "52:54:00:cc:00:09", Some("10.77.0.60/24"));

    eprintln!("phase: an entry that says aarch64 over an x86 kernel is refused at start");
    edit_manifest(&fx.bundle, |m| {
        m.entries.get_mut("node02").unwrap().arch = Arch::Aarch64;
    });
    let bin = workspace_binary("pxe-server");
    let mut cmd = exec(&srv, &["timeout", "30", bin.to_str().unwrap(), "serve"]);
    cmd.args(fx.server_args("full", &state, &["--ipv6-ra", "off"]));
    let (ok, output) = try_run(cmd);
    assert!(!ok, "started with a mislabelled kernel: {output}");
    assert!(
        output.contains("entry node02 says aarch64")
            && output.contains("x86_64 kernel by its header"),
        "{output}"
    );

    eprintln!("phase: a bundle with x86 nodes and an arm64 default-aarch64 entry serves");
    edit_manifest(&fx.bundle, |m| {
        m.entries.get_mut("node02").unwrap().arch = Arch::X86_64;
        add_file(&fx.bundle, m, "Image", &arm64_image(32 * 1024));
        let mut arm = m.entries["default"].clone();
        arm.kernel = "Image".into();
        arm.arch = Arch::Aarch64;
        m.entries.insert(Arch::Aarch64.default_entry(), arm);
    });
    let server = start_server(
        &srv,
        &fx.server_args("full", &state, &["--ipv6-ra", "off"]),
        &d.join("server.log"),
    );
    let op = issue_operator(&state, "tests", &d.join("op"));

    eprintln!("phase: iPXE's DHCP answer names its architecture in the script URL");
    let node_url = "http://10.77.0.1:8081/boot/52-54-00-aa-00-01.ipxe";
    assert_eq!(
        ipxe_boot_file(&n1, d, "node01-x86", "0007"),
        format!("{node_url}?arch=x86_64")
    );
    assert_eq!(
        ipxe_boot_file(&n1, d, "node01-arm64", "000b"),
        format!("{node_url}?arch=aarch64")
    );

    eprintln!("phase: node01 (x86_64 entry) asking as aarch64 gets a refusal script, no kernel");
    let (ok, refused) = curl(&n1, &[&format!("{node_url}?arch=aarch64")]);
    assert!(ok, "{refused}");
    assert!(
        refused.starts_with("#!ipxe")
            && refused.contains("node01 booted aarch64 iPXE")
            && !refused.contains("kernel http"),
        "{refused}"
    );
    let failed = events(&srv, &op)
        .into_iter()
        .filter(|e| e["phase"] == "ipxe-script" && e["status"] == "failed" && e["node"] == "node01")
        .count();
    assert_eq!(failed, 1, "the refusal is one failed ipxe-script event");
    let (ok, served) = curl(&n1, &[&format!("{node_url}?arch=x86_64")]);
    assert!(ok, "{served}");
    assert!(
        served.contains("/vmlinuz") && served.contains("enroll.cpio.zst"),
        "{served}"
    );
    let (ok, riscv) = curl(&n1, &[&format!("{node_url}?arch=arch-25")]);
    assert!(
        ok && riscv.contains("\"arch-25\"") && !riscv.contains("kernel http"),
        "{riscv}"
    );

    eprintln!("phase: a stranger boots the default entry of its own architecture");
    let stranger_url = "http://10.77.0.1:8081/boot/52-54-00-cc-00-09.ipxe";
    let (ok, arm) = curl(&stranger, &[&format!("{stranger_url}?arch=aarch64")]);
    assert!(ok, "{arm}");
    assert!(
        arm.contains("/Image") && !arm.contains("/vmlinuz"),
        "an arm64 stranger must get the arm64 kernel: {arm}"
    );
    let (ok, x86) = curl(&stranger, &[&format!("{stranger_url}?arch=x86_64")]);
    assert!(ok, "{x86}");
    assert!(x86.contains("/vmlinuz") && !x86.contains("/Image"), "{x86}");
    drop(server);

    eprintln!("phase: without an arm64 kernel, an arm64 stranger is refused by name");
    edit_manifest(&fx.bundle, |m| {
        m.entries.remove(&Arch::Aarch64.default_entry());
    });
    let _server = start_server(
        &srv,
        &fx.server_args("full", &state, &["--ipv6-ra", "off"]),
        &d.join("server2.log"),
    );
    let (ok, none) = curl(&stranger, &[&format!("{stranger_url}?arch=aarch64")]);
    assert!(ok, "{none}");
    assert!(
        none.contains("no aarch64 kernel") && none.contains("default-aarch64"),
        "{none}"
    );
}
