//! What a rack needs before any VM starts: the rendered units, the Debian appliance, the
//! rack's contract and IAM secret, the bundle, the network namespace, and (for the comparison)
//! a dnsmasq TFTP tree.
//! Everything is written under the rack's work directory; the appliance layers are cached by
//! `netboot-image` under /var/cache/plasmacloud.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use plasmacloud_contract::voter_count_for_rack;
use plasmacloud_testkit::netns::Netns;

/// The bridge's address (the boot server's) and prefix.
pub const SERVER_IP: &str = "10.99.0.1";
/// Boot-plane HTTP port.
pub const HTTP_PORT: u16 = 8081;
/// Management port (boot events, phase reports).
pub const MGMT_PORT: u16 = 8082;
/// Where the IAM bootstrap credential lives on the seed.
pub const IAM_CRED_ON_NODE: &str = "/etc/plasmacloud/secrets/iam-bootstrap.json";
/// The admin the rack seeds.
pub const IAM_ADMIN: (&str, &str) = ("admin", "Rack-Operator-Passphrase-2026");
/// The MAC of the stranger VM in `unknown-mac`.
pub const UNKNOWN_MAC: &str = "52:54:00:00:00:99";
/// Kernel command line of every entry (before `plasmacloud.node=` and `initrd=`).
/// `modules-load=` makes the data disk (and ext4 with its crc32c) exist before
/// `firstboot-disk.service` starts: its `After=systemd-udev-settle.service` orders without
/// pulling settle in, so on a cold boot the disk step can run before udev loaded virtio_blk,
/// fail, and leave the rest of the chain with a failed dependency.
/// `virtio_pci,virtio_net` there too: the NIC then appears at once instead of behind the rest
/// of udev's coldplug events (its `virtio` subsystem is not among udev's prioritized ones).
/// `systemd.status_unit_format=name` makes the console say `Finished firstboot-disk.service.`
/// instead of the unit name and description ellipsized to 80 columns, so the harness's console
/// marks (one per first-boot unit) match.
pub const CMDLINE: &str = "console=ttyS0 panic=-1 systemd.show_status=1 systemd.status_unit_format=name modules-load=virtio_pci,virtio_net,virtio_blk,crc32c_generic,ext4";

/// Kernel modules of the rack's appliance: only what its QEMU machines have (a virtio NIC and
/// disk) and what the first boot needs (ext4 with crc32c, autofs for systemd). Less than
/// netboot-image's default, which also covers SATA, SCSI, e1000 and XFS: every module packed
/// costs unpacking on every boot, and udev loads those it finds a device for (the IDE
/// controller of QEMU's `pc` machine pulled in libata, SCSI and `ata_piix` on the critical
/// path).
pub const RACK_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_rng",
    "ext4",
    "crc32c_generic",
    "crc32c-intel",
    "autofs4",
];

/// Node `i` (0-based) of the rack: name, MAC, address.
pub fn node(i: usize) -> (String, String, String) {
    (
        format!("node{:02}", i + 1),
        format!("52:54:00:00:00:{:02x}", i + 1),
        format!("10.99.0.{}", 11 + i),
    )
}

/// The rack's network: a namespace of its own (`vmrack-<pid>-<n>`) with bridge `br0` at
/// [`SERVER_IP`]/24 and `taps` tap devices on it (`tap0` …). Dropping it kills every process
/// left in the namespace and deletes it, bridge and taps with it.
pub fn network(taps: usize) -> anyhow::Result<Netns> {
    let ns = Netns::unique("vmrack")?;
    ns.add_bridge("br0", Some(&format!("{SERVER_IP}/24")))?;
    for i in 0..taps {
        ns.add_tap(&format!("tap{i}"), "br0")?;
    }
    Ok(ns)
}

