//! Token revocation: a revoked token id is written to `revoked/<jti>` in FlareDB, which every
//! instance checks on each verification, and kept in this instance's memory, so a revocation
//! holds here even when FlareDB cannot take it. Records of tokens that have expired anyway are
//! pruned.

use super::caller::Session;
use super::state::{lock, to_json, Iam};
use crate::model::{now_unix, perm, RevocationRecord};
use crate::store::{PutCondition, Store, StoreError, REVOKED_PREFIX};
use crate::token;
use crate::{IamError, Result};

impl<S: Store> Iam<S> {
    /// Revokes `target` (another token; needs `iam:tokens:revoke` unless it is the caller's
    /// own) or, when `None`, the caller's own token. Returns the revoked token id.
    pub async fn revoke(&self, caller: &Session, target: Option<&str>) -> Result<String> {
        let (jti, sub, exp) = match target {
            None => (
                caller.token_id.clone(),
                caller.subject.clone(),
                caller.expires_at,
            ),
            Some(t) => {
                let unverified = token::parse(t).map_err(bad_target)?;
                let key = self
                    .verifying_key(&unverified.header.kid)
                    .await
                    .map_err(bad_target)?;
                // An expired token needs no revocation, but revoking it is not an error.
                let claims = unverified.verify_signature(&key).map_err(bad_target)?;
                if claims.sub != caller.subject {
                    caller.require(perm::TOKENS_REVOKE)?;
                }
                (claims.jti, claims.sub, claims.exp)
            }
        };
        lock(&self.revoked).insert(jti.clone(), exp);
        lock(&self.sessions).remove(&jti);
        let record = RevocationRecord {
            jti: jti.clone(),
            sub,
            exp,
            revoked_at: now_unix(),
        };
        self.store
            .put(&format!("{REVOKED_PREFIX}{jti}"), &to_json(&record)?, PutCondition::Always)
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(m) => IamError::Unavailable(format!(
                    "{m}; the token is revoked on this instance only — retry to revoke it everywhere"
                )),
                other => other.into(),
            })?;
        tracing::info!(by = %caller.subject, jti = %jti, "token revoked");
        Ok(jti)
    }

    /// Removes revocation records of tokens that have expired anyway; returns how many.
    pub async fn prune_revocations(&self) -> Result<usize> {
        let now = now_unix();
        lock(&self.revoked).retain(|_, exp| *exp > now);
        lock(&self.sessions).retain(|_, s| s.expires_at > now);
        let mut n = 0;
        for item in self.store.list(REVOKED_PREFIX).await? {
            let Ok(r) = serde_json::from_str::<RevocationRecord>(&item.value) else {
                continue;
            };
            if r.exp + token::MAX_CLOCK_SKEW_SECS < now
                && self
                    .store
                    .delete(&item.key, Some(item.revision))
                    .await
                    .unwrap_or(false)
            {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A token to revoke that does not verify is bad input (400), not a failed login (401).
fn bad_target(e: IamError) -> IamError {
    match e {
        IamError::Unauthenticated(m) => IamError::Invalid(format!("token to revoke: {m}")),
        other => other,
    }
}
