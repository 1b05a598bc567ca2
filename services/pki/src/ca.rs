//! The cluster CA: created once, kept as `ca.key` (0600) and `ca.crt` in a directory of the
//! provisioning host, and the only signer of node and operator certificates.
//!
//! The rules:
//! - the key is written 0600 with `O_EXCL` and fsynced before the certificate is, so a power
//!   cut leaves either no CA or a complete one, never a certificate without its key;
//! - loading refuses a key others may read, and a key that does not match the certificate;
//! - a certificate's identity, names and addresses are the CA's decision ([`CertSpec`]): a
//!   CSR contributes only its public key (ECDSA P-256), whatever else it asks for.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::Digest;

use crate::credentials::{read_file, write_private, write_public};
use crate::identity::{inspect, Identity, PeerCert};
use crate::{invalid, PkiError, Result};

/// The CA key file in the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The CA certificate file in the CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// How long the CA is valid (days).
pub const CA_DAYS: i64 = 3650;
/// Default validity of a node certificate (days).
pub const NODE_DAYS: i64 = 365;
/// Default validity of an operator certificate (days).
pub const OPERATOR_DAYS: i64 = 90;

/// What a certificate says: the CA decides all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Who holds it (the URI SAN and the subject's CN).
    pub identity: Identity,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs (clients connect to nodes by address).
    pub ips: Vec<IpAddr>,
    /// May serve TLS (nodes, the enrollment endpoint).
    pub server_auth: bool,
    /// May authenticate as a TLS client (everyone).
    pub client_auth: bool,
    /// Valid for this many days from now.
    pub days: i64,
}

impl CertSpec {
    /// A node: DNS and IP SANs of its contract name and address, server and client auth.
    pub fn node(identity: Identity, ip: IpAddr) -> Self {
        Self {
            dns: vec![identity.name.clone()],
            ips: vec![ip],
            identity,
            server_auth: true,
            client_auth: true,
            days: NODE_DAYS,
        }
    }

    /// An operator (or a tool acting as one): client auth only.
    pub fn operator(identity: Identity) -> Self {
        Self {
            identity,
            dns: Vec::new(),
            ips: Vec::new(),
            server_auth: false,
            client_auth: true,
            days: OPERATOR_DAYS,
        }
    }
}

/// A certificate the CA signed.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM.
    pub cert_pem: String,
    /// What it says (identity, serial, validity).
    pub cert: PeerCert,
}

