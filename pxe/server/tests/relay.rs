//! Routed racks through a real DHCP relay (root; Debian's `isc-dhcp-relay`): one pxe-server on
//! a core segment, a router namespace running `dhcrelay` (with option 82, `-a`) between it and
//! two rack subnets, real DHCP clients on both racks.
//!
//! ```text
//!  srv ns: srv0 10.97.0.1/24 ── brc 10.97.0.2 ┐ rtr ns: dhcrelay -iu brc -id bra -id brb
//!                                               ├ bra 10.98.1.1/24 ── rack A (node01, a stranger)
//!                                               └ brb 10.98.2.1/24 ── rack B (node02, a stranger)
//! ```
//!
//! Full mode: each rack's clients get an address of their own subnet (the contract's for
//! nodes, the subnet's range for strangers), its mask and router, and their boot file, all
//! through the relay (giaddr, option 82 echoed, seen in the events as `via relay … circuit-id`);
//! a node plugged into the wrong rack gets no answer; node01's script reaches only node01
//! (from its leased address on rack A), not node02 on rack B nor a stranger on rack A. Proxy
//! mode behind the same relay: a PXE DISCOVER relayed from rack A gets a proxy offer (boot file,
//! no address) back through the relay; a relayed node's script is refused (nothing on our L2
//! vouches for a routed requester in proxy mode) while a stranger boots the default entry.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use plasmacloud_testkit::netns::Netns;
use plasmacloud_testkit::{require, wait_until, Need, Process};

/// node01 lives on rack A, node02 on rack B, node03 on the core segment.
const ADDRS: [&str; 3] = ["10.98.1.11", "10.98.2.12", "10.97.0.13"];
const CORE_IP: &str = "10.97.0.1";
const STRANGER_A: &str = "52:54:00:cc:00:0a";
const STRANGER_B: &str = "52:54:00:cc:00:0b";

/// The routed topology; every namespace is deleted on drop.
struct Topology {
    srv: Netns,
    rtr: Netns,
    /// (namespace, rack bridge, MAC)
    clients: Vec<(Netns, String)>,
}

impl Topology {
    fn new() -> Self {
        let rtr = Netns::unique("rly-r").unwrap();
        let srv = Netns::unique("rly-s").unwrap();
        rtr.add_bridge("brc", Some("10.97.0.2/24")).unwrap();
        rtr.add_veth("pc", "brc", &srv, "srv0", SERVER_MAC, Some("10.97.0.1/24"))
            .unwrap();
        rtr.add_bridge("bra", Some("10.98.1.1/24")).unwrap();
        rtr.add_bridge("brb", Some("10.98.2.1/24")).unwrap();
        srv.ip(&["route", "add", "10.98.0.0/16", "via", "10.97.0.2"])
            .unwrap();
        run_ok(exec(
            rtr.name(),
            &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ));
        Topology {
            srv,
            rtr,
            clients: Vec::new(),
        }
    }

    /// A client namespace on rack `bridge` whose `cli0` has `mac`; returns its name.
    fn client(&mut self, bridge: &str, mac: &str) -> String {
        let ns = Netns::unique("rly-c").unwrap();
        let port = format!("pc{}", self.clients.len() + 1);
        self.rtr
            .add_veth(&port, bridge, &ns, "cli0", mac, None)
            .unwrap();
        let name = ns.name().to_string();
        self.clients.push((ns, mac.to_string()));
        name
    }
}

/// The test contract with node01 on rack A, node02 on rack B, node03 on the core segment, and
/// the boot server on the core segment; a bundle for it.
fn routed_fixture(d: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let cluster = write_contract(d, 8081, 8082);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cluster).unwrap()).unwrap();
    v["boot_server"]["address"] = CORE_IP.into();
    for (n, ip) in v["nodes"].as_array_mut().unwrap().iter_mut().zip(ADDRS) {
        n["ipv4"] = ip.into();
    }
    std::fs::write(&cluster, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let bundle = write_bundle(d, &cluster, b"kernel", b"base", "console=ttyS0");
    let ipxe = write_ipxe_dir(d);
    (cluster, bundle, ipxe)
}

/// udhcpc on `ns`'s `cli0`: configures the address and the default route it got (so later
/// requests are routed back through the rack's router) and reports what it saw.
fn udhcpc_routed(ns: &str, d: &Path, tag: &str, extra: &[&str]) -> (bool, String) {
    let script = d.join(format!("udhcpc-{tag}.sh"));
    let out = d.join(format!("udhcpc-{tag}.out"));
    write_script(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew)\n  ip addr add \"$ip/$mask\" dev \"$interface\"\n  [ -n \"$router\" ] && ip route replace default via \"$router\"\n  echo \"ip=$ip mask=$mask router=$router siaddr=$siaddr serverid=$serverid boot_file=$boot_file\" > \"$OUT\"\n;; esac\nexit 0\n",
    );
    let mut args = vec![
        "udhcpc", "-i", "cli0", "-f", "-q", "-n", "-t", "6", "-T", "1", "-s",
    ];
    let s = script.to_str().unwrap().to_string();
    args.push(&s);
    args.extend_from_slice(extra);
    let mut cmd = exec(ns, &args);
    cmd.env("OUT", &out);
    let (ok, log) = try_run(cmd);
    let got = std::fs::read_to_string(&out).unwrap_or_default();
    (
        ok && !got.is_empty(),
        format!("{got}{}", if ok { String::new() } else { log }),
    )
}

