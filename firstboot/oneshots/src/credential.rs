//! The IAM bootstrap credential file the contract points to (`iam.bootstrap_credential`):
//! `iam-setup` creates the admin from it on the seed, and `health-check` logs in with it.

use std::path::Path;

use serde::Deserialize;

use crate::step::{StepError, StepResult};

/// The bootstrap credential file: `{"username": "...", "password": "..."}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The admin's user name.
    pub username: String,
    /// The admin's password.
    pub password: String,
}

/// Reads the credential file; every problem is a configuration error naming the file.
pub fn read_credential(path: &Path) -> StepResult<Credential> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        StepError::Config(format!(
            "iam.bootstrap_credential {}: {e} (the seed's overlay must carry it)",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        StepError::Config(format!(
            "iam.bootstrap_credential {}: {e} (expected {{\"username\": \"…\", \"password\": \"…\"}})",
            path.display()
        ))
    })
}
