//! The rack's life after day one, on real VMs, driven through `rackctl`'s library as an
//! operator drives its binary (the same operator certificate, pxe-server's `/v1/status` as the
//! boot view): `grow` (two machines join as voters, 3 → 5), `replace` (node02 dies for good,
//! a new machine with another MAC takes its name), `rolling-reimage` (bundle v2 across the
//! rack, every node rebooting itself when it holds its slot) and `retire` (the Chainfire
//! leader leaves, a worker is promoted in its place).
//!
//! Throughout each, a client writes Chainfire keys; at the end every acknowledged write is read
//! back, the stores' voters must be the contract's with one leader, every node must be healthy
//! on the bundle version it should run, and the longest time without an acknowledged write is
//! reported. While `rackctl` runs, the harness keeps ticking (events, consoles, the view) and
//! plays the machines' reset line: a VM whose guest rebooted (QEMU runs with `-no-reboot`, so
//! it exits) is powered on again and PXE-boots whatever pxe-server serves then.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use local_rack::day2::{WriteLoad, WriteReport};
use plasmacloud_contract::Contract;
use plasmacloud_store_client::StoreClient;
use rackctl::boot_view::PxeStatus;
use rackctl::contract_edit::NewNode;

use super::run::Rack;
use super::vm::Vm;
use crate::prepare::{self, node, MGMT_PORT, SERVER_IP};

/// The MAC of the machine that takes node02's name in `replace`.
pub const REPLACEMENT_MAC: &str = "52:54:00:00:00:22";

/// The kernel argument that tells bundle v2's boots from v1's on the console.
pub const V2_MARK: &str = "plasmacloud.image=v2";

impl Rack {
    /// `rackctl` for this rack: the contract pxe-server serves, its `--bundle`, its state
    /// directory (issued log, `pki revoke`), the harness's operator certificate, and
    /// pxe-server's management API as the boot view.
    fn ctl(&self) -> anyhow::Result<rackctl::Ctl> {
        let mut config = rackctl::CtlConfig::new(&self.plan.contract);
        config.bundle = Some(self.plan.bundle.clone());
        config.pxe_state_dir = Some(prepare::pxe_state_dir(&self.plan.work, &self.plan.label));
        config.pxe_server_bin = self.plan.bin_dir.join("pxe-server");
        config.serve_timeout = Duration::from_secs(60);
        let operator = rackctl::operator::Operator::from_files(&self.operator)?;
        let boot = PxeStatus::new(&format!("https://{SERVER_IP}:{MGMT_PORT}"), &operator);
        Ok(rackctl::Ctl::new(
            config,
            operator,
            std::sync::Arc::new(boot),
        ))
    }

    /// An operator's Chainfire client over `ips`.
    fn chainfire_client(&self, ips: &[String]) -> anyhow::Result<StoreClient> {
        let endpoints: Vec<String> = ips.iter().map(|ip| format!("https://{ip}:2379")).collect();
        Ok(StoreClient::builder(endpoints)
            .tls_files(&self.operator)?
            .timeout(Duration::from_secs(3))
            .build()?)
    }

    /// Starts the writing client (keys `vm-rack/<scenario>/<n>`) over the first three nodes.
    fn start_writes(&self, names: &[String]) -> anyhow::Result<WriteLoad> {
        let ips: Vec<String> = (0..names.len().min(3)).map(|i| node(i).2).collect();
        let client = self.chainfire_client(&ips)?;
        Ok(WriteLoad::start(
            client,
            &format!("vm-rack/{}", self.plan.scenario.name()),
        ))
    }

