//! Revoked client certificates, kept fresh from Chainfire.
//!
//! The rule (shared/DESIGN.md, "Trust"): `pxe-server pki revoke SERIAL` writes Chainfire
//! `pki/revoked/<serial>`, and every service refuses that certificate within 10 s. IAM lists
//! that prefix every [`REFRESH_EVERY`] over mutual TLS with the node's certificate and
//! replaces its [`Revocations`] set, which three checks share: the TLS handshake (a revoked
//! certificate opens no new connection), every request on a connection opened before
//! (`api`'s per-request check), and node tokens bound to the certificate. When Chainfire
//! cannot be reached, the last set read stays in force: an outage never un-revokes anything.

use crate::{IamError, Result};
use plasmacloud_pki::tls::TlsMaterial;
use plasmacloud_pki::{Revocations, REVOKED_PREFIX};
use plasmacloud_store_client::StoreClient;
use std::time::Duration;

/// How often the list is read (≤ 3 s by the design, so that a revocation bites within 10 s
/// with a call deadline and a missed round to spare).
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Deadline of one read of the list (all endpoints tried within it).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A Chainfire client over `endpoints` (`https://` URLs of the voters' API) that presents
/// `tls`'s certificate and trusts only its CA.
pub fn chainfire_client(endpoints: &[String], tls: &TlsMaterial) -> Result<StoreClient> {
    StoreClient::builder(endpoints.iter().cloned())
        .timeout(CALL_TIMEOUT)
        .tls(tls.clone())
        .build()
        .map_err(|e| IamError::Config(format!("chainfire: {e}")))
}

/// The serials a listing of `pki/revoked/` names (the key's last segment, lowercase).
pub fn serials_of<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    keys.into_iter()
        .filter_map(|k| k.strip_prefix(REVOKED_PREFIX))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// Reads the list once and replaces `revoked` with it; returns how many serials it holds.
/// On error `revoked` is left as it was.
pub async fn refresh_once(
    chainfire: &StoreClient,
    revoked: &Revocations,
) -> std::result::Result<usize, plasmacloud_store_client::Error> {
    let list = chainfire.kv().list(REVOKED_PREFIX).await?;
    Ok(revoked.replace(serials_of(list.items.iter().map(|i| i.key.as_str()))))
}

/// Refreshes `revoked` from `chainfire` every [`REFRESH_EVERY`], forever. Logs when Chainfire
/// stops answering (keeping the last set) and when it answers again.
pub async fn watch(chainfire: StoreClient, revoked: Revocations) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match refresh_once(&chainfire, &revoked).await {
            Ok(n) => {
                if failing {
                    tracing::info!(revoked = n, "revocation list read from Chainfire again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        error = %e,
                        kept = revoked.len(),
                        "cannot read the revocation list from Chainfire; keeping the last one"
                    );
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_come_from_the_keys() {
        let keys = [
            "pki/revoked/4A01ff",
            "pki/revoked/",
            "pki/revoked/not-hex",
            "pki/other/77",
            "pki/revoked/0b",
        ];
        assert_eq!(serials_of(keys), vec!["4a01ff", "0b"]);
    }

    #[tokio::test]
    async fn an_unreachable_chainfire_keeps_the_last_set() {
        let revoked = Revocations::default();
        revoked.replace(["4a01".to_string()]);
        let client = StoreClient::builder(["http://127.0.0.1:1"])
            .timeout(Duration::from_millis(500))
            .build()
            .expect("client");
        assert!(refresh_once(&client, &revoked).await.is_err());
        assert!(revoked.is_revoked("4a01"));
    }
}
