//! Users: list, show, create, change a password, delete. A user's roles come from their
//! bindings (`roles`); nobody deletes their own user (no self lock-out).

use super::caller::Session;
use super::state::{from_json, to_json, Iam};
use crate::model::{
    self, now_unix, perm, user_bindings_prefix, user_key, BindingRecord, UserRecord,
};
use crate::store::{PutCondition, Store, USERS_PREFIX};
use crate::{IamError, Result};
use serde::Serialize;
use std::collections::BTreeMap;

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

impl<S: Store> Iam<S> {
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

    /// The user record and its revision; 404 when there is no such user.
    pub(super) async fn user_record(&self, name: &str) -> Result<(UserRecord, u64)> {
        self.existing_record(&user_key(name), "user", name).await
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
}

fn user_exists(name: &str) -> IamError {
    IamError::Conflict(format!("user {name:?} already exists"))
}
