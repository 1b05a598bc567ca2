//! `firstboot health-check`: check every service of the node and the cluster, write a report
//! (JSON and a table), and mark the node cluster-ready.
//!
//! Checks run in waves; a wave is retried (with backoff, up to the deadline) until every check
//! in it passes, and the report records how long each wave took:
//! 1. **local** — Chainfire, FlareDB and IAM on this node answer `/health` healthy;
//! 2. **cluster** — Chainfire and FlareDB each have a leader and exactly the contract's voters,
//!    this node is a member (a voter if the contract says so), and every voter's own replica
//!    holds the cluster identity this node joined (one cluster, never two);
//! 3. **iam** — the local IAM issues a token to this node's identity (its certificate proves
//!    it), and every voter's IAM accepts that token as this node (no password involved).

use std::time::{Duration, Instant};

use plasmacloud_store_client::MemberRole;
use serde::Serialize;

use crate::ids::{guard_keyspace, joined_uuid, my_id, CLUSTER_UUID_KEY};
use crate::step::{
    cap_detail, write_atomic, Backoff, Ctx, StepError, StepResult, Store, SAY_WAITING_EVERY,
};

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Wave name.
    pub wave: String,
    /// What was checked, e.g. `chainfire.voters`.
    pub name: String,
    /// Passed?
    pub ok: bool,
    /// What was found (and, on failure, what was expected).
    pub detail: String,
}

/// One wave's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Wave {
    /// Name.
    pub name: String,
    /// Passed?
    pub ok: bool,
    /// Attempts made.
    pub attempts: u32,
    /// Wall time until it passed (or gave up), in milliseconds.
    pub millis: u128,
}

/// The machine-readable report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Node name.
    pub node: String,
    /// Cluster id.
    pub cluster_id: String,
    /// Every wave passed?
    pub ready: bool,
    /// Waves in order.
    pub waves: Vec<Wave>,
    /// The last result of every check.
    pub checks: Vec<Check>,
}

fn check(wave: &str, name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        wave: wave.into(),
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

async fn wave_local(ctx: &Ctx, http: &reqwest::Client) -> Vec<Check> {
    let mut out = Vec::new();
    for (name, url) in [
        (
            "chainfire.health",
            format!("{}/health", ctx.api_url(Store::Chainfire, &ctx.me)),
        ),
        (
            "flaredb.health",
            format!("{}/health", ctx.api_url(Store::Flaredb, &ctx.me)),
        ),
        ("iam.health", format!("{}/health", ctx.iam_url())),
    ] {
        let c = match http.get(&url).send().await {
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                let healthy = status.is_success() && body.contains("\"healthy\"");
                check("local", name, healthy, format!("{status} {}", body.trim()))
            }
            Err(e) => check(
                "local",
                name,
                false,
                format!("{url} unreachable: {e} (expected 200 healthy)"),
            ),
        };
        out.push(c);
    }
    out
}

