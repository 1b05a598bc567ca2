//! Keeping a node's revocation set current from Chainfire's `pki/revoked/`.
//!
//! The rule (shared/DESIGN.md, "Trust"): `pxe-server pki revoke SERIAL` writes Chainfire
//! `pki/revoked/<serial>`, and every service refuses that serial within 10 s — at the
//! handshake for new connections, on the next request for connections opened before. Each
//! server therefore re-reads the list every [`REFRESH`] (≤ 3 s) and replaces its
//! [`Revocations`] set with it; when the list cannot be read (Chainfire away, no quorum) the
//! last known set stays in force — a revocation is never forgotten because a read failed.
//!
//! - Chainfire reads its own applied state ([`follow_local`]): no network, no quorum needed.
//! - FlareDB reads through its `--chainfire` client ([`follow_chainfire`]), which speaks mutual
//!   TLS with the node's certificate.
//!
//! The serial is the key's last part (lowercase hex, as `plasmacloud_pki::PeerCert::serial`);
//! the value (`{"serial","identity","revoked_at","reason"}`) is for people.

use std::sync::Arc;
use std::time::Duration;

use plasmacloud_pki::{Revocations, REVOKED_PREFIX};
use plasmacloud_store_client::{KvItem, StoreClient};

use crate::node::NodeState;

/// How often the list is re-read.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The serials of the items under [`REVOKED_PREFIX`] (anything else, or an empty or non-hex
/// serial, is ignored).
pub fn serials_of(items: &[KvItem]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i.key.strip_prefix(REVOKED_PREFIX))
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

/// Logs a failed read once per outage (not every second).
struct Outage(bool);

impl Outage {
    fn failed(&mut self, source: &str, e: &dyn std::fmt::Display, revoked: &Revocations) {
        if !self.0 {
            tracing::warn!(
                error = %e,
                kept = revoked.len(),
                "cannot read the revocation list from {source}; keeping the last known set"
            );
        }
        self.0 = true;
    }

    fn ok(&mut self, source: &str) {
        if self.0 {
            tracing::info!("reading the revocation list from {source} again");
        }
        self.0 = false;
    }
}

/// Chainfire: keeps `st`'s revocation set equal to its own applied `pki/revoked/`. Runs
/// forever.
pub async fn follow_local(st: Arc<NodeState>) {
    let mut outage = Outage(false);
    loop {
        let reader = st.reader.clone();
        // Every revoked serial, however many (a local read: no page bound needed).
        let read = tokio::task::spawn_blocking(move || {
            reader.list("", REVOKED_PREFIX, None, usize::MAX, usize::MAX)
        })
        .await;
        match read {
            Ok(Ok((_, items, _))) => {
                st.access.revoked().replace(serials_of(&items));
                outage.ok("the local state");
            }
            Ok(Err(e)) => outage.failed("the local state", &e, st.access.revoked()),
            Err(e) => outage.failed("the local state", &e, st.access.revoked()),
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// FlareDB: keeps `revoked` equal to Chainfire's `pki/revoked/`, read through `chainfire`.
/// Runs forever.
pub async fn follow_chainfire(revoked: Revocations, chainfire: StoreClient) {
    let mut outage = Outage(false);
    loop {
        match chainfire.list(REVOKED_PREFIX).await {
            Ok(l) => {
                revoked.replace(serials_of(&l.items));
                outage.ok("chainfire");
            }
            Err(e) => outage.failed("chainfire", &e, &revoked),
        }
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str) -> KvItem {
        KvItem {
            key: key.into(),
            value: "{}".into(),
            revision: 1,
        }
    }

    #[test]
    fn serials_are_the_hex_key_suffixes_lowercased() {
        let items = [
            item("pki/revoked/4aBC01"),
            item("pki/revoked/"),
            item("pki/revoked/not-hex"),
            item("pki/other/42"),
            item("pki/revoked/ff"),
        ];
        assert_eq!(serials_of(&items), ["4abc01", "ff"]);
    }
}
