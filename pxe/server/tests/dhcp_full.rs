//! Full-mode DHCP with real clients in network namespaces (root): udhcpc and dhclient get the
//! contract's fixed address and the right boot file; pool leases survive a server restart and
//! are never handed to a second MAC; the management API (HTTPS) shows it all to an operator,
//! takes a node's phase report only with that node's certificate, and refuses the rest.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use plasmacloud_testkit::{require, Need};

const UDHCPC_SCRIPT: &str = "#!/bin/sh\n[ \"$1\" = bound ] && echo \"ip=$ip siaddr=$siaddr boot_file=$boot_file bootfile=$bootfile\" > \"$OUT\"\nexit 0\n";

/// udhcpc as a client in `ns` (vendor class `vendor`); what its script saw on `bound`.
fn udhcpc(ns: &str, dir: &std::path::Path, tag: &str, vendor: Option<&str>) -> String {
    let script = dir.join(format!("udhcpc-{tag}.sh"));
    let out = dir.join(format!("udhcpc-{tag}.out"));
    write_script(&script, UDHCPC_SCRIPT);
    let (ok, log) = udhcpc_once(ns, &script, 6, vendor, &[("OUT", &out)]);
    assert!(ok, "udhcpc failed: {log}");
    std::fs::read_to_string(&out).unwrap_or_else(|_| panic!("udhcpc wrote nothing: {log}"))
}

/// The server's flags for a full-mode rack with pool 10.77.0.100-150, plus `extra`.
fn full_mode_args(fx: &Fixture, extra: &[&str]) -> Vec<String> {
    let mut flags = vec!["--dhcp-range", "10.77.0.100-10.77.0.150"];
    flags.extend_from_slice(extra);
    fx.server_args("full", &fx.d.join("state"), &flags)
}

/// The fixture every test here starts from: a bundle that is never booted.
fn fixture() -> Fixture {
    Fixture::new(b"kernel", b"base", "console=ttyS0", &overlay_bytes)
}

