//! The boot network hands nothing worth stealing (root, network namespaces, real clients:
//! udhcpc, curl, hand-made DHCP packets from python3), in both modes.
//!
//! A host on the boot network with its own MAC and address tries, against node02: a forged
//! ProxyDHCP REQUEST on 4011 with node02's MAC; a DHCPREQUEST with requested-IP or ciaddr set
//! to itself; a DHCPINFORM with its ciaddr; replaying node02's script URL and its `/s/…`
//! enrollment URL; enrolling with node02's token; claiming node02's address with its own MAC.
//! Each yields no script, no enrollment initrd, no token and no certificate. node02 itself
//! enrolls, gets the same certificate again for the same key, and a guessed token gets nothing.
//! A consumed token presented with another key is refused with `reused_by` and raises a
//! `security` event, seen through the management API with an operator certificate; so is the
//! one case the network cannot tell apart (a host forging both node02's MAC and address wins the
//! token, and the real node is told who took it). Phase reports take node02's enrollment token
//! as a bearer token; status takes nothing but an operator certificate or loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use plasmacloud_pki::credentials::{csr_pem, generate_key_pem};
use plasmacloud_pki::{Credentials, Identity};
use plasmacloud_testkit::{require, Need};

const NODE02_MAC: &str = "52:54:00:aa:00:02";
const NODE02_IP: &str = "10.77.0.12";
const ATTACKER_MAC: &str = "52:54:00:ee:00:66";
const ATTACKER_IP: &str = "10.77.0.66";

const UDHCPC_SCRIPT: &str =
    "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/24\" dev \"$interface\"\nexit 0\n";

/// Sends one hand-made DHCP packet: `python3 dhcp.py KIND CHADDR CIADDR REQUESTED DEST PORT`
/// (`-` for no requested-IP option); prints whether anything answered within 2 s.
const DHCP_PY: &str = r#"
import os, socket, struct, sys
kind, chaddr, ciaddr, requested, dest, port = sys.argv[1:7]
types = {"discover": 1, "request": 3, "inform": 8}
hw = bytes.fromhex(chaddr.replace(":", ""))
pkt = struct.pack("!BBBB4sHH4s4s4s4s16s", 1, 1, 6, 0, os.urandom(4), 0, 0x8000,
                  socket.inet_aton(ciaddr), bytes(4), bytes(4), bytes(4), hw + bytes(10))
pkt += bytes(192) + b"\x63\x82\x53\x63"
opts = bytes([53, 1, types[kind]])
if requested != "-":
    opts += bytes([50, 4]) + socket.inet_aton(requested)
vc = b"PXEClient:Arch:00000:UNDI:002001"
opts += bytes([60, len(vc)]) + vc + bytes([93, 2, 0, 0]) + b"\xff"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, 25, b"cli0")  # SO_BINDTODEVICE: broadcast with no route
s.bind(("0.0.0.0", 68 if port == "67" else 0))
s.sendto(pkt + opts, (dest, int(port)))
s.settimeout(2)
try:
    s.recvfrom(4096)
    print("answered")
except socket.timeout:
    print("no answer")
"#;

struct Net {
    dir: PathBuf,
    rack: Segment,
    srv: String,
    n2: String,
    x: String,
    spoof: String,
}

impl Net {
    /// The server, node02, the attacker (own MAC and address), and a host that forges node02's
    /// MAC and address (down until used).
    fn new(dir: &Path, node02_ip: Option<&str>) -> Self {
        let mut rack = Segment::new("trust").unwrap();
        let srv = rack
            .attach("srv", "srv0", "52:54:00:ff:00:01", Some("10.77.0.1/24"))
            .unwrap();
        let n2 = rack.attach("n2", "cli0", NODE02_MAC, node02_ip).unwrap();
        let x = rack
            .attach(
                "x",
                "cli0",
                ATTACKER_MAC,
                Some(&format!("{ATTACKER_IP}/24")),
            )
            .unwrap();
        let spoof = rack
            .attach("sp", "cli0", NODE02_MAC, Some(&format!("{NODE02_IP}/24")))
            .unwrap();
        sh(&["ip", "-n", &spoof, "link", "set", "cli0", "down"]);
        Self {
            dir: dir.to_path_buf(),
            rack,
            srv,
            n2,
            x,
            spoof,
        }
    }

