//! Access tokens: compact JWTs signed with Ed25519 (`alg: EdDSA`, RFC 8037 §3.1 over
//! RFC 7515 §7.1 compact serialisation), and the signing key file.
//!
//! Header: `{"alg":"EdDSA","typ":"JWT","kid":"<key id>"}`. Claims (RFC 7519 §4.1):
//! `{"iss":"plasmacloud-iam","sub":"<user>","iat":<unix s>,"exp":<unix s>,"jti":"<random id>"}`,
//! and for a node's token (`sub` `node:<name>`) also `"cert_serial"`: the serial of the node
//! certificate it was issued against, so the token dies with that certificate's revocation.
//! Roles are not in the token: they are looked up when a token is used, so unbinding a role
//! takes effect at once. The `kid` is the first 16 bytes of SHA-256 over the raw public key,
//! hex; every instance publishes its public key under `keys/<kid>` in FlareDB, so any instance
//! verifies any instance's tokens.
//!
//! Verification is strict: exactly three base64url (no padding) parts, a header and claims
//! with no unknown fields, `alg` `EdDSA`, the issuer, a 64-byte signature checked with
//! `verify_strict`, and an `exp` in the future.

use crate::{IamError, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::path::Path;

/// The `iss` claim of every IAM token.
pub const ISSUER: &str = "plasmacloud-iam";
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 2048;
/// How far in the future `iat` may be (clock skew between IAM instances), in seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// The JOSE header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always `EdDSA`.
    pub alg: String,
    /// Always `JWT`.
    pub typ: String,
    /// Which published key verifies the signature.
    pub kid: String,
}

/// The token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// The user name.
    pub sub: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// Token id (for revocation), 16 random bytes base64url.
    pub jti: String,
    /// Node tokens only: the serial (lowercase hex) of the client certificate the token was
    /// issued against; the token is refused once that serial is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_serial: Option<String>,
}

/// A token taken apart, its signature not yet checked.
#[derive(Debug, Clone)]
pub struct Unverified {
    /// The header.
    pub header: Header,
    /// The claims.
    pub claims: Claims,
    signing_input: String,
    signature: Signature,
}

fn malformed(why: impl std::fmt::Display) -> IamError {
    IamError::Unauthenticated(format!("malformed token: {why}"))
}

/// Takes a compact JWT apart without checking its signature or expiry.
pub fn parse(token: &str) -> Result<Unverified> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed(format!(
            "{} bytes, at most {MAX_TOKEN_LEN} allowed",
            token.len()
        )));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three '.'-separated parts"));
    };
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|e| malformed(format!("header is not base64url: {e}")))?;
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|e| malformed(format!("header: {e}")))?;
    if header.alg != "EdDSA" || header.typ != "JWT" {
        return Err(malformed(format!(
            "unsupported alg/typ {}/{}; IAM issues EdDSA JWTs",
            header.alg, header.typ
        )));
    }
    let claim_bytes = URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|e| malformed(format!("claims are not base64url: {e}")))?;
    let claims: Claims =
        serde_json::from_slice(&claim_bytes).map_err(|e| malformed(format!("claims: {e}")))?;
    if claims.iss != ISSUER {
        return Err(malformed(format!(
            "issuer {:?} is not {ISSUER:?}",
            claims.iss
        )));
    }
    let sig_bytes = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| malformed(format!("signature is not base64url: {e}")))?;
    let sig: [u8; 64] = sig_bytes
        .as_slice()
        .try_into()
        .map_err(|_| malformed("signature is not 64 bytes"))?;
    Ok(Unverified {
        header,
        claims,
        signing_input: format!("{h}.{c}"),
        signature: Signature::from_bytes(&sig),
    })
}

impl Unverified {
    /// Checks the signature with `key` and the time window at `now`; returns the claims.
    pub fn verify(self, key: &VerifyingKey, now: u64) -> Result<Claims> {
        let claims = self.verify_signature(key)?;
        check_times(&claims, now)?;
        Ok(claims)
    }

