//! The rack page in a real browser (root: network namespaces; Debian's `chromium`): a real
//! pxe-server process serves three contract nodes that boot — real DHCP (udhcpc), their iPXE
//! script, kernel and initrds over HTTP, then every first-boot phase reported with the node's
//! certificate, as the chain does — while each node's Chainfire, FlareDB and IAM `/health`
//! (a small TLS server with the node's certificate) go from silent to learner to leader or
//! follower. Headless Chromium has the page open the whole time; the test asserts from the
//! live DOM that every step shows up without a reload, that every row reaches cluster-ready
//! with its Raft roles, that an unknown MAC appears, and saves a screenshot
//! (`<target>/test-artifacts/rack-page.png`). Then `/metrics` must parse with the Prometheus
//! OpenMetrics parser (Python's `prometheus_client`) and hold the new series.

#![allow(clippy::unwrap_used)]

mod browser;
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use browser::Browser;
use common::*;
use plasmacloud_testkit::{in_ci, require, Need, Process};

const NOOP_SCRIPT: &str = "#!/bin/sh\nexit 0\n";
const STRANGER: &str = "52:54:00:bb:00:42";
const WIDTH: u32 = 1480;

/// A TLS server answering `GET /health` on each port with the JSON in `<dir>/<port>` (200
/// when it says healthy, else 503), with the node's certificate: Chainfire, FlareDB and IAM as
/// pxe-server sees them.
const HEALTH_SERVER: &str = r#"
import http.server, os, ssl, sys, threading
cert, key, state = sys.argv[1], sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        port = self.server.server_address[1]
        try:
            body = open(os.path.join(state, str(port))).read().encode()
        except OSError:
            body = b'{"status":"unhealthy","raft":"learner","cluster_size":0,"reason":"not initialised"}'
        code = 200 if b'"healthy"' in body else 503
        if self.path != "/health":
            code, body = 404, b'{"error":"not found"}'
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
for p in sys.argv[4:]:
    s = http.server.ThreadingHTTPServer(("0.0.0.0", int(p)), H)
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("health server listening", flush=True)
threading.Event().wait()
"#;

struct Node {
    name: &'static str,
    mac: &'static str,
    ns: String,
    holder: Holder,
    health_dir: PathBuf,
    health: Option<Process>,
}