    /// Drives `fut` (a `rackctl` operation) to its end while the rack ticks, powering on
    /// again every VM whose guest rebooted.
    async fn while_ticking<T>(&mut self, fut: impl Future<Output = T>) -> anyhow::Result<T> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    self.tick().await?;
                    self.power_on_rebooted()?;
                }
            }
        }
    }

    /// A VM whose QEMU exited rebooted itself (`-no-reboot`): the reset line powers it on
    /// again, and it PXE-boots like any machine after a reboot.
    fn power_on_rebooted(&mut self) -> anyhow::Result<()> {
        let t = self.t();
        let mut rebooted = Vec::new();
        for vm in &mut self.vms {
            if let Some(st) = vm.exited() {
                vm.start(t)?;
                rebooted.push((vm.name.clone(), st, vm.boots()));
            }
        }
        for (name, st, boot) in rebooted {
            self.reset_ready(&name);
            self.say(&format!(
                "{name} rebooted itself (QEMU {st}); powered on again (boot {boot})"
            ));
        }
        Ok(())
    }

    /// Powers on a new machine `name` with `mac` on `tap`, with a blank data disk.
    fn power_on_new(&mut self, name: &str, mac: &str, tap: &str) -> anyhow::Result<()> {
        let disk = self.plan.work.join(format!(
            "{name}-{}-{}.raw",
            mac.replace(':', ""),
            self.plan.label
        ));
        prepare::blank_disk(&disk)?;
        let mut vm = Vm::new(&self.plan, name, mac, tap, Some(disk));
        vm.start(self.t())?;
        self.vms.push(vm);
        self.mac_to_node.insert(mac.to_string(), name.to_string());
        self.reset_ready(name);
        self.say(&format!(
            "powered on the new machine {name} ({mac}) on {tap}"
        ));
        Ok(())
    }

    /// The bundle version pxe-server serves now.
    async fn served_version(&self, ctl: &rackctl::Ctl) -> anyhow::Result<String> {
        ctl.boot
            .snapshot()
            .await?
            .served
            .ok_or_else(|| anyhow!("pxe-server's /v1/status names no bundle version"))
    }

    /// The checks every day-2 scenario ends with: the client's every acknowledged write is
    /// there, both stores' voters are the contract's with one leader (within 60 s), and every
    /// node answers healthy and booted the version `expect` gives it. Returns the client's
    /// report.
    async fn settle(
        &mut self,
        ctl: &rackctl::Ctl,
        load: WriteLoad,
        expect: &BTreeMap<String, String>,
    ) -> anyhow::Result<WriteReport> {
        let report = load.stop().await;
        let contract: Contract = ctl.contract()?;
        let ips: Vec<String> = contract.nodes.iter().map(|n| n.ipv4.to_string()).collect();
        let reader = self.chainfire_client(&ips)?;
        let lost = report.lost(&reader).await;
        if !lost.is_empty() {
            bail!(
                "{} acknowledged write(s) lost: {:?}",
                lost.len(),
                &lost[..lost.len().min(10)]
            );
        }
        if report.acked.is_empty() {
            bail!("the client had no write acknowledged in {:?}", report.ran);
        }
        let cluster = ctl.cluster()?;
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            match cluster.check_voters().await {
                Ok(()) => break,
                Err(e) if Instant::now() < until => {
                    tracing::debug!(error = %e, "voters not settled yet");
                    self.tick().await?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => bail!("the rack is not as the contract says: {e}"),
            }
        }
        let voters = contract.voters().len();
        let (cf_leader, cf, _) = self.check_members("chainfire", 2379, &ips, voters).await?;
        let (fd_leader, fd, _) = self.check_members("flaredb", 2479, &ips, voters).await?;
        let boot = ctl.boot.snapshot().await?;
        for n in &contract.nodes {
            // Within 60 s: a node's service that misses one probe on a loaded TCG host (the CI
            // run of b4647dc saw node03's IAM not answer once right after a retire) is waited
            // out; one that stays down fails the scenario.
            let until = Instant::now() + Duration::from_secs(60);
            loop {
                let health = cluster.node_health(n).await;
                if health.ok() {
                    break;
                }
                if Instant::now() >= until {
                    bail!("{} is not healthy: {}", n.name, health.summary());
                }
                tracing::debug!(node = %n.name, health = %health.summary(), "not healthy yet");
                self.tick().await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let booted = boot.nodes.get(&n.name).and_then(|b| b.version.clone());
            let want = expect.get(&n.name);
            if want.is_some() && booted.as_ref() != want {
                bail!(
                    "{} booted bundle {:?}, expected {:?}",
                    n.name,
                    booted.as_deref().map(rackctl::bundle::short),
                    want.map(|v| rackctl::bundle::short(v))
                );
            }
        }
        self.check_status(ctl).await?;
        self.say(&format!(
            "{}: {} nodes healthy on the expected bundles; chainfire voters {cf:?} (leader {cf_leader}), flaredb voters {fd:?} (leader {fd_leader}); writes: {}",
            self.plan.scenario,
            contract.nodes.len(),
            report.summary()
        ));
        self.say(&format!(
            "{}: longest write unavailability {:.2} s",
            self.plan.scenario,
            report.longest_gap.as_secs_f64()
        ));
        Ok(report)
    }

    /// `rackctl status` as the operator sees it at the end: no store or boot-server error, no
    /// stranger among the members, the lock free, and every node's row complete — a booted
    /// version, a Raft role in both stores, a certificate expiry from its handshake, and a
    /// health check that passed. The table goes into the log.
    async fn check_status(&mut self, ctl: &rackctl::Ctl) -> anyhow::Result<()> {
        // Rows fill in as the last-changed nodes report (a new voter's agent, a handshake that
        // a busy TCG host answers late): waited for, up to STATUS_PATIENCE, and what was still
        // wrong is said first when it never completes.
        let until = Instant::now() + STATUS_PATIENCE;
        let mut said = Vec::new();
        loop {
            let st = rackctl::status::status(ctl).await?;
            let table = rackctl::status::render(&st);
            let wrong = status_wrong(&st);
            if wrong.is_empty() {
                for line in table.lines() {
                    self.say(&format!("status: {line}"));
                }
                return Ok(());
            }
            if Instant::now() >= until {
                bail!(
                    "rackctl status incomplete after {} s:\n{}\n{table}",
                    STATUS_PATIENCE.as_secs(),
                    wrong.join("\n")
                );
            }
            if wrong != said {
                self.say(&format!("status: waiting for: {}", wrong.join("; ")));
                said = wrong;
            }
            self.tick().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Each contract node's booted version now (what pxe-server recorded).
    async fn booted(&self, ctl: &rackctl::Ctl) -> anyhow::Result<BTreeMap<String, String>> {
        Ok(ctl
            .boot
            .snapshot()
            .await?
            .nodes
            .into_iter()
            .filter_map(|(n, b)| b.version.map(|v| (n, v)))
            .collect())
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.plan.timeout_secs)
    }

    /// `grow`: node04 and node05 join as voters (3 → 5) while a client writes.
    pub async fn scenario_grow(&mut self, names: &[String]) -> anyhow::Result<()> {
        let ctl = self.ctl()?;
        let mut expect = self.booted(&ctl).await?;
        let load = self.start_writes(names)?;
        let add: Vec<NewNode> = (names.len()..names.len() + 2)
            .map(|i| {
                let (name, mac, ipv4) = node(i);
                NewNode {
                    name,
                    mac,
                    ipv4,
                    voter: true,
                }
            })
            .collect();
        let plan = rackctl::grow::GrowPlan {
            add: add.clone(),
            make_voters: vec![],
        };
        let op = ctl.begin(&plan.describe()).await?;
        let prepared = match self
            .while_ticking(rackctl::grow::prepare(&op, &plan))
            .await?
        {
            Ok(p) => p,
            Err(e) => return Ok(op.end_unprepared(e).await?),
        };
        let v2 = self.served_version(&ctl).await?;
        self.say(&format!(
            "grow: contract and bundle {} in place; powering on {}",
            rackctl::bundle::short(&v2),
            plan.describe()
        ));
        for (k, n) in add.iter().enumerate() {
            self.power_on_new(&n.name, &n.mac, &format!("tap{}", names.len() + k))?;
            expect.insert(n.name.clone(), v2.clone());
        }
        let timeout = self.timeout();
        let done = self
            .while_ticking(rackctl::grow::complete(&op, &prepared, timeout))
            .await?;
        let report = op.end(done, true).await?;
        self.say(&format!(
            "grow: joined {:?}; promoted {:?}; {} voters",
            report.joined, report.promoted, report.voters
        ));
        if report.voters != 5 {
            bail!("grow: {} voters after the grow, expected 5", report.voters);
        }
        let new: Vec<String> = add.iter().map(|n| n.name.clone()).collect();
        self.wait_ready(&new, timeout).await?;
        self.settle(&ctl, load, &expect).await?;
        Ok(())
    }

    /// `replace`: node02's machine dies for good (power off, disk gone); a new machine with
    /// another MAC takes its name under a new Raft id, the old certificate is revoked and its
    /// lease released, while a client writes.
    pub async fn scenario_replace(&mut self, names: &[String]) -> anyhow::Result<()> {
        let ctl = self.ctl()?;
        let mut expect = self.booted(&ctl).await?;
        let load = self.start_writes(names)?;
        let victim = node(1).0;
        let (old_disk, old_mac) = {
            let vm = self.vm(&victim)?;
            vm.power_off().await;
            (vm.disk.clone(), vm.mac.clone())
        };
        self.vms.retain(|v| v.name != victim);
        if let Some(d) = old_disk {
            std::fs::remove_file(&d).with_context(|| format!("while removing {}", d.display()))?;
        }
        self.say(&format!(
            "replace: {victim} ({old_mac}) powered off for good, its disk removed"
        ));
        let plan = rackctl::replace::ReplacePlan {
            name: victim.clone(),
            mac: REPLACEMENT_MAC.into(),
            serials: vec![],
            force: false,
        };
        let timeout = self.timeout();
        let op = ctl.begin(&format!("replace {victim}")).await?;
        let prepared = match self
            .while_ticking(rackctl::replace::prepare(&op, &plan, timeout))
            .await?
        {
            Ok(p) => p,
            Err(e) => return Ok(op.end_unprepared(e).await?),
        };
        self.say(&format!(
            "replace: removed {:?}, revoked {:?}, lease released {:?}; powering on the new machine",
            prepared.removed, prepared.revoked, prepared.lease_released
        ));
        if prepared.revoked.is_empty() {
            bail!("replace: no certificate of the dead machine was revoked");
        }
        if prepared.lease_released.as_deref() != Some(node(1).2.as_str()) {
            bail!(
                "replace: the dead machine's lease was not released (released {:?}, expected {})",
                prepared.lease_released,
                node(1).2
            );
        }
        let tap = format!("tap{}", names.len());
        self.power_on_new(&victim, REPLACEMENT_MAC, &tap)?;
        let done = self
            .while_ticking(rackctl::replace::complete(&op, &prepared, timeout))
            .await?;
        let report = op.end(done, true).await?;
        let old_ids: Vec<u64> = prepared.removed.iter().map(|(_, id)| *id).collect();
        if old_ids.contains(&report.new_id) {
            bail!(
                "replace: the new machine joined under an old Raft id {}",
                report.new_id
            );
        }
        self.say(&format!(
            "replace: the new {victim} joined as Raft id {} (old ids {old_ids:?}); promoted {:?}",
            report.new_id, report.promoted
        ));
        self.wait_ready(std::slice::from_ref(&victim), timeout)
            .await?;
        expect.insert(victim.clone(), self.served_version(&ctl).await?);
        self.settle(&ctl, load, &expect).await?;
        Ok(())
    }

    /// `rolling-reimage`: bundle v2 (the same kernel and initrds, [`V2_MARK`] on the command
    /// line) rolls across the rack, voters one at a time and the leader last, each rebooting
    /// itself, while a client writes; every node must come back on v2.
    pub async fn scenario_rolling_reimage(&mut self, names: &[String]) -> anyhow::Result<()> {
        let ctl = self.ctl()?;
        let site = ctl.bundle_site()?;
        let mut base = site.base_image()?;
        base.cmdline = format!("{} {V2_MARK}", base.cmdline);
        let (dir, v2) = site.build(&self.plan.contract, Some(base))?;
        let v1 = self.served_version(&ctl).await?;
        self.say(&format!(
            "rolling-reimage: built bundle v2 {} (serving v1 {}) in {}",
            rackctl::bundle::short(&v2),
            rackctl::bundle::short(&v1),
            dir.display()
        ));
        let boots_before: BTreeMap<String, u32> = self
            .vms
            .iter()
            .map(|v| (v.name.clone(), v.boots()))
            .collect();
        let load = self.start_writes(names)?;
        let plan = rackctl::rollout::RolloutPlan {
            bundle: Some(dir),
            wave_size: 1,
            wave_timeout: self.timeout(),
        };
        let report = self
            .while_ticking(rackctl::rollout::rollout(&ctl, &plan))
            .await??;
        for w in &report.waves {
            self.say(&format!(
                "rolling-reimage: wave {:?} passed its health gate in {:.1} s",
                w.wave.nodes, w.seconds
            ));
        }
        if report.version != v2 {
            bail!(
                "rolling-reimage: rolled out {} instead of v2",
                report.version
            );
        }
        self.wait_ready(names, self.timeout()).await?;
        let expect: BTreeMap<String, String> =
            names.iter().map(|n| (n.clone(), v2.clone())).collect();
        for name in names {
            let vm = self.vm(name)?;
            if vm.boots() != boots_before.get(name).copied().unwrap_or(0) + 1 {
                bail!(
                    "rolling-reimage: {name} booted {} time(s) during the rollout, expected once",
                    vm.boots() - boots_before.get(name).copied().unwrap_or(0)
                );
            }
            if !self.console_text(name)?.contains(V2_MARK) {
                bail!("rolling-reimage: {name}'s console shows no {V2_MARK} on its kernel command line");
            }
        }
        let w = self.settle(&ctl, load, &expect).await?;
        self.say(&format!(
            "rolling-reimage: {} voter reboots; longest write unavailability {:.2} s",
            report.waves.len(),
            w.longest_gap.as_secs_f64()
        ));
        Ok(())
    }

    /// `retire`: the Chainfire leader (a voter) leaves for good with the worker node04
    /// promoted in its place, while a client writes; its membership, certificate, lease and
    /// inventory entry are gone.
    pub async fn scenario_retire(&mut self, names: &[String]) -> anyhow::Result<()> {
        let ctl = self.ctl()?;
        let expect = self.booted(&ctl).await?;
        let ips: Vec<String> = (0..names.len()).map(|i| node(i).2).collect();
        let (_, _, addr) = self.check_members("chainfire", 2379, &ips, 3).await?;
        let host = addr.split(':').next().unwrap_or("").to_string();
        let victim = ips
            .iter()
            .position(|ip| *ip == host)
            .map(|i| names[i].clone())
            .ok_or_else(|| anyhow!("the chainfire leader at {addr:?} is not a rack node"))?;
        let promote = names
            .last()
            .cloned()
            .ok_or_else(|| anyhow!("retire needs a worker"))?;
        let load = self.start_writes(names)?;
        self.say(&format!(
            "retire: retiring {victim} (the chainfire leader), promoting {promote}"
        ));
        let plan = rackctl::retire::RetirePlan {
            name: victim.clone(),
            promote: Some(promote.clone()),
            serials: vec![],
        };
        let timeout = self.timeout();
        let report = self
            .while_ticking(rackctl::retire::retire(&ctl, &plan, timeout))
            .await??;
        self.say(&format!(
            "retire: removed {:?}, promoted {:?}, revoked {:?}, lease released {:?}; powering {victim} off",
            report.removed, report.promoted, report.revoked, report.lease_released
        ));
        self.vm(&victim)?.power_off().await;
        if report.revoked.is_empty() {
            bail!("retire: no certificate of {victim} was revoked");
        }
        if report.lease_released.as_deref() != Some(host.as_str()) {
            bail!(
                "retire: {victim}'s lease was not released (released {:?}, expected {host})",
                report.lease_released
            );
        }
        let contract = ctl.contract()?;
        if contract.node(&victim).is_ok() {
            bail!("retire: {victim} is still in the contract");
        }
        if !contract.voters().iter().any(|n| n.name == promote) {
            bail!("retire: {promote} is not a voter in the contract");
        }
        let boot = ctl.boot.snapshot().await?;
        if boot.nodes.contains_key(&victim) {
            bail!("retire: pxe-server's inventory still lists {victim}");
        }
        for store in rackctl::operator::Store::BOTH {
            let view = ctl.cluster()?.view(store).await?;
            if view
                .members
                .members
                .iter()
                .any(|m| m.api_addr.starts_with(&format!("{host}:")))
            {
                bail!(
                    "retire: {} still has a member at {host}: {:?}",
                    store.name(),
                    view.members
                );
            }
        }
        self.settle(&ctl, load, &expect).await?;
        Ok(())
    }
}

/// How long the end-of-scenario status may take to complete.
const STATUS_PATIENCE: Duration = Duration::from_secs(60);

/// What an operator would call wrong in a status table at the end of a scenario: a store or
/// boot-server error, a stranger among the members, the lock held, or a node's row incomplete
/// (no booted version, no role in a store, no certificate from its handshake, a health check
/// not passed).
fn status_wrong(st: &rackctl::status::RackStatus) -> Vec<String> {
    let mut wrong: Vec<String> = st.errors.clone();
    wrong.extend(st.boot_server_error.clone());
    wrong.extend(st.strangers.clone());
    wrong.extend(st.lock.as_ref().map(|l| format!("the rollout lock is {l}")));
    for n in &st.nodes {
        if n.booted_version.is_none() {
            wrong.push(format!("{}: no booted version", n.name));
        }
        if n.chainfire == "-" || n.flaredb == "-" {
            wrong.push(format!(
                "{}: not a member (chainfire {}, flaredb {})",
                n.name, n.chainfire, n.flaredb
            ));
        }
        if !n.cert.as_deref().is_some_and(|c| c.contains("handshake")) {
            wrong.push(format!(
                "{}: no certificate from its handshake ({:?})",
                n.name, n.cert
            ));
        }
        if !n.health.starts_with("ready at") {
            wrong.push(format!("{}: health {}", n.name, n.health));
        }
    }
    wrong
}
