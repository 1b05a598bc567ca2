//! `firstboot iam-setup`: on the seed, bootstrap the IAM admin the contract names (a user name
//! and an argon2id hash: no password travels anywhere); on every other node, check that the
//! local IAM answers.
//!
//! The rule: the seed (`initial_voters[0]`) seeds IAM, because exactly one node must, and the
//! seed is the one node every contract agrees on. IAM's `POST /v1/bootstrap` takes only a node
//! certificate and is itself once-only (the same admin again succeeds without change), so a
//! retried first boot passes and a second seed could not create a second admin.

use std::time::Duration;

use plasmacloud_contract::IamAdmin;

use crate::step::{Attempt, Ctx, StepError, StepResult};

/// Waits until the local IAM reports healthy.
pub async fn wait_healthy(ctx: &Ctx, http: &reqwest::Client, deadline: Duration) -> StepResult<()> {
    let url = format!("{}/health", ctx.iam_url());
    ctx.retry_until(
        "iam-setup",
        "the local IAM to report healthy",
        deadline,
        || async {
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => Ok(Attempt::Done(())),
                Ok(r) => Ok(Attempt::NotYet(format!(
                    "{url} answered {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ))),
                Err(e) => Ok(Attempt::NotYet(format!("{url}: {e}"))),
            }
        },
    )
    .await
}

/// Runs the step.
pub async fn run(ctx: &Ctx, deadline: Duration) -> StepResult<()> {
    ctx.progress("iam-setup", "started", "").await;
    let http = ctx.http_client()?;
    wait_healthy(ctx, &http, deadline).await?;
    let how = match (ctx.is_seed(), ctx.contract.iam_admin()) {
        (true, Some(admin)) => {
            bootstrap(ctx, &http, admin, deadline).await?;
            format!("admin {:?} bootstrapped", admin.username)
        }
        (true, None) => "no iam.admin in the contract; no admin created".into(),
        (false, _) => "IAM answers (the seed bootstraps the admin)".into(),
    };
    ctx.mark_done("iam-setup", serde_json::json!({"how": how}))?;
    ctx.progress("iam-setup", "ok", &how).await;
    Ok(())
}

async fn bootstrap(
    ctx: &Ctx,
    http: &reqwest::Client,
    admin: &IamAdmin,
    deadline: Duration,
) -> StepResult<()> {
    let url = format!("{}/v1/bootstrap", ctx.iam_url());
    let body =
        serde_json::json!({"username": admin.username, "password_hash": admin.password_hash});
    ctx.retry_until("iam-setup", "IAM to bootstrap the admin", deadline, || async {
        let r = match http.post(&url).json(&body).send().await {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::NotYet(format!("{url}: {e}"))),
        };
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        match status.as_u16() {
            200 | 201 => Ok(Attempt::Done(())),
            409 => Err(StepError::Config(format!(
                "IAM was bootstrapped with another admin ({text}); the contract's iam.admin does not match the cluster's"
            ))),
            400 | 422 => Err(StepError::Config(format!(
                "IAM refused the bootstrap (iam.admin): {text}"
            ))),
            _ => Ok(Attempt::NotYet(format!("{url} answered {status}: {text}"))),
        }
    })
    .await
}
