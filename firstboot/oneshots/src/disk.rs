//! `firstboot disk`: prepare the Raft data disk from the contract's layout, disko-style: a GPT
//! with one partition named after the label, a filesystem with that label, mounted under
//! /var/lib.
//!
//! Safe and idempotent:
//! - a partition that already carries our label is mounted as it is, **never** reformatted
//!   (whatever `wipe_foreign` says) — a rebooted node finds its data;
//! - a disk holding anything else (a partition table, a filesystem, a foreign label) is refused
//!   with exit 2 unless the contract sets `disk.wipe_foreign = true`;
//! - only a blank (or explicitly wipeable) disk is partitioned and formatted;
//! - a disk that cannot be probed is "retry later" (exit 75), never "blank".
//!
//! The work is done by util-linux and the mkfs tools (`sfdisk`, `wipefs`, `partx`, `blkid`,
//! `mkfs.ext4`/`mkfs.xfs`, `mount`): the same tools disko drives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use plasmacloud_contract::DiskLayout;

use crate::step::{Ctx, StepError, StepResult};

/// GPT type GUID of a Linux filesystem partition.
const LINUX_FS_GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// What the step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No disk in the contract: the state directory is used as it is.
    NoDisk,
    /// Our filesystem was found (and mounted if it was not).
    Found,
    /// The disk was partitioned and formatted (and wiped first if `wiped`).
    Formatted {
        /// Was foreign data wiped (allowed by `wipe_foreign`)?
        wiped: bool,
    },
}

