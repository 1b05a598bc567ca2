//! The Secure Boot chain (root, udhcpc, curl, Debian's shim-signed and grub-efi-amd64-signed):
//! with `--secure-boot-dir`, an x86-64 UEFI PXE machine gets shim, and everything the signed
//! GRUB then reads comes over TFTP under the same rules as iPXE's script over HTTP.
//!
//! - A directory without shim, or with Debian's unsigned shim under its name, is refused at
//!   start, naming the file and where the signed one is.
//! - A UEFI PXE DHCP request (option 93 = 7) is answered with `shimx64.efi`; a BIOS one still
//!   with `undionly.kpxe`.
//! - Over TFTP (curl as the client): shim and GRUB byte for byte; `grub/grub.cfg` sources the
//!   machine's own `grub/<MAC>.cfg`; node01's configuration, to node01 only, boots its kernel
//!   and initrds from `b/<version>/` and its enrollment initrd from `s/<token>/`, which comes
//!   over TFTP to node01 and to nobody else; asked from another address, node01's
//!   configuration is an access violation and a failed `grub-config` event; each fetch mints a
//!   new token (the old URL still works until used or expired, as over HTTP).
//! - A stranger gets the default entry, with no enrollment initrd.
//! - The tests' stand-in kernel is no EFI image: the server says so at start.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plasmacloud_testkit::{require, Need};

const SIGNED_SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
const UNSIGNED_SHIM: &str = "/usr/lib/shim/shimx64.efi";
const SIGNED_GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";

/// A DHCP exchange from `ns` with vendor class `vendor` and option 93 = `arch`; the boot file.
fn pxe_boot_file(ns: &str, d: &std::path::Path, who: &str, vendor: &str, arch: &str) -> String {
    let opt93 = format!("0x5d:{arch}");
    dhcp_boot_file(ns, d, who, &["-V", vendor, "-x", &opt93])
}

/// Fetches `path` over TFTP from `ns` into `out`; (ok, curl's message).
fn tftp_get(ns: &str, path: &str, out: &std::path::Path) -> (bool, String) {
    let _ = std::fs::remove_file(out);
    curl(
        ns,
        &[
            "-o",
            out.to_str().unwrap(),
            &format!("tftp://{SERVER_IP}/{path}"),
        ],
    )
}

fn tftp_text(ns: &str, d: &std::path::Path, path: &str) -> String {
    let out = d.join("tftp.txt");
    let (ok, msg) = tftp_get(ns, path, &out);
    assert!(ok, "TFTP {path}: {msg}");
    std::fs::read_to_string(&out).unwrap()
}

