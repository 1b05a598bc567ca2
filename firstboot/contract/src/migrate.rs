//! What an older contract must change: a version-1 document is answered with one problem per
//! thing to change, before the strict parse would trip over its first old field.
//!
//! Version 1 named files of secrets on the nodes — `tls.ca_cert`, `nodes[].tls.{cert,key}`,
//! `iam.bootstrap_credential` — which the image builder copied into every boot's overlay.
//! Version 2 carries no secret: each node makes its own key when it enrolls with pxe-server,
//! and the IAM administrator is an argon2id hash in the contract.

use serde_json::Value;

use crate::error::Problem;
use crate::wire::CONTRACT_VERSION;

/// `Some(problems)` when `doc` is a version-1 contract; `None` for anything else (the normal
/// checks then report what is wrong).
pub fn problems_of_old_version(doc: &Value) -> Option<Vec<Problem>> {
    if doc.get("version").and_then(Value::as_u64) != Some(1) {
        return None;
    }
    let mut p = vec![Problem::new(
        "version",
        format!(
            "1 is the old contract format; this release reads version {CONTRACT_VERSION}, which carries no secrets: make the changes listed here, then set \"version\": {CONTRACT_VERSION}"
        ),
    )];
    if doc.get("tls").is_some() {
        p.push(Problem::new(
            "tls",
            "remove it: the cluster CA now lives in pxe-server's state directory (`pxe-server pki init`); to pin it, set pki.ca_sha256 to what `pxe-server pki show` prints",
        ));
    }
    if let Some(nodes) = doc.get("nodes").and_then(Value::as_array) {
        for (i, n) in nodes.iter().enumerate() {
            if n.get("tls").is_some() {
                p.push(Problem::new(
                    format!("nodes[{i}].tls"),
                    "remove it: nodes make their key and get their certificate at enrollment (`firstboot-enroll.service`), or offline with `pxe-server pki issue --node NAME`",
                ));
            }
        }
    }
    if doc
        .get("iam")
        .and_then(|i| i.get("bootstrap_credential"))
        .is_some()
    {
        p.push(Problem::new(
            "iam.bootstrap_credential",
            "replace it with \"admin\": {\"username\": \"…\", \"password_hash\": \"…\"}; make the hash with `iam-server hash-password` (the password itself never goes into the contract)",
        ));
    }
    Some(p)
}
