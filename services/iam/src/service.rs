//! The IAM service logic over a [`Store`]: bootstrap, login, token verification with the
//! session cache, revocation, and users / roles / bindings. No HTTP here (see [`crate::api`]).
//!
//! Sessions survive FlareDB outages: every successful verification stores the caller's
//! subject, roles and permissions in a cache keyed by token id until the token expires. When a
//! later verification cannot reach FlareDB, the cached entry answers; a token this instance has
//! never verified gets a 503, as does every login and every change.

use crate::model::{
    self, binding_key, builtin_role, now_unix, perm, permission_matches, role_key,
    user_bindings_prefix, user_key, BindingRecord, BootstrapRecord, KeyRecord, RevocationRecord,
    RoleRecord, UserRecord, ADMIN_ROLE, BUILTIN_ROLES,
};
use crate::password::Hasher;
use crate::store::{
    PutCondition, Store, StoreError, BINDINGS_PREFIX, BOOTSTRAP_KEY, KEYS_PREFIX, REVOKED_PREFIX,
    ROLES_PREFIX, USERS_PREFIX,
};
use crate::token::{self, Claims, TokenSigner};
use crate::{IamError, Result};
use ed25519_dalek::VerifyingKey;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

/// Shortest token lifetime accepted by the configuration, in seconds.
pub const MIN_TOKEN_TTL_SECS: u64 = 60;
/// Longest token lifetime accepted by the configuration, in seconds (7 days).
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;
/// Cache size above which expired entries are swept on insert.
const CACHE_SWEEP_AT: usize = 10_000;
/// Cache size above which new sessions are not cached (they still verify while FlareDB is up).
const CACHE_MAX: usize = 200_000;

/// Who is calling, after a token has been verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    /// The user name.
    pub subject: String,
    /// Bound role names, sorted.
    pub roles: Vec<String>,
    /// Union of the roles' permission patterns, sorted.
    pub permissions: Vec<String>,
    /// Token id.
    pub token_id: String,
    /// Issued at, unix seconds.
    pub issued_at: u64,
    /// Expires at, unix seconds.
    pub expires_at: u64,
}

impl Session {
    /// Whether any of the session's permissions grants `wanted`.
    pub fn allows(&self, wanted: &str) -> bool {
        self.permissions
            .iter()
            .any(|p| permission_matches(p, wanted))
    }

    /// `Ok` if the session grants `wanted`, else 403 naming the permission.
    pub fn require(&self, wanted: &str) -> Result<()> {
        if self.allows(wanted) {
            Ok(())
        } else {
            Err(IamError::Forbidden(format!(
                "user {:?} lacks permission {wanted:?} (roles: {}); an admin can bind a role that grants it",
                self.subject,
                if self.roles.is_empty() { "none".to_string() } else { self.roles.join(", ") }
            )))
        }
    }
}

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

/// A user as the API shows it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    /// The user name.
    pub username: String,
    /// Bound role names, sorted.
    pub roles: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
}

/// What bootstrap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapOutcome {
    /// This call created the first admin.
    Created,
    /// The first admin already existed with these very credentials; nothing changed.
    AlreadyDone,
}

/// The IAM service: one per process, shared by every request.
pub struct Iam<S: Store> {
    store: S,
    signer: TokenSigner,
    hasher: Hasher,
    token_ttl_secs: u64,
    key_published: AtomicBool,
    keys: RwLock<HashMap<String, VerifyingKey>>,
    sessions: Mutex<HashMap<String, Session>>,
    revoked: Mutex<HashMap<String, u64>>,
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| IamError::Internal(format!("json: {e}")))
}

