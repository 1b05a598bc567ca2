//! The cluster CA where pxe-server keeps it, and the certificate pxe-server serves TLS with.
//!
//! The rules (shared/DESIGN.md, "Trust"):
//! - the CA lives in the state directory, `pki/ca.key` (0600) and `pki/ca.crt`, with the state
//!   directory and `pki/` 0700; `serve` creates it when absent (as does `pki init`), or an
//!   operator imports one (`pki import`);
//! - when the contract pins the CA (`pki.ca_sha256`), pxe-server refuses to serve or check
//!   with any other CA, and refuses to make a new one (a new CA cannot match a pin);
//! - pxe-server's own certificate is issued in memory at every start and never written: the
//!   operator identity `pxe-server`, the boot interface's address and every listen address as
//!   IP SANs (loopback too when a listener binds the wildcard), server and client auth.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use plasmacloud_contract::Contract;
use plasmacloud_pki::ca::{CertSpec, ClusterCa, NODE_DAYS};
use plasmacloud_pki::tls::TlsMaterial;
use plasmacloud_pki::Identity;

use crate::ServerError;

/// The CA's directory under the state directory.
pub const PKI_DIR: &str = "pki";
/// The operator name of pxe-server's own certificates (serving TLS, writing revocations).
pub const SERVER_IDENTITY: &str = "pxe-server";

/// `<state_dir>/pki`.
pub fn pki_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(PKI_DIR)
}

/// Creates `dir` if needed and makes it private to its owner (0700).
pub fn private_dir(dir: &Path) -> Result<(), ServerError> {
    std::fs::create_dir_all(dir).map_err(|e| ServerError::State {
        path: dir.to_path_buf(),
        message: format!("cannot create: {e}"),
    })?;
    plasmacloud_pki::credentials::restrict_dir(dir)?;
    Ok(())
}

/// What the state directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaStatus {
    /// A CA with this fingerprint (SHA-256 of the certificate's DER, hex).
    Present(String),
    /// None yet: `serve` makes one.
    Absent,
}

/// The pin rule: with a pinned contract, the CA must be there and be the pinned one.
pub fn check_pin(contract: &Contract, status: &CaStatus) -> Result<(), ServerError> {
    let Some(pinned) = contract.ca_sha256() else {
        return Ok(());
    };
    match status {
        CaStatus::Present(f) if f.eq_ignore_ascii_case(pinned) => Ok(()),
        CaStatus::Present(f) => Err(ServerError::CaPin {
            pinned: pinned.to_string(),
            message: format!("the state directory's CA is {f}; point --state-dir at the directory holding the pinned CA, or import it with `pxe-server pki import`"),
        }),
        CaStatus::Absent => Err(ServerError::CaPin {
            pinned: pinned.to_string(),
            message: "the state directory holds no CA, and a new one cannot match the pin; import the pinned CA with `pxe-server pki import --state-dir DIR --cert ca.crt --key ca.key`".into(),
        }),
    }
}

/// Looks at the state directory's CA without changing anything (what `check` reports).
pub fn status(state_dir: &Path) -> Result<CaStatus, ServerError> {
    let dir = pki_dir(state_dir);
    if !ClusterCa::exists(&dir) {
        return Ok(CaStatus::Absent);
    }
    Ok(CaStatus::Present(ClusterCa::load(&dir)?.fingerprint()))
}

/// Loads the CA (it must exist).
pub fn load(state_dir: &Path) -> Result<ClusterCa, ServerError> {
    let dir = pki_dir(state_dir);
    if !ClusterCa::exists(&dir) {
        return Err(ServerError::Config {
            field: "state-dir".into(),
            message: format!(
                "{} holds no cluster CA; make one with `pxe-server pki init --state-dir {}` (or start `serve` once), or import one with `pxe-server pki import`",
                dir.display(),
                state_dir.display()
            ),
        });
    }
    Ok(ClusterCa::load(&dir)?)
}

