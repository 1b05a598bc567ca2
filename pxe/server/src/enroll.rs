//! The enrollment listener (HTTPS, `--enrollment-addr`): `POST /v1/enroll`, where a booting
//! node trades its single-use token and a CSR for its certificate.
//!
//! The rules, in the order they are applied:
//! 1. the body is `{"node","token","csr"}`, nothing else, at most 64 KiB (else 400);
//! 2. the node must be in the contract (else 404);
//! 3. a requester on our L2 must show the node's MAC in its neighbour entry (else 403,
//!    [`crate::boot_access::neighbour_check`]);
//! 4. the CSR must parse, carry a valid self-signature and an ECDSA P-256 key (else 400; the
//!    token is not touched, so a node with a broken CSR can try again);
//! 5. the token must have been minted for this node and not expired (else 403); one already
//!    burned by another key is refused with 403 and `reused_by` {ip, mac, at} of its first
//!    user, and raises a `security` boot event; the same key again gets the same certificate;
//! 6. the token is burned, durably, before anything is signed;
//! 7. the certificate says what the CA decides (`CertSpec::node`: the contract's name and
//!    address), whatever the CSR asks for; it is logged in `pki/issued.log` and recorded with
//!    the token, then returned as `{"certificate","ca"}`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use plasmacloud_pki::ca::CertSpec;
use plasmacloud_pki::{Identity, Peer};
use rcgen::PublicKeyData;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tracing::{info, warn};

use crate::boot_access::{neighbour_check, Requester};
use crate::enroll_tokens::{Redeemed, Refusal};
use crate::leases::now_unix;
use crate::state::{rfc3339, Metrics, NewEvent, State};

/// The largest enrollment request accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// `POST /v1/enroll`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The contract node name.
    pub node: String,
    /// The single-use token from the enrollment initrd.
    pub token: String,
    /// A PEM certificate signing request for the node's key.
    pub csr: String,
}

/// The answer to a successful enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The node's certificate (PEM).
    pub certificate: String,
    /// The cluster CA (PEM).
    pub ca: String,
}

/// Who used a token first (in a 403 for a reused token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReusedBy {
    /// Its address.
    pub ip: String,
    /// Its MAC as our neighbour table showed it (`-` when it was not on our L2).
    pub mac: String,
    /// When (RFC 3339 UTC).
    pub at: String,
}

/// The enrollment router.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// The public key's SHA-256 (hex) of a CSR whose signature verifies and whose key is ECDSA
/// P-256.
fn csr_key_sha256(csr_pem: &str) -> Result<String, String> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        format!("csr: not a PEM certificate signing request whose signature verifies ({e})")
    })?;
    if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err("csr: the key must be ECDSA P-256 (`firstboot enroll` makes one)".into());
    }
    Ok(hex::encode(sha2::Sha256::digest(
        csr.public_key.der_bytes(),
    )))
}

