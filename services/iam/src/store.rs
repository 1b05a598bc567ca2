//! What IAM needs from its database, as a trait with exactly four operations, and the key
//! layout of the `iam` namespace.
//!
//! The production implementation is [`crate::flaredb::FlareStore`] (FlareDB over HTTP through
//! `plasmacloud-store-client`); unit tests use an in-memory map.
//!
//! Key layout (all values are JSON):
//!
//! | key | value |
//! |---|---|
//! | `bootstrap` | the bootstrap claim: first admin's name and password hash (CAS `prev_exist=false`) |
//! | `users/<name>` | [`crate::model::UserRecord`] |
//! | `roles/<name>` | [`crate::model::RoleRecord`] (custom roles only; built-ins live in code) |
//! | `bindings/<user>/<role>` | [`crate::model::BindingRecord`] |
//! | `keys/<kid>` | [`crate::model::KeyRecord`]: a token signing public key |
//! | `revoked/<jti>` | [`crate::model::RevocationRecord`] |

use std::future::Future;

/// The FlareDB namespace that holds every IAM record.
pub const NAMESPACE: &str = "iam";
/// The bootstrap claim key.
pub const BOOTSTRAP_KEY: &str = "bootstrap";
/// Prefix of user records.
pub const USERS_PREFIX: &str = "users/";
/// Prefix of custom role records.
pub const ROLES_PREFIX: &str = "roles/";
/// Prefix of role bindings (`bindings/<user>/<role>`).
pub const BINDINGS_PREFIX: &str = "bindings/";
/// Prefix of published token signing public keys.
pub const KEYS_PREFIX: &str = "keys/";
/// Prefix of revoked token ids.
pub const REVOKED_PREFIX: &str = "revoked/";

/// A stored value and the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The UTF-8 value.
    pub value: String,
    /// The revision of the last write of this key.
    pub revision: u64,
}

/// One entry of a prefix listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The full key (within the namespace).
    pub key: String,
    /// The UTF-8 value.
    pub value: String,
    /// The revision of the last write of this key.
    pub revision: u64,
}

/// The condition of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutCondition {
    /// Write whatever is there.
    Always,
    /// Write only if the key does not exist (`?prev_exist=false`).
    Absent,
    /// Write only if the key was last written at this revision (`?prev_revision=N`).
    Revision(u64),
}

/// How a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The condition of a put or delete did not hold; `current` is the key's revision now
    /// (0 when absent). Re-read and decide again.
    #[error("compare-and-swap failed (current revision {current})")]
    Conflict {
        /// The revision the key has now, 0 if it does not exist.
        current: u64,
    },
    /// No FlareDB endpoint answered, or the cluster has no leader: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// FlareDB answered, but not as its API promises.
    #[error("{0}")]
    Protocol(String),
}

impl From<StoreError> for crate::IamError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { current } => crate::IamError::Conflict(format!(
                "a concurrent change won (revision now {current}); re-read and retry"
            )),
            StoreError::Unavailable(m) => crate::IamError::Unavailable(m),
            StoreError::Protocol(m) => crate::IamError::Store(m),
        }
    }
}

/// The key-value operations IAM uses, all within the [`NAMESPACE`] namespace.
///
/// Cancellation: every method may be dropped at an `.await` (request timeouts do); a put that
/// was dropped may or may not have been applied, which is why every IAM write is either
/// idempotent or conditional.
pub trait Store: Send + Sync + 'static {
    /// Reads a key; `None` when absent.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Versioned>, StoreError>> + Send;

    /// Writes a key under `cond`, returning the new revision.
    fn put(
        &self,
        key: &str,
        value: &str,
        cond: PutCondition,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every key that starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<Item>, StoreError>> + Send;

    /// Deletes a key (only at `prev_revision` when given); `true` if something was deleted.
    fn delete(
        &self,
        key: &str,
        prev_revision: Option<u64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether the database answers and is healthy; `Err` says why not.
    fn health(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory [`Store`] for unit tests only (CAS semantics as FlareDB's).

    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// Last revision, and key → (value, revision).
    type State = (u64, BTreeMap<String, (String, u64)>);

    /// Map of key → (value, revision), one global revision counter, and an off switch.
    #[derive(Default)]
    pub struct MemStore {
        inner: Mutex<State>,
        down: AtomicBool,
    }

    impl MemStore {
        /// Simulate an outage (`true`) or recovery (`false`).
        pub fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }

        fn check(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                Err(StoreError::Unavailable("memstore is down".into()))
            } else {
                Ok(())
            }
        }

        /// Number of keys with this prefix.
        pub fn count(&self, prefix: &str) -> usize {
            let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            g.1.keys().filter(|k| k.starts_with(prefix)).count()
        }
    }

    impl Store for MemStore {
        async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
            self.check()?;
            let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            Ok(g.1.get(key).map(|(v, r)| Versioned {
                value: v.clone(),
                revision: *r,
            }))
        }

        async fn put(&self, key: &str, value: &str, cond: PutCondition) -> Result<u64, StoreError> {
            self.check()?;
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let current = g.1.get(key).map(|(_, r)| *r).unwrap_or(0);
            let ok = match cond {
                PutCondition::Always => true,
                PutCondition::Absent => current == 0,
                PutCondition::Revision(r) => current == r,
            };
            if !ok {
                return Err(StoreError::Conflict { current });
            }
            g.0 += 1;
            let rev = g.0;
            g.1.insert(key.to_string(), (value.to_string(), rev));
            Ok(rev)
        }

        async fn list(&self, prefix: &str) -> Result<Vec<Item>, StoreError> {
            self.check()?;
            let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            Ok(g.1
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, (v, r))| Item {
                    key: k.clone(),
                    value: v.clone(),
                    revision: *r,
                })
                .collect())
        }

        async fn delete(&self, key: &str, prev_revision: Option<u64>) -> Result<bool, StoreError> {
            self.check()?;
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let current = g.1.get(key).map(|(_, r)| *r).unwrap_or(0);
            if let Some(p) = prev_revision {
                if p != current {
                    return Err(StoreError::Conflict { current });
                }
            }
            Ok(g.1.remove(key).is_some())
        }

        async fn health(&self) -> Result<(), StoreError> {
            self.check()
        }
    }
}
