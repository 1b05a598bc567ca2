//! A certificate holder's files: its private key, its certificate and the CA, in one directory
//! (`<data>/pki/node.{key,crt}` + `ca.crt` on a node; `operator.{key,crt}` + `ca.crt` for an
//! operator), and the check that they are usable together.
//!
//! Files are written through a temporary file, fsynced, renamed into place, and the directory
//! fsynced: a power cut leaves the old file or the new one. The key is written first (0600),
//! the certificate last, so a complete certificate on disk always has its key beside it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use crate::ca::{cert_spki, pem_blocks};
use crate::identity::{inspect, Identity, PeerCert};
use crate::{invalid, PkiError, Result};

/// The CA certificate's file name beside a holder's key and certificate.
pub const CA_FILE: &str = "ca.crt";

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a text file.
pub fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes a private file (mode 0600) atomically and durably.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with_mode(path, bytes, 0o600)
}

/// Writes a public file (mode 0644) atomically and durably.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with_mode(path, bytes, 0o644)
}

/// Refuses a private key file that its group or others may read or write.
pub fn check_private_mode(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Makes a directory private to its owner (0700).
pub fn restrict_dir(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// A new ECDSA P-256 private key, PEM (PKCS#8).
pub fn generate_key_pem() -> Result<String> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map(|k| k.serialize_pem())
        .map_err(|e| PkiError::Sign(e.to_string()))
}

/// A CSR (PEM) for `identity`, signed with `key_pem`. The CA ignores everything in it but the
/// key; the subject is filled in for people who read it.
pub fn csr_pem(key_pem: &str, identity: &Identity) -> Result<String> {
    let key = KeyPair::from_pem(key_pem)
        .map_err(|e| invalid("private key", format!("not a PEM private key: {e}")))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.name.clone());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        identity
            .uri()
            .try_into()
            .map_err(|e: rcgen::Error| PkiError::Sign(e.to_string()))?,
    )];
    params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| PkiError::Sign(e.to_string()))
}

/// Where a holder's files are: `DIR/<stem>.key`, `DIR/<stem>.crt`, `DIR/ca.crt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The directory.
    pub dir: PathBuf,
    /// `node` or `operator` (or another name).
    pub stem: String,
}

impl Credentials {
    /// `DIR/node.{key,crt}` and `DIR/ca.crt`.
    pub fn node(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            stem: "node".into(),
        }
    }

    /// `DIR/operator.{key,crt}` and `DIR/ca.crt`.
    pub fn operator(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            stem: "operator".into(),
        }
    }

    /// The private key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.stem))
    }

    /// The certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.crt", self.stem))
    }

    /// The CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }

    /// Do the key and the certificate exist?
    pub fn exist(&self) -> bool {
        self.key_path().is_file() && self.cert_path().is_file()
    }

    /// Writes a private key alone (before its CSR goes out), 0600, in a 0700 directory.
    pub fn write_key(&self, key_pem: &str) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        restrict_dir(&self.dir)?;
        write_private(&self.key_path(), key_pem.as_bytes())
    }

    /// Writes the CA and then the certificate (the key must be there already).
    pub fn write_cert(&self, cert_pem: &str, ca_pem: &str) -> Result<()> {
        write_public(&self.ca_path(), ca_pem.as_bytes())?;
        write_public(&self.cert_path(), cert_pem.as_bytes())
    }

    /// Writes key, CA and certificate, in that order.
    pub fn write_all(&self, key_pem: &str, cert_pem: &str, ca_pem: &str) -> Result<()> {
        self.write_key(key_pem)?;
        self.write_cert(cert_pem, ca_pem)
    }

    /// Reads the key (refusing one others may read).
    pub fn read_key(&self) -> Result<String> {
        check_private_mode(&self.key_path())?;
        read_file(&self.key_path())
    }

    /// Checks that the files are usable: the key is private and matches the certificate, the
    /// certificate was signed by `ca_pem` (the file beside it when `None`), is valid now for
    /// client authentication, and names `expected` when given. Returns what it names.
    pub fn check(&self, expected: Option<&Identity>, ca_pem: Option<&str>) -> Result<PeerCert> {
        let key_pem = self.read_key()?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            invalid(
                self.key_path().display().to_string(),
                format!("not a PEM private key: {e}"),
            )
        })?;
        let cert_what = self.cert_path().display().to_string();
        let cert_pem = read_file(&self.cert_path())?;
        let chain = pem_blocks(&cert_what, &cert_pem, "CERTIFICATE")?;
        if cert_spki(&cert_what, &chain[0])? != key.public_key_der() {
            return Err(invalid(
                cert_what,
                format!("is not the certificate of {}", self.key_path().display()),
            ));
        }
        let ca_text = match ca_pem {
            Some(p) => p.to_string(),
            None => read_file(&self.ca_path())?,
        };
        verify_chain(&cert_what, &chain, &ca_text)?;
        let info = inspect(&chain[0])?;
        if let Some(want) = expected {
            if &info.identity != want {
                return Err(invalid(
                    cert_what,
                    format!("names {}, not {want}", info.identity),
                ));
            }
        }
        Ok(info)
    }
}

/// Verifies that `chain[0]` is signed by the CA in `ca_pem` and valid now for client auth.
pub fn verify_chain(what: &str, chain: &[Vec<u8>], ca_pem: &str) -> Result<()> {
    let verifier = client_verifier(ca_pem)?;
    let end = CertificateDer::from(chain[0].clone());
    let rest: Vec<CertificateDer<'static>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    verifier
        .verify_client_cert(&end, &rest, UnixTime::now())
        .map(|_| ())
        .map_err(|e| {
            invalid(
                what,
                format!("not a valid certificate of this cluster's CA: {e}"),
            )
        })
}

/// A rustls verifier of client certificates signed by the CA in `ca_pem`.
pub(crate) fn client_verifier(ca_pem: &str) -> Result<Arc<dyn ClientCertVerifier>> {
    let roots = crate::tls::root_store("CA", ca_pem)?;
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| PkiError::Tls(format!("client verifier: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CertSpec, ClusterCa};
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn enrolled_files_check_out_and_mismatches_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("t").expect("ca");
        let me = Identity::node("node01").expect("id");
        let creds = Credentials::node(dir.path().join("pki"));
        let key = generate_key_pem().expect("key");
        creds.write_key(&key).expect("key written");
        let csr = csr_pem(&key, &me).expect("csr");
        let issued = ca
            .sign_csr(
                &csr,
                &CertSpec::node(me.clone(), IpAddr::V4(Ipv4Addr::LOCALHOST)),
            )
            .expect("signed");
        creds
            .write_cert(&issued.cert_pem, ca.cert_pem())
            .expect("cert");
        let got = creds.check(Some(&me), None).expect("valid");
        assert_eq!(got.serial, issued.cert.serial);

        // Another node's name, another CA, another key: each refused with a reason.
        let other = Identity::node("node02").expect("id");
        let e = creds.check(Some(&other), None).expect_err("wrong name");
        assert!(e.to_string().contains("names node node01"), "{e}");
        let ca2 = ClusterCa::generate("t2").expect("ca2");
        let e = creds
            .check(Some(&me), Some(ca2.cert_pem()))
            .expect_err("wrong CA");
        assert!(e.to_string().contains("not a valid certificate"), "{e}");
        creds
            .write_key(&generate_key_pem().expect("key2"))
            .expect("new key");
        let e = creds.check(Some(&me), None).expect_err("wrong key");
        assert!(e.to_string().contains("is not the certificate of"), "{e}");
    }
}
