//! The service's rooms together, over two instances (own signing keys) sharing one in-memory
//! store: bootstrap races, tokens across instances, revocation, outages, roles and bindings.

use super::bootstrap::BootstrapOutcome;
use super::state::{to_json, Iam};
use crate::model::{binding_key, now_unix, perm, BootstrapRecord, ADMIN_ROLE};
use crate::store::memory::MemStore;
use crate::store::{
    Item, PutCondition, Store, StoreError, Versioned, BINDINGS_PREFIX, BOOTSTRAP_KEY,
    REVOKED_PREFIX, USERS_PREFIX,
};
use crate::token::TokenSigner;
use crate::IamError;
use plasmacloud_pki::{Identity, PeerCert, Revocations};
use std::sync::Arc;

const PW: &str = "correct horse battery";

/// The admin's password hash, as the contract carries it (made once: argon2 is slow).
fn pw_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| crate::password::hash_blocking(PW).expect("hash"))
}

/// Two IAM instances (own signing keys) over one shared in-memory store.
struct Shared(Arc<MemStore>);
impl Store for Shared {
    async fn get(&self, k: &str) -> Result<Option<Versioned>, StoreError> {
        self.0.get(k).await
    }
    async fn put(&self, k: &str, v: &str, c: PutCondition) -> Result<u64, StoreError> {
        self.0.put(k, v, c).await
    }
    async fn list(&self, p: &str) -> Result<Vec<Item>, StoreError> {
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
        a.bootstrap("admin", pw_hash()).await.unwrap(),
        BootstrapOutcome::Created
    );
    assert_eq!(
        b.bootstrap("admin", pw_hash()).await.unwrap(),
        BootstrapOutcome::AlreadyDone
    );
    let e = a.bootstrap("other", pw_hash()).await.unwrap_err();
    assert!(matches!(e, IamError::Conflict(_)), "{e}");
    let e = a
        .bootstrap(
            "admin",
            &crate::password::hash_blocking("another good password").unwrap(),
        )
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
        a.bootstrap("admin", pw_hash()).await.unwrap(),
        BootstrapOutcome::AlreadyDone
    );
    assert_eq!(mem.count(BINDINGS_PREFIX), 0);
}

#[tokio::test]
async fn concurrent_bootstraps_make_exactly_one_admin() {
    let (mem, a, b) = pair();
    let (ra, rb) = tokio::join!(
        a.bootstrap("alice", pw_hash()),
        b.bootstrap("bob", pw_hash())
    );
    assert!(ra.is_ok() ^ rb.is_ok(), "{ra:?} {rb:?}");
    assert_eq!(mem.count(USERS_PREFIX), 1);
    assert_eq!(mem.count(BINDINGS_PREFIX), 1);
    // Same credentials racing: both succeed, one admin.
    let (mem, a, b) = pair();
    let (ra, rb) = tokio::join!(
        a.bootstrap("alice", pw_hash()),
        b.bootstrap("alice", pw_hash())
    );
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
        password_hash: pw_hash().to_string(),
        created_at: 1,
        completed: false,
    };
    mem.put(BOOTSTRAP_KEY, &to_json(&rec).unwrap(), PutCondition::Absent)
        .await
        .unwrap();
    assert_eq!(
        a.bootstrap("admin", pw_hash()).await.unwrap(),
        BootstrapOutcome::AlreadyDone
    );
    let t = a.login("admin", PW).await.unwrap();
    let s = a.authenticate(&t.token).await.unwrap();
    assert_eq!(s.roles, vec!["admin"]);
}

#[tokio::test]
async fn tokens_verify_across_instances_and_revocation_is_global() {
    let (_, a, b) = pair();
    a.bootstrap("admin", pw_hash()).await.unwrap();
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
    a.bootstrap("admin", pw_hash()).await.unwrap();
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
    a.bootstrap("admin", pw_hash()).await.unwrap();
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
        ("", pw_hash()),
        ("Admin", pw_hash()),
        ("admin", PW),
        (
            "admin",
            "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
        ),
        (&"a".repeat(65)[..], pw_hash()),
    ] {
        let e = a.bootstrap(u, p).await.unwrap_err();
        assert!(matches!(e, IamError::Invalid(_)), "{u:?}: {e}");
    }
    assert_eq!(mem.count(""), 0);
    a.bootstrap("admin", pw_hash()).await.unwrap();
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
    a.bootstrap("admin", pw_hash()).await.unwrap();
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

/// A verified peer certificate as the listener hands it over.
fn cert(identity: Identity, serial: &str, valid_for: i64) -> PeerCert {
    let now = now_unix() as i64;
    PeerCert {
        identity,
        serial: serial.into(),
        not_before: now - 60,
        not_after: now + valid_for,
        sha256: "00".repeat(32),
    }
}

#[tokio::test]
async fn node_tokens_verify_everywhere_and_die_with_their_certificate() {
    let mem = Arc::new(MemStore::default());
    let revoked = Revocations::default();
    let a = Iam::new(Shared(mem.clone()), TokenSigner::generate(), 3600)
        .with_cert_revocations(revoked.clone());
    let b = Iam::new(Shared(mem.clone()), TokenSigner::generate(), 3600)
        .with_cert_revocations(revoked.clone());
    let node01 = cert(Identity::node("node01").unwrap(), "4a01", 86_400);

    let t = a.issue_node_token(&node01).await.unwrap();
    assert_eq!(t.expires_in, 3600);
    for iam in [&a, &b] {
        let s = iam.authenticate(&t.token).await.unwrap();
        assert_eq!(s.subject, "node:node01");
        assert_eq!(s.roles, vec!["node"]);
        assert!(!s.allows(perm::USERS_READ));
        let e = iam.authorize(&t.token, perm::USERS_READ).await.unwrap_err();
        assert!(matches!(e, IamError::Forbidden(_)), "{e}");
    }
    // No user record was needed, and none was written.
    assert_eq!(mem.count(USERS_PREFIX), 0);

    // The token does not outlive the certificate.
    let short = cert(Identity::node("node02").unwrap(), "4a02", 120);
    let t2 = a.issue_node_token(&short).await.unwrap();
    assert!(t2.expires_in <= 120, "{}", t2.expires_in);

    // Operators get none.
    let op = cert(Identity::operator("alice").unwrap(), "4a03", 86_400);
    let e = a.issue_node_token(&op).await.unwrap_err();
    assert!(matches!(e, IamError::Forbidden(_)), "{e}");

    // The role belongs to node tokens: no user can be bound to it.
    a.bootstrap("admin", pw_hash()).await.unwrap();
    let e = a.create_binding("admin", "node").await.unwrap_err();
    assert!(matches!(e, IamError::Invalid(_)), "{e}");

    // Revoking the certificate ends its tokens on every instance, and no new one is issued.
    revoked.replace(["4a01".to_string()]);
    for iam in [&a, &b] {
        let e = iam.authenticate(&t.token).await.unwrap_err();
        assert!(e.to_string().contains("revoked"), "{e}");
    }
    let e = a.issue_node_token(&node01).await.unwrap_err();
    assert!(matches!(e, IamError::Forbidden(_)), "{e}");
    // Revoking the token itself works as for users.
    let s2 = b.authenticate(&t2.token).await.unwrap();
    b.revoke(&s2, None).await.unwrap();
    let e = a.authenticate(&t2.token).await.unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
}
