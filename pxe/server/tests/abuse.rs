//! Bounded resources under abuse, with real clients in network namespaces (root): slow-header
//! (slowloris) connections on every HTTP listener are closed by the header timeout while a
//! good client is served; the boot plane's per-address cap refuses the excess with a 503 and
//! a log line; a TFTP flood of never-acknowledged read requests, from one address and from
//! many, leaves a good tftp-hpa client served; a DHCP DISCOVER flood from one MAC is rate
//! limited while other MACs get their leases.
//!
//! The bounds under test (pxe/README.md, "Bounds"): request heads within 10 s, 32 boot-plane
//! connections per address, TFTP 8 transfers per address and 128 in all, a never-acknowledged
//! first block dropped after 4 s (5 s at most), DHCP 10 packets at once and 2 a second per MAC.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use plasmacloud_testkit::{require, wait_until, Need, Process};

/// Slow clients: `HOST PORT tls|plain SRC[,SRC…] PER_SRC trickle|idle`. Opens PER_SRC
/// connections from each source address (TLS handshake done when `tls`); `trickle` sends a
/// partial request head and then one more header line a second, never the end of the head;
/// `idle` sends nothing. Prints `opened N`, then, once every connection is closed by the
/// server (or after 60 s), one JSON line: how many closed, after how long each, and how many
/// got an answer first (and the first answer line).
const SLOW_PY: &str = r#"
import json, select, socket, ssl, sys, time
host, port, tls = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "tls"
srcs, per_src, mode = sys.argv[4].split(","), int(sys.argv[5]), sys.argv[6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conns = []
for src in srcs:
    for _ in range(per_src):
        s = socket.socket()
        s.bind((src, 0))
        s.settimeout(10)
        s.connect((host, port))
        if tls:
            s = ctx.wrap_socket(s, server_hostname=host)
        if mode == "trickle":
            s.sendall(b"GET /files/vmlinuz HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        conns.append({"s": s, "t": time.time(), "closed": None, "got": b""})
print("opened %d" % len(conns), flush=True)
deadline = time.time() + 60
last = time.time()
while time.time() < deadline:
    live = [c for c in conns if c["closed"] is None]
    if not live:
        break
    r, _, _ = select.select([c["s"] for c in live], [], [], 0.25)
    now = time.time()
    for c in live:
        if c["s"] not in r:
            continue
        try:
            d = c["s"].recv(4096)
        except (ssl.SSLWantReadError, BlockingIOError):
            continue
        except OSError:
            d = b""
        if d:
            c["got"] += d
        else:
            c["closed"] = now - c["t"]
    if mode == "trickle" and now - last >= 1.0:
        last = now
        for c in conns:
            if c["closed"] is None:
                try:
                    c["s"].send(b"X-Slow: 1\r\n")
                except (ssl.SSLWantWriteError, BlockingIOError):
                    pass
                except OSError:
                    pass
closed = sorted(c["closed"] for c in conns if c["closed"] is not None)
answered = [c for c in conns if c["got"]]
print(json.dumps({
    "opened": len(conns), "closed": len(closed),
    "min_s": closed[0] if closed else None, "max_s": closed[-1] if closed else None,
    "times": [round(x, 2) for x in closed],
    "answered": len(answered),
    "answer": answered[0]["got"].split(b"\r\n")[0].decode(errors="replace") if answered else "",
}), flush=True)
"#;

/// A TFTP flood: `SERVER SRC[,SRC…] PER_SRC FILE HOLD_SECS`. Sends PER_SRC read requests from
/// each source address, each from its own port, and never acknowledges anything. Counts for
/// 2 s which requests got DATA and which an ERROR, prints one JSON line, then keeps its
/// sockets open for HOLD_SECS (so the server's transfers see silence, not port unreachable).
const TFTP_FLOOD_PY: &str = r#"
import json, select, socket, sys, time
srv, srcs, per_src, fname, hold = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
socks = []
for src in srcs:
    for _ in range(per_src):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        s.sendto(b"\x00\x01" + fname.encode() + b"\x00octet\x00", (srv, 69))
        socks.append(s)
data, busy, msgs = set(), set(), set()
end = time.time() + 2
while time.time() < end:
    r, _, _ = select.select(socks, [], [], 0.2)
    for s in r:
        try:
            d = s.recv(2048)
        except OSError:
            continue
        if d[:2] == b"\x00\x03":
            data.add(s.fileno())
        elif d[:2] == b"\x00\x05":
            busy.add(s.fileno())
            msgs.add(d[4:-1].decode(errors="replace"))
print(json.dumps({"sent": len(socks), "data": len(data), "busy": len(busy), "messages": sorted(msgs)}), flush=True)
time.sleep(hold)
"#;

/// A DHCP flood: `IFACE SECS RATE`. DISCOVERs from one MAC (52:54:00:ee:00:01) at about RATE
/// a second for SECS seconds; counts the OFFERs made to that MAC; one JSON line.
const DHCP_FLOOD_PY: &str = r#"
import json, socket, struct, sys, time
iface, secs, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, 25, iface.encode())  # SO_BINDTODEVICE
s.bind(("0.0.0.0", 68))
s.setblocking(False)
mac = bytes([0x52, 0x54, 0x00, 0xee, 0x00, 0x01])
def discover(xid):
    hdr = struct.pack("!BBBBIHHIIII16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, 0, 0, 0, 0, mac, b"", b"")
    vc = b"PXEClient:Arch:00000:UNDI:002001"
    return hdr + b"\x63\x82\x53\x63" + bytes([53, 1, 1, 60, len(vc)]) + vc + bytes([93, 2, 0, 0, 255])
sent, offers = 0, 0
t0 = time.time()
while time.time() - t0 < secs:
    for _ in range(50):
        try:
            s.sendto(discover(0x20000000 + sent), ("255.255.255.255", 67))
            sent += 1
        except BlockingIOError:
            pass
    while True:
        try:
            d = s.recv(4096)
        except BlockingIOError:
            break
        if len(d) < 241 or d[0] != 2 or d[28:34] != mac:
            continue
        i = 240
        while i + 1 < len(d) and d[i] != 255:
            if d[i] == 0:
                i += 1
                continue
            if d[i] == 53 and d[i + 2] == 2:
                offers += 1
            i += 2 + d[i + 1]
    ahead = sent / rate - (time.time() - t0)
    if ahead > 0:
        time.sleep(ahead)
print(json.dumps({"sent": sent, "offers": offers, "seconds": time.time() - t0}), flush=True)
"#;

/// The value of the first metric line starting with `name` (labels included).
fn metric(srv: &str, op: &Holder, name: &str) -> f64 {
    let (_, m) = curl_as(srv, op, &[&mgmt_url("/metrics")]);
    m.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
}

/// The resident set of process `pid`, MiB.
fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Starts a python script (written to `dir/NAME.py`) in `ns` with `args`, logging to
/// `dir/NAME.log`.
fn python(ns: &str, dir: &Path, name: &str, text: &str, args: &[&str]) -> Process {
    let py = dir.join(format!("{name}.py"));
    std::fs::write(&py, text).unwrap();
    let mut all = vec!["python3", py.to_str().unwrap()];
    all.extend_from_slice(args);
    Process::spawn(name, exec(ns, &all), &dir.join(format!("{name}.log"))).unwrap()
}

/// The JSON line a script printed last, once it has exited.
fn result_of(p: &mut Process, deadline: Duration) -> serde_json::Value {
    p.wait_exit(deadline).unwrap();
    let out = p.output();
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no result line:\n{out}"));
    serde_json::from_str(line).unwrap()
}

/// Adds `cidrs` to `cli0` in `ns`.
fn add_addresses(ns: &str, cidrs: &[String]) {
    for c in cidrs {
        sh(&["ip", "-n", ns, "addr", "add", c, "dev", "cli0"]);
    }
}

fn needs(test: &str, tools: &[&str]) -> bool {
    let mut n = vec![Need::Root, Need::Tool("python3"), Need::Tool("curl")];
    n.extend(tools.iter().map(|t| Need::Tool(t)));
    require(test, &n)
}

#[test]
fn slow_headers_are_closed_on_every_listener_while_good_clients_are_served() {
    if !needs(
        "slow_headers_are_closed_on_every_listener_while_good_clients_are_served",
        &[],
    ) {
        return;
    }
    let kernel = pattern(1 << 20, 7);
    let fx = Fixture::new(&kernel, b"base", "console=ttyS0", &overlay_bytes);
    let d = fx.d.as_path();
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let bad = attach_client(&mut rack, "bad", "52:54:00:cc:00:66", Some("10.77.0.60/24"));
    let good = attach_client(
        &mut rack,
        "good",
        "52:54:00:cc:00:77",
        Some("10.77.0.70/24"),
    );
    add_addresses(&bad, &["10.77.0.61/24".into(), "10.77.0.62/24".into()]);
    let state = d.join("state");
    let args = fx.server_args("full", &state, &["--ipv6-ra", "off"]);
    let server = start_server(&srv, &args, &d.join("server.log"));
    let op = issue_operator(&state, "tests", &d.join("op"));
    let ca = state.join("pki/ca.crt").display().to_string();
    let pid = server.proc.pid().unwrap();
    let rss_before = rss_mib(pid);

    eprintln!("phase: 60 slow-header connections on each listener (boot, management, enrollment), from three addresses");
    let srcs = "10.77.0.60,10.77.0.61,10.77.0.62";
    let listeners = [
        ("boot", "8081", "plain"),
        ("management", "8082", "tls"),
        ("enrollment", "8443", "tls"),
    ];
    let mut slow: Vec<Process> = listeners
        .iter()
        .map(|(name, port, tls)| {
            python(
                &bad,
                d,
                &format!("slow-{name}"),
                SLOW_PY,
                &["10.77.0.1", port, tls, srcs, "20", "trickle"],
            )
        })
        .collect();
    for p in &mut slow {
        p.wait_for_output("opened 60", Duration::from_secs(30))
            .unwrap();
    }
    let attack_started = Instant::now();
    for (name, _, _) in listeners {
        let open = metric(
            &srv,
            &op,
            &format!("pxe_connections_open{{listener=\"{name}\"}}"),
        );
        assert!(open >= 60.0, "{name}: {open} connections open");
    }
    let rss_attack = rss_mib(pid);

    eprintln!("phase: a good client on each listener is served meanwhile, each answer within 2 s");
    let good_requests: [Vec<String>; 3] = [
        vec![
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "http://10.77.0.1:8081/files/vmlinuz".into(),
        ],
        vec![
            "--cacert".into(),
            ca.clone(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "https://10.77.0.1:8082/health".into(),
        ],
        vec![
            "--cacert".into(),
            ca.clone(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "-d".into(),
            "{}".into(),
            "https://10.77.0.1:8443/v1/enroll".into(),
        ],
    ];
    let want = ["200", "200", "400"];
    let mut served = 0;
    let mut slowest = 0.0f64;
    while slow.iter_mut().any(|p| p.try_exit_code().is_none())
        && attack_started.elapsed() < Duration::from_secs(40)
    {
        for (req, want) in good_requests.iter().zip(want) {
            let t = Instant::now();
            let refs: Vec<&str> = req.iter().map(String::as_str).collect();
            let (ok, code) = curl(&good, &refs);
            let secs = t.elapsed().as_secs_f64();
            assert!(ok && code == want, "good client {refs:?}: {code}");
            assert!(secs < 2.0, "good client {refs:?} took {secs:.2} s");
            slowest = slowest.max(secs);
            served += 1;
        }
    }
    assert!(served >= 9, "only {served} good requests during the attack");

    eprintln!("phase: every slow connection was closed by the 10 s header timeout");
    for ((name, _, _), p) in listeners.iter().zip(&mut slow) {
        let r = result_of(p, Duration::from_secs(60));
        eprintln!("{name}: {r}");
        assert_eq!(r["closed"], 60, "{name}: {r}");
        let (min, max) = (r["min_s"].as_f64().unwrap(), r["max_s"].as_f64().unwrap());
        assert!(
            (9.0..=12.0).contains(&min),
            "{name}: closed after {min:.2} s, before its 10 s: {r}"
        );
        assert!(
            max <= 12.0,
            "{name}: a slow connection lived {max:.2} s: {r}"
        );
        let timed_out = metric(
            &srv,
            &op,
            &format!("pxe_connections_timed_out_total{{listener=\"{name}\"}}"),
        );
        assert!(timed_out >= 60.0, "{name}: {timed_out} timeouts counted");
    }
    eprintln!(
        "measured: {served} good requests served during the attack, slowest {slowest:.2} s; RSS {rss_before:.1} MiB before, {rss_attack:.1} MiB with 180 slow connections"
    );
    assert!(
        rss_attack < 64.0,
        "RSS {rss_attack:.1} MiB under the attack"
    );

    eprintln!("phase: 40 idle connections from one address: 32 held, 8 refused at once with 503 and a log line; 10 idle TLS connections closed by the header timeout too");
    let mut idle = python(
        &bad,
        d,
        "idle-boot",
        SLOW_PY,
        &["10.77.0.1", "8081", "plain", "10.77.0.60", "40", "idle"],
    );
    let mut idle_tls = python(
        &bad,
        d,
        "idle-management",
        SLOW_PY,
        &["10.77.0.1", "8082", "tls", "10.77.0.61", "10", "idle"],
    );
    idle.wait_for_output("opened 40", Duration::from_secs(30))
        .unwrap();
    idle_tls
        .wait_for_output("opened 10", Duration::from_secs(30))
        .unwrap();
    let refused = metric(
        &srv,
        &op,
        "pxe_connections_refused_total{listener=\"boot\",cap=\"address\"}",
    );
    assert!(refused >= 8.0, "{refused} refused by the per-address cap");
    let t = Instant::now();
    let (ok, code) = curl(
        &good,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://10.77.0.1:8081/files/vmlinuz",
        ],
    );
    assert!(ok && code == "200", "another address is served: {code}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let r = result_of(&mut idle, Duration::from_secs(60));
    eprintln!("idle: {r}");
    assert_eq!(r["closed"], 40, "{r}");
    assert_eq!(r["answered"], 8, "{r}");
    assert!(
        r["answer"].as_str().unwrap().starts_with("HTTP/1.1 503"),
        "{r}"
    );
    let times: Vec<f64> = r["times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        times[7] < 2.0 && times[8] >= 9.0 && times[39] <= 12.0,
        "{times:?}"
    );
    let r = result_of(&mut idle_tls, Duration::from_secs(60));
    eprintln!("idle TLS (management): {r}");
    assert_eq!(r["closed"], 10, "{r}");
    let (min, max) = (r["min_s"].as_f64().unwrap(), r["max_s"].as_f64().unwrap());
    assert!(
        min >= 9.0 && max <= 12.0,
        "idle TLS connections are closed by the header timeout: {r}"
    );
    let log = server.proc.output();
    assert!(
        log.contains(
            "boot: refused a new connection from 10.77.0.60: this address holds its cap of 32"
        ),
        "the refusal is logged:\n{log}"
    );
    drop(server);
    drop(rack);
}

#[test]
fn a_tftp_flood_of_unacknowledged_requests_leaves_good_clients_served() {
    if !needs(
        "a_tftp_flood_of_unacknowledged_requests_leaves_good_clients_served",
        &["tftp"],
    ) {
        return;
    }
    let fx = Fixture::new(b"kernel", b"base", "console=ttyS0", &overlay_bytes);
    let d = fx.d.as_path();
    let big = pattern(1 << 20, 9);
    std::fs::write(fx.ipxe.join("big.bin"), &big).unwrap();
    std::fs::write(fx.ipxe.join("small.bin"), pattern(2000, 4)).unwrap();
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let bad = attach_client(&mut rack, "bad", "52:54:00:cc:00:66", Some("10.77.0.60/24"));
    let good = attach_client(
        &mut rack,
        "good",
        "52:54:00:cc:00:77",
        Some("10.77.0.70/24"),
    );
    let many: Vec<String> = (100..120).map(|i| format!("10.77.0.{i}/24")).collect();
    add_addresses(&bad, &many);
    let state = d.join("state");
    let args = fx.server_args("full", &state, &["--ipv6-ra", "off"]);
    let server = start_server(&srv, &args, &d.join("server.log"));
    let op = issue_operator(&state, "tests", &d.join("op"));
    let pid = server.proc.pid().unwrap();
    let out = d.join("good.bin");
    let fetch = || {
        let _ = std::fs::remove_file(&out);
        let (_, log) = try_sh_in(
            &good,
            &[
                "tftp",
                "-m",
                "binary",
                "10.77.0.1",
                "-c",
                "get",
                "big.bin",
                out.to_str().unwrap(),
            ],
        );
        (std::fs::read(&out).unwrap_or_default() == big, log)
    };
    let active = || metric(&srv, &op, "pxe_tftp_active_transfers");

    eprintln!("phase: 300 never-acknowledged read requests from one address");
    let t0 = Instant::now();
    let mut flood = python(
        &bad,
        d,
        "flood-one",
        TFTP_FLOOD_PY,
        &["10.77.0.1", "10.77.0.60", "300", "small.bin", "12"],
    );
    flood
        .wait_for_output("\"sent\"", Duration::from_secs(20))
        .unwrap();
    let r: serde_json::Value =
        serde_json::from_str(flood.output().lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    eprintln!("flood from one address: {r}");
    assert_eq!(r["data"], 8, "8 transfers per address: {r}");
    assert_eq!(r["busy"], 292, "{r}");
    assert!(
        r["messages"]
            .to_string()
            .contains("too many transfers from this address"),
        "{r}"
    );
    let t = Instant::now();
    let (ok, log) = fetch();
    let one_addr_fetch = t.elapsed().as_secs_f64();
    assert!(ok, "good client during the one-address flood: {log}");
    assert!(
        one_addr_fetch < 2.0,
        "good client took {one_addr_fetch:.2} s"
    );
    wait_until(
        "the flood's transfers to be dropped",
        Duration::from_secs(8),
        || (active() == 0.0).then_some(()),
    )
    .unwrap();
    let freed_after = t0.elapsed().as_secs_f64();
    assert!(freed_after < 7.0, "slots freed after {freed_after:.2} s");
    assert!(metric(&srv, &op, "pxe_tftp_busy_total{cap=\"address\"}") >= 292.0);
    let log = server.proc.output();
    assert!(
        log.contains(
            "tftp: refused a new transfer from 10.77.0.60: this address holds its cap of 8"
        ),
        "{log}"
    );
    assert!(
        log.contains("no ACK for block 1 after 4 tries: dropped"),
        "{log}"
    );
    drop(flood);

    eprintln!("phase: 160 never-acknowledged requests from 20 addresses fill all 128 slots");
    let srcs: Vec<String> = (100..120).map(|i| format!("10.77.0.{i}")).collect();
    let t0 = Instant::now();
    let mut flood = python(
        &bad,
        d,
        "flood-many",
        TFTP_FLOOD_PY,
        &["10.77.0.1", &srcs.join(","), "8", "small.bin", "12"],
    );
    flood
        .wait_for_output("\"sent\"", Duration::from_secs(20))
        .unwrap();
    let r: serde_json::Value =
        serde_json::from_str(flood.output().lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    eprintln!("flood from 20 addresses: {r}");
    assert_eq!(r["data"], 128, "{r}");
    assert_eq!(r["busy"], 32, "{r}");
    let rss = rss_mib(pid);
    let mut busy_answers = 0;
    let got = wait_until(
        "the good client to get its file",
        Duration::from_secs(15),
        || {
            let (ok, log) = fetch();
            if !ok {
                assert!(log.contains("busy"), "{log}");
                busy_answers += 1;
            }
            ok.then(|| t0.elapsed().as_secs_f64())
        },
    )
    .unwrap();
    eprintln!(
        "measured: good client served in {one_addr_fetch:.2} s during the one-address flood (its slots freed after {freed_after:.2} s); during the 128-slot flood after {got:.2} s ({busy_answers} busy answers first); RSS {rss:.1} MiB with 128 stalled transfers"
    );
    assert!(got < 6.0, "the good client waited {got:.2} s");
    assert!(rss < 128.0, "RSS {rss:.1} MiB");
    drop(flood);
    drop(server);
    drop(rack);
}

#[test]
fn a_dhcp_flood_from_one_mac_is_rate_limited_and_other_macs_get_leases() {
    if !needs(
        "a_dhcp_flood_from_one_mac_is_rate_limited_and_other_macs_get_leases",
        &["udhcpc"],
    ) {
        return;
    }
    let fx = Fixture::new(b"kernel", b"base", "console=ttyS0", &overlay_bytes);
    let d = fx.d.as_path();
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let bad = attach_client(&mut rack, "bad", "52:54:00:ee:00:01", None);
    let n1 = attach_client(&mut rack, "n1", NODES[0].1, None);
    let n2 = attach_client(&mut rack, "n2", NODES[1].1, None);
    let state = d.join("state");
    let args = fx.server_args(
        "full",
        &state,
        &[
            "--ipv6-ra",
            "off",
            "--dhcp-range",
            "10.77.0.100-10.77.0.150",
        ],
    );
    let server = start_server(&srv, &args, &d.join("server.log"));
    let op = issue_operator(&state, "tests", &d.join("op"));
    let script = d.join("bound.sh");
    write_script(&script, "#!/bin/sh\nexit 0\n");

    eprintln!("phase: one MAC floods DISCOVERs (about 4000 a second for 6 s); node01 and node02 lease meanwhile");
    let mut flood = python(&bad, d, "dhcp-flood", DHCP_FLOOD_PY, &["cli0", "6", "4000"]);
    wait_until("the flood to be counted", Duration::from_secs(10), || {
        (metric(&srv, &op, "pxe_dhcp_rate_limited_total") > 100.0).then_some(())
    })
    .unwrap();
    let mut lease_secs = Vec::new();
    for ns in [&n1, &n2] {
        let t = Instant::now();
        let (ok, log) = udhcpc_once(ns, &script, 6, Some(BIOS_PXE_CLIENT), &[]);
        assert!(ok, "udhcpc during the flood: {log}");
        lease_secs.push(t.elapsed().as_secs_f64());
    }
    let r = result_of(&mut flood, Duration::from_secs(30));
    let sent = r["sent"].as_f64().unwrap();
    let offers = r["offers"].as_f64().unwrap();
    let secs = r["seconds"].as_f64().unwrap();
    let limited = metric(&srv, &op, "pxe_dhcp_rate_limited_total");
    eprintln!(
        "measured: flood {r}; {limited} dropped by the rate limit; node01 and node02 leased in {:.2} s and {:.2} s",
        lease_secs[0], lease_secs[1]
    );
    for s in &lease_secs {
        assert!(*s < 3.0, "a lease took {s:.2} s during the flood");
    }
    let allowed = 10.0 + 2.0 * (secs + 1.0);
    assert!(
        offers <= allowed,
        "{offers} offers to the flooding MAC (at most {allowed})"
    );
    assert!(
        offers >= 10.0,
        "the flooding MAC still gets its burst: {offers} offers"
    );
    assert!(
        limited >= 0.9 * (sent - allowed),
        "{limited} of {sent} dropped"
    );
    let log = server.proc.output();
    assert!(
        log.contains("DHCP: 52:54:00:ee:00:01 sends more than 2 packets a second (burst 10); dropping the excess unanswered"),
        "{log}"
    );
    drop(server);
    drop(rack);
}
