//! Bootstrap: the first admin, created exactly once across every IAM instance.
//!
//! The rule: only a cluster node calls it (the API checks its certificate), with the admin's
//! user name and argon2id password hash from the contract — no password ever reaches IAM here.
//! The first call writes the claim `bootstrap` with `prev_exist=false` (user name and password
//! hash), then creates the user (with that hash) and its `admin` binding and marks the claim
//! completed. A later call with the same user name and hash writes nothing (or finishes a
//! first attempt that stopped half-way); anything else gets 409. Two instances racing: one
//! claim wins the compare-and-swap, the other re-reads it, so exactly one admin results.

use super::state::{from_json, to_json, Iam};
use crate::model::{
    self, binding_key, now_unix, user_key, BindingRecord, BootstrapRecord, UserRecord, ADMIN_ROLE,
};
use crate::store::{PutCondition, Store, StoreError, Versioned, BOOTSTRAP_KEY};
use crate::{password, IamError, Result};

/// What bootstrap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapOutcome {
    /// This call created the first admin.
    Created,
    /// The first admin already existed with these very credentials; nothing changed.
    AlreadyDone,
}

impl<S: Store> Iam<S> {
    /// Creates the first admin, `username` with the argon2id PHC `password_hash`, exactly once
    /// (see the module docs for the semantics).
    pub async fn bootstrap(&self, username: &str, password_hash: &str) -> Result<BootstrapOutcome> {
        model::validate_name("username", username)?;
        password::check_phc("password_hash", password_hash)?;
        if let Some(v) = self.store.get(BOOTSTRAP_KEY).await? {
            return self.bootstrap_replay(v, username, password_hash).await;
        }
        let record = BootstrapRecord {
            username: username.to_string(),
            password_hash: password_hash.to_string(),
            created_at: now_unix(),
            completed: false,
        };
        match self
            .store
            .put(BOOTSTRAP_KEY, &to_json(&record)?, PutCondition::Absent)
            .await
        {
            Ok(rev) => {
                tracing::info!(username, "bootstrap claimed; creating the first admin");
                self.complete_bootstrap(record, rev).await?;
                Ok(BootstrapOutcome::Created)
            }
            Err(StoreError::Conflict { .. }) => {
                let v = self.store.get(BOOTSTRAP_KEY).await?.ok_or_else(|| {
                    IamError::Store("iam/bootstrap vanished after a conflicting write".into())
                })?;
                self.bootstrap_replay(v, username, password_hash).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A bootstrap call that found a claim: the same admin (name and hash) succeeds
    /// (finishing the claim if needed), any other is refused.
    async fn bootstrap_replay(
        &self,
        stored: Versioned,
        username: &str,
        password_hash: &str,
    ) -> Result<BootstrapOutcome> {
        let record: BootstrapRecord = from_json(BOOTSTRAP_KEY, &stored.value)?;
        if record.username != username || record.password_hash != password_hash {
            return Err(IamError::Conflict(
                "IAM is already bootstrapped with another admin; log in as the first admin \
                 (POST /v1/auth/login) and manage users from there"
                    .into(),
            ));
        }
        if !record.completed {
            // A first attempt stopped half-way (or is running right now elsewhere): finish it.
            self.complete_bootstrap(record, stored.revision).await?;
        }
        Ok(BootstrapOutcome::AlreadyDone)
    }

    /// Creates the admin user and its binding if missing, then marks the claim completed.
    /// Every step is conditional, so concurrent completions are harmless.
    async fn complete_bootstrap(&self, mut record: BootstrapRecord, revision: u64) -> Result<()> {
        let now = now_unix();
        let user = UserRecord {
            username: record.username.clone(),
            password_hash: record.password_hash.clone(),
            created_at: now,
        };
        self.put_if_absent(&user_key(&user.username), &to_json(&user)?)
            .await?;
        let binding = BindingRecord {
            user: record.username.clone(),
            role: ADMIN_ROLE.into(),
            created_at: now,
        };
        self.put_if_absent(&binding_key(&binding.user, ADMIN_ROLE), &to_json(&binding)?)
            .await?;
        record.completed = true;
        match self
            .store
            .put(
                BOOTSTRAP_KEY,
                &to_json(&record)?,
                PutCondition::Revision(revision),
            )
            .await
        {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
