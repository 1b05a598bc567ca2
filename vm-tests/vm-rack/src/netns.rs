//! The rack's network: one namespace of its own (unique name), a bridge `br0` with the boot
//! server's address, and one tap per VM. Dropping it kills every process left in the namespace
//! and deletes the namespace (which takes the bridge and taps with it). Nothing outside the
//! namespace is touched.

use std::process::Command;

use anyhow::Context;

use crate::prepare::{run, SERVER_IP};

/// A namespace with a bridge.
#[derive(Debug)]
pub struct Netns {
    /// Its name (`vmrack-<pid>`).
    pub name: String,
    live: bool,
}

impl Netns {
    /// Creates `vmrack-<pid>` with `br0` = 10.99.0.1/24 and `taps` tap devices on it
    /// (`tap0` …).
    pub fn create(taps: usize) -> anyhow::Result<Self> {
        let name = format!("vmrack-{}", std::process::id());
        run(
            "ip netns add",
            Command::new("ip").args(["netns", "add", &name]),
        )?;
        let ns = Netns { name, live: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ])?;
        ns.ip(&["addr", "add", &format!("{SERVER_IP}/24"), "dev", "br0"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        for i in 0..taps {
            let tap = format!("tap{i}");
            ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
            ns.ip(&["link", "set", &tap, "master", "br0", "up"])?;
        }
        Ok(ns)
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(
            &format!("ip -n {} {}", self.name, args.join(" ")),
            Command::new("ip").arg("-n").arg(&self.name).args(args),
        )
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Kills every process in the namespace and deletes it (idempotent).
    pub fn teardown(&mut self) -> anyhow::Result<()> {
        if !self.live {
            return Ok(());
        }
        for _ in 0..20 {
            let pids = Command::new("ip")
                .args(["netns", "pids", &self.name])
                .output()
                .context("while listing the namespace's processes")?;
            let pids = String::from_utf8_lossy(&pids.stdout).to_string();
            let pids: Vec<&str> = pids.split_whitespace().collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        run(
            "ip netns del",
            Command::new("ip").args(["netns", "del", &self.name]),
        )?;
        self.live = false;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("vm-rack: teardown of {}: {e:#}", self.name);
        }
    }
}