/// One cluster, not two: every initial voter's own replica of `store` holds the cluster
/// identity this node joined (a seed that had bootstrapped alone would hold another).
async fn check_one_cluster(ctx: &Ctx, store: Store) -> Check {
    let s = store.name();
    let name = format!("{s}.one-cluster");
    let Some(mine) = joined_uuid(ctx, store) else {
        return check(
            "cluster",
            &name,
            false,
            format!("this node recorded no cluster identity ({s}-join must run first)"),
        );
    };
    let mut differ = Vec::new();
    for n in ctx.contract.voters() {
        let got = match ctx.client(store, [n], Duration::from_secs(5)) {
            Ok(c) => match guard_keyspace(&c, store) {
                Ok(k) => k
                    .get_local(CLUSTER_UUID_KEY)
                    .await
                    .map_err(|e| e.to_string())
                    .map(|v| v.map(|v| v.value)),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match got {
            Ok(Some(u)) if u == mine => {}
            Ok(Some(u)) => differ.push(format!("{} holds cluster {u}", n.name)),
            Ok(None) => differ.push(format!("{} holds no cluster identity", n.name)),
            Err(e) => differ.push(format!("{}: {e}", n.name)),
        }
    }
    if differ.is_empty() {
        check(
            "cluster",
            &name,
            true,
            format!("every voter holds cluster {mine}"),
        )
    } else {
        check(
            "cluster",
            &name,
            false,
            format!(
                "this node joined cluster {mine}, but {} (expected one cluster)",
                differ.join("; ")
            ),
        )
    }
}

async fn wave_cluster(ctx: &Ctx) -> Vec<Check> {
    let mut out = Vec::new();
    let want = ctx.contract.voters().len();
    for store in [Store::Chainfire, Store::Flaredb] {
        let s = store.name();
        out.push(check_one_cluster(ctx, store).await);
        let client = match ctx.client(store, ctx.contract.voters(), Duration::from_secs(5)) {
            Ok(c) => c,
            Err(e) => {
                out.push(check(
                    "cluster",
                    &format!("{s}.members"),
                    false,
                    e.to_string(),
                ));
                continue;
            }
        };
        let id = my_id(ctx, store).unwrap_or(0);
        match client.members().await {
            Ok(m) => {
                let voters = m.voter_ids();
                out.push(check(
                    "cluster",
                    &format!("{s}.leader"),
                    m.leader.is_some(),
                    match m.leader {
                        Some(l) => format!("leader {l}"),
                        None => "no leader (expected one)".into(),
                    },
                ));
                out.push(check(
                    "cluster",
                    &format!("{s}.voters"),
                    voters.len() == want,
                    format!(
                        "{} voters {voters:?} (expected {want}, the contract's initial voters)",
                        voters.len()
                    ),
                ));
                let role = m.get(id).map(|x| x.role);
                let role_ok = match role {
                    Some(MemberRole::Voter) => ctx.me.voter,
                    Some(MemberRole::Learner) => !ctx.me.voter,
                    None => false,
                };
                out.push(check(
                    "cluster",
                    &format!("{s}.self"),
                    role_ok,
                    format!(
                        "id {id} is {} (expected {})",
                        match role {
                            Some(MemberRole::Voter) => "a voter",
                            Some(MemberRole::Learner) => "a learner",
                            None => "not a member",
                        },
                        if ctx.me.voter { "a voter" } else { "a learner" }
                    ),
                ));
            }
            Err(e) => out.push(check(
                "cluster",
                &format!("{s}.members"),
                false,
                e.to_string(),
            )),
        }
    }
    out
}

/// IAM, end to end, without any password: the local IAM issues a token to this node's
/// identity (proved by its certificate), and every voter's IAM (and this node's) must accept
/// that token as this node. Tokens are signed by one IAM and verified by another through the
/// signing keys published in FlareDB, so this proves the whole path.
async fn wave_iam(ctx: &Ctx, http: &reqwest::Client) -> StepResult<Vec<Check>> {
    let url = format!("{}/v1/auth/node-token", ctx.iam_url());
    let token = match http.post(&url).send().await {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_string)),
        Ok(r) => {
            let s = r.status();
            let t = r.text().await.unwrap_or_default();
            return Ok(vec![check(
                "iam",
                "iam.token",
                false,
                format!("{url} answered {s}: {t} (expected 200 with a token)"),
            )]);
        }
        Err(e) => {
            return Ok(vec![check(
                "iam",
                "iam.token",
                false,
                format!("{url}: {e}"),
            )])
        }
    };
    let Some(token) = token else {
        return Ok(vec![check(
            "iam",
            "iam.token",
            false,
            format!("{url} answered without a token"),
        )]);
    };
    let want = format!("node:{}", ctx.me.name);
    let mut nodes: Vec<_> = ctx.contract.voters().into_iter().cloned().collect();
    if !nodes.iter().any(|n| n.name == ctx.me.name) {
        nodes.push(ctx.me.clone());
    }
    let mut out = Vec::new();
    for n in &nodes {
        let url = format!("{}://{}/v1/auth/whoami", ctx.scheme(), n.iam_api());
        let name = format!("iam.verify.{}", n.name);
        let c = match http.get(&url).bearer_auth(&token).send().await {
            Ok(r) if r.status().is_success() => {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                let ok = v["subject"] == want.as_str();
                check(
                    "iam",
                    &name,
                    ok,
                    format!("whoami: {} (expected {want})", v["subject"]),
                )
            }
            Ok(r) => check(
                "iam",
                &name,
                false,
                format!("{url} answered {} to this node's token", r.status()),
            ),
            Err(e) => check("iam", &name, false, format!("{url}: {e}")),
        };
        out.push(c);
    }
    Ok(out)
}