/// `dhcrelay` in the router namespace: upstream `brc`, downstream both racks, relaying to the
/// server, adding option 82 (`-a`: circuit id = the rack bridge's name).
fn start_relay(t: &Topology, d: &Path, servers: &[&str]) -> Process {
    let pf = d.join("dhcrelay.pid");
    let mut args = vec!["dhcrelay", "-4", "-d", "-a", "-pf"];
    let pfs = pf.to_str().unwrap().to_string();
    args.push(&pfs);
    args.extend(["-iu", "brc", "-id", "bra", "-id", "brb"]);
    args.extend_from_slice(servers);
    let mut p = Process::spawn(
        "dhcrelay",
        exec(t.rtr.name(), &args),
        &d.join("dhcrelay.log"),
    )
    .unwrap();
    p.wait_for_output("Listening on LPF/brb", Duration::from_secs(10))
        .unwrap();
    p
}

const PXE_BIOS: &str = "PXEClient:Arch:00000:UNDI:002001";
const HTTP_X64: &str = "HTTPClient:Arch:00016:UNDI:003001";

#[test]
fn routed_racks_through_a_dhcp_relay() {
    if !require(
        "routed_racks_through_a_dhcp_relay",
        &[
            Need::Root,
            Need::Tool("dhcrelay"),
            Need::Tool("udhcpc"),
            Need::Tool("curl"),
            Need::Tool("python3"),
        ],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cluster, bundle, ipxe) = routed_fixture(d);

    eprintln!("phase: the routed topology (core segment, router with dhcrelay, racks A and B)");
    let mut t = Topology::new();
    let node01 = t.client("bra", NODES[0].1);
    let stranger_a = t.client("bra", STRANGER_A);
    let node02 = t.client("brb", NODES[1].1);
    let stranger_b = t.client("brb", STRANGER_B);
    let node02_wrong_rack = t.client("bra", "52:54:00:aa:00:02");
    let srv = t.srv.name().to_string();
    let _relay = start_relay(&t, d, &[CORE_IP]);

    eprintln!("phase: pxe-server, full mode, the core subnet plus both rack subnets");
    let state = d.join("state");
    let args = server_args(
        "full",
        &cluster,
        &bundle,
        &ipxe,
        &state,
        &[
            "--dhcp-range",
            "10.97.0.100-10.97.0.150",
            "--subnet",
            "10.98.1.0/24,range=10.98.1.100-10.98.1.150",
            "--subnet",
            "10.98.2.0/24,range=10.98.2.100-10.98.2.150,router=10.98.2.1",
        ],
    );
    let server = start_server(&srv, &args, &d.join("server-full.log"));

    eprintln!("phase: node02's MAC plugged into rack A gets no answer (its address is on rack B)");
    let (ok, got) = udhcpc_routed(&node02_wrong_rack, d, "wrong-rack", &["-t", "2"]);
    assert!(!ok, "a node on the wrong rack got a lease: {got}");
    drop(t.clients.pop()); // unplug it

    eprintln!("phase: node01 on rack A (BIOS PXE) through the relay");
    let (ok, got) = udhcpc_routed(&node01, d, "node01", &["-V", PXE_BIOS, "-x", "0x5d:0000"]);
    assert!(ok, "{got}");
    assert!(
        got.contains("ip=10.98.1.11 mask=24 router=10.98.1.1 "),
        "{got}"
    );
    assert!(
        got.contains("siaddr=10.97.0.1 serverid=10.97.0.1 boot_file=undionly.kpxe"),
        "{got}"
    );

    eprintln!("phase: node02 on rack B (UEFI HTTP boot, arch 16) through the relay");
    let (ok, got) = udhcpc_routed(&node02, d, "node02", &["-V", HTTP_X64, "-x", "0x5d:0010"]);
    assert!(ok, "{got}");
    assert!(
        got.contains("ip=10.98.2.12 mask=24 router=10.98.2.1 "),
        "{got}"
    );
    assert!(
        got.contains("boot_file=http://10.97.0.1:8081/ipxe/snponly.efi"),
        "{got}"
    );

    eprintln!("phase: strangers get their rack's pool, and iPXE its script URL");
    let (ok, got) = udhcpc_routed(&stranger_a, d, "stranger-a", &["-V", PXE_BIOS]);
    assert!(ok, "{got}");
    assert!(
        got.contains("ip=10.98.1.100 mask=24 router=10.98.1.1 "),
        "{got}"
    );
    let (ok, got) = udhcpc_routed(&stranger_b, d, "stranger-b", &[]);
    assert!(ok, "{got}");
    assert!(
        got.contains("ip=10.98.2.100 mask=24 router=10.98.2.1 "),
        "{got}"
    );
    let (ok, got) = udhcpc_routed(&node01, d, "node01-ipxe", &["-x", "0x4d:69505845"]);
    assert!(ok, "{got}");
    assert!(
        got.contains("boot_file=http://10.97.0.1:8081/boot/52-54-00-aa-00-01.ipxe"),
        "{got}"
    );
    let log = std::fs::read_to_string(&server.log).unwrap();
    for needle in [
        "ack 10.98.1.11 (bios, tftp undionly.kpxe) via relay 10.98.1.1 (circuit-id=bra)",
        "ack 10.98.2.12 (http-x64, http snponly.efi) via relay 10.98.2.1 (circuit-id=brb)",
    ] {
        let log = strip_log(&log);
        assert!(
            log.contains(needle),
            "no event {needle:?} in the server's log:\n{}",
            log.lines()
                .filter(|l| l.contains("boot event"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    eprintln!("phase: node01's script reaches node01 on rack A only");
    let url = "http://10.97.0.1:8081/boot/52-54-00-aa-00-01.ipxe";
    let (ok, script) = curl(&node01, &["-f", url]);
    assert!(ok, "node01 could not fetch its own script: {script}");
    assert!(script.contains("plasmacloud.node=node01"), "{script}");
    assert!(
        script.contains("/s/"),
        "no enrollment initrd in node01's script: {script}"
    );
    for (who, ns) in [
        ("node02 on rack B", &node02),
        ("a stranger on rack A", &stranger_a),
    ] {
        let code = curl_code(ns, &[], "/dev/null", url);
        assert_eq!(code, "403", "{who} got node01's script: {code}");
    }
    let (ok, script) = curl(
        &stranger_b,
        &["-f", "http://10.97.0.1:8081/boot/52-54-00-cc-00-0b.ipxe"],
    );
    assert!(
        ok && !script.contains("/s/"),
        "the stranger's default script: {script}"
    );
    drop(server);

    eprintln!("phase: proxy mode behind the same relay");
    let args = server_args(
        "proxy",
        &cluster,
        &bundle,
        &ipxe,
        &d.join("state-proxy"),
        &[],
    );
    let server = start_server(&srv, &args, &d.join("server-proxy.log"));
    let probe = d.join("proxy-probe.py");
    std::fs::write(&probe, PROXY_PROBE).unwrap();
    let got = sh_in(
        &stranger_a,
        &["python3", probe.to_str().unwrap(), "cli0", STRANGER_A],
    );
    assert!(
        got.contains("yiaddr=0.0.0.0 server=10.97.0.1 file=undionly.kpxe class=PXEClient"),
        "no proxy offer through the relay: {got}"
    );
    wait_until(
        "the proxy offer's event naming the relay",
        Duration::from_secs(5),
        || {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            strip_log(&log)
                .contains(
                    "proxy offer (bios, tftp undionly.kpxe) via relay 10.98.1.1 (circuit-id=bra)",
                )
                .then_some(())
        },
    )
    .unwrap();
    let code = curl_code(&node01, &[], "/dev/null", url);
    assert_eq!(
        code, "403",
        "proxy mode served a routed requester a node's script"
    );
    let (ok, script) = curl(
        &stranger_a,
        &["-f", "http://10.97.0.1:8081/boot/52-54-00-cc-00-0a.ipxe"],
    );
    assert!(ok && !script.contains("/s/"), "{script}");
}

/// The server's log without its colour codes.
fn strip_log(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Broadcasts one PXE DISCOVER (BIOS) as MAC argv[2] on argv[1] and prints the first OFFER that
/// comes back (through the relay).
const PROXY_PROBE: &str = r#"
import socket, struct, sys, time
iface, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, 25, iface.encode())
s.bind(("0.0.0.0", 68))
s.settimeout(1.0)
vc = b"PXEClient:Arch:00000:UNDI:002001"
hdr = struct.pack("!BBBBIHHIIII16s64s128s", 1, 1, 6, 0, 0x5eed, 0, 0x8000, 0, 0, 0, 0, mac, b"", b"")
opts = bytes([53, 1, 1, 60, len(vc)]) + vc + bytes([93, 2, 0, 0, 255])
deadline = time.time() + 10
while time.time() < deadline:
    s.sendto(hdr + b"\x63\x82\x53\x63" + opts, ("255.255.255.255", 67))
    try:
        d, _ = s.recvfrom(2048)
    except socket.timeout:
        continue
    if len(d) < 240 or struct.unpack("!I", d[4:8])[0] != 0x5eed:
        continue
    o, i, f = d[240:], 0, {}
    while i < len(o) and o[i] != 255:
        if o[i] == 0:
            i += 1
            continue
        f[o[i]] = o[i + 2:i + 2 + o[i + 1]]
        i += 2 + o[i + 1]
    if f.get(53) != b"\x02":
        continue
    print("yiaddr=%s server=%s file=%s class=%s" % (socket.inet_ntoa(d[16:20]), socket.inet_ntoa(f.get(54, b"\0\0\0\0")), f.get(67, b"").decode(), f.get(60, b"").decode()))
    sys.exit(0)
print("no offer")
sys.exit(1)
"#;