fn run_tool(program: &str, args: &[&str], stdin: Option<&str>) -> StepResult<String> {
    use std::io::Write;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| {
        StepError::Config(format!(
            "cannot run {program}: {e} (install util-linux/e2fsprogs/xfsprogs)"
        ))
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| StepError::Retry(format!("{program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| StepError::Retry(format!("{program}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(StepError::Retry(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The probing tool (replaceable in tests that need it to fail).
#[derive(Debug, Clone)]
pub struct Tools {
    /// `blkid` (util-linux).
    pub blkid: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            blkid: PathBuf::from("blkid"),
        }
    }
}

/// `blkid -p -o export DEV` as a map; empty only when blkid says the device holds no
/// signature (exit 2). A probe that fails in any other way is an error, never "empty": a disk
/// that could not be read must not be taken for a blank one and formatted.
fn probe(tools: &Tools, dev: &Path) -> StepResult<HashMap<String, String>> {
    let out = Command::new(&tools.blkid)
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output()
        .map_err(|e| {
            StepError::Retry(format!(
                "cannot probe {} with {}: {e}; not treating the disk as empty",
                dev.display(),
                tools.blkid.display()
            ))
        })?;
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()),
        Some(2) => Ok(HashMap::new()),
        Some(8) => Err(StepError::Config(format!(
            "{} carries more than one signature (blkid: ambivalent result); inspect it with `wipefs {}` and clear what is not ours by hand",
            dev.display(),
            dev.display()
        ))),
        code => Err(StepError::Retry(format!(
            "probing {} failed (blkid exit {code:?}: {}); not treating the disk as empty",
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// The first partition's device path: `/dev/vdb1`, `/dev/nvme0n1p1`, `/dev/loop0p1`.
pub fn first_partition(dev: &Path) -> PathBuf {
    let s = dev.display().to_string();
    if s.chars().last().is_some_and(|c| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p1"))
    } else {
        PathBuf::from(format!("{s}1"))
    }
}

/// Partitions the kernel knows on `dev` (from sysfs).
fn partitions(dev: &Path) -> Vec<String> {
    let Some(name) = dev.file_name().and_then(|n| n.to_str()) else {
        return vec![];
    };
    let Ok(dir) = std::fs::read_dir(format!("/sys/class/block/{name}")) else {
        return vec![];
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(name) && n != name)
        .collect()
}

/// Waits for the partition's device node; creates it from sysfs where no udev runs.
fn wait_for_partition(dev: &Path, part: &Path) -> StepResult<()> {
    let start = Instant::now();
    let _ = run_tool("partx", &["-u", &dev.display().to_string()], None);
    loop {
        if part.exists() {
            return Ok(());
        }
        let name = part
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Ok(majmin) = std::fs::read_to_string(format!("/sys/class/block/{name}/dev")) {
            if let Some((maj, min)) = majmin.trim().split_once(':') {
                let _ = run_tool("mknod", &[&part.display().to_string(), "b", maj, min], None);
                continue;
            }
        }
        if start.elapsed() > Duration::from_secs(15) {
            return Err(StepError::Retry(format!(
                "{} did not appear after partitioning {}",
                part.display(),
                dev.display()
            )));
        }
        let _ = run_tool("partx", &["-a", &dev.display().to_string()], None);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Is `mount_point` a mount of `part`?
fn mounted_at(mount_point: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mp = mount_point.display().to_string();
    text.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(4) == Some(&mp.as_str())).then(|| fields.get(sep + 2).map(|s| s.to_string()))?
    })
}

fn mount(part: &Path, fstype: &str, mount_point: &Path) -> StepResult<()> {
    if let Some(source) = mounted_at(mount_point) {
        let same = std::fs::canonicalize(&source).ok() == std::fs::canonicalize(part).ok();
        if same {
            return Ok(());
        }
        return Err(StepError::Config(format!(
            "{} is already a mount of {source}, not of {}; unmount it or fix disk.mount_point",
            mount_point.display(),
            part.display()
        )));
    }
    std::fs::create_dir_all(mount_point)
        .map_err(|e| StepError::Retry(format!("mkdir {}: {e}", mount_point.display())))?;
    run_tool(
        "mount",
        &[
            "-t",
            fstype,
            &part.display().to_string(),
            &mount_point.display().to_string(),
        ],
        None,
    )?;
    Ok(())
}

/// Prepares `layout` (a whole disk). The heart of the step, testable on loop devices.
pub fn prepare(layout: &DiskLayout) -> StepResult<Outcome> {
    prepare_with(layout, &Tools::default())
}

/// [`prepare`] with the given probing tool.
pub fn prepare_with(layout: &DiskLayout, tools: &Tools) -> StepResult<Outcome> {
    let dev = PathBuf::from(&layout.device);
    if !dev.exists() {
        return Err(StepError::Retry(format!(
            "disk {} is not present (yet); check disk.device in the contract",
            dev.display()
        )));
    }
    let dev = std::fs::canonicalize(&dev).unwrap_or(dev);
    let part = first_partition(&dev);
    let mount_point = PathBuf::from(&layout.mount_point);
    let _ = run_tool("partx", &["-u", &dev.display().to_string()], None);

    // Ours already? Mount, never reformat.
    if part.exists() {
        let p = probe(tools, &part)?;
        if p.get("LABEL") == Some(&layout.label) {
            let fstype = p
                .get("TYPE")
                .cloned()
                .unwrap_or_else(|| layout.filesystem.as_str().into());
            mount(&part, &fstype, &mount_point)?;
            return Ok(Outcome::Found);
        }
    }

    // Anything else there is someone else's data.
    let whole = probe(tools, &dev)?;
    let mut found = Vec::new();
    if let Some(t) = whole.get("PTTYPE") {
        found.push(format!("a {t} partition table"));
    }
    if let Some(t) = whole.get("TYPE") {
        let label = whole
            .get("LABEL")
            .map(|l| format!(" labelled {l:?}"))
            .unwrap_or_default();
        found.push(format!("a {t} filesystem{label}"));
    }
    let parts = partitions(&dev);
    if !parts.is_empty() {
        found.push(format!("partitions {}", parts.join(", ")));
    }
    let wiped = !found.is_empty();
    if wiped {
        if !layout.wipe_foreign {
            return Err(StepError::Config(format!(
                "disk {} holds {} — not a PlasmaCloud filesystem labelled {:?}; refusing to touch it. \
                 Point disk.device at an empty disk, or set disk.wipe_foreign = true in the contract to allow wiping it",
                dev.display(),
                found.join(" and "),
                layout.label
            )));
        }
        tracing::warn!(disk = %dev.display(), found = %found.join(", "), "wiping foreign data (disk.wipe_foreign = true)");
        if part.exists() {
            let _ = run_tool("wipefs", &["-a", &part.display().to_string()], None);
        }
        run_tool("wipefs", &["-a", &dev.display().to_string()], None)?;
    }

    let script = format!(
        "label: gpt\nstart=2048, type={LINUX_FS_GUID}, name=\"{}\"\n",
        layout.label
    );
    run_tool(
        "sfdisk",
        &["-q", "--wipe", "always", &dev.display().to_string()],
        Some(&script),
    )?;
    wait_for_partition(&dev, &part)?;
    let part_s = part.display().to_string();
    match layout.filesystem.as_str() {
        "xfs" => run_tool(
            "mkfs.xfs",
            &["-q", "-f", "-L", &layout.label, &part_s],
            None,
        )?,
        _ => run_tool(
            "mkfs.ext4",
            &["-q", "-F", "-L", &layout.label, &part_s],
            None,
        )?,
    };
    mount(&part, layout.filesystem.as_str(), &mount_point)?;
    Ok(Outcome::Formatted { wiped })
}

/// Runs the step for this node.
pub async fn run(ctx: &Ctx) -> StepResult<Outcome> {
    ctx.progress("disk", "started", "").await;
    let outcome = match ctx.me.disk.clone() {
        None => {
            std::fs::create_dir_all(&ctx.args.state_dir).map_err(|e| {
                StepError::Retry(format!("mkdir {}: {e}", ctx.args.state_dir.display()))
            })?;
            Outcome::NoDisk
        }
        Some(layout) => {
            // The disk may appear after this unit starts (udev, a slow controller): wait for it
            // within the deadline instead of failing the whole chain.
            let device = PathBuf::from(&layout.device);
            crate::step::retry_until(
                &format!("disk {} to appear", device.display()),
                ctx.args.deadline,
                || {
                    let present = device.exists();
                    async move {
                        Ok(if present {
                            crate::step::Attempt::Done(())
                        } else {
                            crate::step::Attempt::NotYet("not present".into())
                        })
                    }
                },
            )
            .await?;
            tokio::task::spawn_blocking(move || prepare(&layout))
                .await
                .map_err(|e| StepError::Retry(format!("disk task: {e}")))??
        }
    };
    let detail = format!("{outcome:?}");
    ctx.mark_done("disk", serde_json::json!({ "outcome": detail }))?;
    ctx.progress("disk", "ok", &detail).await;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(
            first_partition(Path::new("/dev/vdb")),
            PathBuf::from("/dev/vdb1")
        );
        assert_eq!(
            first_partition(Path::new("/dev/loop3")),
            PathBuf::from("/dev/loop3p1")
        );
        assert_eq!(
            first_partition(Path::new("/dev/nvme0n1")),
            PathBuf::from("/dev/nvme0n1p1")
        );
    }
}