    /// Checks only the signature (for revoking tokens that may have expired already).
    pub fn verify_signature(self, key: &VerifyingKey) -> Result<Claims> {
        key.verify_strict(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| IamError::Unauthenticated("token signature is invalid".into()))?;
        Ok(self.claims)
    }
}

/// Checks `exp` and `iat` against `now`.
pub fn check_times(claims: &Claims, now: u64) -> Result<()> {
    if claims.exp <= now {
        return Err(IamError::Unauthenticated(format!(
            "token expired {} s ago; log in again",
            now - claims.exp
        )));
    }
    if claims.iat > now + MAX_CLOCK_SKEW_SECS {
        return Err(IamError::Unauthenticated(
            "token is issued in the future; check the clocks of the IAM nodes".into(),
        ));
    }
    Ok(())
}

/// The key id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..16])
}

/// A public key from its base64url form (as published in `keys/<kid>`).
pub fn decode_public_key(b64: &str) -> Result<VerifyingKey> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|e| IamError::Store(format!("published key is not base64url: {e}")))?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| IamError::Store("published key is not 32 bytes".into()))?;
    VerifyingKey::from_bytes(&arr)
        .map_err(|e| IamError::Store(format!("published key is not an Ed25519 point: {e}")))
}

/// The base64url form of a public key.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// Issues tokens with one Ed25519 key.
#[derive(Clone)]
pub struct TokenSigner {
    key: SigningKey,
    kid: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer for `key`.
    pub fn new(key: SigningKey) -> Self {
        let kid = key_id(&key.verifying_key());
        Self { key, kid }
    }

    /// A signer with a fresh random key (tests, benchmarks).
    pub fn generate() -> Self {
        Self::new(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs a token for `sub`, valid from `now` for `ttl_secs`.
    pub fn issue(&self, sub: &str, now: u64, ttl_secs: u64) -> Result<(String, Claims)> {
        self.issue_bound(sub, None, now, ttl_secs)
    }

    /// [`Self::issue`], bound to the client certificate `cert_serial` when given (node tokens).
    pub fn issue_bound(
        &self,
        sub: &str,
        cert_serial: Option<&str>,
        now: u64,
        ttl_secs: u64,
    ) -> Result<(String, Claims)> {
        let mut jti = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut jti);
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: sub.to_string(),
            iat: now,
            exp: now.saturating_add(ttl_secs),
            jti: URL_SAFE_NO_PAD.encode(jti),
            cert_serial: cert_serial.map(str::to_string),
        };
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            kid: self.kid.clone(),
        };
        let signing_input = format!("{}.{}", b64_json(&header)?, b64_json(&claims)?);
        let sig = self.key.sign(signing_input.as_bytes());
        Ok((
            format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes())),
            claims,
        ))
    }
}

