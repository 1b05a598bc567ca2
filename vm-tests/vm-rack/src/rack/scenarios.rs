//! The scenarios' own steps after the cold boot: `reboot` (a node power-cycles and comes back
//! as the same member with its data), `leader-loss` (the Chainfire leader powers off, the rest
//! keep taking writes, it rejoins), and `unknown-mac` (a stranger boots the default entry).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use plasmacloud_contract::voter_count_for_rack;

use super::events::now_ms;
use super::run::Rack;
use crate::prepare::node;

impl Rack {
    /// `reboot`: node03 power-cycles and must come back as the same member with its data.
    pub async fn scenario_reboot(&mut self, names: &[String]) -> anyhow::Result<()> {
        let ips: Vec<String> = (0..names.len()).map(|i| node(i).2).collect();
        let voters = voter_count_for_rack(names.len());
        let (_, before_cf, _) = self.check_members("chainfire", 2379, &ips, voters).await?;
        let (_, before_fd, _) = self.check_members("flaredb", 2479, &ips, voters).await?;
        let value = format!("written-before-reboot-{}", now_ms());
        self.http
            .put_any(
                2379,
                &ips,
                "vm-rack/reboot",
                &value,
                Duration::from_secs(30),
            )
            .await?;
        self.http
            .put_any(
                2479,
                &ips,
                "vm-rack/reboot",
                &value,
                Duration::from_secs(30),
            )
            .await?;
        let victim = names[names.len() - 1].clone();
        self.say(&format!(
            "reboot: wrote vm-rack/reboot; power-cycling {victim}"
        ));
        let t = self.t();
        {
            let vm = self.vm(&victim)?;
            vm.power_off().await;
            vm.start(t)?;
        }
        self.reset_ready(&victim);
        self.wait_ready(
            std::slice::from_ref(&victim),
            Duration::from_secs(self.plan.timeout_secs),
        )
        .await?;
        let (_, after_cf, _) = self.check_members("chainfire", 2379, &ips, voters).await?;
        let (_, after_fd, _) = self.check_members("flaredb", 2479, &ips, voters).await?;
        if before_cf != after_cf || before_fd != after_fd {
            bail!("membership changed across the reboot: chainfire {before_cf:?} → {after_cf:?}, flaredb {before_fd:?} → {after_fd:?}");
        }
        let vip = &ips[ips.len() - 1];
        for port in [2379, 2479] {
            let got = self.http.get_value(vip, port, "vm-rack/reboot").await?;
            if got != value {
                bail!("after the reboot {vip}:{port} has vm-rack/reboot = {got:?}, expected {value:?}");
            }
        }
        self.say(&format!(
            "reboot: {victim} came back as the same member (chainfire {after_cf:?}, flaredb {after_fd:?}) with its data"
        ));
        Ok(())
    }

    /// `leader-loss`: the Chainfire leader powers off; the rest keep serving writes; it rejoins.
    pub async fn scenario_leader_loss(&mut self, names: &[String]) -> anyhow::Result<()> {
        let ips: Vec<String> = (0..names.len()).map(|i| node(i).2).collect();
        let voters = voter_count_for_rack(names.len());
        let (leader, ids, addr) = self.check_members("chainfire", 2379, &ips, voters).await?;
        let host = addr.split(':').next().unwrap_or("").to_string();
        let idx = ips
            .iter()
            .position(|ip| *ip == host)
            .ok_or_else(|| anyhow!("chainfire leader {leader} at {addr:?} is not a rack node"))?;
        let victim = names[idx].clone();
        self.say(&format!(
            "leader-loss: powering off {victim} (chainfire leader {leader})"
        ));
        let t0 = Instant::now();
        self.vm(&victim)?.power_off().await;
        let rest: Vec<String> = ips.iter().filter(|ip| **ip != host).cloned().collect();
        let value = format!("written-without-{victim}-{}", now_ms());
        let via = self
            .http
            .put_any(
                2379,
                &rest,
                "vm-rack/leader-loss",
                &value,
                Duration::from_secs(60),
            )
            .await?;
        let cf_secs = t0.elapsed().as_secs_f64();
        self.http
            .put_any(
                2479,
                &rest,
                "vm-rack/leader-loss",
                &value,
                Duration::from_secs(60),
            )
            .await?;
        self.say(&format!(
            "leader-loss: the other {} nodes took writes (chainfire via {via} {cf_secs:.1} s after the power-off, flaredb too)",
            rest.len()
        ));
        let t = self.t();
        self.vm(&victim)?.start(t)?;
        self.reset_ready(&victim);
        self.wait_ready(
            std::slice::from_ref(&victim),
            Duration::from_secs(self.plan.timeout_secs),
        )
        .await?;
        let (l2, ids2, _) = self.check_members("chainfire", 2379, &ips, voters).await?;
        self.check_members("flaredb", 2479, &ips, voters).await?;
        if ids2 != ids {
            bail!("chainfire voters changed: {ids:?} → {ids2:?}");
        }
        for port in [2379, 2479] {
            let got = self
                .http
                .get_value(&host, port, "vm-rack/leader-loss")
                .await?;
            if got != value {
                bail!("{victim} rejoined without the write made in its absence ({port}: {got:?})");
            }
        }
        self.say(&format!(
            "leader-loss: {victim} rejoined (voters {ids2:?}, leader now {l2}) and has the write"
        ));
        Ok(())
    }

    /// `unknown-mac`: the stranger boots the default entry, never an overlay.
    pub async fn scenario_unknown(&mut self) -> anyhow::Result<f64> {
        let until = Instant::now() + Duration::from_secs(self.plan.timeout_secs);
        loop {
            self.tick().await?;
            let vm = self.vm("stranger")?;
            if let Some(at) = vm.console.marks.get("multi-user.target").copied() {
                break self.check_unknown(at).await;
            }
            if let Some(st) = vm.exited() {
                bail!("the stranger's QEMU exited ({st})");
            }
            if Instant::now() >= until {
                bail!("the stranger did not reach multi-user.target");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