/// Loads the CA, or creates it when the state directory holds none (refused when the contract
/// pins one). Returns whether it was created.
pub fn load_or_create(
    state_dir: &Path,
    cluster_name: &str,
    contract: Option<&Contract>,
) -> Result<(ClusterCa, bool), ServerError> {
    private_dir(state_dir)?;
    let before = status(state_dir)?;
    if let Some(c) = contract {
        check_pin(c, &before)?;
    }
    let dir = pki_dir(state_dir);
    private_dir(&dir)?;
    let (ca, created) = ClusterCa::load_or_create(&dir, cluster_name)?;
    if created {
        tracing::info!(dir = %dir.display(), sha256 = %ca.fingerprint(), "created the cluster CA");
    }
    Ok((ca, created))
}

/// The addresses pxe-server's certificate names: the boot interface's, each listen address
/// (loopback instead of a wildcard), without duplicates.
pub fn server_ips(interface_ip: Ipv4Addr, listen: &[SocketAddr]) -> Vec<IpAddr> {
    let mut ips = vec![IpAddr::V4(interface_ip)];
    for a in listen {
        let ip = match a.ip() {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// A certificate for identity `operator:<name>` with `ips` as SANs (server and client auth),
/// issued with a key made here, in memory only.
pub fn in_memory_material(
    ca: &ClusterCa,
    name: &str,
    ips: Vec<IpAddr>,
) -> Result<TlsMaterial, ServerError> {
    let spec = CertSpec {
        identity: Identity::operator(name)?,
        dns: Vec::new(),
        ips,
        server_auth: true,
        client_auth: true,
        days: NODE_DAYS,
    };
    let (issued, key) = ca.issue_with_new_key(&spec)?;
    Ok(TlsMaterial::from_pem(
        &format!("{name}'s in-memory certificate"),
        &issued.cert_pem,
        &key,
        ca.cert_pem(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(pin: Option<&str>) -> Contract {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster-3.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("example")).expect("json");
        if let Some(p) = pin {
            v["pki"] = serde_json::json!({ "ca_sha256": p });
        }
        Contract::parse(&v.to_string()).expect("contract")
    }

    #[test]
    fn a_pinned_contract_takes_only_its_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        // Pinned, no CA yet: a new one cannot match, so none is made.
        let pinned = contract(Some(&"ab".repeat(32)));
        let e = load_or_create(&state, "demo", Some(&pinned)).expect_err("refused");
        assert!(e.to_string().contains("pki import"), "{e}");
        assert!(!ClusterCa::exists(&pki_dir(&state)));
        // Unpinned: made once, 0700 directories, then loaded.
        let (ca, created) = load_or_create(&state, "demo", Some(&contract(None))).expect("made");
        assert!(created);
        use std::os::unix::fs::PermissionsExt;
        for d in [state.clone(), pki_dir(&state)] {
            let mode = std::fs::metadata(&d).expect("dir").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        let (again, created) = load_or_create(&state, "demo", None).expect("loaded");
        assert!(!created);
        assert_eq!(ca.fingerprint(), again.fingerprint());
        // Pinned to another CA: refused, naming both.
        let e = load_or_create(&state, "demo", Some(&pinned)).expect_err("refused");
        assert!(e.to_string().contains(&ca.fingerprint()), "{e}");
        // Pinned to this one: fine, whatever the case of the hex.
        let ok = contract(Some(&ca.fingerprint()));
        assert!(check_pin(&ok, &status(&state).expect("status")).is_ok());
    }

    #[test]
    fn the_server_certificate_names_every_listen_address() {
        let ips = server_ips(
            Ipv4Addr::new(10, 0, 0, 1),
            &[
                "10.0.0.1:8081".parse().expect("addr"),
                "0.0.0.0:8082".parse().expect("addr"),
                "127.0.0.1:8443".parse().expect("addr"),
            ],
        );
        assert_eq!(
            ips,
            [
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            ]
        );
        let ca = ClusterCa::generate("t").expect("ca");
        let m = in_memory_material(&ca, SERVER_IDENTITY, ips).expect("material");
        assert_eq!(
            m.identity().identity.uri(),
            "urn:plasmacloud:operator:pxe-server"
        );
    }
}
