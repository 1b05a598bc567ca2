//! `firstboot enroll`: make sure this node holds its own key and a certificate of the cluster
//! CA before any service starts.
//!
//! The rule (shared/DESIGN.md, "Trust"): the key is made here, on the node, and never leaves
//! it. A node that already holds a key and a valid certificate for its name (`<state>/pki/`,
//! on the data disk) does nothing, so a reboot with its data needs no token. Otherwise the node
//! takes the single-use token and the CA that this boot's enrollment initrd brought
//! (`/etc/plasmacloud/enroll/`), writes a new key (0600) before anything leaves the machine,
//! and sends a CSR with the token to pxe-server's enrollment endpoint over HTTPS, trusting
//! only that CA (and only if it matches the contract's `pki.ca_sha256` when one is pinned).
//! A token someone else already spent is reported with who spent it, and the step exits 2:
//! retrying cannot help, and the operator must look.

use std::time::Duration;

use plasmacloud_contract::{ENROLL_CA_FILE, ENROLL_TOKEN_FILE};
use plasmacloud_pki::credentials::{csr_pem, generate_key_pem};
use plasmacloud_pki::Identity;
use serde::Deserialize;
use sha2::Digest;

use crate::step::{Attempt, Ctx, StepError, StepResult};

/// What the enrollment endpoint answers.
#[derive(Debug, Deserialize)]
struct Enrolled {
    certificate: String,
    ca: String,
}

/// Who spent a token first (in a 403).
#[derive(Debug, Deserialize)]
struct ReusedBy {
    ip: String,
    mac: String,
    at: String,
}

#[derive(Debug, Deserialize)]
struct Refusal {
    error: String,
    #[serde(default)]
    reused_by: Option<ReusedBy>,
}

/// SHA-256 of a PEM certificate's DER, lowercase hex.
fn pem_fingerprint(pem: &str) -> Option<String> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok()?;
    Some(hex::encode(sha2::Sha256::digest(&der)))
}

/// Runs the step.
pub async fn run(ctx: &Ctx, deadline: Duration) -> StepResult<()> {
    let me = Identity::node(&ctx.me.name).map_err(|e| StepError::Config(e.to_string()))?;
    let creds = ctx.node_credentials();
    let dir = ctx.enroll_dir();
    let given_ca = std::fs::read_to_string(dir.join(ENROLL_CA_FILE)).ok();
    if let (Some(pin), Some(ca)) = (ctx.contract.ca_sha256(), &given_ca) {
        if pem_fingerprint(ca).as_deref() != Some(pin) {
            return Err(StepError::Config(format!(
                "{} is not the CA the contract pins (pki.ca_sha256 {pin}): this boot came from another provisioning server, or someone on the boot network answered in its place",
                dir.join(ENROLL_CA_FILE).display()
            )));
        }
    }
    // Already enrolled (a reboot with its data): the certificate must chain to the CA this boot
    // was given, when it was given one, so a CA rotation re-enrolls.
    if creds.exist() {
        match creds.check(Some(&me), given_ca.as_deref()) {
            Ok(cert) => {
                let how = format!(
                    "holds its certificate already (serial {}, valid until {})",
                    cert.serial,
                    plasmacloud_pki::identity::utc(cert.not_after)
                );
                ctx.progress("enroll", "ok", &how).await;
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "the stored certificate cannot be used; enrolling again")
            }
        }
    }
    ctx.progress("enroll", "started", "").await;
    let (Some(ca), Ok(token)) = (
        given_ca,
        std::fs::read_to_string(dir.join(ENROLL_TOKEN_FILE)),
    ) else {
        return Err(StepError::Config(format!(
            "no usable certificate in {} and no enrollment token in {}: boot this node through pxe-server (its script brings a single-use token), or issue one offline with `pxe-server pki issue --node {} --cluster CONTRACT --out {}`",
            creds.dir.display(),
            dir.display(),
            ctx.me.name,
            creds.dir.display()
        )));
    };
    let token = token.trim().to_string();
    // The key first, on the data disk, before anything about it leaves the machine.
    let key = generate_key_pem().map_err(|e| StepError::Retry(e.to_string()))?;
    creds
        .write_key(&key)
        .map_err(|e| StepError::Retry(e.to_string()))?;
    let csr = csr_pem(&key, &me).map_err(|e| StepError::Config(e.to_string()))?;
    let http = plasmacloud_pki::tls::reqwest_builder_trusting(&ca)
        .map_err(|e| StepError::Config(format!("{}: {e}", dir.join(ENROLL_CA_FILE).display())))?
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| StepError::Config(format!("https client: {e}")))?;
    let url = format!("{}/v1/enroll", ctx.contract.enrollment_url());
    let body = serde_json::json!({"node": ctx.me.name, "token": token, "csr": csr});
    let got: Enrolled = ctx.retry_until("enroll", "pxe-server to sign this node's certificate", deadline, || async {
        let r = match http.post(&url).json(&body).send().await {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::NotYet(format!("{url}: {e}"))),
        };
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_str(&text).map(Attempt::Done).map_err(|e| {
                StepError::Retry(format!("{url} answered {status} with something else: {e}"))
            });
        }
        let refusal: Option<Refusal> = serde_json::from_str(&text).ok();
        match (status.as_u16(), refusal) {
            (403, Some(Refusal { reused_by: Some(by), .. })) => Err(StepError::Config(format!(
                "the enrollment token of {} was already used by {} ({}) at {}: another host took this node's enrollment; see the security events on pxe-server, then re-image this node",
                ctx.me.name, by.ip, by.mac, by.at
            ))),
            (400..=499, r) => Err(StepError::Config(format!(
                "{url} refused the enrollment ({status}): {}",
                r.map(|r| r.error).unwrap_or(text)
            ))),
            (_, r) => Ok(Attempt::NotYet(format!(
                "{url} answered {status}: {}",
                r.map(|r| r.error).unwrap_or(text)
            ))),
        }
    })
    .await?;
    creds
        .write_cert(&got.certificate, &got.ca)
        .map_err(|e| StepError::Retry(e.to_string()))?;
    let cert = creds
        .check(Some(&me), Some(&ca))
        .map_err(|e| StepError::Config(format!("the certificate pxe-server sent: {e}")))?;
    ctx.progress("enroll", "ok", &format!("enrolled: serial {}", cert.serial))
        .await;
    Ok(())
}