#[test]
fn full_mode_real_clients_and_restart() {
    if !require(
        "full_mode_real_clients_and_restart",
        &[Need::Root, Need::Tool("udhcpc"), Need::Tool("dhclient")],
    ) {
        return;
    }
    // Phase: build the rack, the contract, the bundle.
    let fx = fixture();
    let d = fx.d.as_path();
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let n1 = attach_client(&mut rack, "n1", NODES[0].1, None);
    let n2 = attach_client(&mut rack, "n2", NODES[1].1, None);
    let stranger = attach_client(&mut rack, "x1", "52:54:00:bb:00:01", None);
    let stranger2 = attach_client(&mut rack, "x2", "52:54:00:bb:00:02", None);
    let args = full_mode_args(&fx, &[]);

    eprintln!("phase: a CA, an operator certificate and node01's certificate, then the server");
    let (state, cluster) = (d.join("state"), fx.cluster.clone());
    init_ca(&state);
    let op = issue_operator(&state, "tests", &d.join("op"));
    let node01 = issue_node(&state, &cluster, "node01", &d.join("node01"));
    let mut server = start_server(&srv, &args, &d.join("server1.log"));

    eprintln!(
        "phase: udhcpc as node01 (BIOS PXE vendor class) gets its fixed address and undionly.kpxe"
    );
    let got = udhcpc(&n1, d, "n1", Some(BIOS_PXE_CLIENT));
    assert!(got.contains("ip=10.77.0.11 "), "{got}");
    assert!(got.contains("siaddr=10.77.0.1 "), "{got}");
    assert!(got.contains("boot_file=undionly.kpxe"), "{got}");

    eprintln!(
        "phase: dhclient as node02 (x86-64 UEFI, option 93 = 7) gets its address and snponly.efi"
    );
    let conf = d.join("dhclient.conf");
    std::fs::write(
        &conf,
        "option pxe-arch code 93 = unsigned integer 16;\nsend vendor-class-identifier \"PXEClient:Arch:00007:UNDI:003016\";\nsend pxe-arch 7;\nrequest subnet-mask, broadcast-address, routers;\n",
    )
    .unwrap();
    let script = d.join("dhclient-script.sh");
    let out = d.join("dhclient.out");
    write_script(
        &script,
        &format!("#!/bin/sh\ncase \"$reason\" in BOUND|REBOOT) echo \"ip=$new_ip_address file=$new_filename server=$new_dhcp_server_identifier\" > {} ;; esac\nexit 0\n", out.display()),
    );
    let lf = d.join("dhclient.leases");
    let pf = d.join("dhclient.pid");
    let (ok, log) = try_sh_in(
        &n2,
        &[
            "timeout",
            "30",
            "dhclient",
            "-1",
            "-v",
            "-cf",
            conf.to_str().unwrap(),
            "-sf",
            script.to_str().unwrap(),
            "-lf",
            lf.to_str().unwrap(),
            "-pf",
            pf.to_str().unwrap(),
            "cli0",
        ],
    );
    assert!(ok, "dhclient failed: {log}");
    let _ = try_sh_in(
        &n2,
        &["dhclient", "-x", "-pf", pf.to_str().unwrap(), "cli0"],
    );
    let got =
        std::fs::read_to_string(&out).unwrap_or_else(|_| panic!("dhclient wrote nothing: {log}"));
    assert!(got.contains("ip=10.77.0.12 "), "{got}");
    assert!(got.contains("file=snponly.efi"), "{got}");
    assert!(got.contains("server=10.77.0.1"), "{got}");

    eprintln!("phase: a plain client not in the contract gets the first pool address");
    let got = udhcpc(&stranger, d, "x1", None);
    assert!(got.contains("ip=10.77.0.100 "), "{got}");
    assert!(
        got.contains("boot_file= "),
        "plain clients get no boot file: {got}"
    );

    eprintln!("phase: restart the server; leases survive");
    server.proc.terminate(Duration::from_secs(5));
    let _server = start_server(&srv, &args, &d.join("server2.log"));
    let got = udhcpc(&stranger2, d, "x2", None);
    assert!(
        got.contains("ip=10.77.0.101 "),
        "a second MAC must not get the first one's lease: {got}"
    );
    let got = udhcpc(&stranger, d, "x1b", None);
    assert!(
        got.contains("ip=10.77.0.100 "),
        "the first MAC keeps its lease: {got}"
    );
    let got = udhcpc(&n1, d, "n1b", Some(BIOS_PXE_CLIENT));
    assert!(got.contains("ip=10.77.0.11 "), "{got}");

    eprintln!("phase: management API: status, a phase report, events, metrics");
    let (ok, status) = curl_as(&srv, &op, &[&mgmt_url("/v1/status")]);
    assert!(ok, "{status}");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["mode"], "full");
    let leases = v["leases"].as_array().unwrap();
    assert!(
        leases
            .iter()
            .any(|l| l["ip"] == "10.77.0.100" && l["mac"] == "52:54:00:bb:00:01"),
        "{status}"
    );
    let n1s = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node01")
        .unwrap()
        .clone();
    assert_eq!(n1s["last_event"]["phase"], "dhcp", "{n1s}");
    assert!(n1s["last_event"]["at"].as_str().unwrap().ends_with('Z'));
    let report = |who: Option<&Holder>, node: &str, body: &str| {
        let url = mgmt_url(&format!("/v1/nodes/{node}/events"));
        let args = [
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url.as_str(),
        ];
        match who {
            Some(h) => curl_as(&srv, h, &args).1,
            None => {
                let ca = op.ca();
                let mut a = vec!["--cacert", ca.as_str()];
                a.extend(args);
                curl(&srv, &a).1
            }
        }
    };
    let ok_body = r#"{"phase":"chainfire-cluster-join","status":"ok","detail":"joined as voter"}"#;
    assert_eq!(report(Some(&node01), "node01", ok_body), "202");
    assert_eq!(
        report(Some(&node01), "node01", r#"{"phase":"x","status":"maybe"}"#),
        "400"
    );
    assert_eq!(
        report(Some(&node01), "nodeXX", r#"{"phase":"x","status":"ok"}"#),
        "404"
    );
    // Speaking for another node, as an operator, or with nothing: refused.
    assert_eq!(report(Some(&node01), "node02", ok_body), "403");
    assert_eq!(report(Some(&op), "node01", ok_body), "403");
    assert_eq!(report(None, "node01", ok_body), "401");
    let (_, ev) = curl_as(&srv, &op, &[&mgmt_url("/v1/events?since=0")]);
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    let last = ev["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["phase"], "chainfire-cluster-join");
    assert_eq!(last["source"], "node");
    assert_eq!(last["node"], "node01");
    let next = ev["next"].as_u64().unwrap();
    let (_, ev2) = curl_as(&srv, &op, &[&mgmt_url(&format!("/v1/events?since={next}"))]);
    assert!(ev2.contains("\"events\":[]"), "{ev2}");
    let (_, m) = curl_as(&srv, &op, &[&mgmt_url("/metrics")]);
    assert!(m.contains("pxe_dhcp_acks_total{mode=\"full\"}"), "{m}");
    assert!(!m.contains("pxe_dhcp_acks_total{mode=\"full\"} 0\n"), "{m}");

    eprintln!("phase: status and events are the operator's: a node certificate or none is refused");
    let status_code = |who: Option<&Holder>| {
        let url = mgmt_url("/v1/status");
        let args = ["-o", "/dev/null", "-w", "%{http_code}", url.as_str()];
        match who {
            Some(h) => curl_as(&srv, h, &args).1,
            None => {
                let ca = op.ca();
                let mut a = vec!["--cacert", ca.as_str()];
                a.extend(args);
                curl(&srv, &a).1
            }
        }
    };
    assert_eq!(status_code(None), "401");
    assert_eq!(status_code(Some(&node01)), "403");
    assert_eq!(status_code(Some(&op)), "200");
    // /health needs nothing.
    let ca = op.ca();
    let (ok, h) = curl(&srv, &["--cacert", &ca, &mgmt_url("/health")]);
    assert!(ok && h.contains("ok"), "{h}");
    drop(rack);
}

#[test]
fn unknown_macs_are_ignored_under_the_ignore_policy() {
    if !require(
        "unknown_macs_are_ignored_under_the_ignore_policy",
        &[Need::Root, Need::Tool("udhcpc"), Need::Tool("curl")],
    ) {
        return;
    }
    let fx = fixture();
    let d = fx.d.as_path();
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let n3 = attach_client(&mut rack, "n3", NODES[2].1, None);
    let stranger = attach_client(&mut rack, "x", "52:54:00:bb:00:09", None);
    let addressed = attach_client(&mut rack, "y", "52:54:00:bb:00:0a", Some("10.77.0.61/24"));
    let args = full_mode_args(&fx, &["--unknown-mac", "ignore", "--ipv6-ra", "off"]);
    let _server = start_server(&srv, &args, &d.join("server.log"));

    eprintln!("phase: a contract node still gets its address");
    let got = udhcpc(&n3, d, "n3", Some(BIOS_PXE_CLIENT));
    assert!(got.contains("ip=10.77.0.13 "), "{got}");

    eprintln!("phase: an unknown MAC gets no answer, and a boot event says so");
    let script = d.join("udhcpc-x.sh");
    write_script(&script, UDHCPC_SCRIPT);
    let (ok, log) = udhcpc_once(&stranger, &script, 2, Some(BIOS_PXE_CLIENT), &[]);
    assert!(!ok, "an ignored MAC must get no lease: {log}");
    let op = issue_operator(&d.join("state"), "tests", &d.join("op"));
    let (_, status) = curl_as(&srv, &op, &[&mgmt_url("/v1/status")]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let unknown = v["unknown"].as_array().unwrap();
    assert!(
        unknown
            .iter()
            .any(|e| e["mac"] == "52:54:00:bb:00:09" && e["status"] == "ignored"),
        "{status}"
    );

    eprintln!("phase: a stranger with an address of its own asking for a script is told no, as an ignored boot, not an error");
    let (_, before) = curl_as(&srv, &op, &[&mgmt_url("/metrics")]);
    let (ok, script) = curl(
        &addressed,
        &["http://10.77.0.1:8081/boot/52-54-00-bb-00-0a.ipxe"],
    );
    assert!(ok, "{script}");
    assert!(
        script.starts_with("#!ipxe")
            && script.contains("--unknown-mac ignore")
            && !script.contains("kernel http"),
        "{script}"
    );
    let ignored: Vec<serde_json::Value> = events(&srv, &op)
        .into_iter()
        .filter(|e| e["mac"] == "52:54:00:bb:00:0a")
        .collect();
    assert!(
        ignored.len() == 1
            && ignored[0]["phase"] == "ipxe-script"
            && ignored[0]["status"] == "ignored",
        "one ignored ipxe-script event: {ignored:?}"
    );
    let (_, after) = curl_as(&srv, &op, &[&mgmt_url("/metrics")]);
    let errors = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("pxe_http_errors_total{kind=\"other\"}"))
            .map(str::to_string)
    };
    assert_eq!(
        errors(&before),
        errors(&after),
        "an ignored stranger is no HTTP error"
    );
    drop(rack);
}

/// `DELETE /v1/leases/{mac}`: the operator says a machine is gone; its address goes to the
/// next MAC that asks, and stays there across a restart. A contract node's MAC, a malformed
/// MAC and a node certificate are refused, and nothing changes.
#[test]
fn an_operator_releases_a_departed_machines_lease() {
    if !require(
        "an_operator_releases_a_departed_machines_lease",
        &[Need::Root, Need::Tool("udhcpc")],
    ) {
        return;
    }
    let fx = fixture();
    let d = fx.d.as_path();
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let gone = attach_client(&mut rack, "x1", "52:54:00:bb:00:01", None);
    let next = attach_client(&mut rack, "x2", "52:54:00:bb:00:02", None);
    let args = full_mode_args(&fx, &[]);
    let state = d.join("state");
    init_ca(&state);
    let op = issue_operator(&state, "tests", &d.join("op"));
    let node01 = issue_node(&state, &fx.cluster, "node01", &d.join("node01"));
    let mut server = start_server(&srv, &args, &d.join("server1.log"));

    eprintln!("phase: a machine takes the first pool address");
    let got = udhcpc(&gone, d, "x1", None);
    assert!(got.contains("ip=10.77.0.100 "), "{got}");
    let release = |who: &Holder, mac: &str| {
        let url = mgmt_url(&format!("/v1/leases/{mac}"));
        let (_, out) = curl_as(
            &srv,
            who,
            &["-X", "DELETE", "-w", "\n%{http_code}", url.as_str()],
        );
        let (body, code) = out.rsplit_once('\n').unwrap_or((&out, ""));
        (code.to_string(), body.to_string())
    };

    eprintln!("phase: refusals change nothing");
    let (code, body) = release(&op, NODES[0].1);
    assert_eq!(code, "409", "{body}");
    assert!(
        body.contains("node01") && body.contains("rackctl retire"),
        "{body}"
    );
    let (code, body) = release(&op, "52:54:00:bb:00");
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("not a MAC address"), "{body}");
    let (code, body) = release(&node01, "52:54:00:bb:00:01");
    assert_eq!(code, "403", "{body}");
    let got = udhcpc(&next, d, "x2", None);
    assert!(got.contains("ip=10.77.0.101 "), "still held: {got}");

    eprintln!("phase: the operator releases it; an event says who; a second call is a no-op");
    let (code, body) = release(&op, "52:54:00:BB:00:01");
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["mac"], "52:54:00:bb:00:01");
    assert_eq!(v["released"]["ip"], "10.77.0.100", "{body}");
    let (code, body) = release(&op, "52:54:00:bb:00:01");
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"released\":null"), "{body}");
    let (_, ev) = curl_as(&srv, &op, &[&mgmt_url("/v1/events?since=0")]);
    let ev: serde_json::Value = serde_json::from_str(&ev).unwrap();
    let rel: Vec<_> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["phase"] == "lease-released")
        .collect();
    assert_eq!(rel.len(), 1, "{ev}");
    assert!(
        rel[0]["detail"].as_str().unwrap().contains("operator"),
        "{}",
        rel[0]
    );

    eprintln!("phase: its address goes to the next new machine, and stays there after a restart");
    let third = attach_client(&mut rack, "x3", "52:54:00:bb:00:03", None);
    let got = udhcpc(&third, d, "x3", None);
    assert!(
        got.contains("ip=10.77.0.100 "),
        "the released address: {got}"
    );
    server.proc.terminate(Duration::from_secs(5));
    let _server = start_server(&srv, &args, &d.join("server2.log"));
    let got = udhcpc(&third, d, "x3b", None);
    assert!(got.contains("ip=10.77.0.100 "), "{got}");
    let got = udhcpc(&gone, d, "x1b", None);
    assert!(
        !got.contains("ip=10.77.0.100 "),
        "the departed MAC must not get its old address back: {got}"
    );
    drop(rack);
}

