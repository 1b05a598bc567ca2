//! Shared fixtures for pxe-server's integration tests: a test rack (a testkit [`Segment`]:
//! network namespaces around a bridge, deleted on drop), the clients run in it, a contract and
//! a hand-written bundle, the server process, the `pki` CLI, and curl over HTTPS with the
//! cluster CA (and an operator's or node's certificate).

#![allow(dead_code, clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use plasmacloud_contract::manifest::{
    overlay_path, BootEntry, BundleManifest, ManifestFile, MANIFEST_VERSION,
};
pub use plasmacloud_testkit::netns::{self, Segment};
use plasmacloud_testkit::{workspace_binary, Process};
use sha2::{Digest, Sha256};

/// Runs a prepared command, panicking with its output on failure; its stdout.
pub fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a prepared command; (success, stdout+stderr).
pub fn try_run(mut cmd: Command) -> (bool, String) {
    match cmd.output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// `args[0] args[1..]` as a command.
fn command(args: &[&str]) -> Command {
    let mut c = Command::new(args[0]);
    c.args(&args[1..]);
    c
}

/// Runs a command, panicking with its output on failure.
pub fn sh(args: &[&str]) -> String {
    run_ok(command(args))
}

/// Runs a command, returning (success, stdout+stderr).
pub fn try_sh(args: &[&str]) -> (bool, String) {
    try_run(command(args))
}

/// `args[0] args[1..]` run inside namespace `ns`.
pub fn exec(ns: &str, args: &[&str]) -> Command {
    let mut c = netns::command_in(ns, args[0]);
    c.args(&args[1..]);
    c
}

/// [`sh`] inside namespace `ns`.
pub fn sh_in(ns: &str, args: &[&str]) -> String {
    run_ok(exec(ns, args))
}

/// [`try_sh`] inside namespace `ns`.
pub fn try_sh_in(ns: &str, args: &[&str]) -> (bool, String) {
    try_run(exec(ns, args))
}

/// The test rack: a fresh [`Segment`] (bridge `br0` in a hub namespace).
pub fn rack() -> Segment {
    Segment::new("pxt").unwrap()
}

/// The MAC of the server's interface `srv0`.
pub const SERVER_MAC: &str = "52:54:00:ff:00:01";

/// Attaches the server's namespace (`srv0`, [`SERVER_MAC`], address `cidr`); returns its name.
pub fn attach_server(rack: &mut Segment, cidr: &str) -> String {
    rack.attach("srv", "srv0", SERVER_MAC, Some(cidr)).unwrap()
}

/// Attaches a client namespace `name` whose `cli0` has `mac` (and `cidr`); returns its name.
pub fn attach_client(rack: &mut Segment, name: &str, mac: &str, cidr: Option<&str>) -> String {
    rack.attach(name, "cli0", mac, cidr).unwrap()
}

/// Writes `text` to `path` as an executable script.
pub fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The vendor class of a BIOS PXE client (option 60; architecture 0 in option 93's terms).
pub const BIOS_PXE_CLIENT: &str = "PXEClient:Arch:00000:UNDI:002001";

/// udhcpc on `cli0` in `ns`, once (`-q -n`), `tries` discovers a second apart, with `script`
/// and vendor class `vendor`, and `env` set; (got a lease, output).
pub fn udhcpc_once(
    ns: &str,
    script: &Path,
    tries: u32,
    vendor: Option<&str>,
    env: &[(&str, &Path)],
) -> (bool, String) {
    let extra = match vendor {
        Some(v) => vec!["-V", v],
        None => Vec::new(),
    };
    udhcpc_with(ns, script, tries, &extra, env)
}

/// [`udhcpc_once`] with `extra` udhcpc flags (`-V VENDOR`, `-x OPT:HEX`…).
pub fn udhcpc_with(
    ns: &str,
    script: &Path,
    tries: u32,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> (bool, String) {
    let tries = tries.to_string();
    let mut args = vec![
        "udhcpc",
        "-i",
        "cli0",
        "-f",
        "-q",
        "-n",
        "-t",
        &tries,
        "-T",
        "1",
        "-s",
        script.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut cmd = exec(ns, &args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    try_run(cmd)
}

/// A DHCP script that adds the address and writes the answer's boot file into `$OUT`.
const BOOT_FILE_SCRIPT: &str = "#!/bin/sh\ncase \"$1\" in bound|renew)\n  ip addr add \"$ip/$mask\" dev \"$interface\" 2>/dev/null\n  echo \"boot_file=$boot_file\" > \"$OUT\"\n;; esac\nexit 0\n";

/// One DHCP exchange from `ns` (udhcpc with `extra` flags: vendor class, option 93, user
/// class …), scratch files in `d` named after `who`; the boot file of the answer.
pub fn dhcp_boot_file(ns: &str, d: &Path, who: &str, extra: &[&str]) -> String {
    let script = d.join("bootfile.sh");
    write_script(&script, BOOT_FILE_SCRIPT);
    let out = d.join(format!("{who}.out"));
    let (ok, log) = udhcpc_with(ns, &script, 6, extra, &[("OUT", &out)]);
    assert!(ok, "udhcpc ({who}): {log}");
    let got = std::fs::read_to_string(&out).unwrap_or_default();
    got.trim()
        .strip_prefix("boot_file=")
        .unwrap_or_else(|| panic!("{who}: {got}"))
        .to_string()
}

/// dnsmasq in the foreground in `ns`, bound to `interface`, DNS off, plus `args`; its output
/// goes to `log`.
pub fn spawn_dnsmasq(ns: &str, interface: &str, args: &[&str], log: &Path) -> Process {
    let iface = format!("--interface={interface}");
    let mut all = vec![
        "dnsmasq",
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        &iface,
        "--bind-interfaces",
    ];
    all.extend_from_slice(args);
    Process::spawn("dnsmasq", exec(ns, &all), log).unwrap()
}

/// A test's fixture files: a contract, a bundle and an iPXE directory in a temporary directory.
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The directory (logs and scratch files go here too).
    pub d: PathBuf,
    /// The contract.
    pub cluster: PathBuf,
    /// The bundle.
    pub bundle: PathBuf,
    /// The iPXE directory.
    pub ipxe: PathBuf,
}

impl Fixture {
    /// A bundle of `kernel` and `base`, overlays made by `overlay`, `cmdline` on every entry.
    pub fn new(
        kernel: &[u8],
        base: &[u8],
        cmdline: &str,
        overlay: &dyn Fn(&str) -> Vec<u8>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let cluster = write_contract(&d, 8081, 8082);
        let bundle = write_bundle_with(&d, &cluster, kernel, base, cmdline, overlay);
        let ipxe = write_ipxe_dir(&d);
        Fixture {
            _dir: dir,
            d,
            cluster,
            bundle,
            ipxe,
        }
    }

    /// `pxe-server serve` flags for a server on `srv0` with these files and `state`.
    pub fn server_args(&self, mode: &str, state: &Path, extra: &[&str]) -> Vec<String> {
        server_args(mode, &self.cluster, &self.bundle, &self.ipxe, state, extra)
    }
}

/// Node MACs and addresses of the test contract.
pub const NODES: [(&str, &str, &str); 3] = [
    ("node01", "52:54:00:aa:00:01", "10.77.0.11"),
    ("node02", "52:54:00:aa:00:02", "10.77.0.12"),
    ("node03", "52:54:00:aa:00:03", "10.77.0.13"),
];
/// The server's address.
pub const SERVER_IP: &str = "10.77.0.1";

/// Writes the test contract (from examples/cluster-3.json, with our MACs and addresses).
pub fn write_contract(dir: &Path, http_port: u16, mgmt_port: u16) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster-3.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    v["boot_server"]["address"] = SERVER_IP.into();
    v["boot_server"]["http_port"] = http_port.into();
    v["boot_server"]["management_port"] = mgmt_port.into();
    let nodes = v["nodes"].as_array_mut().unwrap();
    for (n, (name, mac, ip)) in nodes.iter_mut().zip(NODES) {
        n["name"] = name.into();
        n["mac"] = mac.into();
        n["ipv4"] = ip.into();
    }
    let path = dir.join("cluster-config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    path
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Builds a bundle: `kernel` and `base` bytes, one overlay per node (its bytes say which
/// node; named as netboot-image names it), and a manifest with `cmdline_extra` on every entry.
pub fn write_bundle(
    dir: &Path,
    contract: &Path,
    kernel: &[u8],
    base: &[u8],
    cmdline_extra: &str,
) -> PathBuf {
    write_bundle_with(dir, contract, kernel, base, cmdline_extra, &overlay_bytes)
}

/// [`write_bundle`] with overlays made by `overlay(node)`.
pub fn write_bundle_with(
    dir: &Path,
    contract: &Path,
    kernel: &[u8],
    base: &[u8],
    cmdline_extra: &str,
    overlay: &dyn Fn(&str) -> Vec<u8>,
) -> PathBuf {
    let c = plasmacloud_contract::Contract::load(contract).unwrap();
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let mut files = Vec::new();
    let mut add = |path: &str, bytes: &[u8]| {
        std::fs::write(bundle.join(path), bytes).unwrap();
        files.push(ManifestFile {
            path: path.into(),
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        });
    };
    add("vmlinuz", kernel);
    add("initrd.img", base);
    let mut entries = std::collections::BTreeMap::new();
    for n in &c.nodes {
        let p = overlay_path(&n.name);
        add(&p, &overlay(&n.name));
        entries.insert(
            n.name.clone(),
            BootEntry {
                kernel: "vmlinuz".into(),
                initrds: vec!["initrd.img".into(), p],
                cmdline: format!("{cmdline_extra} plasmacloud.node={}", n.name)
                    .trim()
                    .to_string(),
                arch: Default::default(),
            },
        );
    }
    entries.insert(
        "default".into(),
        BootEntry {
            kernel: "vmlinuz".into(),
            initrds: vec!["initrd.img".into()],
            cmdline: cmdline_extra.to_string(),
            arch: Default::default(),
        },
    );
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let m = BundleManifest {
        version: MANIFEST_VERSION,
        cluster_id: c.id().to_string(),
        cluster_name: c.name().to_string(),
        contract_version: c.config.version,
        files,
        entries,
    };
    std::fs::write(
        bundle.join("manifest.json"),
        serde_json::to_string_pretty(&m).unwrap(),
    )
    .unwrap();
    bundle
}

/// The bytes of a node's overlay: an empty cpio trailer is not needed for the tests that only
/// fetch it, so it is a marker string (QEMU tests build real cpio overlays).
pub fn overlay_bytes(node: &str) -> Vec<u8> {
    format!("OVERLAY-OF-{node}\n").into_bytes()
}

/// An iPXE directory: Debian's files when present, else small stand-ins, plus `extra` files.
pub fn write_ipxe_dir(dir: &Path) -> PathBuf {
    let d = dir.join("ipxe");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["undionly.kpxe", "snponly.efi", "ipxe.efi"] {
        let src = Path::new("/usr/lib/ipxe").join(f);
        if src.is_file() {
            std::fs::copy(&src, d.join(f)).unwrap();
        } else {
            std::fs::write(d.join(f), format!("stand-in for {f}\n").repeat(100)).unwrap();
        }
    }
    d
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A running pxe-server inside a namespace.
pub struct Server {
    /// The process.
    pub proc: Process,
    /// Log path.
    pub log: PathBuf,
}

/// Starts `pxe-server serve ARGS` in `ns` and waits for its ready line.
pub fn start_server(ns: &str, args: &[String], log: &Path) -> Server {
    let bin = workspace_binary("pxe-server");
    let mut cmd = exec(ns, &[bin.to_str().unwrap(), "serve"]);
    cmd.args(args);
    cmd.env("RUST_LOG", "info,pxe_server=debug");
    let mut proc = Process::spawn("pxe-server", cmd, log).unwrap();
    proc.wait_for_output("pxe-server ready", Duration::from_secs(20))
        .unwrap();
    Server {
        proc,
        log: log.to_path_buf(),
    }
}

/// Flags for a server on `srv0` with the given fixture paths.
pub fn server_args(
    mode: &str,
    cluster: &Path,
    bundle: &Path,
    ipxe: &Path,
    state: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--interface".into(),
        "srv0".into(),
        "--mode".into(),
        mode.into(),
        "--cluster".into(),
        cluster.display().to_string(),
        "--bundle".into(),
        bundle.display().to_string(),
        "--ipxe-dir".into(),
        ipxe.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `curl` inside a namespace; returns (success, what it printed).
pub fn curl(ns: &str, args: &[&str]) -> (bool, String) {
    let mut full = vec!["curl", "-sS", "--max-time", "20"];
    full.extend_from_slice(args);
    try_sh_in(ns, &full)
}

/// `curl ARGS… -o OUT URL` inside a namespace; returns the HTTP status code it got.
pub fn curl_code(ns: &str, args: &[&str], out: &str, url: &str) -> String {
    let mut full = args.to_vec();
    full.extend(["-o", out, "-w", "%{http_code}", url]);
    curl(ns, &full).1
}

/// Parses the server address used in the tests.
pub fn server_ip() -> Ipv4Addr {
    SERVER_IP.parse().unwrap()
}

/// One cpio (newc) entry.
pub enum CpioEntry<'a> {
    /// A directory.
    Dir(&'a str),
    /// A regular file with its mode bits.
    File(&'a str, u32, &'a [u8]),
    /// A character device (major, minor).
    Char(&'a str, u32, u32),
}

/// Writes a newc cpio archive (what the kernel unpacks as initramfs).
pub fn cpio(entries: &[CpioEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |ino: u32, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)| {
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0, 0, 1, 0, data.len(), 0, 0, rdev.0, rdev.1, name.len() + 1, 0
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            CpioEntry::Dir(n) => put(ino, n, 0o040755, &[], (0, 0)),
            CpioEntry::File(n, m, d) => put(ino, n, 0o100000 | m, d, (0, 0)),
            CpioEntry::Char(n, ma, mi) => put(ino, n, 0o020600, &[], (*ma, *mi)),
        }
    }
    put(0, "TRAILER!!!", 0, &[], (0, 0));
    out
}

/// The marker the test initramfs prints on the serial console.
pub const INIT_MARKER: &str = "PLASMACLOUD-INIT-REACHED";

/// A tiny initramfs: static busybox and an /init that prints [`INIT_MARKER`], the node name
/// from the overlay (or `none`), whether the enrollment initrd's token arrived (`enroll=yes`,
/// 32 hex digits, mode 600), and powers off.
pub fn test_initrd() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox mkdir -p /proc\n/bin/busybox mount -t proc proc /proc\nT=/etc/plasmacloud/enroll/token\nE=no\n[ \"$(/bin/busybox wc -c < $T 2>/dev/null)\" = 33 ] && [ \"$(/bin/busybox stat -c %a $T)\" = 600 ] && E=yes\necho \"{INIT_MARKER} node=$(/bin/busybox cat /etc/plasmacloud-node 2>/dev/null || echo none) enroll=$E\"\n/bin/busybox poweroff -f\n"
    );
    cpio(&[
        CpioEntry::Dir("bin"),
        CpioEntry::Dir("dev"),
        CpioEntry::Dir("etc"),
        CpioEntry::Char("dev/console", 5, 1),
        CpioEntry::File("bin/busybox", 0o755, &busybox),
        CpioEntry::File("init", 0o755, init.as_bytes()),
    ])
}

/// A node overlay cpio holding /etc/plasmacloud-node.
pub fn test_overlay(node: &str) -> Vec<u8> {
    let body = format!("{node}\n");
    cpio(&[
        CpioEntry::Dir("etc"),
        CpioEntry::File("etc/plasmacloud-node", 0o644, body.as_bytes()),
    ])
}

/// The newest Debian kernel in /boot.
pub fn debian_kernel() -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    v.sort();
    v.pop()
}

/// Firmware for a test VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS + QEMU's iPXE ROM.
    Bios,
    /// OVMF (q35, pflash code + a copy of the vars).
    Uefi,
}

/// Starts a TCG VM on tap `tap` (in the rack's hub namespace) that network-boots; its serial
/// console goes to `serial`.
pub fn start_vm(
    rack: &Segment,
    tap: &str,
    mac: &str,
    fw: Firmware,
    dir: &Path,
    serial: &Path,
) -> Process {
    let mut args: Vec<String> = vec![
        "qemu-system-x86_64".into(),
        "-accel".into(),
        "tcg".into(),
        "-m".into(),
        "384".into(),
    ];
    args.extend(
        [
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
            "-boot",
            "n",
        ]
        .map(String::from),
    );
    args.push("-serial".into());
    args.push(format!("file:{}", serial.display()));
    match fw {
        Firmware::Bios => args.extend(["-machine", "pc"].map(String::from)),
        Firmware::Uefi => {
            let vars = dir.join(format!("{tap}-vars.fd"));
            std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
            args.extend(["-machine", "q35"].map(String::from));
            args.push("-drive".into());
            args.push(
                "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            );
            args.push("-drive".into());
            args.push(format!("if=pflash,format=raw,file={}", vars.display()));
        }
    }
    args.push("-netdev".into());
    args.push(format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
    args.push("-device".into());
    // UEFI: no option ROM, so OVMF's own PXE stack (option 93 = 7) fetches snponly.efi over
    // TFTP from us, which then runs iPXE; BIOS: QEMU's iPXE ROM asks for the script directly.
    let rom = if fw == Firmware::Uefi {
        ",romfile="
    } else {
        ""
    };
    args.push(format!("virtio-net-pci,netdev=n0,mac={mac}{rom}"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cmd = exec(rack.hub().name(), &refs);
    Process::spawn("qemu", cmd, &dir.join(format!("{tap}-qemu.log"))).unwrap()
}

/// Waits until the serial log holds `needle`; returns the seconds it took from `since`.
pub fn wait_serial(
    serial: &Path,
    needle: &str,
    since: std::time::Instant,
    deadline: Duration,
) -> Result<f64, String> {
    plasmacloud_testkit::wait_until(
        &format!("serial console to show {needle:?}"),
        deadline,
        || {
            let text = std::fs::read(serial).unwrap_or_default();
            String::from_utf8_lossy(&text)
                .contains(needle)
                .then(|| since.elapsed().as_secs_f64())
        },
    )
    .map_err(|e| {
        let text = std::fs::read(serial).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let tail: String = text
            .chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{e}\n--- serial tail ---\n{tail}")
    })
}

/// Runs `pxe-server pki ARGS`; returns (exit code, stdout, stderr).
pub fn pki(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(workspace_binary("pxe-server"))
        .arg("pki")
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A certificate holder's files for curl.
#[derive(Clone, Debug)]
pub struct Holder {
    /// The directory.
    pub dir: PathBuf,
    /// `operator` or `node`.
    pub stem: &'static str,
}

impl Holder {
    /// The CA file.
    pub fn ca(&self) -> String {
        self.dir.join("ca.crt").display().to_string()
    }

    /// curl flags presenting this certificate and trusting only the CA.
    pub fn curl_args(&self) -> Vec<String> {
        vec![
            "--cacert".into(),
            self.ca(),
            "--cert".into(),
            self.dir
                .join(format!("{}.crt", self.stem))
                .display()
                .to_string(),
            "--key".into(),
            self.dir
                .join(format!("{}.key", self.stem))
                .display()
                .to_string(),
        ]
    }
}

/// `pxe-server pki issue --operator NAME` from the state directory `state` into `out`.
pub fn issue_operator(state: &Path, name: &str, out: &Path) -> Holder {
    let (code, _, err) = pki(&[
        "issue",
        "--state-dir",
        state.to_str().unwrap(),
        "--operator",
        name,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "pki issue --operator: {err}");
    Holder {
        dir: out.to_path_buf(),
        stem: "operator",
    }
}

/// `pxe-server pki issue --node NAME --cluster FILE` into `out`.
pub fn issue_node(state: &Path, cluster: &Path, name: &str, out: &Path) -> Holder {
    let (code, _, err) = pki(&[
        "issue",
        "--state-dir",
        state.to_str().unwrap(),
        "--node",
        name,
        "--cluster",
        cluster.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "pki issue --node: {err}");
    Holder {
        dir: out.to_path_buf(),
        stem: "node",
    }
}

/// `pxe-server pki init` for `state` (before the server starts, so certificates can be issued
/// first).
pub fn init_ca(state: &Path) -> String {
    let (code, out, err) = pki(&["init", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(code, 0, "pki init: {err}");
    out.trim().to_string()
}

/// curl in `ns` as `who` (HTTPS with the cluster CA); returns (success, output).
pub fn curl_as(ns: &str, who: &Holder, args: &[&str]) -> (bool, String) {
    let mut full: Vec<String> = who.curl_args();
    full.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    curl(ns, &refs)
}

/// The management API base URL of the test server.
pub fn mgmt_url(path: &str) -> String {
    format!("https://{SERVER_IP}:8082{path}")
}

/// Every event the management API has, as `who` sees them from `srv`.
pub fn events(srv: &str, who: &Holder) -> Vec<serde_json::Value> {
    let (ok, body) = curl_as(srv, who, &[&mgmt_url("/v1/events?since=0")]);
    assert!(ok, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["events"].as_array().unwrap().clone()
}
