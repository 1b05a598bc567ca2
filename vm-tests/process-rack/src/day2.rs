//! Day 2 on a rack of processes: what `rackctl` needs from a rack, played by the harness.
//!
//! - **A served bundle**: `work/bundle`, a symlink to a bundle directory built by
//!   `netboot-image` from a stand-in kernel and initrd, as pxe-server's `--bundle` would be.
//!   `rackctl` swaps it; the rack reads it whenever a node boots.
//! - **Boots**: [`Rack::boot`] writes a new boot id into the node's `/run` and records the
//!   served bundle's version as the one the node booted (what pxe-server records from its
//!   kernel fetch), runs the chain, then — with `agents` — the node's reboot agent.
//! - **Reboots**: the agent's reboot command creates `run/reboot-requested`; a watcher sees
//!   it and reboots the node: every process stopped (SIGTERM, as systemd does, then SIGKILL),
//!   `/run` emptied, booted again. A node marked broken for a version ([`Rack::break_on`])
//!   stays down when it reboots into it: the image "does not boot".
//! - **The boot server's view** ([`RackBootView`]) for `rackctl`'s health gates, and
//!   [`Rack::ctl`], a `rackctl` for this rack with the harness's operator certificate.
//! - **A writing client** ([`WriteLoad`]): Chainfire writes in a loop, every acknowledged key
//!   kept to be read back, and the longest time without an acknowledged write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rackctl::boot_view::{BootSnapshot, BootView, NodeBoot};
use rackctl::bundle::{version_of, BundleSite};
use rand::RngCore;

use crate::Rack;

/// The file a node's reboot command creates.
pub const REBOOT_REQUESTED: &str = "reboot-requested";

fn random_hex() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What the rack's "boot server" says: the served bundle and each node's booted version.
#[derive(Debug, Clone)]
pub struct RackBootView {
    work: PathBuf,
}

impl RackBootView {
    /// The view of the rack in `work`.
    pub fn new(work: &Path) -> Self {
        Self {
            work: work.to_path_buf(),
        }
    }
}

impl BootView for RackBootView {
    fn snapshot(&self) -> BoxFuture<'_, rackctl::Result<BootSnapshot>> {
        Box::pin(async move {
            let served = version_of(&self.work.join("bundle")).ok();
            let mut nodes = BTreeMap::new();
            if let Ok(dir) = std::fs::read_dir(&self.work) {
                for e in dir.flatten() {
                    let path = e.path().join("booted.json");
                    let Ok(text) = std::fs::read_to_string(&path) else {
                        continue;
                    };
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    nodes.insert(
                        e.file_name().to_string_lossy().into_owned(),
                        NodeBoot {
                            version: v["version"].as_str().map(str::to_string),
                            at: v["at"].as_str().map(str::to_string),
                            last_event: Some("boot started".into()),
                            last_event_at: v["at"].as_str().map(str::to_string),
                        },
                    );
                }
            }
            Ok(BootSnapshot { served, nodes })
        })
    }

    /// The rack has no DHCP server: the MAC is noted in [`RELEASED_LEASES`] for tests to read.
    fn release_lease<'a>(&'a self, mac: &'a str) -> BoxFuture<'a, rackctl::Result<Option<String>>> {
        Box::pin(async move {
            use std::io::Write;
            let path = self.work.join(RELEASED_LEASES);
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|e| rackctl::Error::Config(format!("{}: {e}", path.display())))?;
            writeln!(f, "{mac}")
                .map_err(|e| rackctl::Error::Config(format!("{}: {e}", path.display())))?;
            Ok(None)
        })
    }
}

/// The file (in the rack's work directory) listing the MACs whose leases rackctl released.
pub const RELEASED_LEASES: &str = "released-leases";

impl Rack {
    /// The path the rack serves bundles from (pxe-server's `--bundle`).
    pub fn bundle_link(&self) -> PathBuf {
        self.spec.work.join("bundle")
    }

    /// Builds a bundle for the current contract from a stand-in kernel and initrd named by
    /// `tag` (a different tag, a different version); serves nothing. Returns its directory
    /// and version.
    pub fn build_bundle(&self, tag: &str) -> rackctl::Result<(PathBuf, String)> {
        let images = self.spec.work.join("images").join(tag);
        std::fs::create_dir_all(&images).map_err(|e| rackctl::Error::Bundle(e.to_string()))?;
        let kernel = images.join("bzImage");
        let initrd = images.join("initrd");
        std::fs::write(&kernel, format!("stand-in kernel {tag}\n"))
            .map_err(|e| rackctl::Error::Bundle(e.to_string()))?;
        std::fs::write(&initrd, format!("stand-in initrd {tag}\n"))
            .map_err(|e| rackctl::Error::Bundle(e.to_string()))?;
        let base = netboot_base(&kernel, &initrd);
        BundleSite::new(self.bundle_link()).build(&self.contract, Some(base))
    }