    fn link(&self, ns: &str, up: bool) {
        sh(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            "cli0",
            if up { "up" } else { "down" },
        ]);
    }

    /// Forget every neighbour entry (the server's and the clients'), so the next connection
    /// is resolved afresh.
    fn flush_neighbours(&self) {
        sh(&["ip", "-n", &self.srv, "neigh", "flush", "dev", "srv0"]);
        for ns in [&self.n2, &self.x, &self.spoof] {
            sh(&["ip", "-n", ns, "neigh", "flush", "dev", "cli0"]);
        }
    }

    fn dhcp_packet(&self, ns: &str, args: &[&str]) -> String {
        let py = self.dir.join("dhcp.py");
        if !py.exists() {
            std::fs::write(&py, DHCP_PY).unwrap();
        }
        let mut full = vec!["ip", "netns", "exec", ns, "python3", py.to_str().unwrap()];
        full.extend_from_slice(args);
        sh(&full).trim().to_string()
    }
}

/// `curl -w` with the status code on the last line: (code, body).
fn curl_code(ns: &str, args: &[&str]) -> (String, String) {
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-w", "\n%{http_code}"]);
    let (_, out) = curl(ns, &a);
    match out.rsplit_once('\n') {
        Some((body, code)) => (code.trim().to_string(), body.to_string()),
        None => (out.trim().to_string(), String::new()),
    }
}

fn get_code(ns: &str, url: &str) -> String {
    curl_code(ns, &["-o", "/dev/null", url]).0
}

const SCRIPT_URL: &str = "http://10.77.0.1:8081/boot/52-54-00-aa-00-02.ipxe";

/// node02's script from `ns`: (code, enrollment initrd URL).
fn fetch_script(ns: &str) -> (String, Option<String>) {
    let (code, body) = curl_code(ns, &[SCRIPT_URL]);
    let url = body
        .lines()
        .find(|l| l.contains("--name enroll.cpio.zst "))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .map(String::from);
    (code, url)
}

/// The token inside an enrollment initrd fetched from `url` in `ns`.
fn fetch_token(ns: &str, url: &str, out: &Path) -> String {
    let (code, _) = curl_code(ns, &["-o", out.to_str().unwrap(), url]);
    assert_eq!(code, "200", "{url}");
    let cpio = zstd::decode_all(std::fs::File::open(out).unwrap()).unwrap();
    let members = netboot_image::newc::list(&cpio).unwrap();
    let t = members
        .iter()
        .find(|m| m.name == "etc/plasmacloud/enroll/token")
        .unwrap();
    String::from_utf8(t.data.clone())
        .unwrap()
        .trim()
        .to_string()
}

