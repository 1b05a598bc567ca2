//! Boot events survive restarts (root: network namespaces): a real pxe-server sees DHCP from a
//! contract node and a stranger, serves a script, takes phase reports; stopped cleanly
//! (SIGTERM) and then killed (SIGKILL) with a torn line left at the end of its log, it comes
//! back each time with every event from before — same sequence numbers, same content — the
//! same per-node status and bundle, and numbers that go on increasing.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use plasmacloud_testkit::{require, Need};

const UDHCPC_SCRIPT: &str = "#!/bin/sh\nexit 0\n";

/// `text` without ANSI colour codes (the server's pretty log colours its fields).
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn status(srv: &str, op: &Holder) -> serde_json::Value {
    let (ok, body) = curl_as(srv, op, &[&mgmt_url("/v1/status")]);
    assert!(ok, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Each node's `last_event` and `bundle` in the status.
fn per_node(status: &serde_json::Value) -> Vec<(serde_json::Value, serde_json::Value)> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["last_event"].clone(), n["bundle"].clone()))
        .collect()
}

fn report(ns: &str, who: &Holder, node: &str, phase: &str, status: &str) {
    let url = mgmt_url(&format!("/v1/nodes/{node}/events"));
    let body = format!(r#"{{"phase":"{phase}","status":"{status}","detail":"from the test"}}"#);
    let (_, code) = curl_as(
        ns,
        who,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ],
    );
    assert_eq!(code, "202", "report {node} {phase} {status}");
}

#[test]
fn events_survive_a_clean_stop_and_a_crash() {
    if !require(
        "events_survive_a_clean_stop_and_a_crash",
        &[Need::Root, Need::Tool("udhcpc"), Need::Tool("curl")],
    ) {
        return;
    }
    let fx = Fixture::new(b"kernel", b"base", "console=ttyS0", &overlay_bytes);
    let d = fx.d.as_path();
    let state = d.join("state");
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let n1 = attach_client(&mut rack, "n1", NODES[0].1, Some("10.77.0.11/24"));
    let stranger = attach_client(&mut rack, "x1", "52:54:00:bb:00:07", None);
    let args = fx.server_args("full", &state, &["--dhcp-range", "10.77.0.100-10.77.0.150"]);
    init_ca(&state);
    let op = issue_operator(&state, "tests", &d.join("op"));
    let node01 = issue_node(&state, &fx.cluster, "node01", &d.join("node01"));
    let node02 = issue_node(&state, &fx.cluster, "node02", &d.join("node02"));
    let script = d.join("udhcpc.sh");
    write_script(&script, UDHCPC_SCRIPT);

    eprintln!("phase: a first run sees DHCP, a script fetch, a kernel fetch and phase reports");
    let mut server = start_server(&srv, &args, &d.join("server1.log"));
    let (ok, log) = udhcpc_once(&n1, &script, 6, Some(BIOS_PXE_CLIENT), &[]);
    assert!(ok, "{log}");
    let (ok, log) = udhcpc_once(&stranger, &script, 6, None, &[]);
    assert!(ok, "{log}");
    let mac = NODES[0].1.replace(':', "-");
    let (ok, body) = curl(&n1, &[&format!("http://{SERVER_IP}:8081/boot/{mac}.ipxe")]);
    assert!(ok && body.contains("kernel "), "{body}");
    let kernel_url = body
        .lines()
        .find_map(|l| l.strip_prefix("kernel "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let (ok, k) = curl(&n1, &[&kernel_url]);
    assert!(ok && k == "kernel", "{k}");
    for (phase, st) in [
        ("disk", "ok"),
        ("configure", "ok"),
        ("chainfire-join", "started"),
    ] {
        report(&n1, &node01, "node01", phase, st);
    }
    report(&srv, &node02, "node02", "configure", "failed");
    let before = events(&srv, &op);
    let status_before = status(&srv, &op);
    let phases: Vec<&str> = before
        .iter()
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    for p in ["dhcp", "unknown-mac", "ipxe-script", "kernel", "configure"] {
        assert!(phases.contains(&p), "no {p} event in {phases:?}");
    }
    assert!(
        status_before["nodes"][0]["bundle"]["version"].is_string(),
        "{status_before}"
    );

    eprintln!("phase: a clean stop (SIGTERM) and a restart keep every event and the status");
    server.proc.terminate(Duration::from_secs(10));
    let mut server = start_server(&srv, &args, &d.join("server2.log"));
    assert!(
        plain(&server.proc.output()).contains(&format!("events={}", before.len())),
        "{}",
        server.proc.output()
    );
    assert_eq!(events(&srv, &op), before);
    let status_after = status(&srv, &op);
    assert_eq!(per_node(&status_after), per_node(&status_before));
    assert_eq!(status_after["unknown"], status_before["unknown"]);

    eprintln!("phase: numbers go on from the last one; then a crash (SIGKILL) and a torn line");
    report(&n1, &node01, "node01", "chainfire-join", "ok");
    let (ok, log) = udhcpc_once(&stranger, &script, 6, None, &[]);
    assert!(ok, "{log}");
    let now = events(&srv, &op);
    let last_before = before.last().unwrap()["seq"].as_u64().unwrap();
    let new: Vec<u64> = now[before.len()..]
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        !new.is_empty() && new[0] == last_before + 1,
        "{new:?} after {last_before}"
    );
    assert!(new.windows(2).all(|w| w[1] == w[0] + 1), "{new:?}");
    let status_before = status(&srv, &op);
    server.proc.kill();
    let log_file = state.join("events").join("events.log");
    let mut text = std::fs::read_to_string(&log_file).unwrap();
    assert_eq!(
        text.lines().count(),
        now.len(),
        "every event is a line of the log"
    );
    text.push_str(
        r#"{"seq":99999,"at_ms":1,"at":"1970-01-01T00:00:00.001Z","node":"node01","mac":"#,
    );
    std::fs::write(&log_file, text).unwrap();
    let server = start_server(&srv, &args, &d.join("server3.log"));
    assert!(
        plain(&server.proc.output()).contains("skipped=1"),
        "{}",
        server.proc.output()
    );
    assert_eq!(events(&srv, &op), now);
    assert_eq!(per_node(&status(&srv, &op)), per_node(&status_before));
    report(&n1, &node01, "node01", "flaredb-join", "started");
    let after = events(&srv, &op);
    assert_eq!(after.len(), now.len() + 1);
    assert_eq!(
        after.last().unwrap()["seq"].as_u64().unwrap(),
        now.last().unwrap()["seq"].as_u64().unwrap() + 1
    );
    // The torn tail was cut before the append: every line of the log parses.
    let text = std::fs::read_to_string(&log_file).unwrap();
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    drop(server);
    drop(rack);
}