/// The CA, loaded: its certificate and the key that signs.
pub struct ClusterCa {
    dir: Option<PathBuf>,
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
    issuer: rcgen::Certificate,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("dir", &self.dir)
            .field("sha256", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

fn sign_err(e: rcgen::Error) -> PkiError {
    PkiError::Sign(e.to_string())
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    // A positive DER INTEGER of 16 bytes: top bit clear, first byte non-zero.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that run behind.
    (
        now - time::Duration::minutes(10),
        now + time::Duration::days(days),
    )
}

/// The PEM blocks of `label` in `text` as DER.
pub(crate) fn pem_blocks(what: &str, text: &str, label: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for item in rustls_pemfile::read_all(&mut text.as_bytes()) {
        match item {
            Ok(rustls_pemfile::Item::X509Certificate(c)) if label == "CERTIFICATE" => {
                out.push(c.to_vec())
            }
            Ok(rustls_pemfile::Item::Csr(c)) if label == "CERTIFICATE REQUEST" => {
                out.push(c.to_vec())
            }
            Ok(_) => {}
            Err(e) => return Err(invalid(what, format!("not PEM: {e}"))),
        }
    }
    if out.is_empty() {
        return Err(invalid(what, format!("holds no PEM {label}")));
    }
    Ok(out)
}

/// The SPKI DER of a certificate.
pub(crate) fn cert_spki(what: &str, der: &[u8]) -> Result<Vec<u8>> {
    let (_, c) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid(what, format!("not an X.509 certificate: {e}")))?;
    Ok(c.tbs_certificate.subject_pki.raw.to_vec())
}

impl ClusterCa {
    /// A new CA in memory for cluster `cluster` (its name goes into the subject).
    pub fn generate(cluster: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "PlasmaCloud");
        dn.push(
            DnType::CommonName,
            format!("PlasmaCloud cluster CA {cluster}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(CA_DAYS);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(sign_err)?;
        let cert_pem = cert.pem();
        Self::from_parts(None, cert_pem, key)
    }

    fn from_parts(dir: Option<PathBuf>, cert_pem: String, key: KeyPair) -> Result<Self> {
        let what = dir
            .as_ref()
            .map(|d| d.join(CA_CERT_FILE).display().to_string())
            .unwrap_or_else(|| "CA certificate".into());
        let der = pem_blocks(&what, &cert_pem, "CERTIFICATE")?.remove(0);
        if cert_spki(&what, &der)? != key.public_key_der() {
            return Err(invalid(
                what,
                "does not belong to the CA key beside it (ca.key); import a matching pair",
            ));
        }
        let params = CertificateParams::from_ca_cert_pem(&cert_pem)
            .map_err(|e| invalid(&what, format!("not a CA certificate: {e}")))?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(invalid(
                &what,
                "is not a CA certificate (no CA basic constraint)",
            ));
        }
        // Only the subject, key identifier and key usages of this are used to sign.
        let issuer = params.self_signed(&key).map_err(sign_err)?;
        Ok(Self {
            dir,
            cert_pem,
            cert_der: der,
            key,
            issuer,
        })
    }

    /// Loads `DIR/ca.key` and `DIR/ca.crt`.
    pub fn load(dir: &Path) -> Result<Self> {
        let key_path = dir.join(CA_KEY_FILE);
        crate::credentials::check_private_mode(&key_path)?;
        let key_pem = read_file(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            invalid(
                key_path.display().to_string(),
                format!("not a PEM private key: {e}"),
            )
        })?;
        let cert_pem = read_file(&dir.join(CA_CERT_FILE))?;
        Self::from_parts(Some(dir.to_path_buf()), cert_pem, key)
    }

    /// Is there a CA in `dir` (its key file exists)?
    pub fn exists(dir: &Path) -> bool {
        dir.join(CA_KEY_FILE).exists()
    }

    /// Loads the CA in `dir`, or creates one there when `dir` holds none. Returns whether it
    /// was created.
    pub fn load_or_create(dir: &Path, cluster: &str) -> Result<(Self, bool)> {
        if Self::exists(dir) {
            return Ok((Self::load(dir)?, false));
        }
        let mut ca = Self::generate(cluster)?;
        ca.save(dir)?;
        Ok((ca, true))
    }

