//! `firstboot disk` on real loop devices over sparse files (root only; never skipped in CI).

#![allow(clippy::unwrap_used)] // a test that cannot set up its fixture should panic

use std::path::{Path, PathBuf};
use std::process::Command;

use firstboot::disk::{prepare, Outcome};
use firstboot::step::StepError;
use plasmacloud_contract::{DiskLayout, Filesystem};
use plasmacloud_testkit::{require, Need};

/// A loop device over a sparse file; detached (and unmounted) on drop.
struct Loop {
    dev: PathBuf,
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(size_mb: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size_mb << 20).unwrap();
        let out = Command::new("losetup")
            .args(["-fP", "--show"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let mount = dir.path().join("mnt");
        Self {
            dev,
            mount,
            _dir: dir,
        }
    }

    fn layout(&self, wipe_foreign: bool) -> DiskLayout {
        DiskLayout {
            device: self.dev.display().to_string(),
            filesystem: Filesystem::Ext4,
            label: "plasmacloud".into(),
            mount_point: self.mount.display().to_string(),
            wipe_foreign,
        }
    }

    fn umount(&self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.umount();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn blkid(dev: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn needs() -> bool {
    require(
        "firstboot disk on loop devices",
        &[
            Need::Root,
            Need::Tool("losetup"),
            Need::Tool("sfdisk"),
            Need::Tool("mkfs.ext4"),
            Need::Tool("wipefs"),
        ],
    )
}

#[test]
fn blank_disk_is_formatted_then_found_never_reformatted() {
    if !needs() {
        return;
    }
    let disk = Loop::new(64);

    // Phase 1: a blank disk gets a GPT, a labelled filesystem, a mount.
    assert_eq!(
        prepare(&disk.layout(false)).unwrap(),
        Outcome::Formatted { wiped: false }
    );
    let marker = disk.mount.join("raft-data");
    std::fs::write(&marker, "keep me").unwrap();

    // Phase 2: run again while mounted: found, nothing touched.
    assert_eq!(prepare(&disk.layout(false)).unwrap(), Outcome::Found);

    // Phase 3: "reboot": unmounted; found and mounted again, data intact — even with
    // wipe_foreign set, our own filesystem is never reformatted.
    disk.umount();
    assert_eq!(prepare(&disk.layout(true)).unwrap(), Outcome::Found);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "keep me");
}

#[test]
fn foreign_disk_is_refused_unless_the_contract_allows_wiping() {
    if !needs() {
        return;
    }
    let disk = Loop::new(64);
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "someone-else"])
        .arg(&disk.dev)
        .status()
        .unwrap();
    assert!(st.success());
    let before = blkid(&disk.dev);

    // Refused with exit 2 semantics and a message that names the data and the fix.
    let err = prepare(&disk.layout(false)).expect_err("must refuse foreign data");
    assert!(matches!(err, StepError::Config(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("ext4 filesystem labelled \"someone-else\""),
        "{text}"
    );
    assert!(text.contains("wipe_foreign = true"), "{text}");
    assert_eq!(
        blkid(&disk.dev),
        before,
        "a refused disk must be left untouched"
    );

    // Allowed: wiped and formatted as ours.
    assert_eq!(
        prepare(&disk.layout(true)).unwrap(),
        Outcome::Formatted { wiped: true }
    );
    let part = firstboot::disk::first_partition(&disk.dev);
    assert!(
        blkid(&part).contains("LABEL=plasmacloud"),
        "{}",
        blkid(&part)
    );
}

#[test]
fn missing_device_is_retry_later() {
    let layout = DiskLayout {
        device: "/dev/plasmacloud-no-such-disk".into(),
        filesystem: Filesystem::Ext4,
        label: "plasmacloud".into(),
        mount_point: "/var/lib/plasmacloud".into(),
        wipe_foreign: false,
    };
    let err = prepare(&layout).expect_err("no such device");
    assert!(matches!(err, StepError::Retry(_)), "{err}");
    assert!(err
        .to_string()
        .contains("/dev/plasmacloud-no-such-disk is not present"));
}

#[test]
fn a_probe_that_fails_is_retry_later_and_never_wipes_our_disk() {
    if !needs() {
        return;
    }
    let disk = Loop::new(64);
    // Ours, with data on it.
    assert_eq!(
        prepare(&disk.layout(false)).unwrap(),
        Outcome::Formatted { wiped: false }
    );
    std::fs::write(disk.mount.join("raft-data"), "precious").unwrap();
    disk.umount();
    let part = firstboot::disk::first_partition(&disk.dev);
    let before = blkid(&part);

    // blkid breaks (an I/O error, a missing library): even with wipe_foreign, nothing is
    // touched and the step asks to be retried.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("blkid");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'blkid: cannot read' >&2\nexit 4\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tools = firstboot::disk::Tools { blkid: broken };
    let err =
        firstboot::disk::prepare_with(&disk.layout(true), &tools).expect_err("must not go on");
    assert!(matches!(err, StepError::Retry(_)), "{err}");
    assert!(
        err.to_string().contains("not treating the disk as empty"),
        "{err}"
    );
    assert_eq!(blkid(&part), before, "the disk is left as it was");

    // With a working blkid the data is still there.
    assert_eq!(prepare(&disk.layout(true)).unwrap(), Outcome::Found);
    assert_eq!(
        std::fs::read_to_string(disk.mount.join("raft-data")).unwrap(),
        "precious"
    );
}

#[test]
fn under_retry_forever_a_step_outlives_its_deadline_and_finishes_when_the_disk_appears() {
    if !needs() {
        return;
    }
    let disk = Loop::new(64);
    let work = tempfile::tempdir().unwrap();
    let late = PathBuf::from(format!("/dev/plasmacloud-late-{}", std::process::id()));
    let mount = PathBuf::from(format!(
        "/var/lib/plasmacloud-late-test-{}",
        std::process::id()
    ));
    let mut contract: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster-3.json"),
        )
        .unwrap(),
    )
    .unwrap();
    contract["nodes"][1]["disk"]["device"] = serde_json::json!(late.display().to_string());
    contract["nodes"][1]["disk"]["mount_point"] = serde_json::json!(mount.display().to_string());
    let path = work.path().join("cluster.json");
    std::fs::write(&path, contract.to_string()).unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_firstboot"));
    cmd.arg("disk")
        .arg("--cluster")
        .arg(&path)
        .args(["--node", "node02", "--deadline", "1s", "--retry-forever"])
        .arg("--state-dir")
        .arg(work.path().join("state"));
    let mut step =
        plasmacloud_testkit::Process::spawn("disk", cmd, &work.path().join("disk.log")).unwrap();

    // The deadline passes: it reports and starts over instead of exiting 75.
    step.wait_for_output("starting over", std::time::Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        step.try_exit_code(),
        None,
        "still running: {}",
        step.output()
    );

    // The disk shows up: the step finishes.
    std::os::unix::fs::symlink(&disk.dev, &late).unwrap();
    let code = step.wait_exit(std::time::Duration::from_secs(60));
    let _ = std::fs::remove_file(&late);
    let _ = Command::new("umount").arg(&mount).status();
    let _ = std::fs::remove_dir(&mount);
    assert_eq!(code, Ok(Some(0)), "{}", step.output());
}
