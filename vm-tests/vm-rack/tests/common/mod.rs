//! Runs one `vm-rack` scenario with the workspace's release binaries, as CI does.

use std::process::Command;
use std::time::Instant;

use plasmacloud_testkit::{require, workspace_binary, Need};

/// Whether this machine can run a rack (root, QEMU, debootstrap); skips by hand without them,
/// fails under `CI=true`.
pub fn can_run(test: &str) -> bool {
    require(
        test,
        &[
            Need::Root,
            Need::Tool("qemu-system-x86_64"),
            Need::Tool("debootstrap"),
        ],
    )
}

/// Runs `vm-rack SCENARIO --quiet`; returns its last line, or why it failed.
pub fn run_scenario(scenario: &str) -> Result<String, String> {
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
    eprintln!("phase: vm-rack {scenario}: build the appliance and bundle, boot, check");
    let t = Instant::now();
    let out = Command::new(&bin)
        .arg(scenario)
        .arg("--bin-dir")
        .arg(&dir)
        .arg("--quiet")
        .output()
        .map_err(|e| format!("vm-rack did not start: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    eprintln!(
        "vm-rack {scenario}: {:.1} s wall, stdout: {stdout}",
        t.elapsed().as_secs_f64()
    );
    let last = stdout.lines().last().unwrap_or_default().to_string();
    if out.status.success() {
        Ok(last)
    } else {
        Err(format!("{scenario} failed ({}): {last}", out.status))
    }
}

/// Runs each `(scenario, prefix of its last line)` in turn; every failure (a failed run, or a
/// last line without its prefix), not only the first.
#[allow(dead_code)] // not every test binary runs several
pub fn run_scenarios(expected: &[(&str, &str)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (scenario, prefix) in expected {
        match run_scenario(scenario) {
            Ok(last) if last.starts_with(prefix) => {}
            Ok(last) => failures.push(format!("{scenario}: last line {last:?}")),
            Err(e) => failures.push(e),
        }
    }
    failures
}