/// Runs a command to completion; fails with its output.
pub fn run(what: &str, cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("while starting {what} ({cmd:?})"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Debian kernel in /boot the rack boots: the newest `-cloud-amd64` one, else the newest.
///
/// Debian's cloud kernel is LZ4-compressed (the generic one is XZ) and has fewer drivers to
/// probe: under TCG it decompresses in about 2 s instead of 9 s per node, and the whole
/// 3-node rack reaches cluster-ready about 20 s sooner.
pub fn default_kernel() -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    let is_cloud = |p: &PathBuf| p.to_string_lossy().ends_with("-cloud-amd64");
    v.sort_by(|a, b| (is_cloud(a), a).cmp(&(is_cloud(b), b)));
    v.pop()
}

/// The artifacts of one rack.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Artifacts {
    /// The contract.
    pub contract: PathBuf,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Seconds each build step took (name, seconds).
    pub build_secs: Vec<(String, f64)>,
}

/// Writes the rack's contract for `n` nodes and the IAM credential under `work/secrets`.
pub fn write_contract(work: &Path, n: usize) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(work).with_context(|| format!("while creating {}", work.display()))?;
    let voters = voter_count_for_rack(n);
    let nodes: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let (name, mac, ip) = node(i);
            serde_json::json!({
                "name": name,
                "mac": mac,
                "ipv4": ip,
                "roles": [if i < voters { "control-plane" } else { "worker" }],
                "disk": {
                    "device": "/dev/vda",
                    "filesystem": "ext4",
                    "label": "plasmacloud",
                    "mount_point": "/var/lib/plasmacloud",
                    "wipe_foreign": false
                },
                "labels": {"rack": "vm-rack"}
            })
        })
        .collect();
    let contract = serde_json::json!({
        "version": 1,
        "cluster": {"name": format!("vm-rack-{n}"), "id": format!("plasmacloud-vm-rack-{n}")},
        "boot_server": {"address": SERVER_IP, "http_port": HTTP_PORT, "management_port": MGMT_PORT},
        "ports": {
            "chainfire_api": 2379, "chainfire_raft": 2380, "chainfire_gossip": 2381,
            "flaredb_api": 2479, "flaredb_raft": 2480, "iam_api": 8080
        },
        "initial_voters": (0..voters).map(|i| node(i).0).collect::<Vec<_>>(),
        "iam": {"bootstrap_credential": IAM_CRED_ON_NODE},
        "nodes": nodes,
    });
    let path = work.join("cluster-config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&contract)? + "\n")
        .with_context(|| format!("while writing {}", path.display()))?;
    // The credential's source for the seed's overlay: secrets/<node>/<path on node>.
    let seed = node(0).0;
    let cred = work
        .join("secrets")
        .join(&seed)
        .join(IAM_CRED_ON_NODE.trim_start_matches('/'));
    if let Some(dir) = cred.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &cred,
        serde_json::json!({"username": IAM_ADMIN.0, "password": IAM_ADMIN.1}).to_string(),
    )?;
    set_mode(&cred, 0o600)?;
    Ok(path)
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("while setting the mode of {}", p.display()))
}

