//! The host-side checks, through the services' APIs: one store's membership as every node sees
//! it, the whole cluster after a cold boot (membership, the IAM admin login on the seed, every
//! node's health), and what a stranger (a MAC not in the contract) got from the boot plane.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use plasmacloud_contract::voter_count_for_rack;
use reqwest::StatusCode;

use super::console::strip_ansi;
use super::events::Event;
use super::run::Rack;
use crate::prepare::{self, node, MGMT_PORT, SERVER_IP, UNKNOWN_MAC};

impl Rack {
    /// Checks one store's membership from every listed node: `voters` voters, one leader that
    /// every node agrees on — within 15 s, so an election that happens to be running when the
    /// check starts (a busy host delays heartbeats) is waited out rather than reported.
    /// Returns (leader id, sorted voter ids, leader's api address).
    pub async fn check_members(
        &self,
        store: &str,
        port: u16,
        ips: &[String],
        voters: usize,
    ) -> anyhow::Result<(u64, Vec<u64>, String)> {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            match self.members_once(store, port, ips, voters).await {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() < until => {
                    tracing::debug!(error = %e, "membership not settled yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn members_once(
        &self,
        store: &str,
        port: u16,
        ips: &[String],
        voters: usize,
    ) -> anyhow::Result<(u64, Vec<u64>, String)> {
        let mut seen: Option<(u64, Vec<u64>, String)> = None;
        for ip in ips {
            let v = self
                .http
                .get_json(&format!("https://{ip}:{port}/v1/cluster/members"))
                .await?;
            let leader = v["leader"]
                .as_u64()
                .ok_or_else(|| anyhow!("{store} on {ip}: no leader: {v}"))?;
            let members = v["members"].as_array().cloned().unwrap_or_default();
            let mut ids: Vec<u64> = members
                .iter()
                .filter(|m| m["role"] == "voter")
                .filter_map(|m| m["id"].as_u64())
                .collect();
            ids.sort_unstable();
            if ids.len() != voters {
                bail!(
                    "{store} on {ip}: {} voters, expected {voters}: {v}",
                    ids.len()
                );
            }
            let addr = members
                .iter()
                .find(|m| m["id"].as_u64() == Some(leader))
                .and_then(|m| m["api_addr"].as_str())
                .unwrap_or("")
                .to_string();
            if let Some((l, ref i, _)) = seen {
                if l != leader || *i != ids {
                    bail!("{store}: {ip} sees leader {leader} voters {ids:?}, others leader {l} voters {i:?}");
                }
            }
            seen = Some((leader, ids, addr));
        }
        seen.ok_or_else(|| anyhow!("{store}: no nodes to ask"))
    }

    /// The host-side checks through the services' APIs.
    pub async fn check_cluster(&mut self, names: &[String]) -> anyhow::Result<()> {
        let n = names.len();
        let ips: Vec<String> = (0..n).map(|i| node(i).2).collect();
        let voters = voter_count_for_rack(self.plan.scenario.nodes());
        let (cl, cv, _) = self.check_members("chainfire", 2379, &ips, voters).await?;
        let (fl, fv, _) = self.check_members("flaredb", 2479, &ips, voters).await?;
        self.say(&format!(
            "check: chainfire voters {cv:?} leader {cl}; flaredb voters {fv:?} leader {fl} (same on all {n} nodes)"
        ));
        let seed = &ips[0];
        // IAM answers 503 while its FlareDB read times out (a loaded host); retry until a
        // deadline, fail at once on any other refusal.
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self
                .http
                .post_json(
                    &format!("https://{seed}:8080/v1/auth/login"),
                    serde_json::json!({"username": prepare::IAM_ADMIN.0, "password": prepare::IAM_ADMIN.1}),
                )
                .await
                .context("IAM login on the seed")?;
            let (s, v) = (r.status, r.json());
            if s.is_success() && v["token"].as_str().is_some() {
                break;
            }
            if s != StatusCode::SERVICE_UNAVAILABLE || Instant::now() >= until {
                bail!("IAM admin login on the seed answered {s}: {v}");
            }
            self.say(&format!("check: IAM login answered {s}; retrying: {v}"));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.say("check: IAM admin logs in on the seed");
        for (name, ip) in names.iter().zip(&ips) {
            for (svc, port) in [("chainfire", 2379), ("flaredb", 2479), ("iam", 8080)] {
                // Healthy within 15 s: a store answers 503 while an election runs, which a
                // busy host can set off at any moment; a node that stays unhealthy fails.
                let url = format!("https://{ip}:{port}/health");
                let until = Instant::now() + Duration::from_secs(15);
                loop {
                    let r = self
                        .http
                        .get(&url)
                        .await
                        .with_context(|| format!("{name} {svc} health"))?;
                    if r.status.is_success() && r.json()["status"] == "healthy" {
                        break;
                    }
                    if Instant::now() >= until {
                        bail!("{name} {svc} /health: {} {}", r.status, r.body);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            // cluster-ready is reported (or reached on the console) only after the node's
            // cluster-health-check passed.
            let passed = self.nodes.get(name).is_some_and(|p| p.ready_at.is_some());
            if !passed {
                bail!("{name}: no passed health check reported");
            }
        }
        self.say("check: every node's services healthy and its health check passed");
        Ok(())
    }

    /// What the stranger got, checked from the host: the server's events for its MAC (the
    /// default script, kernel and base initrd; no overlay, no node name, no phase reports), its
    /// lease (from the pool, no node), its console (appliance name, no cluster-ready, no
    /// secret), and the boot plane refusing every way to a node's overlay or script that the
    /// stranger could try.
    pub async fn check_unknown(&mut self, at: f64) -> anyhow::Result<f64> {
        let mine: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| e.mac.as_deref().map(str::to_lowercase).as_deref() == Some(UNKNOWN_MAC))
            .collect();
        let phases: Vec<String> = mine.iter().map(|e| e.phase.clone()).collect();
        if mine
            .iter()
            .any(|e| e.phase == "overlay" || e.phase == "enroll" || e.node.is_some())
        {
            bail!("the stranger was served as a contract node: {phases:?}");
        }
        if !phases.iter().any(|p| p == "kernel") || !phases.iter().any(|p| p == "initrd") {
            bail!("the stranger did not fetch the default kernel and initrd: {phases:?}");
        }
        if self.events.iter().any(|e| e.source == "node") {
            bail!("a phase report reached the server, but no contract node is powered on");
        }
        // Its lease: from the pool, no contract node's address or name.
        let status = self
            .http
            .get_json(&format!("https://{SERVER_IP}:{MGMT_PORT}/v1/status"))
            .await?;
        let lease = status["leases"]
            .as_array()
            .and_then(|a| a.iter().find(|l| l["mac"].as_str() == Some(UNKNOWN_MAC)))
            .cloned()
            .ok_or_else(|| anyhow!("no lease for the stranger: {status}"))?;
        let ip = lease["ip"].as_str().unwrap_or("").to_string();
        let contract_ips: Vec<String> =
            (0..self.plan.scenario.nodes()).map(|i| node(i).2).collect();
        if !lease["node"].is_null() || contract_ips.contains(&ip) || !ip.starts_with("10.99.0.1") {
            bail!("the stranger's lease is not a pool address without a node: {lease}");
        }
        // Its console.
        let raw = std::fs::read_to_string(&self.vm("stranger")?.console.path).unwrap_or_default();
        let console: String = raw.lines().map(|l| strip_ansi(l) + "\n").collect();
        if !console.contains(&format!(
            "{} hostname=plasmacloud-appliance ipv4: ens2={ip}/",
            "plasmacloud-appliance: multi-user.target reached"
        )) {
            bail!("the stranger's console does not show the appliance name with its pool address {ip}");
        }
        if console.contains("Reached target cluster-ready.target") {
            bail!("the stranger reached cluster-ready.target");
        }
        if console.contains("plasmacloud.node=") || console.contains(prepare::IAM_ADMIN.1) {
            bail!("a node name or the IAM secret shows on the stranger's console");
        }
        if console.contains("FAILED") {
            bail!("a unit failed on the stranger's console (a machine the contract does not know must skip the chain)");
        }
        // The boot plane, asked the way the stranger could ask it.
        let base = format!("http://{SERVER_IP}:{}", prepare::HTTP_PORT);
        let dashed = UNKNOWN_MAC.replace(':', "-");
        let script = self
            .http
            .get(&format!("{base}/boot/{dashed}.ipxe"))
            .await
            .context("GET the unknown MAC's script")?;
        let (code, script) = (script.status, script.body);
        if !code.is_success()
            || script.contains("/s/")
            || script.contains("overlay")
            || script.contains("enroll")
            || script.contains("plasmacloud.node=")
        {
            bail!("the unknown MAC's script is not the bare default entry ({code}):\n{script}");
        }
        let seed = node(0);
        let seed_dashed = seed.1.replace(':', "-");
        // The seed's script and any guessed per-boot URL are refused; overlays are public
        // (they hold the contract and a node name, nothing secret).
        let refused = [
            format!("{base}/s/{}/enroll.cpio.zst", "0".repeat(32)),
            format!("{base}/boot/{seed_dashed}.ipxe"),
        ];
        for url in &refused {
            let r = self.http.get(url).await?;
            if r.status != StatusCode::FORBIDDEN {
                bail!("GET {url} answered {}, expected 403 Forbidden", r.status);
            }
        }
        // A guessed enrollment token gets no certificate.
        let r = self
            .http
            .post_json(
                &format!("https://{SERVER_IP}:{}/v1/enroll", prepare::ENROLL_PORT),
                serde_json::json!({"node": seed.0, "token": "0".repeat(32), "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n"}),
            )
            .await?;
        if r.status != StatusCode::FORBIDDEN && r.status != StatusCode::BAD_REQUEST {
            bail!(
                "a guessed enrollment token answered {}: {}",
                r.status,
                r.body
            );
        }
        self.say(&format!(
            "unknown-mac: the stranger booted the default entry ({phases:?}) at pool address {ip}: no overlay, no enrollment, no node name, no phase report, no failed unit, no cluster-ready; the seed's script, a guessed per-boot URL and a guessed enrollment token are refused"
        ));
        Ok(at)
    }
}
