//! The rendered unit files pass `systemd-analyze verify`.

#![allow(clippy::unwrap_used)] // a test that cannot set up its fixture should panic

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use plasmacloud_testkit::{require, Need};

#[test]
fn rendered_units_pass_systemd_analyze_verify() {
    if !require(
        "rendered_units_pass_systemd_analyze_verify",
        &[Need::Tool("systemd-analyze")],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bindir = dir.path().join("bin");
    let out = dir.path().join("units");
    std::fs::create_dir_all(&bindir).unwrap();
    // verify checks that ExecStart= binaries exist and are executable.
    for b in [
        "firstboot",
        "chainfire-server",
        "flaredb-server",
        "iam-server",
    ] {
        let p = bindir.join(b);
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let status = Command::new(env!("CARGO_BIN_EXE_firstboot"))
        .args(["units", "--out"])
        .arg(&out)
        .arg("--bindir")
        .arg(&bindir)
        .status()
        .unwrap();
    assert!(status.success());
    let units: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        units.len(),
        12,
        "the ten units of the service graph, firstboot-enroll and reboot-agent"
    );
    let res = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&res.stderr).into_owned() + &String::from_utf8_lossy(&res.stdout);
    // Only complaints about our own files count (the host's units are not ours to judge).
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains(out.to_str().unwrap())
                || units
                    .iter()
                    .any(|u| l.contains(u.file_name().unwrap().to_str().unwrap()))
        })
        .collect();
    assert!(
        res.status.success() && ours.is_empty(),
        "systemd-analyze verify failed:\n{text}"
    );
}
