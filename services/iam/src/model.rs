//! IAM's data model with no I/O: name and password rules, permissions and their matching, the
//! built-in roles, and the JSON records stored in FlareDB.

use crate::{IamError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Longest user or role name.
pub const MAX_NAME_LEN: usize = 64;
/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest accepted password, in bytes (argon2 cost does not depend on it, but bodies do).
pub const MAX_PASSWORD_BYTES: usize = 256;
/// Longest permission string.
pub const MAX_PERMISSION_LEN: usize = 128;
/// Most permissions in one custom role.
pub const MAX_PERMISSIONS_PER_ROLE: usize = 64;
/// Longest role description.
pub const MAX_DESCRIPTION_LEN: usize = 256;

/// Checks a user or role name: 1 to 64 characters of `a-z 0-9 . _ -`, starting with a letter
/// or digit. `what` names the field in the error ("username", "role").
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(IamError::Invalid(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(IamError::Invalid(format!(
            "{what} is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        )));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !rest_ok {
        return Err(IamError::Invalid(format!(
            "{what} {name:?} is not allowed: use lowercase letters, digits, '.', '_' and '-', \
             starting with a letter or digit"
        )));
    }
    Ok(())
}

/// Passwords that pass the length rule but are still refused.
const COMMON_PASSWORDS: &[&str] = &[
    "password1234",
    "123456789012",
    "qwertyuiop12",
    "administrator",
    "changemechangeme",
    "letmeinletmein",
    "passwordpassword",
];

/// Checks a password: at least 12 characters, at most 256 bytes, not the username, not a
/// single repeated character or a well-known password.
pub fn validate_password(username: &str, password: &str) -> Result<()> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(IamError::Invalid(format!(
            "password is too weak: it has {chars} characters, at least {MIN_PASSWORD_CHARS} are required"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(IamError::Invalid(format!(
            "password is {} bytes long; at most {MAX_PASSWORD_BYTES} are allowed",
            password.len()
        )));
    }
    if password.chars().any(char::is_control) {
        return Err(IamError::Invalid(
            "password must not contain control characters".into(),
        ));
    }
    let distinct: BTreeSet<char> = password.chars().collect();
    if distinct.len() < 4 {
        return Err(IamError::Invalid(
            "password is too weak: it uses fewer than 4 distinct characters".into(),
        ));
    }
    let lower = password.to_lowercase();
    if lower.contains(&username.to_lowercase()) && !username.is_empty() {
        return Err(IamError::Invalid(
            "password is too weak: it contains the username".into(),
        ));
    }
    if COMMON_PASSWORDS.contains(&lower.as_str()) {
        return Err(IamError::Invalid(
            "password is too weak: it is a well-known password".into(),
        ));
    }
    Ok(())
}

/// Checks a permission: `:`-separated segments of `a-z 0-9 _ -`, or `*` (any one segment; as
/// the last segment, any one or more). Examples: `iam:users:read`, `compute:*`, `*`.
pub fn validate_permission(p: &str) -> Result<()> {
    if p.is_empty() || p.len() > MAX_PERMISSION_LEN {
        return Err(IamError::Invalid(format!(
            "permission {p:?} must be 1 to {MAX_PERMISSION_LEN} characters"
        )));
    }
    for seg in p.split(':') {
        let ok = seg == "*"
            || (!seg.is_empty()
                && seg.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
                }));
        if !ok {
            return Err(IamError::Invalid(format!(
                "permission {p:?} is malformed: use ':'-separated segments of lowercase letters, \
                 digits, '_' and '-', or '*' (e.g. \"iam:users:read\", \"compute:*\")"
            )));
        }
    }
    Ok(())
}

/// Whether permission pattern `pattern` grants `wanted`. A `*` segment matches any one segment;
/// a trailing `*` matches one or more segments (so `*` alone grants everything).
pub fn permission_matches(pattern: &str, wanted: &str) -> bool {
    let pat: Vec<&str> = pattern.split(':').collect();
    let want: Vec<&str> = wanted.split(':').collect();
    for (i, p) in pat.iter().enumerate() {
        let last = i + 1 == pat.len();
        match want.get(i) {
            None => return false,
            Some(w) => {
                if *p == "*" {
                    if last {
                        return true;
                    }
                } else if p != w {
                    return false;
                }
            }
        }
    }
    pat.len() == want.len()
}

/// The permissions IAM's own endpoints require.
pub mod perm {
    /// List and read users.
    pub const USERS_READ: &str = "iam:users:read";
    /// Create and delete users, set others' passwords.
    pub const USERS_WRITE: &str = "iam:users:write";
    /// List and read roles.
    pub const ROLES_READ: &str = "iam:roles:read";
    /// Create, change and delete custom roles.
    pub const ROLES_WRITE: &str = "iam:roles:write";
    /// List role bindings.
    pub const BINDINGS_READ: &str = "iam:bindings:read";
    /// Create and delete role bindings.
    pub const BINDINGS_WRITE: &str = "iam:bindings:write";
    /// Revoke other users' tokens.
    pub const TOKENS_REVOKE: &str = "iam:tokens:revoke";
}

/// The built-in role every first admin gets.
pub const ADMIN_ROLE: &str = "admin";

/// The built-in role of node tokens (`POST /v1/auth/node-token`); never bound to a user.
pub const NODE_ROLE: &str = "node";

/// The subject of a node's token is `node:<name>`; user names cannot hold `:`, so no user
/// can be mistaken for a node.
pub const NODE_SUBJECT_PREFIX: &str = "node:";

/// The subject of node `name`'s tokens.
pub fn node_subject(name: &str) -> String {
    format!("{NODE_SUBJECT_PREFIX}{name}")
}

/// Built-in roles: name, description, permissions. They cannot be changed or deleted.
pub const BUILTIN_ROLES: &[(&str, &str, &[&str])] = &[
    (ADMIN_ROLE, "Everything, including IAM itself.", &["*"]),
    (
        "operator",
        "Operate the platform's services; read (not change) IAM.",
        &[
            "cluster:*",
            "compute:*",
            "network:*",
            "storage:*",
            "dns:*",
            "lb:*",
            "k8s:*",
            perm::USERS_READ,
            perm::ROLES_READ,
            perm::BINDINGS_READ,
        ],
    ),
    (
        "viewer",
        "Read anything, change nothing.",
        &["*:read", "*:*:read", "*:*:*:read"],
    ),
    (
        NODE_ROLE,
        "A cluster node, proven by its certificate (tokens from POST /v1/auth/node-token); \
         never bound to a user.",
        &["cluster:health:read"],
    ),
];

/// The built-in role named `name`, as a record.
pub fn builtin_role(name: &str) -> Option<RoleRecord> {
    BUILTIN_ROLES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(n, d, p)| RoleRecord {
            name: (*n).to_string(),
            description: (*d).to_string(),
            permissions: p.iter().map(|s| (*s).to_string()).collect(),
            builtin: true,
        })
}

/// The bootstrap claim (`bootstrap`): written once with `prev_exist=false`. It carries the
/// password hash so that a retried bootstrap can be recognised and completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapRecord {
    /// The first admin.
    pub username: String,
    /// argon2id PHC string of the first admin's password.
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Set once the admin user and its binding exist; a replay then writes nothing.
    #[serde(default)]
    pub completed: bool,
}

/// A user (`users/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// The user name (equal to the key's last segment).
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// A role (`roles/<name>` for custom roles; built-ins come from [`BUILTIN_ROLES`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRecord {
    /// The role name.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Permission patterns (see [`permission_matches`]).
    pub permissions: Vec<String>,
    /// `true` for `admin`, `operator`, `viewer`.
    #[serde(default)]
    pub builtin: bool,
}

