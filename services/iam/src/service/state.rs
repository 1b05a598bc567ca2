//! The [`Iam`] service's state — its store, signing key, password hasher and in-memory caches —
//! and the record helpers every room of [`super`] uses (JSON in and out, conditional writes,
//! "this record must exist").

use super::caller::Session;
use crate::metrics::IamMetrics;
use crate::password::Hasher;
use crate::store::{PutCondition, Store, StoreError, Versioned};
use crate::token::TokenSigner;
use crate::{IamError, Result};
use ed25519_dalek::VerifyingKey;
use plasmacloud_pki::Revocations;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

/// The IAM service: one per process, shared by every request.
pub struct Iam<S: Store> {
    pub(super) store: S,
    pub(super) signer: TokenSigner,
    pub(super) hasher: Hasher,
    pub(super) token_ttl_secs: u64,
    /// Whether this instance's public key is in FlareDB yet.
    pub(super) key_published: AtomicBool,
    /// Other instances' public keys, by key id, once fetched.
    pub(super) keys: RwLock<HashMap<String, VerifyingKey>>,
    /// Verified sessions by token id (answers during FlareDB outages).
    pub(super) sessions: Mutex<HashMap<String, Session>>,
    /// Token ids known revoked, with their expiry.
    pub(super) revoked: Mutex<HashMap<String, u64>>,
    /// Revoked certificate serials (Chainfire `pki/revoked/`), shared with the TLS listener:
    /// node tokens bound to one of them are refused.
    pub(super) cert_revoked: Revocations,
    /// What `/metrics` serves.
    pub(super) metrics: Arc<IamMetrics>,
}

/// A record as stored JSON.
pub(super) fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| IamError::Internal(format!("json: {e}")))
}

/// The stored JSON at `key` as a record; a 500 naming the key when it does not parse.
pub(super) fn from_json<T: DeserializeOwned>(key: &str, v: &str) -> Result<T> {
    serde_json::from_str(v)
        .map_err(|e| IamError::Store(format!("record iam/{key} is not valid: {e}")))
}

/// Locks `m`, also when a panicking holder poisoned it (the caches stay usable).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: Store> Iam<S> {
    /// A service over `store`, signing with `signer`, issuing tokens valid `token_ttl_secs`.
    pub fn new(store: S, signer: TokenSigner, token_ttl_secs: u64) -> Self {
        Self {
            store,
            signer,
            hasher: Hasher::default(),
            token_ttl_secs,
            key_published: AtomicBool::new(false),
            keys: RwLock::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashMap::new()),
            cert_revoked: Revocations::default(),
            metrics: Arc::default(),
        }
    }

    /// The same service, refusing node tokens of the certificates `revoked` lists (the set the
    /// listener and the Chainfire watch share).
    pub fn with_cert_revocations(mut self, revoked: Revocations) -> Self {
        self.cert_revoked = revoked;
        self
    }

    /// The logins, verifications and requests counted for `/metrics`.
    pub fn metrics(&self) -> &Arc<IamMetrics> {
        &self.metrics
    }

    /// The revoked certificate serials this instance refuses.
    pub fn cert_revocations(&self) -> &Revocations {
        &self.cert_revoked
    }

    /// The store (for tests and the server's background tasks).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The signing key id.
    pub fn kid(&self) -> &str {
        self.signer.kid()
    }

    /// Whether FlareDB answers and is healthy.
    pub async fn health(&self) -> Result<()> {
        self.store.health().await.map_err(IamError::from)
    }

    /// Writes `key` unless it exists; `true` if this call wrote it.
    pub(super) async fn put_if_absent(&self, key: &str, value: &str) -> Result<bool> {
        match self.store.put(key, value, PutCondition::Absent).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The stored value at `key`, or 404 saying that `kind` `name` does not exist.
    pub(super) async fn existing(&self, key: &str, kind: &str, name: &str) -> Result<Versioned> {
        self.store
            .get(key)
            .await?
            .ok_or_else(|| IamError::NotFound(format!("{kind} {name:?} does not exist")))
    }

    /// [`Self::existing`], parsed, with its revision (for a conditional write back).
    pub(super) async fn existing_record<T: DeserializeOwned>(
        &self,
        key: &str,
        kind: &str,
        name: &str,
    ) -> Result<(T, u64)> {
        let v = self.existing(key, kind, name).await?;
        Ok((from_json(key, &v.value)?, v.revision))
    }
}
