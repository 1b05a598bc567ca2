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