fn b64_json<T: Serialize>(v: &T) -> Result<String> {
    let bytes = serde_json::to_vec(v).map_err(|e| IamError::Internal(format!("json: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Loads the signing key from `path` (PKCS#8 PEM, or the raw 32-byte seed), or, when the file
/// does not exist, creates it: a fresh key written as PKCS#8 PEM with mode 0600, atomically
/// (written to a temporary file, then hard-linked into place, so a crash never leaves half a
/// key and two processes never both win). Blocking file I/O: call from `spawn_blocking` or
/// before the runtime serves.
pub fn load_or_create_signing_key(path: &Path) -> Result<(SigningKey, bool)> {
    let err = |reason: String| IamError::SigningKey {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            warn_if_readable_by_others(path);
            return parse_signing_key(&bytes).map(|k| (k, false)).map_err(err);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(format!("cannot read it: {e}"))),
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| err(format!("cannot encode a new key: {e}")))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| err(format!("cannot create directory {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()?;
        Ok(())
    };
    write().map_err(|e| err(format!("cannot write {}: {e}", tmp.display())))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok((key, true))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
            parse_signing_key(&bytes).map(|k| (k, false)).map_err(err)
        }
        Err(e) => Err(err(format!("cannot create it: {e}"))),
    }
}

fn parse_signing_key(bytes: &[u8]) -> std::result::Result<SigningKey, String> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if text.contains("-----BEGIN") {
            return SigningKey::from_pkcs8_pem(text).map_err(|e| {
                format!("not an Ed25519 PKCS#8 PEM key ({e}); remove the file to have a new key generated")
            });
        }
    }
    let seed: [u8; 32] = bytes.try_into().map_err(|_| {
        format!(
            "{} bytes: expected an Ed25519 PKCS#8 PEM key or a raw 32-byte seed; remove the file to have a new key generated",
            bytes.len()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "signing key file is readable by group or others; chmod 600 it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_tampering_fails() {
        let s = TokenSigner::generate();
        let (tok, claims) = s.issue("alice", 1000, 60).unwrap();
        let got = parse(&tok)
            .unwrap()
            .verify(&s.verifying_key(), 1001)
            .unwrap();
        assert_eq!(got, claims);
        assert_eq!(parse(&tok).unwrap().header.kid, s.kid());

        // Expired.
        let e = parse(&tok)
            .unwrap()
            .verify(&s.verifying_key(), 1060)
            .unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        // Another key.
        let other = TokenSigner::generate();
        assert!(parse(&tok)
            .unwrap()
            .verify(&other.verifying_key(), 1001)
            .is_err());
        // Claims swapped for another user's, signature kept.
        let (tok2, _) = s.issue("mallory", 1000, 60).unwrap();
        let p1: Vec<&str> = tok.split('.').collect();
        let p2: Vec<&str> = tok2.split('.').collect();
        let forged = format!("{}.{}.{}", p1[0], p2[1], p1[2]);
        assert!(parse(&forged)
            .unwrap()
            .verify(&s.verifying_key(), 1001)
            .is_err());
    }

    #[test]
    fn node_tokens_carry_their_certificate_and_user_tokens_do_not() {
        let s = TokenSigner::generate();
        let (tok, claims) = s
            .issue_bound("node:node01", Some("4a01"), 1000, 60)
            .unwrap();
        assert_eq!(claims.cert_serial.as_deref(), Some("4a01"));
        let got = parse(&tok)
            .unwrap()
            .verify(&s.verifying_key(), 1001)
            .unwrap();
        assert_eq!(got, claims);
        let (user, _) = s.issue("alice", 1000, 60).unwrap();
        let claims_json = URL_SAFE_NO_PAD
            .decode(user.split('.').nth(1).unwrap())
            .unwrap();
        let text = String::from_utf8(claims_json).unwrap();
        assert!(!text.contains("cert_serial"), "{text}");
    }

    #[test]
    fn malformed_tokens_are_unauthenticated() {
        let s = TokenSigner::generate();
        let (tok, _) = s.issue("alice", 1000, 60).unwrap();
        let p: Vec<&str> = tok.split('.').collect();
        let none_alg = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"x"}"#);
        let extra = URL_SAFE_NO_PAD.encode(
            br#"{"iss":"plasmacloud-iam","sub":"a","iat":1,"exp":2,"jti":"j","admin":true}"#,
        );
        for bad in [
            String::new(),
            "abc".into(),
            "a.b".into(),
            format!("{tok}.x"),
            format!("{none_alg}.{}.{}", p[1], p[2]),
            format!("{}.{extra}.{}", p[0], p[2]),
            format!("{}.{}.AAAA", p[0], p[1]),
            format!("{}.{}.{}=", p[0], p[1], p[2]),
            "x".repeat(5000),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(matches!(e, IamError::Unauthenticated(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn key_file_is_created_0600_then_reloaded_and_raw_seeds_work() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/signing.pem");
        let (k1, created) = load_or_create_signing_key(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = load_or_create_signing_key(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.to_bytes(), k2.to_bytes());

        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        let (k3, _) = load_or_create_signing_key(&raw).unwrap();
        assert_eq!(k3.to_bytes(), [7u8; 32]);

        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, b"hello").unwrap();
        let e = load_or_create_signing_key(&bad).unwrap_err();
        assert!(e.to_string().contains("bad.key"), "{e}");
    }
}