/// A burst of 500 distinct clients at once (`pxe/bench/dhcp_burst.py`): every one is ACKed
/// with an address of its own, and after a SIGKILL of the server the lease log holds every
/// ACKed lease (the batched DHCP loop syncs a batch's leases before any of its ACKs goes out).
#[test]
fn a_burst_of_clients_all_get_leases_that_survive_a_sigkill() {
    if !require(
        "a_burst_of_clients_all_get_leases_that_survive_a_sigkill",
        &[Need::Root, Need::Tool("python3")],
    ) {
        return;
    }
    let n = 500;
    let fx = fixture();
    let d = fx.d.as_path();
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/16");
    let burst_ns = attach_client(&mut rack, "burst", "52:54:00:ff:00:0a", None);
    let state = d.join("state");
    let args = fx.server_args(
        "full",
        &state,
        &["--dhcp-range", "10.77.1.0-10.77.2.255", "--ipv6-ra", "off"],
    );
    let mut server = start_server(&srv, &args, &d.join("server.log"));
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/dhcp_burst.py");
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &burst_ns,
        "python3",
        py.to_str().unwrap(),
        "cli0",
        &n.to_string(),
    ]);
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["acked"], n, "{got}");
    assert_eq!(got["unique_addresses"], n, "{got}");
    server.proc.kill(); // SIGKILL: no shutdown path runs

    // The last line of each burst MAC (dhcp_burst.py's MACs are 52:54:01:…).
    let log = std::fs::read_to_string(state.join("leases.log")).unwrap();
    let mut last = std::collections::HashMap::new();
    for line in log.lines() {
        let Ok(l) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let mac = l["mac"].as_str().unwrap_or_default().to_ascii_lowercase();
        if mac.starts_with("52:54:01") {
            last.insert(mac, l);
        }
    }
    let bound: Vec<&serde_json::Value> = last.values().filter(|l| l["state"] == "bound").collect();
    assert_eq!(bound.len(), n, "every ACKed lease is in the log");
    let ips: std::collections::HashSet<&str> =
        bound.iter().filter_map(|l| l["ip"].as_str()).collect();
    assert_eq!(ips.len(), n, "no address is held twice");
    drop(rack);
}