    /// Imports an existing CA (PEM certificate and key) into `dir`, which must hold none.
    pub fn import(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<Self> {
        if Self::exists(dir) {
            return Err(invalid(
                dir.join(CA_KEY_FILE).display().to_string(),
                "a CA is already there; move it away first (every certificate it signed stops being trusted)",
            ));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| invalid("CA key", format!("not a PEM private key: {e}")))?;
        let mut ca = Self::from_parts(None, cert_pem.to_string(), key)?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// Writes the key (0600, exclusive) and then the certificate into `dir`.
    fn save(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        crate::credentials::restrict_dir(dir)?;
        write_private(&dir.join(CA_KEY_FILE), self.key.serialize_pem().as_bytes())?;
        write_public(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes())?;
        self.dir = Some(dir.to_path_buf());
        Ok(())
    }

    /// The CA certificate (PEM): what every node and client trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex (the contract's `ca_sha256`).
    pub fn fingerprint(&self) -> String {
        hex::encode(sha2::Sha256::digest(&self.cert_der))
    }

    fn params_for(spec: &CertSpec) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "PlasmaCloud");
        dn.push(DnType::OrganizationalUnitName, spec.identity.role.as_str());
        dn.push(DnType::CommonName, spec.identity.name.clone());
        params.distinguished_name = dn;
        let mut sans = vec![SanType::URI(
            spec.identity
                .uri()
                .try_into()
                .map_err(|e: rcgen::Error| PkiError::Sign(e.to_string()))?,
        )];
        for d in &spec.dns {
            sans.push(SanType::DnsName(d.clone().try_into().map_err(
                |e: rcgen::Error| invalid(format!("DNS name {d:?}"), e.to_string()),
            )?));
        }
        sans.extend(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if spec.days < 1 {
            return Err(invalid("validity", "must be at least one day"));
        }
        (params.not_before, params.not_after) = validity(spec.days);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn finish(cert: rcgen::Certificate) -> Result<Issued> {
        let pem = cert.pem();
        let info = inspect(cert.der())?;
        Ok(Issued {
            cert_pem: pem,
            cert: info,
        })
    }

    /// Signs a CSR (PEM). Only its public key is used, and it must be ECDSA P-256; the
    /// signature over the request is checked (proof that the requester holds the key).
    pub fn sign_csr(&self, csr_pem: &str, spec: &CertSpec) -> Result<Issued> {
        let der = pem_blocks("CSR", csr_pem, "CERTIFICATE REQUEST")
            .map_err(|e| PkiError::Csr(e.to_string()))?
            .remove(0);
        let csr = CertificateSigningRequestParams::from_der(&der.into()).map_err(|e| {
            PkiError::Csr(format!(
                "does not parse or its signature does not verify: {e}"
            ))
        })?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::Csr(
                "the key must be ECDSA P-256 (make it with `firstboot enroll` or openssl ecparam -name prime256v1)".into(),
            ));
        }
        let req = CertificateSigningRequestParams {
            params: Self::params_for(spec)?,
            public_key: csr.public_key,
        };
        Self::finish(req.signed_by(&self.issuer, &self.key).map_err(sign_err)?)
    }

    /// Issues a certificate with a key made here (offline issuance); returns it and the key
    /// PEM (PKCS#8). The key goes to the holder only.
    pub fn issue_with_new_key(&self, spec: &CertSpec) -> Result<(Issued, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let cert = Self::params_for(spec)?
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(sign_err)?;
        Ok((Self::finish(cert)?, key.serialize_pem()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_ca_survives_save_and_load_and_signs_only_p256_csrs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, created) = ClusterCa::load_or_create(dir.path(), "test").expect("create");
        assert!(created);
        let (again, created) = ClusterCa::load_or_create(dir.path(), "test").expect("load");
        assert!(!created);
        assert_eq!(ca.fingerprint(), again.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut req = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
        req.is_ca = IsCa::NoCa;
        let csr = req
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let spec = CertSpec::node(
            Identity::node("node02").expect("id"),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        );
        let issued = again.sign_csr(&csr, &spec).expect("signed");
        assert_eq!(issued.cert.identity, Identity::node("node02").expect("id"));
        let text = issued.cert_pem.clone();
        assert!(!text.contains("evil"));

        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let csr = CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&ed)
            .expect("csr")
            .pem()
            .expect("pem");
        assert!(matches!(again.sign_csr(&csr, &spec), Err(PkiError::Csr(_))));
        assert!(matches!(
            again.sign_csr("not a csr", &spec),
            Err(PkiError::Csr(_))
        ));
    }

    #[test]
    fn a_readable_key_or_a_foreign_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_ca, _) = ClusterCa::load_or_create(dir.path(), "a").expect("create");
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join(CA_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            ClusterCa::load(dir.path()),
            Err(PkiError::KeyPermissions { .. })
        ));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let other = ClusterCa::generate("b").expect("other");
        std::fs::write(dir.path().join(CA_CERT_FILE), other.cert_pem()).expect("swap cert");
        let e = ClusterCa::load(dir.path()).expect_err("mismatch");
        assert!(e.to_string().contains("does not belong"), "{e}");
    }
}
