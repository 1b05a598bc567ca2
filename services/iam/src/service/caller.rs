//! Who is calling: the [`Session`] a verified token stands for, and its permission checks.
//! No I/O; the `session` room builds sessions, every other room takes one as the caller.

use crate::model::permission_matches;
use crate::{IamError, Result};
use serde::Serialize;

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