/// `POST /v1/enroll` from `ns` with curl, trusting only the CA: (code, JSON answer).
fn enroll(
    net: &Net,
    ns: &str,
    ca: &str,
    node: &str,
    token: &str,
    key_pem: &str,
) -> (String, serde_json::Value) {
    let csr = csr_pem(key_pem, &Identity::node(node).unwrap()).unwrap();
    let body = serde_json::json!({ "node": node, "token": token, "csr": csr });
    let file = net.dir.join("enroll-body.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let data = format!("@{}", file.display());
    let (code, answer) = curl_code(
        ns,
        &[
            "--cacert",
            ca,
            "-H",
            "content-type: application/json",
            "--data-binary",
            &data,
            "https://10.77.0.1:8443/v1/enroll",
        ],
    );
    (
        code,
        serde_json::from_str(&answer).unwrap_or(serde_json::Value::Null),
    )
}

/// Everything an attacker tries after each forged packet: none of it may yield anything.
fn attacker_gets_nothing(net: &Net, ca: &str, enroll_url: &str, token: &str, what: &str) {
    assert_eq!(get_code(&net.x, SCRIPT_URL), "403", "{what}: script");
    assert_eq!(
        get_code(&net.x, enroll_url),
        "403",
        "{what}: enrollment initrd"
    );
    let key = generate_key_pem().unwrap();
    let (code, answer) = enroll(net, &net.x, ca, "node02", token, &key);
    assert_eq!(code, "403", "{what}: enroll: {answer}");
    assert!(answer.get("certificate").is_none(), "{what}: {answer}");
    assert!(answer.get("reused_by").is_none(), "{what}: {answer}");
}

fn run(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let full = mode == "full";
    // Proxy mode: another DHCP server gave node02 its address; here it is set by hand.
    let node02_cidr = format!("{NODE02_IP}/24");
    let net = Net::new(d, (!full).then_some(node02_cidr.as_str()));
    let cluster = write_contract(d, 8081, 8082);
    let bundle = write_bundle(d, &cluster, b"kernel", b"base", "console=ttyS0");
    let ipxe = write_ipxe_dir(d);
    let state = d.join("state");
    init_ca(&state);
    let op = issue_operator(&state, "tests", &d.join("op"));
    let ca = op.ca();
    let args = server_args(
        mode,
        &cluster,
        &bundle,
        &ipxe,
        &state,
        &["--ipv6-ra", "off", "--management-addr", "0.0.0.0:8082"],
    );
    let server = start_server(&net.srv, &args, &d.join(format!("server-{mode}.log")));

    eprintln!("phase ({mode}): node02 gets its address, its script and this boot's token");
    if full {
        let script = d.join("udhcpc.sh");
        std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
        sh(&["chmod", "+x", script.to_str().unwrap()]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &net.n2,
            "udhcpc",
            "-i",
            "cli0",
            "-f",
            "-q",
            "-n",
            "-t",
            "6",
            "-T",
            "1",
            "-s",
            script.to_str().unwrap(),
            "-V",
            "PXEClient:Arch:00000:UNDI:002001",
        ]);
    }
    assert!(sh(&["ip", "-n", &net.n2, "addr", "show", "cli0"]).contains(&node02_cidr));
    let (code, enroll_url) = fetch_script(&net.n2);
    assert_eq!(code, "200");
    let enroll_url = enroll_url.expect("the script names the enrollment initrd");
    let token1 = fetch_token(&net.n2, &enroll_url, &d.join("t1.cpio"));
    assert_eq!(token1.len(), 32);

    eprintln!("phase ({mode}): forged DHCP packets with node02's MAC give the attacker nothing");
    let dest_4011 = net.dhcp_packet(
        &net.x,
        &["request", NODE02_MAC, ATTACKER_IP, "-", "10.77.0.1", "4011"],
    );
    eprintln!("  forged 4011 REQUEST: {dest_4011}");
    attacker_gets_nothing(&net, &ca, &enroll_url, &token1, "forged 4011 REQUEST");
    let forged: [(&str, &str, &str, &str); 3] = [
        (
            "request",
            "0.0.0.0",
            ATTACKER_IP,
            "DHCPREQUEST requested-IP = attacker",
        ),
        ("request", ATTACKER_IP, "-", "DHCPREQUEST ciaddr = attacker"),
        ("inform", ATTACKER_IP, "-", "DHCPINFORM ciaddr = attacker"),
    ];
    for (kind, ciaddr, requested, what) in forged {
        let r = net.dhcp_packet(
            &net.x,
            &[kind, NODE02_MAC, ciaddr, requested, "255.255.255.255", "67"],
        );
        eprintln!("  {what}: {r}");
        attacker_gets_nothing(&net, &ca, &enroll_url, &token1, what);
    }
    eprintln!("phase ({mode}): node02 itself still gets its script (no forged packet moved it)");
    let (code, _) = fetch_script(&net.n2);
    assert_eq!(code, "200");

    eprintln!("phase ({mode}): the attacker claims node02's address with its own MAC: refused by the neighbour entry");
    if full {
        // The full-mode variant: first a forged REQUEST for node02's own address, which our
        // DHCP acknowledges to node02's MAC (so the lease says .12), then the claim.
        net.dhcp_packet(
            &net.x,
            &[
                "request",
                NODE02_MAC,
                "0.0.0.0",
                NODE02_IP,
                "255.255.255.255",
                "67",
            ],
        );
    }
    net.link(&net.n2, false);
    sh(&["ip", "-n", &net.x, "addr", "flush", "dev", "cli0"]);
    sh(&[
        "ip",
        "-n",
        &net.x,
        "addr",
        "add",
        &node02_cidr,
        "dev",
        "cli0",
    ]);
    net.flush_neighbours();
    attacker_gets_nothing(&net, &ca, &enroll_url, &token1, "claimed address");
    let arp = sh(&["ip", "-n", &net.srv, "neigh", "show", NODE02_IP]);
    assert!(
        arp.contains(ATTACKER_MAC),
        "the server saw the attacker's MAC at .12: {arp}"
    );
    sh(&["ip", "-n", &net.x, "addr", "flush", "dev", "cli0"]);
    sh(&[
        "ip",
        "-n",
        &net.x,
        "addr",
        "add",
        &format!("{ATTACKER_IP}/24"),
        "dev",
        "cli0",
    ]);
    net.link(&net.n2, true);
    net.flush_neighbours();

    eprintln!("phase ({mode}): a guessed token gets nothing, even from node02");
    let key2 = generate_key_pem().unwrap();
    let (code, answer) = enroll(&net, &net.n2, &ca, "node02", &"0".repeat(32), &key2);
    assert_eq!(code, "403", "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("unknown"),
        "{answer}"
    );

    eprintln!("phase ({mode}): node02 enrolls; the same key again gets the same certificate");
    let (code, answer) = enroll(&net, &net.n2, &ca, "node02", &token1, &key2);
    assert_eq!(code, "200", "{answer}\n{}", server.proc.output());
    let cert = answer["certificate"].as_str().unwrap().to_string();
    let creds = Credentials::node(d.join("node02-pki"));
    creds
        .write_all(&key2, &cert, answer["ca"].as_str().unwrap())
        .unwrap();
    let me = creds
        .check(
            Some(&Identity::node("node02").unwrap()),
            Some(&std::fs::read_to_string(&ca).unwrap()),
        )
        .unwrap();
    let (code, again) = enroll(&net, &net.n2, &ca, "node02", &token1, &key2);
    assert_eq!(code, "200", "{again}");
    assert_eq!(
        again["certificate"].as_str().unwrap(),
        cert,
        "the same certificate"
    );

    eprintln!(
        "phase ({mode}): the consumed token from the attacker, and with another key from node02"
    );
    attacker_gets_nothing(&net, &ca, &enroll_url, &token1, "consumed token");
    let (code, answer) = enroll(
        &net,
        &net.n2,
        &ca,
        "node02",
        &token1,
        &generate_key_pem().unwrap(),
    );
    assert_eq!(code, "403", "{answer}");
    assert_eq!(answer["reused_by"]["ip"], NODE02_IP, "{answer}");
    assert_eq!(answer["reused_by"]["mac"], NODE02_MAC, "{answer}");
    assert!(answer["reused_by"]["at"].as_str().unwrap().ends_with('Z'));
    assert!(answer.get("certificate").is_none());

    eprintln!("phase ({mode}): a host forging node02's MAC and address takes a sniffed token; the real node is told who");
    let (code, url2) = fetch_script(&net.n2);
    assert_eq!(code, "200");
    let token2 = fetch_token(&net.n2, &url2.unwrap(), &d.join("t2.cpio"));
    net.link(&net.n2, false);
    net.link(&net.spoof, true);
    net.flush_neighbours();
    let (code, stolen) = enroll(
        &net,
        &net.spoof,
        &ca,
        "node02",
        &token2,
        &generate_key_pem().unwrap(),
    );
    assert_eq!(
        code, "200",
        "L2 cannot tell this host from node02: {stolen}"
    );
    net.link(&net.spoof, false);
    net.link(&net.n2, true);
    net.flush_neighbours();
    let (code, answer) = enroll(
        &net,
        &net.n2,
        &ca,
        "node02",
        &token2,
        &generate_key_pem().unwrap(),
    );
    assert_eq!(code, "403", "{answer}");
    assert_eq!(answer["reused_by"]["ip"], NODE02_IP, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("already used"),
        "{answer}"
    );

    eprintln!("phase ({mode}): the security events, through the management API as an operator");
    let evs = events(&net.srv, &op);
    let security: Vec<&serde_json::Value> = evs
        .iter()
        .filter(|e| e["phase"] == "enroll" && e["status"] == "security")
        .collect();
    assert_eq!(security.len(), 2, "{evs:?}");
    for e in &security {
        assert_eq!(e["node"], "node02");
        assert_eq!(e["ip"], NODE02_IP);
        assert_eq!(e["mac"], NODE02_MAC);
        assert!(
            e["detail"].as_str().unwrap().contains("first used by"),
            "{e}"
        );
    }
    assert!(
        evs.iter()
            .any(|e| e["phase"] == "ipxe-script" && e["status"] == "failed"),
        "refusals are recorded"
    );

    eprintln!(
        "phase ({mode}): phase reports take node02's token as a bearer token, for node02 only"
    );
    let report = |ns: &str, node: &str, bearer: &str| {
        let url = mgmt_url(&format!("/v1/nodes/{node}/events"));
        let auth = format!("Authorization: Bearer {bearer}");
        get_code_post(ns, &ca, &auth, &url)
    };
    assert_eq!(report(&net.n2, "node02", &token2), "202");
    assert_eq!(report(&net.n2, "node03", &token2), "403");
    assert_eq!(report(&net.x, "node02", &"f".repeat(32)), "403");
    let (code, _) = curl_code(
        &net.n2,
        &[
            "--cacert",
            &ca,
            "-X",
            "POST",
            "-d",
            r#"{"phase":"x","status":"ok"}"#,
            &mgmt_url("/v1/nodes/node02/events"),
        ],
    );
    assert_eq!(code, "401", "no credential");
    // node02's own certificate speaks for node02.
    let node02 = Holder {
        dir: creds.dir.clone(),
        stem: "node",
    };
    let mut a = node02.curl_args();
    a.extend(
        [
            "-X",
            "POST",
            "-d",
            r#"{"phase":"firstboot-enroll","status":"ok"}"#,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &mgmt_url("/v1/nodes/node02/events"),
        ]
        .map(String::from),
    );
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_eq!(curl(&net.n2, &refs).1, "202", "serial {}", me.serial);

    eprintln!("phase ({mode}): status: loopback or an operator certificate, nothing else");
    assert_eq!(
        curl_code(
            &net.srv,
            &["--cacert", &ca, "-o", "/dev/null", &mgmt_url("/v1/status")]
        )
        .0,
        "401",
        "the server's own boot address is not loopback"
    );
    assert_eq!(
        curl_code(
            &net.x,
            &["--cacert", &ca, "-o", "/dev/null", &mgmt_url("/v1/status")]
        )
        .0,
        "401"
    );
    assert_eq!(
        curl_code(
            &net.srv,
            &[
                "--cacert",
                &ca,
                "-o",
                "/dev/null",
                "https://127.0.0.1:8082/v1/status"
            ]
        )
        .0,
        "200",
        "loopback"
    );
    let (ok, status) = curl_as(&net.x, &op, &[&mgmt_url("/v1/status")]);
    assert!(ok && status.contains("\"node02\""), "{status}");
    let (_, m) = curl_as(&net.srv, &op, &[&mgmt_url("/metrics")]);
    assert!(
        m.contains("pxe_enrollments_total{result=\"reused\"} 2"),
        "{m}"
    );
    drop(server);
    drop(net.rack);
}

/// A POST with one header, trusting the CA; the status code.
fn get_code_post(ns: &str, ca: &str, header: &str, url: &str) -> String {
    curl_code(
        ns,
        &[
            "--cacert",
            ca,
            "-H",
            header,
            "-H",
            "content-type: application/json",
            "-X",
            "POST",
            "-d",
            r#"{"phase":"firstboot-enroll","status":"started"}"#,
            "-o",
            "/dev/null",
            url,
        ],
    )
    .0
}

fn needs(test: &str) -> bool {
    require(
        test,
        &[
            Need::Root,
            Need::Tool("udhcpc"),
            Need::Tool("curl"),
            Need::Tool("python3"),
        ],
    )
}

#[test]
fn full_mode_hands_nothing_to_another_host() {
    if needs("full_mode_hands_nothing_to_another_host") {
        run("full");
    }
}

#[test]
fn proxy_mode_hands_nothing_to_another_host() {
    if needs("proxy_mode_hands_nothing_to_another_host") {
        run("proxy");
    }
}