/// The single-quoted words of the config line starting with `if <cmd> `.
fn words(config: &str, cmd: &str) -> Vec<String> {
    let line = config
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("if {cmd} ")))
        .unwrap_or_else(|| panic!("no {cmd} line in {config}"));
    line.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn uefi_machines_boot_the_signed_chain_over_tftp_under_the_boot_rules() {
    if !require(
        "uefi_machines_boot_the_signed_chain_over_tftp_under_the_boot_rules",
        &[
            Need::Root,
            Need::Tool("udhcpc"),
            Need::Tool("curl"),
            Need::File(SIGNED_SHIM),
            Need::File(UNSIGNED_SHIM),
            Need::File(SIGNED_GRUB),
        ],
    ) {
        return;
    }
    let fx = Fixture::new(
        &pattern(300_000, 1),
        &pattern(70_000, 2),
        "console=ttyS0",
        &overlay_bytes,
    );
    let d = fx.d.as_path();
    let state = d.join("state");
    let sb = d.join("secure-boot");
    std::fs::create_dir_all(&sb).unwrap();
    let sb_arg = sb.to_str().unwrap().to_string();
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let n1 = attach_client(&mut rack, "n1", NODES[0].1, None);
    let n2 = attach_client(&mut rack, "n2", NODES[1].1, None);
    let stranger = attach_client(&mut rack, "x", "52:54:00:cc:00:09", Some("10.77.0.60/24"));
    let bin = plasmacloud_testkit::workspace_binary("pxe-server");
    let check = |what: &str| {
        let mut cmd = exec(&srv, &["timeout", "30", bin.to_str().unwrap(), "check"]);
        cmd.args(fx.server_args("full", &state, &["--secure-boot-dir", &sb_arg]));
        let (ok, out) = try_run(cmd);
        assert!(!ok, "{what}: accepted: {out}");
        out
    };

    eprintln!("phase: no shim in --secure-boot-dir, then an unsigned one: refused at start");
    let out = check("empty dir");
    assert!(
        out.contains("shimx64.efi") && out.contains(SIGNED_SHIM),
        "{out}"
    );
    std::fs::copy(UNSIGNED_SHIM, sb.join("shimx64.efi")).unwrap();
    std::fs::copy(SIGNED_GRUB, sb.join("grubx64.efi")).unwrap();
    let out = check("unsigned shim");
    assert!(out.contains("no signature"), "{out}");
    std::fs::write(
        sb.join("shimx64.efi"),
        b"#!/bin/sh\necho not an EFI image\n",
    )
    .unwrap();
    let out = check("not a PE image");
    assert!(
        out.contains("shimx64.efi is not an EFI image") && out.contains("no MZ header"),
        "{out}"
    );
    std::fs::copy(SIGNED_SHIM, sb.join("shimx64.efi")).unwrap();

    let log = d.join("server.log");
    let _server = start_server(
        &srv,
        &fx.server_args(
            "full",
            &state,
            &["--secure-boot-dir", &sb_arg, "--ipv6-ra", "off"],
        ),
        &log,
    );
    let op = issue_operator(&state, "tests", &d.join("op"));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("this kernel is not an EFI image"),
        "the stand-in kernel is not flagged: {log_text}"
    );

    eprintln!("phase: DHCP: UEFI PXE gets shim, BIOS PXE still gets iPXE");
    assert_eq!(
        pxe_boot_file(&n2, d, "n2-bios", BIOS_PXE_CLIENT, "0000"),
        "undionly.kpxe"
    );
    assert_eq!(
        pxe_boot_file(
            &n1,
            d,
            "n1-uefi",
            "PXEClient:Arch:00007:UNDI:003001",
            "0007"
        ),
        "shimx64.efi"
    );

    eprintln!("phase: shim and GRUB over TFTP, byte for byte");
    for (path, from) in [("shimx64.efi", SIGNED_SHIM), ("grubx64.efi", SIGNED_GRUB)] {
        let out = d.join(path);
        let (ok, msg) = tftp_get(&n1, path, &out);
        assert!(ok, "{path}: {msg}");
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(from).unwrap(),
            "{path} differs"
        );
    }
    let chain = tftp_text(&n1, d, "grub/grub.cfg");
    assert!(
        chain.contains("source \"/grub/${net_default_mac}.cfg\""),
        "{chain}"
    );
    let (ok, _) = tftp_get(&n1, "grub/x86_64-efi/grub.cfg", &d.join("probe"));
    assert!(!ok, "GRUB's own probe must find nothing");

    eprintln!("phase: node01's configuration, to node01");
    let node_cfg = format!("grub/{}.cfg", NODES[0].1);
    let cfg = tftp_text(&n1, d, &node_cfg);
    let linux = words(&cfg, "linux");
    let initrd = words(&cfg, "initrd");
    assert!(
        linux[0].starts_with("/b/") && linux[0].ends_with("/vmlinuz"),
        "{cfg}"
    );
    assert!(linux.contains(&"console=ttyS0".to_string()), "{cfg}");
    assert!(
        !cfg.contains("initrd="),
        "GRUB needs no initrd= names: {cfg}"
    );
    let enroll = initrd.last().unwrap().clone();
    assert!(
        enroll.starts_with("/s/") && enroll.ends_with("/enroll.cpio.zst"),
        "{cfg}"
    );
    assert!(initrd.iter().any(|p| p.contains("node01")), "{cfg}");

    eprintln!("phase: its kernel and initrds over TFTP from b/<version>/");
    let kernel = d.join("kernel");
    let (ok, msg) = tftp_get(&n1, linux[0].trim_start_matches('/'), &kernel);
    assert!(ok, "{msg}");
    assert_eq!(std::fs::read(&kernel).unwrap(), pattern(300_000, 1));
    for p in &initrd[..initrd.len() - 1] {
        let (ok, msg) = tftp_get(&n1, p.trim_start_matches('/'), &d.join("initrd"));
        assert!(ok, "{p}: {msg}");
    }

    eprintln!("phase: its enrollment initrd to nobody else, then to node01");
    let enroll_path = enroll.trim_start_matches('/');
    let (ok, msg) = tftp_get(&stranger, enroll_path, &d.join("stolen"));
    assert!(!ok, "a stranger got node01's enrollment initrd");
    // curl's exit code 69 (CURLE_TFTP_PERM): the server sent TFTP error 2, access violation.
    assert!(msg.contains("curl: (69)"), "{msg}");
    let got = d.join("enroll.cpio.zst");
    let (ok, msg) = tftp_get(&n1, enroll_path, &got);
    assert!(ok, "{msg}");
    let bytes = std::fs::read(&got).unwrap();
    let cpio = zstd::decode_all(bytes.as_slice()).unwrap();
    assert!(cpio.starts_with(b"070701"), "not a newc cpio");

    eprintln!("phase: node01's configuration from another address: refused, recorded");
    let (ok, msg) = tftp_get(&n2, &node_cfg, &d.join("n2.cfg"));
    assert!(!ok, "n2 got node01's configuration");
    // curl's exit code 69 (CURLE_TFTP_PERM): the server sent TFTP error 2, access violation.
    assert!(msg.contains("curl: (69)"), "{msg}");
    let evs = events(&srv, &op);
    let grub = |status: &str| {
        evs.iter()
            .filter(|e| {
                e["phase"] == "grub-config" && e["status"] == status && e["node"] == "node01"
            })
            .count()
    };
    assert_eq!(grub("ok"), 1, "one configuration served");
    assert_eq!(grub("failed"), 1, "one refused");
    assert!(
        evs.iter()
            .any(|e| e["phase"] == "kernel" && e["node"] == "node01"),
        "the kernel fetch over TFTP is a kernel event"
    );
    assert!(
        evs.iter()
            .any(|e| e["phase"] == "enroll-initrd" && e["status"] == "started"),
        "the enrollment initrd over TFTP is an event"
    );

    eprintln!("phase: each configuration mints a new token");
    let again = tftp_text(&n1, d, &node_cfg);
    assert_ne!(words(&again, "initrd").last(), Some(&enroll), "{again}");

    eprintln!("phase: a stranger boots the default entry, no enrollment initrd");
    let theirs = tftp_text(&stranger, d, "grub/52:54:00:cc:00:09.cfg");
    let initrd = words(&theirs, "initrd");
    assert!(!initrd.iter().any(|p| p.contains("enroll")), "{theirs}");
    assert!(!initrd.iter().any(|p| p.contains("node0")), "{theirs}");

    eprintln!("phase: over TFTP, a made-up token and a bundle version not served are refused");
    let made_up = format!("s/{}/enroll.cpio.zst", "ab".repeat(16));
    let (ok, msg) = tftp_get(&n1, &made_up, &d.join("made-up"));
    // curl's exit code 69 (CURLE_TFTP_PERM): TFTP error 2, access violation.
    assert!(!ok && msg.contains("curl: (69)"), "{msg}");
    let mut parts: Vec<&str> = linux[0].trim_start_matches('/').split('/').collect();
    let gone = "0".repeat(64);
    parts[1] = &gone;
    let (ok, msg) = tftp_get(&n1, &parts.join("/"), &d.join("gone"));
    // curl's exit code 68 (CURLE_TFTP_NOTFOUND): TFTP error 1, file not found.
    assert!(!ok && msg.contains("curl: (68)"), "{msg}");
}
