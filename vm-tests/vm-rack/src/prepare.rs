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
/// Enrollment port (nodes' CSRs, HTTPS).
pub const ENROLL_PORT: u16 = 8443;
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

/// The argon2id hash of the rack admin's password, made the way an operator makes it.
pub fn admin_hash(bin_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new(bin_dir.join("iam-server"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("while starting iam-server hash-password")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(format!("{}\n", IAM_ADMIN.1).as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iam-server hash-password failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Writes the rack's contract for `n` nodes (version 2: no secret in it; the admin as the
/// argon2id `admin_hash`).
pub fn write_contract(work: &Path, n: usize, admin_hash: &str) -> anyhow::Result<PathBuf> {
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
        "version": plasmacloud_contract::CONTRACT_VERSION,
        "cluster": {"name": format!("vm-rack-{n}"), "id": format!("plasmacloud-vm-rack-{n}")},
        "boot_server": {"address": SERVER_IP, "http_port": HTTP_PORT, "management_port": MGMT_PORT, "enrollment_port": ENROLL_PORT},
        "ports": {
            "chainfire_api": 2379, "chainfire_raft": 2380, "chainfire_gossip": 2381,
            "flaredb_api": 2479, "flaredb_raft": 2480, "iam_api": 8080
        },
        "initial_voters": (0..voters).map(|i| node(i).0).collect::<Vec<_>>(),
        "iam": {"admin": {"username": IAM_ADMIN.0, "password_hash": admin_hash}},
        "nodes": nodes,
    });
    let path = work.join("cluster-config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&contract)? + "\n")
        .with_context(|| format!("while writing {}", path.display()))?;
    Ok(path)
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
    let contract = write_contract(work, nodes, &admin_hash(bin_dir)?)?;
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

/// The rack's PKI, in pxe-server's state directory for run `label` (`work/pxe-state-<label>`):
/// the cluster CA (`pxe-server pki init`, as an operator does before the first serve) and the
/// harness's operator certificate (`pki issue --operator`). Returns the operator's files.
pub fn rack_pki(
    work: &Path,
    bin_dir: &Path,
    contract: &Path,
    label: &str,
) -> anyhow::Result<plasmacloud_pki::TlsFiles> {
    let state = pxe_state_dir(work, label);
    let op = work.join(format!("operator-{label}"));
    run(
        "pxe-server pki init",
        Command::new(bin_dir.join("pxe-server"))
            .args(["pki", "init", "--state-dir"])
            .arg(&state)
            .arg("--cluster")
            .arg(contract),
    )?;
    run(
        "pxe-server pki issue --operator",
        Command::new(bin_dir.join("pxe-server"))
            .args(["pki", "issue", "--operator", "vm-rack", "--state-dir"])
            .arg(&state)
            .arg("--out")
            .arg(&op),
    )?;
    Ok(plasmacloud_pki::TlsFiles::from(
        &plasmacloud_pki::Credentials::operator(op),
    ))
}

/// pxe-server's state directory of run `label`.
pub fn pxe_state_dir(work: &Path, label: &str) -> PathBuf {
    work.join(format!("pxe-state-{label}"))
}

/// Debian's signed shim (Microsoft's signature) and signed GRUB netboot image (Debian's).
pub const SIGNED_SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
/// See [`SIGNED_SHIM`].
pub const SIGNED_GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";

/// pxe-server's `--secure-boot-dir` for the rack: Debian's signed shim and GRUB under the
/// names the chain asks for, as an operator would lay them out.
pub fn secure_boot_dir(work: &Path) -> anyhow::Result<PathBuf> {
    let dir = work.join("secure-boot");
    std::fs::create_dir_all(&dir)?;
    for (from, to) in [(SIGNED_SHIM, "shimx64.efi"), (SIGNED_GRUB, "grubx64.efi")] {
        std::fs::copy(from, dir.join(to)).with_context(|| {
            format!("while copying {from} (are shim-signed and grub-efi-amd64-signed installed?)")
        })?;
    }
    Ok(dir)
}

/// Bytes of every VM's data disk (sparse).
pub const DISK_BYTES: u64 = 2 << 30;

/// A blank (sparse) data disk at `path`, as a new machine's: pxe-server enrolls it.
pub fn blank_disk(path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::create(path)
        .with_context(|| format!("while creating {}", path.display()))?;
    f.set_len(DISK_BYTES)?;
    Ok(())
}

/// A data disk as an installed machine has it (for the dnsmasq comparison, where no
/// pxe-server enrolls the nodes): a GPT with one partition labelled `plasmacloud` holding an
/// ext4 filesystem that already carries the node's key and certificate (`pki/`, issued
/// offline with `pxe-server pki issue --node`). `firstboot disk` finds it ours and mounts it,
/// and `firstboot enroll` finds a valid certificate and has nothing to do.
pub fn preinstalled_disk(
    disk: &Path,
    size: u64,
    work: &Path,
    bin_dir: &Path,
    contract: &Path,
    label: &str,
    node: &str,
) -> anyhow::Result<()> {
    let root = work.join(format!("preinstalled-{node}-{label}"));
    let _ = std::fs::remove_dir_all(&root);
    let pki = root.join(plasmacloud_contract::NODE_PKI_DIR);
    run(
        "pxe-server pki issue --node",
        Command::new(bin_dir.join("pxe-server"))
            .args(["pki", "issue", "--node", node, "--state-dir"])
            .arg(pxe_state_dir(work, label))
            .arg("--cluster")
            .arg(contract)
            .arg("--out")
            .arg(&pki),
    )?;
    let f = std::fs::File::create(disk)
        .with_context(|| format!("while creating {}", disk.display()))?;
    f.set_len(size)?;
    drop(f);
    const START: u64 = 2048; // sectors
    let sectors = size / 512 - START - 34; // the backup GPT at the end
    let mut sf = Command::new("sfdisk");
    sf.args(["-q"]).arg(disk);
    sf.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = sf.spawn().context("while starting sfdisk")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(
            format!(
                "label: gpt\nstart={START}, size={sectors}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"plasmacloud\"\n"
            )
            .as_bytes(),
        )?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "sfdisk {}: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    run(
        "mkfs.ext4 -d",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "plasmacloud", "-E"])
            .arg(format!("offset={}", START * 512))
            .arg("-d")
            .arg(&root)
            .arg(disk)
            .arg(format!("{}k", sectors / 2)),
    )?;
    Ok(())
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
    fn contract_names_vda_and_carries_the_admin_as_a_hash() {
        let d = std::env::temp_dir().join(format!("vm-rack-unit-{}", std::process::id()));
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$FCXPgIi1gahS52F7DaMVyw$hXfRVp9txfuCxGVwuE6RSUMu9bH/wtIf/qfEhEWbgWM";
        let p = write_contract(&d, 3, hash).expect("contract");
        let text = std::fs::read_to_string(&p).expect("read");
        let c = plasmacloud_contract::Contract::parse(&text).expect("a valid contract");
        assert_eq!(c.voters().len(), 3);
        assert_eq!(
            c.nodes[2].disk.as_ref().map(|d| d.device.as_str()),
            Some("/dev/vda")
        );
        assert!(
            !text.contains(IAM_ADMIN.1),
            "the password never goes into the contract"
        );
        let _ = std::fs::remove_dir_all(d);
    }
}
