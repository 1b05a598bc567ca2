//! Login (by password, or by a node's certificate), token verification and the session cache,
//! and the token signing keys: each instance publishes its public key under `keys/<kid>`, so
//! any instance verifies any token.
//!
//! A node's token (`POST /v1/auth/node-token`, node certificate only) has the subject
//! `node:<name>`, the built-in role `node` and no user record; it is bound to the serial of the
//! certificate it was issued against and refused once that serial is revoked. It never outlives
//! the certificate.
//!
//! Sessions survive FlareDB outages: every successful verification stores the caller's
//! subject, roles and permissions in a cache keyed by token id until the token expires. When a
//! later verification cannot reach FlareDB, the cached entry answers; a token this instance has
//! never verified gets a 503, as does every login.

use super::caller::Session;
use super::state::{from_json, lock, to_json, Iam};
use crate::model::{
    builtin_role, node_subject, now_unix, user_key, KeyRecord, UserRecord, NODE_ROLE,
    NODE_SUBJECT_PREFIX,
};
use crate::store::{PutCondition, Store, StoreError, KEYS_PREFIX, REVOKED_PREFIX};
use crate::token::{self, Claims};
use crate::{model, IamError, Result};
use ed25519_dalek::VerifyingKey;
use plasmacloud_pki::PeerCert;
use serde::Serialize;
use std::fmt::Display;
use std::sync::atomic::Ordering;

/// Shortest token lifetime accepted by the configuration, in seconds.
pub const MIN_TOKEN_TTL_SECS: u64 = 60;
/// Longest token lifetime accepted by the configuration, in seconds (7 days).
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;
/// Cache size above which expired entries are swept on insert.
const CACHE_SWEEP_AT: usize = 10_000;
/// Cache size above which new sessions are not cached (they still verify while FlareDB is up).
const CACHE_MAX: usize = 200_000;

/// A freshly issued token.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    /// The compact JWT.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Unix seconds.
    pub expires_at: u64,
    /// Seconds from now.
    pub expires_in: u64,
}

