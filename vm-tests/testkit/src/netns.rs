//! Network namespaces for tests and harnesses (root): the one place that creates them.
//!
//! - [`Netns`]: a namespace of its own (loopback up), with helpers to add a bridge (with an
//!   address or without), tap devices on it, and veth pairs into another namespace, and to run a
//!   command inside. Dropping it kills every process still running in it and deletes it, which
//!   takes its bridge, taps and veth ends with it. Nothing outside the namespace is touched.
//! - [`Segment`]: a test L2 segment, a hub namespace holding bridge `br0` with endpoint
//!   namespaces attached by veth pairs (each interface with its own MAC and, optionally, an
//!   address), taps on the bridge for QEMU, and a veth from the test process's own namespace
//!   when the test itself must reach the endpoints ([`Segment::attach_host`]). Dropping it
//!   deletes every namespace it made (and that veth with the hub).
//!
//! Names are unique per process and call ([`unique_name`]), so tests running in parallel (and
//! several harness runs on one host) never meet.

use std::ffi::OsStr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// What went wrong while setting a namespace up or tearing it down.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The `ip` (or `kill`) command could not be started: is iproute2 installed, and are we
    /// root?
    #[error("cannot run {what}: {source}")]
    Start {
        /// The command line.
        what: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// The command ran and failed; its output says why (usually: not root, or a name in use).
    #[error("{what} failed ({status}): {output}")]
    Failed {
        /// The command line.
        what: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its stdout and stderr.
        output: String,
    },
}

/// A result of this module.
pub type Result<T> = std::result::Result<T, NetnsError>;

