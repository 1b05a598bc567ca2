//! Password hashing: argon2id in PHC string format at OWASP's minimum cost or above
//! (m = 19456 KiB, t = 2, p = 1), always run off the async runtime.

use crate::{IamError, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// Memory cost in KiB (OWASP: 19 MiB).
pub const M_COST_KIB: u32 = 19_456;
/// Iterations (OWASP: 2).
pub const T_COST: u32 = 2;
/// Lanes (OWASP: 1).
pub const P_COST: u32 = 1;

/// The argon2id instance at IAM's parameters.
pub fn argon2() -> Result<Argon2<'static>> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| IamError::Internal(format!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password now, on this thread (blocking: tens of milliseconds).
pub fn hash_blocking(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IamError::Internal(format!("argon2 hashing: {e}")))
}

/// Verifies a password against a stored PHC string now, on this thread (blocking). A stored
/// hash that is not argon2id, or is cheaper than IAM's minimum, is an error, not a mismatch.
pub fn verify_blocking(password: &str, phc: &str) -> Result<bool> {
    let parsed = PasswordHash::new(phc)
        .map_err(|e| IamError::Store(format!("stored password hash is not a PHC string: {e}")))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(IamError::Store(format!(
            "stored password hash uses {}, expected argon2id",
            parsed.algorithm
        )));
    }
    let params = Params::try_from(&parsed)
        .map_err(|e| IamError::Store(format!("stored argon2 parameters: {e}")))?;
    if params.m_cost() < M_COST_KIB || params.t_cost() < T_COST || params.p_cost() < P_COST {
        return Err(IamError::Store(format!(
            "stored argon2 parameters m={} t={} p={} are below the minimum m={M_COST_KIB} t={T_COST} p={P_COST}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        )));
    }
    match argon2()?.verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(IamError::Internal(format!("argon2 verification: {e}"))),
    }
}

/// Runs argon2 on tokio's blocking pool, at most `2 × cores` at a time (each run holds 19 MiB),
/// so a burst of logins cannot exhaust memory or starve the runtime.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
}

impl Default for Hasher {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            permits: Arc::new(Semaphore::new(cores * 2)),
        }
    }
}

impl Hasher {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| IamError::Internal("password hasher shut down".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| IamError::Internal(format!("password hashing task failed: {e}")))?
    }

    /// Hashes `password` to an argon2id PHC string.
    pub async fn hash(&self, password: &str) -> Result<String> {
        let pw = password.to_string();
        self.run(move || hash_blocking(&pw)).await
    }

    /// Verifies `password` against `phc`.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<bool> {
        let (pw, phc) = (password.to_string(), phc.to_string());
        self.run(move || verify_blocking(&pw, &phc)).await
    }

    /// Spends the time of a verification without a stored hash, so that an unknown user
    /// cannot be told from a wrong password by timing.
    pub async fn verify_dummy(&self, password: &str) {
        static DUMMY: OnceLock<Option<String>> = OnceLock::new();
        let pw = password.to_string();
        let _ = self
            .run(move || {
                let phc = DUMMY
                    .get_or_init(|| hash_blocking("dummy password for timing").ok())
                    .clone()
                    .ok_or_else(|| IamError::Internal("dummy hash".into()))?;
                verify_blocking(&pw, &phc)
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_phc_at_owasp_cost_and_verify() {
        let h = hash_blocking("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_blocking("correct horse battery", &h).unwrap());
        assert!(!verify_blocking("wrong horse battery", &h).unwrap());
    }

    #[test]
    fn cheap_or_foreign_hashes_are_errors() {
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut rand::rngs::OsRng))
        .unwrap()
        .to_string();
        assert!(verify_blocking("pw", &cheap).is_err());
        assert!(verify_blocking("pw", "not a hash").is_err());
    }
}