async fn enroll(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: axum::body::Bytes,
) -> Response {
    let refused = |status: StatusCode, msg: String| {
        Metrics::inc(&state.metrics.enroll_refused);
        answer(status, serde_json::json!({ "error": msg }))
    };
    let req: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"node\",\"token\",\"csr\"}}: {e}"),
            )
        }
    };
    let Ok(node) = state.bundles.current().contract.node(&req.node).cloned() else {
        return refused(
            StatusCode::NOT_FOUND,
            format!("no node {:?} in the contract", req.node),
        );
    };
    let event = |status: &str, who: Option<&Requester>, detail: String| {
        state.event(NewEvent {
            node: Some(node.name.clone()),
            mac: who.and_then(|w| w.mac).map(|m| m.to_string()),
            ip: who.map(|w| w.ip),
            phase: "enroll".into(),
            status: status.into(),
            detail,
            ..Default::default()
        })
    };
    let who = match neighbour_check(&state, node.mac, peer.addr) {
        Ok(w) => w,
        Err(why) => {
            warn!(peer = %peer.addr, node = %node.name, %why, "enrollment refused");
            event("failed", None, format!("refused {}: {why}", peer.addr));
            return refused(
                StatusCode::FORBIDDEN,
                format!("{} may not enroll as {}: {why}", peer.addr.ip(), node.name),
            );
        }
    };
    let key_sha256 = match csr_key_sha256(&req.csr) {
        Ok(k) => k,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e),
    };
    let st = state.clone();
    let (n, r, w) = (node.clone(), req.clone(), who.clone());
    let redeemed = state
        .with_enroll_tokens(move |t| redeem_and_sign(&st, t, &n, &r, &w, &key_sha256))
        .await;
    let outcome = match redeemed {
        Ok(Ok(o)) => o,
        Ok(Err(e)) | Err(e) => {
            warn!(node = %node.name, error = %e, "cannot enroll");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": format!("cannot enroll now ({e}); try again with the same key")}),
            );
        }
    };
    let cert_pem = match outcome {
        Ok((cert, false)) => {
            info!(node = %node.name, peer = %peer.addr, "enrollment repeated by the same key");
            cert
        }
        Ok((cert, true)) => {
            event("ok", Some(&who), "certificate issued".into());
            cert
        }
        Err(Refusal::Reused { first, .. }) => {
            Metrics::inc(&state.metrics.enroll_reused);
            let at = rfc3339(first.at.saturating_mul(1000));
            let detail = format!(
                "enrollment token of {} first used by {} ({}) at {at}; presented again by {} ({}) with another key",
                node.name,
                first.ip,
                first.mac,
                who.ip,
                who.mac_text()
            );
            warn!(node = %node.name, %detail, "enrollment token reused");
            state.event(NewEvent {
                node: Some(node.name.clone()),
                mac: Some(first.mac.clone()),
                ip: first.ip.parse().ok(),
                phase: "enroll".into(),
                status: "security".into(),
                detail,
                ..Default::default()
            });
            return answer(
                StatusCode::FORBIDDEN,
                serde_json::json!({
                    "error": format!(
                        "the enrollment token of {} was already used by another key; see the security events on pxe-server",
                        node.name
                    ),
                    "reused_by": ReusedBy { ip: first.ip, mac: first.mac, at },
                }),
            );
        }
        Err(r) => {
            let why = match r {
                Refusal::Expired { .. } => {
                    "the enrollment token expired; boot the node through pxe-server again for a new one".to_string()
                }
                Refusal::OtherNode { .. } => format!("this token was not issued to {}", node.name),
                Refusal::Unknown | Refusal::Reused { .. } => "unknown enrollment token".to_string(),
            };
            event(
                "failed",
                Some(&who),
                format!("refused {}: {why}", peer.addr),
            );
            return refused(StatusCode::FORBIDDEN, why);
        }
    };
    Metrics::inc(&state.metrics.enroll_ok);
    answer(
        StatusCode::OK,
        serde_json::to_value(EnrollResponse {
            certificate: cert_pem,
            ca: state.ca.cert_pem().to_string(),
        })
        .unwrap_or_default(),
    )
}

/// Burns the token for this key and, when it is this key's to use, signs (or finds) the
/// certificate; all under the token store's lock, so two requests racing with one token and
/// one key get one certificate. `Ok((pem, newly signed))`, or the refusal.
fn redeem_and_sign(
    state: &State,
    tokens: &mut crate::enroll_tokens::TokenStore,
    node: &plasmacloud_contract::NodeSpec,
    req: &EnrollRequest,
    who: &Requester,
    key_sha256: &str,
) -> Result<Result<(String, bool), Refusal>, crate::ServerError> {
    let redeemed = tokens.redeem(
        &req.token,
        &node.name,
        &who.ip.to_string(),
        &who.mac_text(),
        key_sha256,
        now_unix(),
    )?;
    match redeemed {
        Err(r) => Ok(Err(r)),
        Ok(Redeemed::Again(cert)) => Ok(Ok((cert, false))),
        Ok(Redeemed::Fresh | Redeemed::Resign) => {
            let spec = CertSpec::node(Identity::node(&node.name)?, IpAddr::V4(node.ipv4));
            let issued = state.ca.sign_csr(&req.csr, &spec)?;
            crate::cert_log::append_issued(&state.config.state_dir, &issued, "enroll")?;
            tokens.record_issued(&req.token, &issued.cert_pem, &issued.cert.serial)?;
            info!(node = %node.name, serial = %issued.cert.serial, "enrolled");
            Ok(Ok((issued.cert_pem, true)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_verified_p256_csrs_are_taken_and_their_key_is_what_counts() {
        let id = Identity::node("node02").expect("id");
        let key = plasmacloud_pki::credentials::generate_key_pem().expect("key");
        let a = plasmacloud_pki::credentials::csr_pem(&key, &id).expect("csr");
        let b = plasmacloud_pki::credentials::csr_pem(&key, &Identity::node("node03").expect("id"))
            .expect("csr");
        // Two requests for one key: one key hash.
        assert_eq!(csr_key_sha256(&a), csr_key_sha256(&b));
        let other = plasmacloud_pki::credentials::generate_key_pem().expect("key");
        let c = plasmacloud_pki::credentials::csr_pem(&other, &id).expect("csr");
        assert_ne!(csr_key_sha256(&a), csr_key_sha256(&c));
        assert!(csr_key_sha256("garbage").is_err());
        // A tampered request does not verify.
        let tampered = a.replacen("MII", "MIJ", 1);
        assert!(csr_key_sha256(&tampered).is_err());
    }
}