/// A name no other call in any process gets: `PREFIX-PID-N` (N counts calls in this process).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Runs `cmd` to completion; its stdout, or the failure with its output.
fn run(mut cmd: Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| NetnsError::Start {
        what: what.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            what,
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command that runs `program` inside namespace `ns` (`ip netns exec NS PROGRAM`).
pub fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// A network namespace; deleted (with whatever still runs in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    live: bool,
}

impl Netns {
    /// Creates namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        let mut add = Command::new("ip");
        add.args(["netns", "add", name]);
        run(add)?;
        let ns = Netns {
            name: name.to_string(),
            live: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace named [`unique_name`]`(prefix)`.
    pub fn unique(prefix: &str) -> Result<Self> {
        Self::create(&unique_name(prefix))
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS…`; its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ip");
        c.arg("-n").arg(&self.name).args(args);
        run(c)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.name, program)
    }

    /// Adds bridge `bridge` (no forwarding delay, no STP, so ports forward at once), with
    /// address `cidr` when given, and brings it up.
    pub fn add_bridge(&self, bridge: &str, cidr: Option<&str>) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            bridge,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ])?;
        if let Some(cidr) = cidr {
            self.ip(&["addr", "add", cidr, "dev", bridge])?;
        }
        self.ip(&["link", "set", bridge, "up"])?;
        Ok(())
    }

    /// Adds tap device `tap` (for QEMU running in this namespace) as a port of `bridge`, up.
    pub fn add_tap(&self, tap: &str, bridge: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.ip(&["link", "set", tap, "master", bridge, "up"])?;
        Ok(())
    }

    /// Adds a veth pair: `port` here, a port of `bridge`, up; its peer `ifname` in `other`, with
    /// MAC `mac` and address `cidr` when given, up.
    pub fn add_veth(
        &self,
        port: &str,
        bridge: &str,
        other: &Netns,
        ifname: &str,
        mac: &str,
        cidr: Option<&str>,
    ) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            &other.name,
        ])?;
        self.ip(&["link", "set", port, "master", bridge, "up"])?;
        other.ip(&["link", "set", ifname, "address", mac])?;
        if let Some(cidr) = cidr {
            other.ip(&["addr", "add", cidr, "dev", ifname])?;
        }
        other.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// The ids of the processes running in the namespace.
    pub fn pids(&self) -> Result<Vec<String>> {
        let mut c = Command::new("ip");
        c.args(["netns", "pids", &self.name]);
        Ok(run(c)?.split_whitespace().map(str::to_string).collect())
    }

    /// Kills (SIGKILL) every process in the namespace, waiting up to 2 s for them to go, and
    /// deletes it. Idempotent.
    pub fn teardown(&mut self) -> Result<()> {
        if !self.live {
            return Ok(());
        }
        // A process may fork while we kill its parent: kill until none is left.
        let _ = crate::wait_until(
            &format!("namespace {} to hold no process", self.name),
            Duration::from_secs(2),
            || {
                let pids = self.pids().unwrap_or_default();
                for pid in &pids {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
                pids.is_empty().then_some(())
            },
        );
        let mut del = Command::new("ip");
        del.args(["netns", "del", &self.name]);
        run(del)?;
        self.live = false;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("testkit: teardown of namespace {}: {e}", self.name);
        }
    }
}

/// A bridge `br0` in a hub namespace, endpoint namespaces on veth pairs, taps for QEMU.
#[derive(Debug)]
pub struct Segment {
    prefix: String,
    hub: Netns,
    endpoints: Vec<Netns>,
}

impl Segment {
    /// The bridge's name in the hub.
    pub const BRIDGE: &'static str = "br0";

    /// A new segment whose namespaces are named `<unique prefix>-hub`, `<unique prefix>-NAME`.
    pub fn new(prefix: &str) -> Result<Self> {
        let prefix = unique_name(prefix);
        let hub = Netns::create(&format!("{prefix}-hub"))?;
        hub.add_bridge(Self::BRIDGE, None)?;
        Ok(Segment {
            prefix,
            hub,
            endpoints: Vec::new(),
        })
    }

    /// The hub namespace (holds the bridge and the taps; QEMU runs here).
    pub fn hub(&self) -> &Netns {
        &self.hub
    }

    /// Adds a namespace `<prefix>-NAME` whose interface `ifname` (MAC `mac`, address `cidr`
    /// when given) sits on the bridge. Returns the namespace's name.
    pub fn attach(
        &mut self,
        name: &str,
        ifname: &str,
        mac: &str,
        cidr: Option<&str>,
    ) -> Result<String> {
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let port = format!("p{}", self.endpoints.len() + 1);
        let res = self
            .hub
            .add_veth(&port, Self::BRIDGE, &ns, ifname, mac, cidr);
        let name = ns.name().to_string();
        self.endpoints.push(ns);
        res.map(|()| name)
    }

    /// Connects the namespace this process runs in (the host's, usually) to the bridge: a veth
    /// pair whose end here, named [`unique_name`]`("vh")` shortened to fit, gets address `cidr`
    /// and comes up, so the test process itself (a client library, say) reaches the endpoints.
    /// The only thing made outside the segment's namespaces: it goes away with the hub (deleting
    /// one end of a veth pair deletes the other). `cidr`'s subnet must be one the host does not
    /// route already. Returns the interface's name.
    pub fn attach_host(&self, cidr: &str) -> Result<String> {
        // IFNAMSIZ: 15 characters at most.
        let mut ifname = unique_name("vh").replace('-', "");
        ifname.truncate(15);
        let port = format!("x{}", &ifname[2..]);
        let mut add = Command::new("ip");
        add.args([
            "link", "add", &ifname, "type", "veth", "peer", "name", &port,
        ])
        .args(["netns", self.hub.name()]);
        run(add)?;
        self.hub
            .ip(&["link", "set", &port, "master", Self::BRIDGE, "up"])?;
        for args in [
            vec!["addr", "add", cidr, "dev", &ifname],
            vec!["link", "set", &ifname, "up"],
        ] {
            let mut c = Command::new("ip");
            c.args(&args);
            run(c)?;
        }
        Ok(ifname)
    }

    /// Adds tap device `tap` on the bridge.
    pub fn tap(&self, tap: &str) -> Result<()> {
        self.hub.add_tap(tap, Self::BRIDGE)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Endpoints last-made first; the hub after them (when the field drops).
        while let Some(ns) = self.endpoints.pop() {
            drop(ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_keep_their_prefix() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("t-{}-", std::process::id())), "{a}");
    }

    #[test]
    fn a_segment_connects_its_endpoints_and_goes_away_on_drop() {
        if !crate::require(
            "a_segment_connects_its_endpoints_and_goes_away_on_drop",
            &[crate::Need::Root, crate::Need::Tool("ip")],
        ) {
            return;
        }
        let mut seg = Segment::new("tk").expect("segment");
        let a = seg
            .attach("a", "eth0", "52:54:00:12:34:01", Some("10.123.0.1/24"))
            .expect("attach a");
        let b = seg
            .attach("b", "eth0", "52:54:00:12:34:02", Some("10.123.0.2/24"))
            .expect("attach b");
        seg.tap("tap0").expect("tap");
        let out = command_in(&a, "ip")
            .args(["link", "show", "eth0"])
            .output()
            .expect("ip link");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("52:54:00:12:34:01"), "{text}");
        // A process left running inside is killed by the drop.
        let mut sleeper = command_in(&b, "sleep").arg("600").spawn().expect("sleep");
        let pid = sleeper.id().to_string();
        crate::wait_until(
            "the sleeper to enter its namespace",
            Duration::from_secs(10),
            || {
                let ns = seg.endpoints.iter().find(|n| n.name() == b)?;
                ns.pids().ok()?.contains(&pid).then_some(())
            },
        )
        .expect("sleeper in the namespace");
        let hub = seg.hub().name().to_string();
        drop(seg);
        let status = sleeper.wait().expect("wait");
        assert!(!status.success(), "the sleeper was killed");
        let list = run({
            let mut c = Command::new("ip");
            c.args(["netns", "list"]);
            c
        })
        .expect("ip netns list");
        for ns in [&a, &b, &hub] {
            assert!(
                !list
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ns)),
                "{ns} still exists:\n{list}"
            );
        }
    }
}
