//! CI: the `cold-3` scenario end to end — three TCG VMs PXE-boot from pxe-server in their own
//! namespace and become a ready cluster (root; skips by hand without it, fails under CI=true).
//! Uses the release binaries next to this test (the workspace build) and the cached Debian
//! root of the appliance (debootstrapped on first use).

use std::process::Command;
use std::time::Instant;

use plasmacloud_testkit::{require, workspace_binary, Need};

#[test]
fn cold_3_rack_becomes_cluster_ready() {
    if !require(
        "cold_3_rack_becomes_cluster_ready",
        &[
            Need::Root,
            Need::Tool("qemu-system-x86_64"),
            Need::Tool("debootstrap"),
        ],
    ) {
        return;
    }
    let bin = workspace_binary("vm-rack");
    let dir = bin
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    for b in [
        "pxe-server",
        "netboot-image",
        "firstboot",
        "chainfire-server",
        "flaredb-server",
        "iam-server",
    ] {
        workspace_binary(b);
    }
    eprintln!("phase: build the appliance and bundle, boot three VMs, check the cluster");
    let t = Instant::now();
    let out = Command::new(&bin)
        .arg("cold-3")
        .arg("--bin-dir")
        .arg(&dir)
        .arg("--quiet")
        .output()
        .expect("vm-rack runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    eprintln!(
        "vm-rack cold-3: {:.1} s wall, stdout: {stdout}",
        t.elapsed().as_secs_f64()
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success(),
        "cold-3 failed ({}): {last}",
        out.status
    );
    assert!(
        last.starts_with("cluster-ready: 3/3 nodes in "),
        "last line: {last:?}"
    );
}