fn healthy_store(role: &str) -> String {
    format!(r#"{{"status":"healthy","raft":"{role}","cluster_size":3}}"#)
}

fn report(n: &Node, phase: &str, status: &str, detail: &str) {
    let url = mgmt_url(&format!("/v1/nodes/{}/events", n.name));
    let body = serde_json::json!({"phase": phase, "status": status, "detail": detail}).to_string();
    let (_, code) = curl_as(
        &n.ns,
        &n.holder,
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
    assert_eq!(code, "202", "{} {phase} {status}", n.name);
}

/// Asserts that node `name`'s row shows `stage`/`status` in the live page.
fn row_shows(b: &mut Browser, name: &str, stage: &str, status: &str) {
    let expr = format!(
        "(() => {{ const r = document.querySelector('tr.node[data-node=\"{name}\"]'); return r && r.dataset.stage === '{stage}' && r.dataset.status === '{status}'; }})()"
    );
    b.wait_for(
        &format!("{name} at {stage} {status}"),
        &expr,
        Duration::from_secs(15),
    )
    .unwrap();
}

/// The PXE part of a boot, from the node's namespace: DHCP as PXE firmware, the script, the
/// kernel and every initrd it names.
fn pxe_boot(n: &Node, script: &Path) {
    let (ok, log) = udhcpc_once(&n.ns, script, 6, Some(BIOS_PXE_CLIENT), &[]);
    assert!(ok, "{}: {log}", n.name);
    let mac = n.mac.replace(':', "-");
    let (ok, text) = curl(
        &n.ns,
        &[&format!("http://{SERVER_IP}:8081/boot/{mac}.ipxe")],
    );
    assert!(ok && text.starts_with("#!ipxe"), "{text}");
    for line in text.lines() {
        let url = line
            .strip_prefix("kernel ")
            .or_else(|| {
                line.strip_prefix("initrd --name ")
                    .and_then(|r| r.split_once(' ').map(|(_, u)| u))
            })
            .and_then(|r| r.split_whitespace().next());
        if let Some(url) = url {
            let (ok, _) = curl(&n.ns, &["-o", "/dev/null", "--fail", url]);
            assert!(ok, "{}: fetching {url}", n.name);
        }
    }
}

#[test]
fn the_rack_page_follows_a_boot_live() {
    if !require(
        "the_rack_page_follows_a_boot_live",
        &[
            Need::Root,
            Need::Tool("udhcpc"),
            Need::Tool("curl"),
            Need::Tool("chromium"),
            Need::Tool("python3"),
            Need::Tool("mkfifo"),
        ],
    ) {
        return;
    }
    let python = "/usr/bin/python3";
    let has_parser = std::process::Command::new(python)
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_parser {
        assert!(
            !in_ci(),
            "needs Debian's python3-prometheus-client, and CI=true forbids skipping"
        );
        eprintln!("SKIP the_rack_page_follows_a_boot_live: needs python3-prometheus-client");
        return;
    }

    eprintln!("phase: a rack of three nodes and a stranger; the CA, certificates, the server");
    let fx = Fixture::new(b"kernel", b"base", "console=ttyS0", &overlay_bytes);
    let d = fx.d.as_path();
    let state = d.join("state");
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    init_ca(&state);
    let contract = plasmacloud_contract::Contract::load(&fx.cluster).unwrap();
    let ports = contract.nodes[0].ports.clone();
    let mut nodes: Vec<Node> = NODES
        .iter()
        .map(|(name, mac, ip)| {
            let ns = attach_client(&mut rack, name, mac, Some(&format!("{ip}/24")));
            let holder = issue_node(&state, &fx.cluster, name, &d.join(name));
            let health_dir = d.join(format!("health-{name}"));
            std::fs::create_dir_all(&health_dir).unwrap();
            Node {
                name,
                mac,
                ns,
                holder,
                health_dir,
                health: None,
            }
        })
        .collect();
    let stranger = attach_client(&mut rack, "x1", STRANGER, None);
    let args = fx.server_args(
        "full",
        &state,
        &[
            "--dhcp-range",
            "10.77.0.100-10.77.0.150",
            "--management-addr",
            "0.0.0.0:8082",
        ],
    );
    let _server = start_server(&srv, &args, &d.join("server.log"));
    let script = d.join("udhcpc.sh");
    write_script(&script, NOOP_SCRIPT);
    let health_py = d.join("health.py");
    std::fs::write(&health_py, HEALTH_SERVER).unwrap();

    eprintln!("phase: the page opens over loopback (as through ssh -L) and connects");
    let mut b = Browser::open(
        &srv,
        &d.join("browser"),
        "https://127.0.0.1:8082/rack",
        WIDTH,
        900,
    )
    .unwrap();
    b.wait_for(
        "three node rows, live",
        "document.querySelectorAll('tr.node').length === 3 && document.getElementById('live').classList.contains('on')",
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}\n--- chromium ---\n{}", b.output()));
    assert_eq!(
        b.eval("document.querySelector('tr.node').dataset.stage")
            .unwrap(),
        "none"
    );
    // A reload would lose this.
    b.eval("window.__openedOnce = 'yes'").unwrap();

    eprintln!("phase: the stranger asks for an address and shows up as unknown");
    let (ok, log) = udhcpc_once(&stranger, &script, 6, Some(BIOS_PXE_CLIENT), &[]);
    assert!(ok, "{log}");
    b.wait_for(
        "the unknown MAC",
        &format!("!!document.querySelector('tr.unknown[data-mac=\"{STRANGER}\"]')"),
        Duration::from_secs(15),
    )
    .unwrap();

    eprintln!("phase: every node PXE-boots (DHCP, script, kernel, initrds)");
    for n in &nodes {
        pxe_boot(n, &script);
        row_shows(&mut b, n.name, "kernel", "started");
    }

    eprintln!("phase: the first-boot chain, node by node and step by step, each seen live");
    let steps: &[(&str, &str, &str)] = &[
        ("enroll", "started", ""),
        ("enroll", "ok", "certificate issued offline"),
        ("disk", "ok", "data disk ready"),
        ("configure", "ok", "raft id"),
        ("chainfire-join", "started", ""),
    ];
    for (phase, status, detail) in steps {
        for n in &nodes {
            report(n, phase, status, detail);
            let stage = crate_stage(phase);
            row_shows(&mut b, n.name, stage, status);
        }
    }
    eprintln!("phase: the stores answer /health; pxe-server's poll shows their Raft roles");
    for (i, n) in nodes.iter_mut().enumerate() {
        let (cf, fd) = if i == 0 {
            ("leader", "follower")
        } else if i == 1 {
            ("follower", "leader")
        } else {
            ("follower", "follower")
        };
        std::fs::write(
            n.health_dir.join(ports.chainfire_api.to_string()),
            healthy_store(cf),
        )
        .unwrap();
        std::fs::write(
            n.health_dir.join(ports.flaredb_api.to_string()),
            healthy_store(fd),
        )
        .unwrap();
        let dir = n.holder.dir.clone();
        let mut cmd = exec(
            &n.ns,
            &[
                python,
                health_py.to_str().unwrap(),
                dir.join("node.crt").to_str().unwrap(),
                dir.join("node.key").to_str().unwrap(),
                n.health_dir.to_str().unwrap(),
                &ports.chainfire_api.to_string(),
                &ports.flaredb_api.to_string(),
                &ports.iam_api.to_string(),
            ],
        );
        cmd.env("PYTHONUNBUFFERED", "1");
        let mut p =
            Process::spawn("health", cmd, &d.join(format!("health-{}.log", n.name))).unwrap();
        p.wait_for_output("health server listening", Duration::from_secs(20))
            .unwrap();
        n.health = Some(p);
    }
    b.wait_for(
        "node01 the Chainfire leader, node02 the FlareDB leader",
        "(() => { const c = (n, s) => document.querySelector(`tr.node[data-node=\"${n}\"] td[data-service=\"${s}\"]`); return c('node01','chainfire')?.dataset.role === 'leader' && c('node02','flaredb')?.dataset.role === 'leader' && c('node03','chainfire')?.dataset.role === 'follower'; })()",
        Duration::from_secs(20),
    )
    .unwrap();
    let steps: &[(&str, &str, &str)] = &[
        ("chainfire-join", "ok", "joined as a voter"),
        ("flaredb-join", "started", ""),
        ("flaredb-join", "ok", "joined as a voter"),
        ("iam-setup", "started", ""),
    ];
    for (phase, status, detail) in steps {
        for n in &nodes {
            report(n, phase, status, detail);
            row_shows(&mut b, n.name, crate_stage(phase), status);
        }
    }
    for n in &nodes {
        std::fs::write(
            n.health_dir.join(ports.iam_api.to_string()),
            r#"{"status":"healthy","database":"connected","version":"test"}"#,
        )
        .unwrap();
    }
    for (phase, status, detail) in [
        ("iam-setup", "ok", "admin seeded"),
        ("health-check", "started", ""),
        ("cluster-ready", "ok", ""),
    ] {
        for n in &nodes {
            report(n, phase, status, detail);
            row_shows(&mut b, n.name, crate_stage(phase), status);
        }
    }
    b.wait_for(
        "IAM healthy on every node",
        "document.querySelectorAll('td[data-service=\"iam\"][data-result=\"ok\"]').length === 3",
        Duration::from_secs(20),
    )
    .unwrap();

    eprintln!("phase: every row is cluster-ready, without a reload; the screenshot");
    let ready = b
        .eval("document.querySelectorAll('tr.node[data-stage=\"cluster-ready\"][data-status=\"ok\"]').length")
        .unwrap();
    assert_eq!(ready, 3);
    assert_eq!(
        b.eval("window.__openedOnce").unwrap(),
        "yes",
        "the page was reloaded"
    );
    assert_eq!(
        b.eval("performance.getEntriesByType('navigation').length")
            .unwrap(),
        1
    );
    assert_eq!(
        b.eval("document.getElementById('ready-count').textContent")
            .unwrap(),
        "3/3 cluster-ready"
    );
    let timeline = b
        .eval("document.querySelector('.timeline[data-node=\"node01\"] pre').textContent")
        .unwrap();
    let timeline = timeline.as_str().unwrap();
    for line in [
        "server: dhcp",
        "server: kernel",
        "chainfire-join ok",
        "cluster-ready ok",
    ] {
        assert!(
            timeline.contains(line),
            "no {line:?} in node01's timeline:\n{timeline}"
        );
    }
    let shot = browser::artifacts_dir().join("rack-page.png");
    b.screenshot(&shot, WIDTH).unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());

    eprintln!("phase: /metrics parses with the Prometheus text parser and holds the new series");
    let (ok, text) = curl(
        &srv,
        &[
            "--cacert",
            &state.join("pki/ca.crt").display().to_string(),
            "https://127.0.0.1:8082/metrics",
        ],
    );
    assert!(ok, "{text}");
    // OpenMetrics 1.0, parsed by the reference parser (Prometheus's Python client).
    let scrape = plasmacloud_testkit::scrape::Scrape::parse(&text)
        .unwrap_or_else(|e| panic!("the Prometheus parser refused /metrics: {e}\n{text}"));
    let sample = |family: &str, labels: &[(&str, &str)]| scrape.value(family, labels);
    assert_eq!(
        sample("pxe_event_stream_subscribers", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample("pxe_nodes_at_stage", &[("stage", "cluster-ready")]),
        Some(3.0)
    );
    assert_eq!(
        sample(
            "pxe_events",
            &[("phase", "cluster-ready"), ("status", "ok")]
        ),
        Some(3.0),
        "{text}"
    );
    assert!(sample("pxe_events", &[("phase", "unknown-mac"), ("status", "ok")]).unwrap() >= 1.0);
    assert_eq!(
        sample(
            "pxe_node_raft_leader",
            &[("node", "node01"), ("store", "chainfire")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            "pxe_node_raft_leader",
            &[("node", "node01"), ("store", "flaredb")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            "pxe_node_service_up",
            &[("node", "node03"), ("service", "iam")]
        ),
        Some(1.0)
    );
    assert!(sample("pxe_node_boot_seconds", &[("node", "node02")]).unwrap() > 0.0);
    assert!(
        sample("pxe_enrollments", &[("result", "ok")]).is_some(),
        "{text}"
    );
    assert!(sample("pxe_event_log_fsyncs", &[]).unwrap() >= 1.0);
    assert_eq!(sample("pxe_unknown_macs", &[]), Some(1.0));
    assert!(sample("pxe_dhcp_acks", &[("mode", "full")]).unwrap() >= 4.0);
    drop(b);
    drop(nodes);
    drop(rack);
}

/// The page's stage of a phase (as `rack_view::STAGES` names it).
fn crate_stage(phase: &str) -> &'static str {
    match phase {
        "enroll" => "enroll",
        "disk" => "disk",
        "configure" => "configure",
        "chainfire-join" => "chainfire",
        "flaredb-join" => "flaredb",
        "iam-setup" => "iam",
        "health-check" => "health",
        "cluster-ready" => "cluster-ready",
        other => panic!("no stage for {other}"),
    }
}
