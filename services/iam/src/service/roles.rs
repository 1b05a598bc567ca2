//! Roles and role bindings: the built-in roles (code, never stored) and custom ones (CRUD), the
//! bindings of users to roles, and what a user's bindings grant. A role still bound cannot be
//! deleted, and nobody removes their own `admin` binding (no self lock-out).

use super::caller::Session;
use super::state::{from_json, to_json, Iam};
use crate::model::{
    self, binding_key, builtin_role, now_unix, role_key, user_bindings_prefix, BindingRecord,
    RoleRecord, ADMIN_ROLE, BUILTIN_ROLES, NODE_ROLE,
};
use crate::store::{PutCondition, Store, BINDINGS_PREFIX, ROLES_PREFIX};
use crate::{IamError, Result};
use std::collections::BTreeSet;

impl<S: Store> Iam<S> {
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

    /// The checks a custom role's name, description and permissions pass before any write.
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
        let (mut record, rev): (RoleRecord, u64) = self.existing_record(&key, "role", name).await?;
        record.permissions = dedup(permissions);
        if let Some(d) = description {
            record.description = d.to_string();
        }
        self.store
            .put(&key, &to_json(&record)?, PutCondition::Revision(rev))
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
        let v = self.existing(&key, "role", name).await?;
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

    /// A user's bound roles and the union of their permissions. Bindings to roles that no
    /// longer exist are ignored.
    pub(super) async fn roles_of(&self, user: &str) -> Result<(Vec<String>, Vec<String>)> {
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

    /// A built-in or custom role by name, `None` when there is none.
    pub(super) async fn find_role(&self, name: &str) -> Result<Option<RoleRecord>> {
        if let Some(r) = builtin_role(name) {
            return Ok(Some(r));
        }
        match self.store.get(&role_key(name)).await? {
            Some(v) => Ok(Some(from_json(&role_key(name), &v.value)?)),
            None => Ok(None),
        }
    }

    // ---- bindings -------------------------------------------------------------------------

    /// Every binding of every user.
    pub(super) async fn all_bindings(&self) -> Result<Vec<BindingRecord>> {
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
        if role == NODE_ROLE {
            return Err(IamError::Invalid(format!(
                "role {NODE_ROLE:?} belongs to node tokens (POST /v1/auth/node-token, node \
                 certificate only) and cannot be bound to a user"
            )));
        }
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

fn dedup(v: Vec<String>) -> Vec<String> {
    v.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}