/// `wave cluster, attempt 3, waiting for: chainfire.leader (…); …`, at most 1000 bytes.
fn waiting_for(wave: &str, attempts: u32, result: &[Check]) -> String {
    let failing: Vec<String> = result
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{} ({})", c.name, c.detail))
        .collect();
    cap_detail(format!(
        "wave {wave}, attempt {attempts}, waiting for: {}",
        failing.join("; ")
    ))
}

/// Runs the step: waves until ready or the deadline; writes the report and the ready file.
pub async fn run(ctx: &Ctx, deadline: Duration) -> StepResult<Report> {
    ctx.progress("health-check", "started", "").await;
    let http = ctx.http_client()?;
    let start = Instant::now();
    let mut waves = Vec::new();
    let mut checks = Vec::new();
    let mut ready = true;
    for name in ["local", "cluster", "iam"] {
        let wave_start = Instant::now();
        let mut backoff = Backoff::default();
        let mut attempts = 0;
        let mut said: Option<Instant> = None;
        let result = loop {
            attempts += 1;
            let result = match name {
                "local" => wave_local(ctx, &http).await,
                "cluster" => wave_cluster(ctx).await,
                _ => wave_iam(ctx, &http).await?,
            };
            if result.iter().all(|c| c.ok) || start.elapsed() >= deadline {
                break result;
            }
            // What it waits for, on the console (the unit's status) and to the boot server,
            // at the first failed attempt of a wave and every 10 s after.
            if said.is_none_or(|t| t.elapsed() >= SAY_WAITING_EVERY) {
                said = Some(Instant::now());
                ctx.progress(
                    "health-check",
                    "started",
                    &waiting_for(name, attempts, &result),
                )
                .await;
            }
            tokio::time::sleep(
                backoff
                    .pause()
                    .min(deadline.saturating_sub(start.elapsed())),
            )
            .await;
        };
        let ok = result.iter().all(|c| c.ok);
        waves.push(Wave {
            name: name.into(),
            ok,
            attempts,
            millis: wave_start.elapsed().as_millis(),
        });
        checks.extend(result);
        if !ok {
            ready = false;
            break;
        }
    }
    let report = Report {
        node: ctx.me.name.clone(),
        cluster_id: ctx.contract.id().into(),
        ready,
        waves,
        checks,
    };
    let json = serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
    write_atomic(
        &ctx.firstboot_dir().join("health-report.json"),
        json.as_bytes(),
    )?;
    println!("{}", render_table(&report));
    if !ready {
        let failed: Vec<String> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        let msg = failed.join("; ");
        ctx.progress("health-check", "failed", &msg).await;
        return Err(StepError::Retry(format!("cluster not ready: {msg}")));
    }
    write_atomic(&ctx.args.ready_file, json.as_bytes())?;
    ctx.progress("cluster-ready", "ok", "").await;
    Ok(report)
}

/// The human table.
pub fn render_table(r: &Report) -> String {
    let mut s = format!("health of {} (cluster {}):\n", r.node, r.cluster_id);
    for w in &r.waves {
        s += &format!(
            "  wave {:<8} {:<4} {:>6} ms  {} attempt(s)\n",
            w.name,
            if w.ok { "ok" } else { "FAIL" },
            w.millis,
            w.attempts
        );
    }
    for c in &r.checks {
        s += &format!(
            "  {:<4} {:<20} {}\n",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    s += if r.ready {
        "  => cluster-ready\n"
    } else {
        "  => NOT ready\n"
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, ok: bool, detail: &str) -> Check {
        Check {
            wave: "cluster".into(),
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }

    #[test]
    fn waiting_for_names_only_the_failing_checks() {
        let line = waiting_for(
            "cluster",
            3,
            &[
                check("chainfire.voters", true, "[1, 2, 3]"),
                check("chainfire.leader", false, "no leader seen"),
                check("flaredb.one-cluster", false, "2 cluster uuids"),
            ],
        );
        assert_eq!(
            line,
            "wave cluster, attempt 3, waiting for: chainfire.leader (no leader seen); flaredb.one-cluster (2 cluster uuids)"
        );
    }

    #[test]
    fn waiting_for_stays_short_and_cuts_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let line = waiting_for("iam", 1, &[check("iam.whoami", false, &long)]);
        assert!(line.len() <= 1000, "{}", line.len());
        assert!(line.ends_with("..."));
    }
}