    /// Builds the first bundle (`v1`) and serves it. Returns its version.
    pub fn serve_first_bundle(&self) -> rackctl::Result<String> {
        let (dir, v) = self.build_bundle("v1")?;
        BundleSite::new(self.bundle_link()).swap_in(&dir)?;
        Ok(v)
    }

    /// The version node `name` booted last (its boot record), if any.
    pub fn booted_version(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.node_dir(name).join("booted.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["version"].as_str().map(str::to_string)
    }

    /// `rackctl` for this rack: its contract, its served bundle, its pxe-server state
    /// directory (issued log, `pki revoke`), the harness's operator certificate, and the
    /// rack's boot view.
    pub fn ctl(&self) -> rackctl::Ctl {
        let mut config = rackctl::CtlConfig::new(&self.contract);
        config.bundle = Some(self.bundle_link());
        config.pxe_state_dir = Some(self.spec.work.join("pxe-state"));
        config.pxe_server_bin = self.spec.bin_dir.join("pxe-server");
        config.poll = Duration::from_millis(200);
        config.serve_timeout = Duration::from_secs(10);
        let operator = rackctl::operator::Operator::from_files(&self.operator_files())
            .unwrap_or_else(|e| panic!("the rack's operator certificate: {e}"));
        rackctl::Ctl::new(
            config,
            operator,
            Arc::new(RackBootView::new(&self.spec.work)),
        )
    }

    /// Node `name` does not come back when it reboots into bundle `version`.
    pub fn break_on(&self, name: &str, version: &str) {
        if let Ok(mut b) = self.broken.lock() {
            b.insert(name.into(), version.into());
        }
    }

    /// Node `name` boots again whatever the version.
    pub fn unbreak(&self, name: &str) {
        if let Ok(mut b) = self.broken.lock() {
            b.remove(name);
        }
    }

    /// Boots node `name`: a new boot id, the served bundle recorded as booted, the chain, and
    /// (with `agents`) its reboot agent and the watcher that reboots it when the agent asks.
    pub async fn boot(self: &Arc<Self>, name: &str) -> Result<(), String> {
        let dir = self.node_dir(name);
        let run = dir.join("run");
        std::fs::create_dir_all(&run).map_err(|e| format!("{name}: {e}"))?;
        std::fs::write(run.join("boot_id"), random_hex() + "\n").map_err(|e| e.to_string())?;
        let version = version_of(&self.bundle_link()).ok();
        let record = serde_json::json!({
            "version": version,
            "at": rackctl::utc_ms(rackctl::now_ms()),
        });
        std::fs::write(dir.join("booted.json"), record.to_string()).map_err(|e| e.to_string())?;
        self.note(name, "boot");
        self.run_chain(name).await?;
        if self.spec.agents {
            self.start_agent(name).await?;
        }
        Ok(())
    }

    async fn start_agent(self: &Arc<Self>, name: &str) -> Result<(), String> {
        let dir = self.node_dir(name);
        let log = dir.join("logs").join("reboot-agent.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let flag = dir.join("run").join(REBOOT_REQUESTED);
        let child = tokio::process::Command::new(self.spec.bin_dir.join("firstboot"))
            .arg("reboot-agent")
            .args(self.node_args(name, Duration::from_secs(60)))
            .arg("--reboot-command")
            .arg(format!("touch {}", flag.display()))
            .arg("--poll")
            .arg("200ms")
            .arg("--boot-id-file")
            .arg(dir.join("run").join("boot_id"))
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{name}: cannot start the reboot agent: {e}"))?;
        if let Ok(mut c) = self.children.lock() {
            c.insert((name.to_string(), "reboot-agent".to_string()), child);
        }
        self.note(name, "reboot-agent");
        let rack = Arc::clone(self);
        let node = name.to_string();
        let watcher = tokio::spawn(async move {
            // A file that appears: polled, as a real machine's reset line would be wired.
            loop {
                if flag.exists() {
                    rack.reboot_now(node).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        if let Ok(mut w) = self.watchers.lock() {
            if let Some(old) = w.insert(name.to_string(), watcher) {
                old.abort();
            }
        }
        Ok(())
    }

    /// Stops every process of node `name` as a shutdown would: SIGTERM, then SIGKILL after
    /// 10 s. Its reboot watcher stops too.
    pub async fn power_off(&self, name: &str) {
        if let Ok(mut w) = self.watchers.lock() {
            if let Some(t) = w.remove(name) {
                t.abort();
            }
        }
        self.stop_services(name).await;
    }

    async fn stop_services(&self, name: &str) {
        for service in ["reboot-agent", "iam", "flaredb", "chainfire"] {
            let child = self
                .children
                .lock()
                .ok()
                .and_then(|mut c| c.remove(&(name.to_string(), service.to_string())));
            let Some(mut child) = child else {
                continue;
            };
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// What a reboot is here: processes stopped, `/run` emptied, booted again (unless the
    /// served version is one this node is broken on).
    fn reboot_now(self: Arc<Self>, name: String) -> BoxFuture<'static, ()> {
        // Boxed: a boot starts the watcher that reboots, which boots again.
        Box::pin(self.reboot_inner(name))
    }

    async fn reboot_inner(self: Arc<Self>, name: String) {
        self.note(&name, "reboot");
        self.stop_services(&name).await;
        let run = self.node_dir(&name).join("run");
        let _ = std::fs::remove_dir_all(&run);
        let version = version_of(&self.bundle_link()).ok();
        let broken = self
            .broken
            .lock()
            .ok()
            .and_then(|b| b.get(&name).cloned())
            .is_some_and(|v| Some(v) == version);
        if broken {
            self.note(&name, "image-broken");
            return;
        }
        let rack = Arc::clone(&self);
        tokio::spawn(async move {
            if let Err(e) = rack.boot(&name).await {
                if rack.spec.verbose {
                    eprintln!("{name}: did not come back: {e}");
                }
            }
        });
    }
}

fn netboot_base(kernel: &Path, initrd: &Path) -> netboot_image::bundle::BaseImage {
    netboot_image::bundle::BaseImage {
        kernel: kernel.to_path_buf(),
        initrd: initrd.to_path_buf(),
        cmdline: "console=ttyS0".into(),
    }
}

/// What a writing client saw.
#[derive(Debug, Clone, Default)]
pub struct WriteReport {
    /// Keys acknowledged, with their values.
    pub acked: Vec<(String, String)>,
    /// Writes that failed or whose outcome is unknown.
    pub failed: u64,
    /// The longest time between two acknowledged writes.
    pub longest_gap: Duration,
    /// When that gap ended, seconds after the load started.
    pub longest_gap_end: f64,
    /// How long the load ran.
    pub ran: Duration,
}

/// A client writing Chainfire keys in a loop until stopped.
#[derive(Debug)]
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<WriteReport>,
}

impl WriteLoad {
    /// Starts writing `PREFIX/<n>` through `client` (every write with its own deadline).
    pub fn start(client: plasmacloud_store_client::StoreClient, prefix: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let prefix = prefix.to_string();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut last_ok = Instant::now();
            let mut r = WriteReport::default();
            let mut n: u64 = 0;
            while !flag.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("{prefix}/{n:08}");
                let value = format!("v{n}");
                match tokio::time::timeout(Duration::from_secs(3), client.put(&key, &value)).await {
                    Ok(Ok(_)) => {
                        let gap = last_ok.elapsed();
                        if gap > r.longest_gap {
                            r.longest_gap = gap;
                            r.longest_gap_end = start.elapsed().as_secs_f64();
                        }
                        last_ok = Instant::now();
                        r.acked.push((key, value));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    _ => {
                        r.failed += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            let gap = last_ok.elapsed();
            if gap > r.longest_gap {
                r.longest_gap = gap;
                r.longest_gap_end = start.elapsed().as_secs_f64();
            }
            r.ran = start.elapsed();
            r
        });
        Self { stop, task }
    }

    /// Stops and reports.
    pub async fn stop(self) -> WriteReport {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}

impl WriteReport {
    /// Reads every acknowledged key back (linearizable reads); the keys lost or changed.
    pub async fn lost(&self, client: &plasmacloud_store_client::StoreClient) -> Vec<String> {
        let mut lost = Vec::new();
        let prefix = self
            .acked
            .first()
            .and_then(|(k, _)| k.rsplit_once('/').map(|(p, _)| format!("{p}/")));
        let listed: BTreeMap<String, String> = match &prefix {
            Some(p) => match client.list(p).await {
                Ok(l) => l.items.into_iter().map(|i| (i.key, i.value)).collect(),
                Err(e) => return vec![format!("cannot list {p}: {e}")],
            },
            None => BTreeMap::new(),
        };
        for (k, v) in &self.acked {
            if listed.get(k) != Some(v) {
                lost.push(k.clone());
            }
        }
        lost
    }

    /// One line for the test log.
    pub fn summary(&self) -> String {
        format!(
            "{} writes acknowledged, {} failed or unknown, in {:.1} s; longest without an acknowledged write: {:.2} s (ending at {:.1} s)",
            self.acked.len(),
            self.failed,
            self.ran.as_secs_f64(),
            self.longest_gap.as_secs_f64(),
            self.longest_gap_end
        )
    }
}