fn from_json<T: DeserializeOwned>(key: &str, v: &str) -> Result<T> {
    serde_json::from_str(v)
        .map_err(|e| IamError::Store(format!("record iam/{key} is not valid: {e}")))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
        }
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

    // ---- bootstrap ------------------------------------------------------------------------

    /// Creates the first admin exactly once (see the crate docs for the semantics).
    pub async fn bootstrap(&self, username: &str, password: &str) -> Result<BootstrapOutcome> {
        model::validate_name("username", username)?;
        model::validate_password(username, password)?;
        if let Some(v) = self.store.get(BOOTSTRAP_KEY).await? {
            return self.bootstrap_replay(v, username, password).await;
        }
        let record = BootstrapRecord {
            username: username.to_string(),
            password_hash: self.hasher.hash(password).await?,
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
                self.bootstrap_replay(v, username, password).await
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn bootstrap_replay(
        &self,
        stored: crate::store::Versioned,
        username: &str,
        password: &str,
    ) -> Result<BootstrapOutcome> {
        let record: BootstrapRecord = from_json(BOOTSTRAP_KEY, &stored.value)?;
        let refused = || {
            IamError::Conflict(
                "IAM is already bootstrapped with other credentials; log in as the first admin \
                 (POST /v1/auth/login) and manage users from there"
                    .into(),
            )
        };
        if record.username != username {
            return Err(refused());
        }
        if !self.hasher.verify(password, &record.password_hash).await? {
            return Err(refused());
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

    /// Writes `key` unless it exists; `true` if this call wrote it.
    async fn put_if_absent(&self, key: &str, value: &str) -> Result<bool> {
        match self.store.put(key, value, PutCondition::Absent).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    // ---- login and tokens -----------------------------------------------------------------

    /// Checks a username and password and issues a token. 401 on wrong credentials, 503 when
    /// FlareDB is unreachable.
    pub async fn login(&self, username: &str, password: &str) -> Result<IssuedToken> {
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
            Err(e) => {
                return Err(IamError::Unavailable(format!(
                "cannot log in while FlareDB is unreachable ({e}); running sessions keep working"
            )))
            }
        };
        if !self.hasher.verify(password, &user.password_hash).await? {
            return Err(denied());
        }
        self.ensure_key_published().await.map_err(|e| match e {
            IamError::Unavailable(m) => IamError::Unavailable(format!(
                "cannot log in while FlareDB is unreachable ({m}); running sessions keep working"
            )),
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

    async fn verifying_key(&self, kid: &str) -> Result<VerifyingKey> {
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
        let claims = self.verify_claims(token).await?;
        if lock(&self.revoked).contains_key(&claims.jti) {
            return Err(revoked_error());
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

    async fn load_session(&self, claims: &Claims) -> Result<Session> {
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

    /// A user's bound roles and the union of their permissions. Bindings to roles that no
    /// longer exist are ignored.
    async fn roles_of(&self, user: &str) -> Result<(Vec<String>, Vec<String>)> {
        let mut roles = BTreeSet::new();
        let mut perms = BTreeSet::new();
        for item in self.store.list(&user_bindings_prefix(user)).await? {
            let b: BindingRecord = from_json(&item.key, &item.value)?;
            if let Some(role) = self.find_role(&b.role).await? {
                perms.extend(role.permissions);
                roles.insert(b.role);
            } else {
                tracing::warn!(user, role = %b.role, "binding to a role that does not exist; ignored");
            }
        }
        Ok((roles.into_iter().collect(), perms.into_iter().collect()))
    }

    async fn find_role(&self, name: &str) -> Result<Option<RoleRecord>> {
        if let Some(r) = builtin_role(name) {
            return Ok(Some(r));
        }
        match self.store.get(&role_key(name)).await? {
            Some(v) => Ok(Some(from_json(&role_key(name), &v.value)?)),
            None => Ok(None),
        }
    }

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
                let unverified = token::parse(t).map_err(|e| match e {
                    IamError::Unauthenticated(m) => {
                        IamError::Invalid(format!("token to revoke: {m}"))
                    }
                    other => other,
                })?;
                let key =
                    self.verifying_key(&unverified.header.kid)
                        .await
                        .map_err(|e| match e {
                            IamError::Unauthenticated(m) => {
                                IamError::Invalid(format!("token to revoke: {m}"))
                            }
                            other => other,
                        })?;
                // An expired token needs no revocation, but revoking it is not an error.
                let claims = unverified.verify_signature(&key).map_err(|e| match e {
                    IamError::Unauthenticated(m) => {
                        IamError::Invalid(format!("token to revoke: {m}"))
                    }
                    other => other,
                })?;
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

    // ---- users ----------------------------------------------------------------------------

    /// Every user with their roles.
    pub async fn list_users(&self) -> Result<Vec<UserView>> {
        let bindings = self.all_bindings().await?;
        let mut by_user: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for b in &bindings {
            by_user.entry(&b.user).or_default().push(b.role.clone());
        }
        let mut out = Vec::new();
        for item in self.store.list(USERS_PREFIX).await? {
            let u: UserRecord = from_json(&item.key, &item.value)?;
            let mut roles = by_user
                .get(u.username.as_str())
                .cloned()
                .unwrap_or_default();
            roles.sort();
            out.push(UserView {
                username: u.username,
                roles,
                created_at: u.created_at,
            });
        }
        Ok(out)
    }

    /// One user with their roles.
    pub async fn get_user(&self, name: &str) -> Result<UserView> {
        model::validate_name("username", name)?;
        let u = self.user_record(name).await?.0;
        let mut roles: Vec<String> = self
            .store
            .list(&user_bindings_prefix(name))
            .await?
            .into_iter()
            .map(|i| from_json::<BindingRecord>(&i.key, &i.value).map(|b| b.role))
            .collect::<Result<_>>()?;
        roles.sort();
        Ok(UserView {
            username: u.username,
            roles,
            created_at: u.created_at,
        })
    }

    async fn user_record(&self, name: &str) -> Result<(UserRecord, u64)> {
        let key = user_key(name);
        let v = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| IamError::NotFound(format!("user {name:?} does not exist")))?;
        Ok((from_json(&key, &v.value)?, v.revision))
    }

    /// Creates a user (no roles). 409 if the name is taken.
    pub async fn create_user(&self, username: &str, password: &str) -> Result<UserView> {
        model::validate_name("username", username)?;
        model::validate_password(username, password)?;
        if self.store.get(&user_key(username)).await?.is_some() {
            return Err(user_exists(username));
        }
        let record = UserRecord {
            username: username.to_string(),
            password_hash: self.hasher.hash(password).await?,
            created_at: now_unix(),
        };
        if !self
            .put_if_absent(&user_key(username), &to_json(&record)?)
            .await?
        {
            return Err(user_exists(username));
        }
        tracing::info!(user = username, "user created");
        Ok(UserView {
            username: record.username,
            roles: vec![],
            created_at: record.created_at,
        })
    }

    /// Sets a user's password (the caller's own, or anyone's with `iam:users:write`).
    pub async fn set_password(&self, caller: &Session, name: &str, password: &str) -> Result<()> {
        model::validate_name("username", name)?;
        if caller.subject != name {
            caller.require(perm::USERS_WRITE)?;
        }
        model::validate_password(name, password)?;
        let (mut record, rev) = self.user_record(name).await?;
        record.password_hash = self.hasher.hash(password).await?;
        self.store
            .put(
                &user_key(name),
                &to_json(&record)?,
                PutCondition::Revision(rev),
            )
            .await?;
        tracing::info!(user = name, by = %caller.subject, "password changed");
        Ok(())
    }

    /// Deletes a user and their bindings. A user cannot delete themselves.
    pub async fn delete_user(&self, caller: &Session, name: &str) -> Result<()> {
        model::validate_name("username", name)?;
        if caller.subject == name {
            return Err(IamError::Conflict(
                "you cannot delete your own user; have another admin do it".into(),
            ));
        }
        let (_, rev) = self.user_record(name).await?;
        for item in self.store.list(&user_bindings_prefix(name)).await? {
            self.store.delete(&item.key, None).await?;
        }
        if !self.store.delete(&user_key(name), Some(rev)).await? {
            return Err(IamError::NotFound(format!("user {name:?} does not exist")));
        }
        tracing::info!(user = name, by = %caller.subject, "user deleted");
        Ok(())
    }

    // ---- roles ----------------------------------------------------------------------------

    /// Built-in roles, then custom roles.
    pub async fn list_roles(&self) -> Result<Vec<RoleRecord>> {
        let mut out: Vec<RoleRecord> = BUILTIN_ROLES
            .iter()
            .filter_map(|(n, _, _)| builtin_role(n))
            .collect();
        for item in self.store.list(ROLES_PREFIX).await? {
            out.push(from_json(&item.key, &item.value)?);
        }
        Ok(out)
    }

    /// One role.
    pub async fn get_role(&self, name: &str) -> Result<RoleRecord> {
        model::validate_name("role", name)?;
        self.find_role(name)
            .await?
            .ok_or_else(|| IamError::NotFound(format!("role {name:?} does not exist")))
    }

    fn validate_role(name: &str, description: &str, permissions: &[String]) -> Result<()> {
        model::validate_name("role", name)?;
        if builtin_role(name).is_some() {
            return Err(IamError::Conflict(format!(
                "{name:?} is a built-in role and cannot be created or changed"
            )));
        }
        if description.len() > model::MAX_DESCRIPTION_LEN
            || description.chars().any(char::is_control)
        {
            return Err(IamError::Invalid(format!(
                "description must be at most {} bytes without control characters",
                model::MAX_DESCRIPTION_LEN
            )));
        }
        if permissions.is_empty() || permissions.len() > model::MAX_PERMISSIONS_PER_ROLE {
            return Err(IamError::Invalid(format!(
                "a role needs 1 to {} permissions",
                model::MAX_PERMISSIONS_PER_ROLE
            )));
        }
        permissions
            .iter()
            .try_for_each(|p| model::validate_permission(p))
    }

    /// Creates a custom role. 409 if it exists or is built in.
    pub async fn create_role(
        &self,
        name: &str,
        description: &str,
        permissions: Vec<String>,
    ) -> Result<RoleRecord> {
        Self::validate_role(name, description, &permissions)?;
        let record = RoleRecord {
            name: name.to_string(),
            description: description.to_string(),
            permissions: dedup(permissions),
            builtin: false,
        };
        if !self
            .put_if_absent(&role_key(name), &to_json(&record)?)
            .await?
        {
            return Err(IamError::Conflict(format!("role {name:?} already exists")));
        }
        tracing::info!(role = name, "role created");
        Ok(record)
    }

    /// Replaces a custom role's permissions (and description, when given).
    pub async fn update_role(
        &self,
        name: &str,
        description: Option<&str>,
        permissions: Vec<String>,
    ) -> Result<RoleRecord> {
        Self::validate_role(name, description.unwrap_or(""), &permissions)?;
        let key = role_key(name);
        let v = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| IamError::NotFound(format!("role {name:?} does not exist")))?;
        let mut record: RoleRecord = from_json(&key, &v.value)?;
        record.permissions = dedup(permissions);
        if let Some(d) = description {
            record.description = d.to_string();
        }
        self.store
            .put(&key, &to_json(&record)?, PutCondition::Revision(v.revision))
            .await?;
        tracing::info!(role = name, "role updated");
        Ok(record)
    }

    /// Deletes a custom role that no binding uses.
    pub async fn delete_role(&self, name: &str) -> Result<()> {
        model::validate_name("role", name)?;
        if builtin_role(name).is_some() {
            return Err(IamError::Conflict(format!(
                "{name:?} is a built-in role and cannot be deleted"
            )));
        }
        let key = role_key(name);
        let v = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| IamError::NotFound(format!("role {name:?} does not exist")))?;
        let users: Vec<String> = self
            .all_bindings()
            .await?
            .into_iter()
            .filter(|b| b.role == name)
            .map(|b| b.user)
            .collect();
        if !users.is_empty() {
            return Err(IamError::Conflict(format!(
                "role {name:?} is still bound to {}; delete those bindings first",
                users.join(", ")
            )));
        }
        self.store.delete(&key, Some(v.revision)).await?;
        tracing::info!(role = name, "role deleted");
        Ok(())
    }

    // ---- bindings -------------------------------------------------------------------------

    async fn all_bindings(&self) -> Result<Vec<BindingRecord>> {
        self.store
            .list(BINDINGS_PREFIX)
            .await?
            .into_iter()
            .map(|i| from_json(&i.key, &i.value))
            .collect()
    }

    /// Every binding, or one user's.
    pub async fn list_bindings(&self, user: Option<&str>) -> Result<Vec<BindingRecord>> {
        match user {
            None => self.all_bindings().await,
            Some(u) => {
                model::validate_name("user", u)?;
                self.store
                    .list(&user_bindings_prefix(u))
                    .await?
                    .into_iter()
                    .map(|i| from_json(&i.key, &i.value))
                    .collect()
            }
        }
    }

    /// Binds `role` to `user`; `true` if created, `false` if it already existed.
    pub async fn create_binding(&self, user: &str, role: &str) -> Result<(BindingRecord, bool)> {
        model::validate_name("user", user)?;
        model::validate_name("role", role)?;
        self.user_record(user).await?;
        if self.find_role(role).await?.is_none() {
            return Err(IamError::NotFound(format!("role {role:?} does not exist")));
        }
        let record = BindingRecord {
            user: user.to_string(),
            role: role.to_string(),
            created_at: now_unix(),
        };
        let key = binding_key(user, role);
        if self.put_if_absent(&key, &to_json(&record)?).await? {
            tracing::info!(user, role, "role bound");
            return Ok((record, true));
        }
        let v = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| IamError::Conflict("binding changed concurrently; retry".into()))?;
        Ok((from_json(&key, &v.value)?, false))
    }

    /// Removes a binding. Nobody removes their own `admin` binding (no self lock-out).
    pub async fn delete_binding(&self, caller: &Session, user: &str, role: &str) -> Result<()> {
        model::validate_name("user", user)?;
        model::validate_name("role", role)?;
        if caller.subject == user && role == ADMIN_ROLE {
            return Err(IamError::Conflict(
                "you cannot remove your own admin binding; have another admin do it".into(),
            ));
        }
        if !self.store.delete(&binding_key(user, role), None).await? {
            return Err(IamError::NotFound(format!(
                "user {user:?} has no binding to role {role:?}"
            )));
        }
        tracing::info!(user, role, by = %caller.subject, "role unbound");
        Ok(())
    }
}

fn revoked_error() -> IamError {
    IamError::Unauthenticated("token has been revoked; log in again".into())
}

fn user_exists(name: &str) -> IamError {
    IamError::Conflict(format!("user {name:?} already exists"))
}

fn dedup(v: Vec<String>) -> Vec<String> {
    v.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemStore;
    use std::sync::Arc;

    const PW: &str = "correct horse battery";

    /// Two IAM instances (own signing keys) over one shared in-memory store.
    struct Shared(Arc<MemStore>);
    impl Store for Shared {
        async fn get(&self, k: &str) -> Result<Option<crate::store::Versioned>, StoreError> {
            self.0.get(k).await
        }
        async fn put(&self, k: &str, v: &str, c: PutCondition) -> Result<u64, StoreError> {
            self.0.put(k, v, c).await
        }
        async fn list(&self, p: &str) -> Result<Vec<crate::store::Item>, StoreError> {
            self.0.list(p).await
        }
        async fn delete(&self, k: &str, r: Option<u64>) -> Result<bool, StoreError> {
            self.0.delete(k, r).await
        }
        async fn health(&self) -> Result<(), StoreError> {
            self.0.health().await
        }
    }

    fn pair() -> (Arc<MemStore>, Iam<Shared>, Iam<Shared>) {
        let mem = Arc::new(MemStore::default());
        let a = Iam::new(Shared(mem.clone()), TokenSigner::generate(), 3600);
        let b = Iam::new(Shared(mem.clone()), TokenSigner::generate(), 3600);
        (mem, a, b)
    }

    #[tokio::test]
    async fn bootstrap_once_then_replay_then_refuse() {
        let (mem, a, b) = pair();
        assert_eq!(
            a.bootstrap("admin", PW).await.unwrap(),
            BootstrapOutcome::Created
        );
        assert_eq!(
            b.bootstrap("admin", PW).await.unwrap(),
            BootstrapOutcome::AlreadyDone
        );
        let e = a.bootstrap("other", PW).await.unwrap_err();
        assert!(matches!(e, IamError::Conflict(_)), "{e}");
        let e = a
            .bootstrap("admin", "another good password")
            .await
            .unwrap_err();
        assert!(matches!(e, IamError::Conflict(_)), "{e}");
        assert_eq!(mem.count(USERS_PREFIX), 1);
        assert_eq!(mem.count(BINDINGS_PREFIX), 1);
        // A replay after the admin was removed does not resurrect it ("without change").
        mem.delete(&binding_key("admin", ADMIN_ROLE), None)
            .await
            .unwrap();
        assert_eq!(
            a.bootstrap("admin", PW).await.unwrap(),
            BootstrapOutcome::AlreadyDone
        );
        assert_eq!(mem.count(BINDINGS_PREFIX), 0);
    }

    #[tokio::test]
    async fn concurrent_bootstraps_make_exactly_one_admin() {
        let (mem, a, b) = pair();
        let (ra, rb) = tokio::join!(a.bootstrap("alice", PW), b.bootstrap("bob", PW));
        assert!(ra.is_ok() ^ rb.is_ok(), "{ra:?} {rb:?}");
        assert_eq!(mem.count(USERS_PREFIX), 1);
        assert_eq!(mem.count(BINDINGS_PREFIX), 1);
        // Same credentials racing: both succeed, one admin.
        let (mem, a, b) = pair();
        let (ra, rb) = tokio::join!(a.bootstrap("alice", PW), b.bootstrap("alice", PW));
        let mut outcomes = vec![ra.unwrap(), rb.unwrap()];
        outcomes.sort_by_key(|o| *o == BootstrapOutcome::Created);
        assert_eq!(
            outcomes,
            vec![BootstrapOutcome::AlreadyDone, BootstrapOutcome::Created]
        );
        assert_eq!(mem.count(USERS_PREFIX), 1);
    }

    #[tokio::test]
    async fn a_half_done_bootstrap_is_completed_by_the_retry() {
        let (mem, a, _) = pair();
        let rec = BootstrapRecord {
            username: "admin".into(),
            password_hash: crate::password::hash_blocking(PW).unwrap(),
            created_at: 1,
            completed: false,
        };
        mem.put(BOOTSTRAP_KEY, &to_json(&rec).unwrap(), PutCondition::Absent)
            .await
            .unwrap();
        assert_eq!(
            a.bootstrap("admin", PW).await.unwrap(),
            BootstrapOutcome::AlreadyDone
        );
        let t = a.login("admin", PW).await.unwrap();
        let s = a.authenticate(&t.token).await.unwrap();
        assert_eq!(s.roles, vec!["admin"]);
    }

    #[tokio::test]
    async fn tokens_verify_across_instances_and_revocation_is_global() {
        let (_, a, b) = pair();
        a.bootstrap("admin", PW).await.unwrap();
        let t = a.login("admin", PW).await.unwrap();
        assert_eq!(t.expires_in, 3600);
        let s = b.authenticate(&t.token).await.unwrap();
        assert_eq!(s.subject, "admin");
        assert_eq!(s.roles, vec!["admin"]);
        assert!(s.allows(perm::USERS_WRITE));

        let e = a.login("admin", "wrong password!!").await.unwrap_err();
        assert!(matches!(e, IamError::Unauthenticated(_)), "{e}");
        let e = a.login("nobody", PW).await.unwrap_err();
        assert!(matches!(e, IamError::Unauthenticated(_)), "{e}");

        let s = a.authenticate(&t.token).await.unwrap();
        a.revoke(&s, None).await.unwrap();
        for iam in [&a, &b] {
            let e = iam.authenticate(&t.token).await.unwrap_err();
            assert!(e.to_string().contains("revoked"), "{e}");
        }
    }

    #[tokio::test]
    async fn outage_keeps_verified_sessions_and_refuses_logins() {
        let (mem, a, b) = pair();
        a.bootstrap("admin", PW).await.unwrap();
        let t = a.login("admin", PW).await.unwrap();
        a.authenticate(&t.token).await.unwrap();
        let t2 = a.login("admin", PW).await.unwrap();
        mem.set_down(true);
        assert!(matches!(a.health().await, Err(IamError::Unavailable(_))));
        let s = a.authenticate(&t.token).await.unwrap();
        assert_eq!(s.roles, vec!["admin"]);
        let e = a.login("admin", PW).await.unwrap_err();
        assert!(matches!(e, IamError::Unavailable(_)), "{e}");
        // Never verified here: cannot be checked now.
        let e = a.authenticate(&t2.token).await.unwrap_err();
        assert!(matches!(e, IamError::Unavailable(_)), "{e}");
        // Another instance does not know A's key yet.
        let e = b.authenticate(&t.token).await.unwrap_err();
        assert!(matches!(e, IamError::Unavailable(_)), "{e}");
        // Revocation during the outage is refused cluster-wide but holds locally.
        let e = a.revoke(&s, None).await.unwrap_err();
        assert!(matches!(e, IamError::Unavailable(_)), "{e}");
        assert!(a.authenticate(&t.token).await.is_err());
        mem.set_down(false);
        a.health().await.unwrap();
    }

    #[tokio::test]
    async fn roles_permissions_and_bindings() {
        let (mem, a, _) = pair();
        a.bootstrap("admin", PW).await.unwrap();
        let admin = a
            .authenticate(&a.login("admin", PW).await.unwrap().token)
            .await
            .unwrap();
        a.create_user("ops", "tiger lily 4821").await.unwrap();
        assert!(matches!(
            a.create_user("ops", "tiger lily 4821").await,
            Err(IamError::Conflict(_))
        ));
        let tok = a.login("ops", "tiger lily 4821").await.unwrap().token;
        let e = a.authorize(&tok, perm::USERS_READ).await.unwrap_err();
        assert!(matches!(e, IamError::Forbidden(_)), "{e}");

        a.create_role("auditor", "reads users", vec![perm::USERS_READ.into()])
            .await
            .unwrap();
        assert!(matches!(
            a.create_role("viewer", "", vec!["*".into()]).await,
            Err(IamError::Conflict(_))
        ));
        let (_, created) = a.create_binding("ops", "auditor").await.unwrap();
        assert!(created);
        let (_, created) = a.create_binding("ops", "auditor").await.unwrap();
        assert!(!created);
        a.authorize(&tok, perm::USERS_READ).await.unwrap();
        assert!(a.authorize(&tok, perm::USERS_WRITE).await.is_err());

        assert!(matches!(
            a.delete_role("auditor").await,
            Err(IamError::Conflict(_))
        ));
        assert!(matches!(
            a.delete_role("admin").await,
            Err(IamError::Conflict(_))
        ));
        assert!(matches!(
            a.create_binding("ops", "nope").await,
            Err(IamError::NotFound(_))
        ));
        let users = a.list_users().await.unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(a.get_user("ops").await.unwrap().roles, vec!["auditor"]);

        a.update_role(
            "auditor",
            None,
            vec![perm::USERS_READ.into(), perm::ROLES_READ.into()],
        )
        .await
        .unwrap();
        a.authorize(&tok, perm::ROLES_READ).await.unwrap();

        assert!(matches!(
            a.delete_binding(&admin, "admin", ADMIN_ROLE).await,
            Err(IamError::Conflict(_))
        ));
        assert!(matches!(
            a.delete_user(&admin, "admin").await,
            Err(IamError::Conflict(_))
        ));
        a.delete_binding(&admin, "ops", "auditor").await.unwrap();
        assert!(a.authorize(&tok, perm::USERS_READ).await.is_err());
        a.delete_role("auditor").await.unwrap();
        a.delete_user(&admin, "ops").await.unwrap();
        let e = a.authenticate(&tok).await.unwrap_err();
        assert!(matches!(e, IamError::Unauthenticated(_)), "{e}");
        assert_eq!(mem.count(USERS_PREFIX), 1);
    }

    #[tokio::test]
    async fn bad_input_writes_nothing() {
        let (mem, a, _) = pair();
        for (u, p) in [
            ("", PW),
            ("Admin", PW),
            ("admin", "short"),
            (&"a".repeat(65)[..], PW),
        ] {
            let e = a.bootstrap(u, p).await.unwrap_err();
            assert!(matches!(e, IamError::Invalid(_)), "{u:?}: {e}");
        }
        assert_eq!(mem.count(""), 0);
        a.bootstrap("admin", PW).await.unwrap();
        let before = mem.count("");
        assert!(a.create_user("bob", "bob").await.is_err());
        assert!(a
            .create_role("r", "", vec!["Not A Perm".into()])
            .await
            .is_err());
        assert!(a.create_role("r", "", vec![]).await.is_err());
        assert_eq!(mem.count(""), before);
        let e = a.authenticate("not.a.token").await.unwrap_err();
        assert!(matches!(e, IamError::Unauthenticated(_)), "{e}");
        let e = a.login("admin", "").await.unwrap_err();
        assert!(matches!(e, IamError::Invalid(_)), "{e}");
    }

    #[tokio::test]
    async fn expired_tokens_are_refused_and_revocations_pruned() {
        let (mem, a, _) = pair();
        a.bootstrap("admin", PW).await.unwrap();
        a.ensure_key_published().await.unwrap();
        let now = now_unix();
        let (old, _) = a.signer.issue("admin", now - 7200, 3600).unwrap();
        let e = a.authenticate(&old).await.unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        // Revoking an expired token is accepted; the record is pruned once it is old enough.
        let admin = a
            .authenticate(&a.login("admin", PW).await.unwrap().token)
            .await
            .unwrap();
        let (older, _) = a.signer.issue("admin", now - 90_000, 3600).unwrap();
        a.revoke(&admin, Some(&older)).await.unwrap();
        assert_eq!(mem.count(REVOKED_PREFIX), 1);
        assert_eq!(a.prune_revocations().await.unwrap(), 1);
        assert_eq!(mem.count(REVOKED_PREFIX), 0);
    }
}
