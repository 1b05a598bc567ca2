//! The rack's boot server: our pxe-server in full DHCP mode (IPv6 RA on) on the bridge, or, for
//! the comparison, dnsmasq (DHCP + TFTP) with equivalent iPXE scripts. Either runs as a child
//! that dies with the inner run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use super::http::Http;
use super::plan::Plan;
use crate::prepare::{self, node, MGMT_PORT, SERVER_IP};
use crate::scenario::Firmware;

/// Starts pxe-server and waits (up to 30 s) until its management API answers.
pub async fn start_pxe(plan: &Plan, http: &Http) -> anyhow::Result<Child> {
    let log = std::fs::File::create(plan.work.join(format!("pxe-server-{}.log", plan.label)))?;
    let mut c = Command::new(plan.bin_dir.join("pxe-server"));
    c.arg("serve")
        .args(["--interface", "br0", "--mode", "full", "--cluster"])
        .arg(&plan.contract)
        .arg("--bundle")
        .arg(&plan.bundle)
        .args(["--dhcp-range", "10.99.0.100-10.99.0.199"])
        .args(["--ipxe-dir", "/usr/lib/ipxe"])
        .arg("--state-dir")
        .arg(prepare::pxe_state_dir(&plan.work, &plan.label))
        .arg("--http-addr")
        .arg(format!("{SERVER_IP}:{}", prepare::HTTP_PORT))
        .arg("--management-addr")
        .arg(format!("{SERVER_IP}:{MGMT_PORT}"))
        .args(["--unknown-mac", "default", "--ipv6-ra", "on"]);
    if plan.scenario.firmware() == Firmware::SecureBoot {
        c.arg("--secure-boot-dir")
            .arg(prepare::secure_boot_dir(&plan.work)?);
    }
    c.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    let mut child = c.spawn().context("while starting pxe-server")?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            bail!(
                "pxe-server exited ({st}); see {}",
                plan.work
                    .join(format!("pxe-server-{}.log", plan.label))
                    .display()
            );
        }
        if let Ok(r) = http
            .get(&format!("https://{SERVER_IP}:{MGMT_PORT}/health"))
            .await
        {
            if r.status.is_success() {
                return Ok(child);
            }
        }
        if Instant::now() >= until {
            bail!("pxe-server's management API did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes dnsmasq's TFTP tree and starts dnsmasq on the bridge.
pub fn start_dnsmasq(plan: &Plan) -> anyhow::Result<Child> {
    let root = prepare::write_dnsmasq_tree(&plan.work, &plan.bundle, plan.scenario.nodes())?;
    let log = std::fs::File::create(plan.work.join(format!("dnsmasq-{}.log", plan.label)))?;
    let mut c = Command::new("dnsmasq");
    c.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=br0",
        "--bind-interfaces",
        "--log-dhcp",
        "--dhcp-range=10.99.0.100,10.99.0.199,255.255.255.0,1h",
        "--enable-tftp",
        "--dhcp-userclass=set:ipxe,iPXE",
        "--dhcp-boot=tag:!ipxe,undionly.kpxe",
    ])
    .arg(format!("--tftp-root={}", root.display()))
    .arg(format!(
        "--dhcp-leasefile={}",
        plan.work
            .join(format!("dnsmasq-{}.leases", plan.label))
            .display()
    ))
    .arg(format!(
        "--pid-file={}",
        plan.work
            .join(format!("dnsmasq-{}.pid", plan.label))
            .display()
    ));
    for i in 0..plan.scenario.nodes() {
        let (name, mac, ip) = node(i);
        c.arg(format!("--dhcp-host={mac},{ip},set:{name}"));
        c.arg(format!("--dhcp-boot=tag:ipxe,tag:{name},{name}.ipxe"));
    }
    c.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    c.spawn()
        .context("while starting dnsmasq (is dnsmasq-base installed?)")
}
