//! rustls configurations from a holder's files: a server that asks every client for a
//! certificate of the cluster CA (and refuses revoked ones), and a client that presents its own
//! certificate and trusts only the cluster CA.
//!
//! Revocation is checked twice: at the handshake (a revoked certificate cannot open a new
//! connection) and, by the services, on every request (a connection opened before the
//! revocation stops working within one refresh of the [`Revocations`] set).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::credentials::{check_private_mode, client_verifier, read_file, Credentials};
use crate::identity::{inspect, PeerCert};
use crate::{invalid, PkiError, Result};

/// The files a TLS endpoint is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate (chain), PEM.
    pub cert: PathBuf,
    /// Private key, PEM (0600).
    pub key: PathBuf,
    /// The cluster CA certificate, PEM.
    pub ca: PathBuf,
}

impl From<&Credentials> for TlsFiles {
    fn from(c: &Credentials) -> Self {
        Self {
            cert: c.cert_path(),
            key: c.key_path(),
            ca: c.ca_path(),
        }
    }
}

/// The set of revoked serials (lowercase hex), shared by a process's listeners and refreshed
/// from Chainfire's `pki/revoked/` by whoever owns the process.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    inner: Arc<RwLock<HashSet<String>>>,
}

impl Revocations {
    /// Is this serial revoked?
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.inner
            .read()
            .map(|s| s.contains(serial))
            .unwrap_or(true)
    }

    /// Replaces the set; returns how many serials it now holds.
    pub fn replace(&self, serials: impl IntoIterator<Item = String>) -> usize {
        let new: HashSet<String> = serials.into_iter().map(|s| s.to_lowercase()).collect();
        let n = new.len();
        if let Ok(mut s) = self.inner.write() {
            if *s != new {
                tracing::info!(revoked = n, "revocation list updated");
                *s = new;
            }
        }
        n
    }

    /// How many serials are revoked.
    pub fn len(&self) -> usize {
        self.inner.read().map(|s| s.len()).unwrap_or(0)
    }

    /// Is the set empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a server requires a client certificate at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every connection must present one (the Raft port).
    Required,
    /// Asked for, not required: the port also serves public routes (`/health`), and the
    /// service refuses the others without one.
    Optional,
}

/// A CA as a root store.
pub fn root_store(what: &str, ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for der in crate::ca::pem_blocks(what, ca_pem, "CERTIFICATE")? {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| invalid(what, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A loaded holder: certificate chain, key, CA, and what the certificate names.
#[derive(Debug)]
pub struct TlsMaterial {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca_pem: String,
    me: PeerCert,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            ca_pem: self.ca_pem.clone(),
            me: self.me.clone(),
        }
    }
}

impl TlsMaterial {
    /// Reads the three files (the key must be private); checks that they belong together.
    pub fn load(files: &TlsFiles) -> Result<Self> {
        let cert_pem = read_file(&files.cert)?;
        check_private_mode(&files.key)?;
        let key_pem = read_file(&files.key)?;
        let ca_pem = read_file(&files.ca)?;
        Self::from_pem(
            &files.cert.display().to_string(),
            &cert_pem,
            &key_pem,
            &ca_pem,
        )
    }

    /// From PEM text; `what` names the certificate in messages.
    pub fn from_pem(what: &str, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self> {
        let chain: Vec<CertificateDer<'static>> =
            crate::ca::pem_blocks(what, cert_pem, "CERTIFICATE")?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| invalid("private key", format!("not PEM: {e}")))?
            .ok_or_else(|| invalid("private key", "holds no PEM private key"))?;
        let raw: Vec<Vec<u8>> = chain.iter().map(|c| c.to_vec()).collect();
        crate::credentials::verify_chain(what, &raw, ca_pem)?;
        let me = inspect(&chain[0])?;
        let m = Self {
            chain,
            key,
            ca_pem: ca_pem.to_string(),
            me,
        };
        // A key that does not match fails here rather than at the first handshake.
        m.client_config()?;
        Ok(m)
    }

    /// What this holder's certificate names.
    pub fn identity(&self) -> &PeerCert {
        &self.me
    }

    /// The CA (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server configuration: this certificate, client certificates of the CA asked for
    /// (`auth`), revoked serials refused at the handshake. ALPN `http/1.1`.
    pub fn server_config(
        &self,
        auth: ClientAuth,
        revoked: &Revocations,
    ) -> Result<Arc<rustls::ServerConfig>> {
        let inner = match auth {
            ClientAuth::Required => client_verifier(&self.ca_pem)?,
            ClientAuth::Optional => {
                let roots = root_store("CA", &self.ca_pem)?;
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| PkiError::Tls(format!("client verifier: {e}")))?
            }
        };
        let verifier = Arc::new(RevocationChecking {
            inner,
            revoked: revoked.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| PkiError::Tls(format!("certificate and key do not match: {e}")))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A client configuration: presents this certificate, trusts only the cluster CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let roots = root_store("CA", &self.ca_pem)?;
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| PkiError::Tls(format!("certificate and key do not match: {e}")))
    }

    /// A reqwest client builder that speaks mutual TLS as this holder.
    pub fn reqwest_builder(&self) -> Result<reqwest::ClientBuilder> {
        Ok(reqwest::Client::builder().use_preconfigured_tls(self.client_config()?))
    }
}

/// A reqwest client builder that trusts only `ca_pem` and presents no certificate (a node
/// before enrollment, anyone reading `/health`).
pub fn reqwest_builder_trusting(ca_pem: &str) -> Result<reqwest::ClientBuilder> {
    let roots = root_store("CA", ca_pem)?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(cfg))
}

/// The serial of a DER certificate, or `None` when it does not parse.
fn serial_of(der: &[u8]) -> Option<String> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| crate::identity::serial_hex(c.raw_serial()))
}

/// A client verifier that also refuses revoked serials.
#[derive(Debug)]
struct RevocationChecking {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revocations,
}

impl ClientCertVerifier for RevocationChecking {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match serial_of(end_entity) {
            Some(s) if !self.revoked.is_revoked(&s) => Ok(ok),
            Some(s) => {
                tracing::warn!(serial = %s, "refused a revoked client certificate");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked,
                ))
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
