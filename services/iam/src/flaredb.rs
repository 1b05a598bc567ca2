//! [`Store`] over FlareDB's `iam` namespace, through `plasmacloud-store-client` (endpoint
//! failover, forwarding to the leader, deadlines), speaking mutual TLS with the node's
//! certificate: FlareDB gives the `iam` namespace to node certificates only, so nobody but a
//! cluster node reads a password hash or writes a signing key there.
//!
//! Outages are answered fast: after a call finds FlareDB unreachable, every call for the next
//! [`FAIL_FAST_FOR`] fails at once (except `health`, which always probes), so requests served
//! from the session cache during an outage do not each wait for a connection deadline.

use crate::store::{Item, PutCondition, Store, StoreError, Versioned, NAMESPACE};
use crate::{IamError, Result};
use plasmacloud_pki::tls::TlsMaterial;
use plasmacloud_store_client::{Error as ClientError, Keyspace, Precondition, StoreClient};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Deadline of one FlareDB call (all endpoints tried within it). A commit on a starved
/// machine takes seconds (3 TCG VMs beside a cargo build: 3 s was too short for most writes,
/// and first boot's IAM check waited minutes); an outage is still answered fast (a refused
/// connection at once, then [`FAIL_FAST_FOR`]).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long calls fail fast after FlareDB was found unreachable.
pub const FAIL_FAST_FOR: Duration = Duration::from_secs(2);

/// FlareDB's `iam` namespace.
pub struct FlareStore {
    client: StoreClient,
    ns: Keyspace,
    down_until: Mutex<Option<(Instant, String)>>,
}

impl FlareStore {
    /// A store over `endpoints` (`https://` base URLs of FlareDB's API), presenting `tls`'s
    /// certificate and trusting only its CA.
    pub fn connect(endpoints: &[String], tls: &TlsMaterial) -> Result<Self> {
        let client = StoreClient::builder(endpoints.iter().cloned())
            .timeout(CALL_TIMEOUT)
            .tls(tls.clone())
            .build()
            .map_err(|e| IamError::Config(format!("flaredb: {e}")))?;
        Self::from_client(client)
    }

    /// A store over a FlareDB client built elsewhere.
    pub fn from_client(client: StoreClient) -> Result<Self> {
        let ns = client
            .namespace(NAMESPACE)
            .map_err(|e| IamError::Config(format!("flaredb: {e}")))?;
        Ok(Self {
            client,
            ns,
            down_until: Mutex::new(None),
        })
    }

    fn fail_fast(&self) -> Result<(), StoreError> {
        let guard = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        match &*guard {
            Some((until, why)) if Instant::now() < *until => Err(StoreError::Unavailable(format!(
                "FlareDB unreachable a moment ago: {why}"
            ))),
            _ => Ok(()),
        }
    }

    fn note<T>(&self, r: std::result::Result<T, ClientError>) -> Result<T, StoreError> {
        let r = r.map_err(map_error);
        let mut guard = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        match &r {
            Err(StoreError::Unavailable(why)) => {
                *guard = Some((Instant::now() + FAIL_FAST_FOR, why.clone()));
            }
            _ => *guard = None,
        }
        r
    }
}

fn map_error(e: ClientError) -> StoreError {
    match e {
        ClientError::Conflict { revision, .. } => StoreError::Conflict { current: revision },
        ClientError::Unreachable { .. }
        | ClientError::Timeout { .. }
        | ClientError::Broken { .. } => StoreError::Unavailable(format!("FlareDB: {e}")),
        ClientError::Api { status: 409, .. } => StoreError::Conflict { current: 0 },
        ClientError::Api { status, .. } if status == 503 || status == 502 || status == 504 => {
            StoreError::Unavailable(format!("FlareDB: {e}"))
        }
        other => StoreError::Protocol(format!("FlareDB: {other}")),
    }
}

impl Store for FlareStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.fail_fast()?;
        let r = self.ns.get(key).await;
        Ok(self.note(r)?.map(|v| Versioned {
            value: v.value,
            revision: v.revision,
        }))
    }

    async fn put(&self, key: &str, value: &str, cond: PutCondition) -> Result<u64, StoreError> {
        self.fail_fast()?;
        let r = match cond {
            PutCondition::Always => self.ns.put(key, value).await,
            PutCondition::Absent => self.ns.put_if(key, value, Precondition::Absent).await,
            PutCondition::Revision(n) => {
                self.ns.put_if(key, value, Precondition::Revision(n)).await
            }
        };
        self.note(r)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Item>, StoreError> {
        self.fail_fast()?;
        let r = self.ns.list(prefix).await;
        Ok(self
            .note(r)?
            .items
            .into_iter()
            .map(|i| Item {
                key: i.key,
                value: i.value,
                revision: i.revision,
            })
            .collect())
    }

    async fn delete(&self, key: &str, prev_revision: Option<u64>) -> Result<bool, StoreError> {
        self.fail_fast()?;
        let r = match prev_revision {
            Some(n) => self.ns.delete_if(key, n).await,
            None => self.ns.delete(key).await,
        };
        Ok(self.note(r)?.deleted)
    }

    async fn health(&self) -> Result<(), StoreError> {
        let r = self.client.health().await;
        let h = self.note(r)?;
        if h.status == "healthy" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "FlareDB is {}: {}",
                h.status,
                h.reason.unwrap_or_else(|| "no reason given".into())
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_store_errors() {
        let conflict = ClientError::Conflict {
            revision: 7,
            message: "x".into(),
        };
        assert_eq!(map_error(conflict), StoreError::Conflict { current: 7 });
        let busy = ClientError::Api {
            status: 503,
            message: "no leader".into(),
            endpoint: "e".into(),
            retryable: true,
        };
        assert!(matches!(map_error(busy), StoreError::Unavailable(_)));
        let bad = ClientError::Api {
            status: 400,
            message: "bad key".into(),
            endpoint: "e".into(),
            retryable: false,
        };
        assert!(matches!(map_error(bad), StoreError::Protocol(_)));
    }

    #[tokio::test]
    async fn an_unreachable_flaredb_fails_fast_after_the_first_call() {
        // Port 1 on loopback refuses connections at once.
        let client = StoreClient::builder(["http://127.0.0.1:1"])
            .timeout(CALL_TIMEOUT)
            .build()
            .unwrap();
        let store = FlareStore::from_client(client).unwrap();
        let e = store.get("users/x").await.unwrap_err();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
        let start = Instant::now();
        let e = store.list("users/").await.unwrap_err();
        assert!(e.to_string().contains("a moment ago"), "{e}");
        assert!(start.elapsed() < Duration::from_millis(100));
        assert!(store.health().await.is_err());
    }
}