/// A role binding (`bindings/<user>/<role>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingRecord {
    /// The user.
    pub user: String,
    /// The role.
    pub role: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// A published token signing public key (`keys/<kid>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Key id (the JWT header's `kid`).
    pub kid: String,
    /// Always `EdDSA` (Ed25519).
    pub alg: String,
    /// The 32-byte public key, base64url without padding.
    pub public_key: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// A revoked token (`revoked/<jti>`), kept until the token would have expired anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationRecord {
    /// The token id.
    pub jti: String,
    /// Whose token it was.
    pub sub: String,
    /// When the token expires (unix seconds); the record may be removed after that.
    pub exp: u64,
    /// Unix seconds.
    pub revoked_at: u64,
}

/// Key of a user record.
pub fn user_key(name: &str) -> String {
    format!("{}{name}", crate::store::USERS_PREFIX)
}

/// Key of a custom role record.
pub fn role_key(name: &str) -> String {
    format!("{}{name}", crate::store::ROLES_PREFIX)
}

/// Key of a binding.
pub fn binding_key(user: &str, role: &str) -> String {
    format!("{}{user}/{role}", crate::store::BINDINGS_PREFIX)
}

/// Prefix of one user's bindings.
pub fn user_bindings_prefix(user: &str) -> String {
    format!("{}{user}/", crate::store::BINDINGS_PREFIX)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("username", "alice").is_ok());
        assert!(validate_name("username", "a.b_c-9").is_ok());
        for bad in ["", "Alice", "-a", "a/b", "a b", "é", &"a".repeat(65)] {
            let e = validate_name("username", bad).unwrap_err();
            assert!(matches!(e, IamError::Invalid(_)), "{bad:?}: {e}");
        }
        assert!(validate_name("username", &"a".repeat(64)).is_ok());
    }

    #[test]
    fn weak_passwords_are_refused() {
        assert!(validate_password("alice", "correct horse battery").is_ok());
        for bad in [
            "short",
            "aaaaaaaaaaaaaaaa",
            "alice-is-the-best",
            "password1234",
            &"x1y2".repeat(100),
            "tab\tinside-the-pass",
        ] {
            assert!(validate_password("alice", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn permissions_match_with_wildcards() {
        let cases = [
            ("*", "iam:users:write", true),
            ("iam:*", "iam:users:write", true),
            ("iam:users:read", "iam:users:read", true),
            ("iam:users:read", "iam:users:write", false),
            ("iam:users:read", "iam:users", false),
            ("iam:users", "iam:users:read", false),
            ("*:read", "cluster:read", true),
            ("*:read", "iam:users:read", false),
            ("*:*:read", "iam:users:read", true),
            ("compute:*", "compute", false),
        ];
        for (p, w, want) in cases {
            assert_eq!(permission_matches(p, w), want, "{p} vs {w}");
        }
    }

    #[test]
    fn permission_syntax() {
        for ok in ["*", "iam:users:read", "compute:*", "a-b:c_d"] {
            validate_permission(ok).unwrap();
        }
        for bad in ["", "Iam:x", "a::b", "a:**", "a b", &"a".repeat(129)] {
            assert!(validate_permission(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn builtin_roles_are_valid_and_admin_can_do_everything() {
        for (name, _, perms) in BUILTIN_ROLES {
            validate_name("role", name).unwrap();
            for p in *perms {
                validate_permission(p).unwrap();
            }
        }
        let admin = builtin_role(ADMIN_ROLE).unwrap();
        assert!(admin
            .permissions
            .iter()
            .any(|p| permission_matches(p, perm::USERS_WRITE)));
        let node = builtin_role(NODE_ROLE).unwrap();
        assert!(!node
            .permissions
            .iter()
            .any(|p| permission_matches(p, perm::USERS_READ)));
        assert!(validate_name("username", &node_subject("node01")).is_err());
        let viewer = builtin_role("viewer").unwrap();
        assert!(viewer
            .permissions
            .iter()
            .any(|p| permission_matches(p, perm::USERS_READ)));
        assert!(!viewer
            .permissions
            .iter()
            .any(|p| permission_matches(p, perm::USERS_WRITE)));
    }
}