impl<S: Store> Iam<S> {
    /// Publishes this instance's public key under `keys/<kid>` (once; idempotent).
    pub async fn ensure_key_published(&self) -> Result<()> {
        if self.key_published.load(Ordering::Acquire) {
            return Ok(());
        }
        let record = KeyRecord {
            kid: self.signer.kid().to_string(),
            alg: "EdDSA".into(),
            public_key: token::encode_public_key(&self.signer.verifying_key()),
            created_at: now_unix(),
        };
        let key = format!("{KEYS_PREFIX}{}", record.kid);
        match self
            .store
            .put(&key, &to_json(&record)?, PutCondition::Absent)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                let stored = self.store.get(&key).await?.ok_or_else(|| {
                    IamError::Store(format!("iam/{key} vanished while publishing it"))
                })?;
                let stored: KeyRecord = from_json(&key, &stored.value)?;
                if stored.public_key != record.public_key {
                    return Err(IamError::Store(format!(
                        "iam/{key} holds a different public key with the same id; \
                         this should be impossible — check the signing key files"
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.key_published.store(true, Ordering::Release);
        tracing::info!(kid = %record.kid, "token signing key published");
        Ok(())
    }

    /// Checks a username and password and issues a token. 401 on wrong credentials, 503 when
    /// FlareDB is unreachable.
    pub async fn login(&self, username: &str, password: &str) -> Result<IssuedToken> {
        let r = self.login_uncounted(username, password).await;
        self.metrics.login(&r);
        r
    }

    async fn login_uncounted(&self, username: &str, password: &str) -> Result<IssuedToken> {
        model::validate_name("username", username)?;
        if password.is_empty() || password.len() > model::MAX_PASSWORD_BYTES {
            return Err(IamError::Invalid(format!(
                "password must be 1 to {} bytes",
                model::MAX_PASSWORD_BYTES
            )));
        }
        let denied = || IamError::Unauthenticated("invalid username or password".into());
        let user = match self.store.get(&user_key(username)).await {
            Ok(Some(v)) => from_json::<UserRecord>(&user_key(username), &v.value)?,
            Ok(None) => {
                self.hasher.verify_dummy(password).await;
                return Err(denied());
            }
            Err(e) => return Err(login_unavailable(e)),
        };
        if !self.hasher.verify(password, &user.password_hash).await? {
            return Err(denied());
        }
        self.ensure_key_published().await.map_err(|e| match e {
            IamError::Unavailable(m) => login_unavailable(m),
            other => other,
        })?;
        let now = now_unix();
        let (token, claims) = self.signer.issue(username, now, self.token_ttl_secs)?;
        tracing::info!(user = username, jti = %claims.jti, "login");
        Ok(IssuedToken {
            token,
            token_type: "Bearer",
            expires_at: claims.exp,
            expires_in: claims.exp.saturating_sub(now),
        })
    }

    /// Issues a token to the node `cert` names (a verified client certificate of the cluster
    /// CA): subject `node:<name>`, role `node`, bound to the certificate's serial, expiring with
    /// the token lifetime or the certificate, whichever comes first. 403 for anyone but a node.
    pub async fn issue_node_token(&self, cert: &PeerCert) -> Result<IssuedToken> {
        if !cert.identity.is_node() {
            return Err(IamError::Forbidden(format!(
                "{} may not get a node token; only a node certificate may",
                cert.identity
            )));
        }
        if self.cert_revoked.is_revoked(&cert.serial) {
            return Err(IamError::Forbidden(format!(
                "certificate {} ({}) is revoked",
                cert.serial, cert.identity
            )));
        }
        let now = now_unix();
        let not_after = u64::try_from(cert.not_after).unwrap_or(0);
        let ttl = self.token_ttl_secs.min(not_after.saturating_sub(now));
        if ttl == 0 {
            return Err(IamError::Unauthenticated(format!(
                "certificate {} of {} has expired",
                cert.serial, cert.identity
            )));
        }
        self.ensure_key_published().await.map_err(|e| match e {
            IamError::Unavailable(m) => IamError::Unavailable(format!(
                "cannot issue a node token while FlareDB is unreachable ({m})"
            )),
            other => other,
        })?;
        let subject = node_subject(&cert.identity.name);
        let (token, claims) = self
            .signer
            .issue_bound(&subject, Some(&cert.serial), now, ttl)?;
        tracing::info!(subject = %subject, serial = %cert.serial, jti = %claims.jti, "node token issued");
        Ok(IssuedToken {
            token,
            token_type: "Bearer",
            expires_at: claims.exp,
            expires_in: claims.exp.saturating_sub(now),
        })
    }

    /// The public key `kid` names: this instance's own, a cached one, or one another instance
    /// published in FlareDB (then cached).
    pub(super) async fn verifying_key(&self, kid: &str) -> Result<VerifyingKey> {
        if kid == self.signer.kid() {
            return Ok(self.signer.verifying_key());
        }
        if let Some(k) = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(kid) {
            return Ok(*k);
        }
        if kid.len() != 32 || !kid.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(IamError::Unauthenticated(
                "malformed token: bad key id".into(),
            ));
        }
        let key = format!("{KEYS_PREFIX}{kid}");
        let Some(v) = self.store.get(&key).await.map_err(|e| {
            IamError::Unavailable(format!(
                "cannot fetch signing key {kid} to verify this token: {e}"
            ))
        })?
        else {
            return Err(IamError::Unauthenticated(
                "token is signed by a key no IAM instance has published".into(),
            ));
        };
        let record: KeyRecord = from_json(&key, &v.value)?;
        let vk = token::decode_public_key(&record.public_key)?;
        if token::key_id(&vk) != kid {
            return Err(IamError::Store(format!(
                "iam/{key} holds a key with another id"
            )));
        }
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kid.to_string(), vk);
        Ok(vk)
    }

    /// Verifies a token's signature and expiry (no revocation or role check).
    async fn verify_claims(&self, token: &str) -> Result<Claims> {
        let unverified = token::parse(token)?;
        let key = self.verifying_key(&unverified.header.kid).await?;
        unverified.verify(&key, now_unix())
    }

    /// Verifies a bearer token: signature, expiry, revocation, and the user's current roles.
    /// During a FlareDB outage, a token this instance verified before answers from the cache.
    pub async fn authenticate(&self, token: &str) -> Result<Session> {
        let r = self.authenticate_uncounted(token).await;
        self.metrics.verification(&r);
        r
    }

    async fn authenticate_uncounted(&self, token: &str) -> Result<Session> {
        let claims = self.verify_claims(token).await?;
        if lock(&self.revoked).contains_key(&claims.jti) {
            return Err(revoked_error());
        }
        if let Some(serial) = &claims.cert_serial {
            if self.cert_revoked.is_revoked(serial) {
                return Err(IamError::Unauthenticated(format!(
                    "the certificate {serial} this token was issued against is revoked"
                )));
            }
        }
        match self.load_session(&claims).await {
            Ok(session) => {
                self.cache_session(&session);
                Ok(session)
            }
            // FlareDB away (or answering nonsense): a token verified before keeps working.
            Err(e @ (IamError::Unavailable(_) | IamError::Store(_))) => {
                let cached = lock(&self.sessions).get(&claims.jti).cloned();
                match cached {
                    Some(s) if s.expires_at > now_unix() => {
                        tracing::debug!(user = %s.subject, error = %e, "session served from the cache");
                        Ok(s)
                    }
                    _ => Err(match e {
                        IamError::Unavailable(m) => IamError::Unavailable(format!(
                            "{m}; this token was not verified by this IAM instance before, so it \
                             cannot be checked until FlareDB is back"
                        )),
                        other => other,
                    }),
                }
            }
            Err(e) => {
                if matches!(e, IamError::Unauthenticated(_)) {
                    lock(&self.sessions).remove(&claims.jti);
                }
                Err(e)
            }
        }
    }

    /// Verifies a token and requires permission `wanted`.
    pub async fn authorize(&self, token: &str, wanted: &str) -> Result<Session> {
        let s = self.authenticate(token).await?;
        s.require(wanted)?;
        Ok(s)
    }

    /// The session a verified token stands for, read fresh from FlareDB: revoked? user still
    /// there? which roles now?
    async fn load_session(&self, claims: &Claims) -> Result<Session> {
        if claims.sub.starts_with(NODE_SUBJECT_PREFIX) {
            return self.load_node_session(claims).await;
        }
        // Three independent reads, in parallel: one round trip of latency, not three.
        let rkey = format!("{REVOKED_PREFIX}{}", claims.jti);
        let ukey = user_key(&claims.sub);
        let (revoked, user, roles) = tokio::join!(
            self.store.get(&rkey),
            self.store.get(&ukey),
            self.roles_of(&claims.sub)
        );
        if revoked?.is_some() {
            lock(&self.revoked).insert(claims.jti.clone(), claims.exp);
            return Err(revoked_error());
        }
        if user?.is_none() {
            return Err(IamError::Unauthenticated(format!(
                "user {:?} no longer exists",
                claims.sub
            )));
        }
        let (roles, permissions) = roles?;
        Ok(Session {
            subject: claims.sub.clone(),
            roles,
            permissions,
            token_id: claims.jti.clone(),
            issued_at: claims.iat,
            expires_at: claims.exp,
        })
    }

    /// A node token's session: not revoked, bound to a certificate; the role is built in.
    async fn load_node_session(&self, claims: &Claims) -> Result<Session> {
        if claims.cert_serial.is_none() {
            return Err(IamError::Unauthenticated(
                "malformed token: a node token names no certificate".into(),
            ));
        }
        let rkey = format!("{REVOKED_PREFIX}{}", claims.jti);
        if self.store.get(&rkey).await?.is_some() {
            lock(&self.revoked).insert(claims.jti.clone(), claims.exp);
            return Err(revoked_error());
        }
        let role = builtin_role(NODE_ROLE)
            .ok_or_else(|| IamError::Internal("the built-in node role is missing".into()))?;
        Ok(Session {
            subject: claims.sub.clone(),
            roles: vec![role.name],
            permissions: role.permissions,
            token_id: claims.jti.clone(),
            issued_at: claims.iat,
            expires_at: claims.exp,
        })
    }

    /// Remembers a verified session for outages (bounded; expired entries swept when full).
    fn cache_session(&self, s: &Session) {
        let mut cache = lock(&self.sessions);
        if cache.len() >= CACHE_SWEEP_AT && !cache.contains_key(&s.token_id) {
            let now = now_unix();
            cache.retain(|_, v| v.expires_at > now);
        }
        if cache.len() < CACHE_MAX || cache.contains_key(&s.token_id) {
            cache.insert(s.token_id.clone(), s.clone());
        }
    }
}

fn revoked_error() -> IamError {
    IamError::Unauthenticated("token has been revoked; log in again".into())
}

fn login_unavailable(cause: impl Display) -> IamError {
    IamError::Unavailable(format!(
        "cannot log in while FlareDB is unreachable ({cause}); running sessions keep working"
    ))
}
