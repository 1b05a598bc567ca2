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

/// Highest memory cost accepted in a given hash, in KiB (1 GiB): every login against it
/// allocates that much.
pub const MAX_M_COST_KIB: u32 = 1 << 20;
/// Highest iteration count accepted in a given hash.
pub const MAX_T_COST: u32 = 16;
/// Highest lane count accepted in a given hash.
pub const MAX_P_COST: u32 = 16;

/// Parses a PHC string IAM can verify against: argon2id, version 19 (0x13), a salt and a hash, and
/// parameters at IAM's minimum or above (and within the maxima). The error says what is wrong.
fn parse_phc(phc: &str) -> std::result::Result<PasswordHash<'_>, String> {
    let parsed =
        PasswordHash::new(phc).map_err(|e| format!("is not an argon2id PHC string ({e})"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "uses {}, expected argon2id (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`)",
            parsed.algorithm
        ));
    }
    if parsed.version != Some(0x13) {
        return Err(format!(
            "is argon2 version {}, expected v=19",
            parsed
                .version
                .map_or("(none)".to_string(), |v| v.to_string())
        ));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("lacks its salt or its hash".into());
    }
    let params = Params::try_from(&parsed).map_err(|e| format!("argon2 parameters: {e}"))?;
    if params.m_cost() < M_COST_KIB || params.t_cost() < T_COST || params.p_cost() < P_COST {
        return Err(format!(
            "argon2 parameters m={} t={} p={} are below the minimum m={M_COST_KIB} t={T_COST} p={P_COST}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    if params.m_cost() > MAX_M_COST_KIB
        || params.t_cost() > MAX_T_COST
        || params.p_cost() > MAX_P_COST
    {
        return Err(format!(
            "argon2 parameters m={} t={} p={} are above the maximum m={MAX_M_COST_KIB} t={MAX_T_COST} p={MAX_P_COST}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(parsed)
}

/// Checks a password hash given from outside (the bootstrap admin's, from the contract): an
/// argon2id PHC string IAM can verify logins against. 400 naming `field` otherwise, with the
/// way to make a good one.
pub fn check_phc(field: &str, phc: &str) -> Result<()> {
    if phc.len() > 512 {
        return Err(IamError::Invalid(format!(
            "{field} is {} bytes long; an argon2id PHC string is about 100",
            phc.len()
        )));
    }
    parse_phc(phc).map(|_| ()).map_err(|why| {
        IamError::Invalid(format!(
            "{field} {why}; make one with `iam-server hash-password`"
        ))
    })
}

/// What `iam-server hash-password` does: refuses a weak password by IAM's rule
/// ([`crate::model::validate_password`], with `username` when given), else hashes it.
pub fn hash_new_password(username: Option<&str>, password: &str) -> Result<String> {
    crate::model::validate_password(username.unwrap_or(""), password)?;
    hash_blocking(password)
}

/// Verifies a password against a stored PHC string now, on this thread (blocking). A stored
/// hash that is not argon2id, or is cheaper than IAM's minimum, is an error, not a mismatch.
pub fn verify_blocking(password: &str, phc: &str) -> Result<bool> {
    let parsed =
        parse_phc(phc).map_err(|why| IamError::Store(format!("stored password hash {why}")))?;
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

    #[test]
    fn given_hashes_are_checked_naming_the_field() {
        let good = hash_blocking("correct horse battery").unwrap();
        check_phc("password_hash", &good).unwrap();
        // Stronger parameters than ours verify too.
        let strong = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(65_536, 3, 4, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut rand::rngs::OsRng))
        .unwrap()
        .to_string();
        check_phc("password_hash", &strong).unwrap();
        assert!(verify_blocking("pw", &strong).unwrap());

        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut rand::rngs::OsRng))
        .unwrap()
        .to_string();
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 3, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut rand::rngs::OsRng))
        .unwrap()
        .to_string();
        let huge = good.replace("m=19456", "m=4194304");
        let no_hash = good.rsplit_once('$').unwrap().0.to_string();
        let v16 = good.replace("v=19", "v=16");
        for (bad, needle) in [
            ("correct horse battery", "not an argon2id PHC string"),
            ("", "not an argon2id PHC string"),
            (argon2i.as_str(), "expected argon2id"),
            (cheap.as_str(), "below the minimum"),
            (huge.as_str(), "above the maximum"),
            (no_hash.as_str(), "salt or its hash"),
            (v16.as_str(), "expected v=19"),
            ("$2b$12$abcdefghijklmnopqrstuu", "argon2id"),
        ] {
            let e = check_phc("password_hash", bad).unwrap_err();
            assert!(matches!(e, IamError::Invalid(_)), "{bad:?}: {e}");
            let msg = e.to_string();
            assert!(msg.starts_with("password_hash"), "{bad:?}: {msg}");
            assert!(msg.contains(needle), "{bad:?}: {msg}");
            assert!(msg.contains("iam-server hash-password"), "{msg}");
        }
    }

    #[test]
    fn new_passwords_follow_the_rule() {
        let h = hash_new_password(None, "correct horse battery").unwrap();
        assert!(verify_blocking("correct horse battery", &h).unwrap());
        let e = hash_new_password(None, "short").unwrap_err();
        assert!(e.to_string().contains("too weak"), "{e}");
        let e = hash_new_password(Some("alice"), "alice-in-wonderland").unwrap_err();
        assert!(e.to_string().contains("username"), "{e}");
    }
}