/// Builds units, appliance, contract and bundle under `work`.
pub fn build(
    work: &Path,
    bin_dir: &Path,
    kernel: &Path,
    nodes: usize,
) -> anyhow::Result<Artifacts> {
    std::fs::create_dir_all(work)?;
    let mut secs = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        let t = Instant::now();
        eprintln!("vm-rack: build: {name} …");
        f()?;
        let s = t.elapsed().as_secs_f64();
        eprintln!("vm-rack: build: {name} done in {s:.1} s");
        secs.push((name.to_string(), s));
        anyhow::Ok(())
    };
    let units = work.join("units");
    step("units", &mut || {
        let _ = std::fs::remove_dir_all(&units);
        run(
            "firstboot units",
            Command::new(bin_dir.join("firstboot"))
                .args(["units", "--out"])
                .arg(&units)
                .args(["--bindir", "/usr/local/bin"]),
        )
        .map(drop)
    })?;
    let appliance = work.join("appliance.img");
    step("appliance", &mut || {
        let mut c = Command::new(bin_dir.join("netboot-image"));
        c.args(["appliance", "--debootstrap", "--kernel"])
            .arg(kernel);
        // Stripped copies, as a Nix build installs them: a quarter less to send and unpack.
        let stripped = work.join("bin");
        std::fs::create_dir_all(&stripped)?;
        for b in [
            "firstboot",
            "chainfire-server",
            "flaredb-server",
            "iam-server",
        ] {
            let out = stripped.join(b);
            run(
                "strip",
                Command::new("strip")
                    .arg("--strip-all")
                    .arg("-o")
                    .arg(&out)
                    .arg(bin_dir.join(b)),
            )?;
            c.arg("--bin").arg(out);
        }
        c.arg("--modules").arg(RACK_MODULES.join(","));
        c.arg("--units").arg(&units).arg("--out").arg(&appliance);
        let report = run("netboot-image appliance", &mut c)?;
        std::fs::write(work.join("appliance-report.json"), report)?;
        Ok(())
    })?;
    let contract = write_contract(work, nodes)?;
    let bundle = work.join("bundle");
    step("bundle", &mut || {
        run(
            "netboot-image bundle",
            Command::new(bin_dir.join("netboot-image"))
                .arg("bundle")
                .arg("--cluster")
                .arg(&contract)
                .arg("--kernel")
                .arg(kernel)
                .arg("--initrd")
                .arg(&appliance)
                .arg("--cmdline")
                .arg(CMDLINE)
                .arg("--secrets")
                .arg(work.join("secrets"))
                .arg("--out")
                .arg(&bundle),
        )
        .map(drop)
    })?;
    Ok(Artifacts {
        contract,
        bundle,
        build_secs: secs,
    })
}

/// Writes a TFTP root for dnsmasq: the bundle's kernel and initrds (hard links), iPXE binaries,
/// and one iPXE script per node equivalent to pxe-server's (same files, same command line,
/// fetched over TFTP instead of HTTP).
pub fn write_dnsmasq_tree(work: &Path, bundle: &Path, n: usize) -> anyhow::Result<PathBuf> {
    let root = work.join("tftp");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let link = |from: &Path, to: &Path| -> anyhow::Result<()> {
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to).with_context(|| format!("while copying {}", from.display()))?;
        }
        Ok(())
    };
    for f in ["bzImage", "initrd"] {
        link(&bundle.join(f), &root.join(f))?;
    }
    for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        let src = Path::new("/usr/lib/ipxe").join(f);
        if src.is_file() {
            link(&src, &root.join(f))?;
        }
    }
    for i in 0..n {
        let (name, _, _) = node(i);
        let overlay = format!("overlay-{name}.cpio.zst");
        link(&bundle.join(&overlay), &root.join(&overlay))?;
        let script = format!(
            "#!ipxe\nkernel tftp://{SERVER_IP}/bzImage {CMDLINE} plasmacloud.node={name} initrd=initrd initrd={overlay}\ninitrd tftp://{SERVER_IP}/initrd\ninitrd tftp://{SERVER_IP}/{overlay}\nboot\n"
        );
        std::fs::write(root.join(format!("{name}.ipxe")), script)?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_follow_the_addressing_plan() {
        assert_eq!(
            node(0),
            (
                "node01".into(),
                "52:54:00:00:00:01".into(),
                "10.99.0.11".into()
            )
        );
        assert_eq!(node(4).2, "10.99.0.15");
    }

    #[test]
    fn contract_names_vda_and_the_seed_credential() {
        let d = std::env::temp_dir().join(format!("vm-rack-unit-{}", std::process::id()));
        let p = write_contract(&d, 3).expect("contract");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json");
        assert_eq!(v["nodes"][2]["disk"]["device"], "/dev/vda");
        assert_eq!(v["initial_voters"].as_array().map(Vec::len), Some(3));
        assert!(d
            .join("secrets/node01/etc/plasmacloud/secrets/iam-bootstrap.json")
            .is_file());
        let _ = std::fs::remove_dir_all(d);
    }
}
