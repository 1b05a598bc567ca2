//! `pxe-server pki …`: the cluster CA by hand — make, show, issue offline, list, revoke,
//! import.
//!
//! | command | what |
//! |---|---|
//! | `init --state-dir DIR [--cluster FILE]` | makes the CA (none when one exists); prints its fingerprint |
//! | `show --state-dir DIR` | the CA's fingerprint, files and counts |
//! | `issue --state-dir DIR --node NAME --cluster FILE --out DIR [--days N]` | a node's `node.key` (0600), `node.crt`, `ca.crt`, for machines that do not PXE-boot |
//! | `issue --state-dir DIR --operator NAME --out DIR [--days N]` | an operator's `operator.key` (0600), `operator.crt`, `ca.crt` |
//! | `list --state-dir DIR` | every certificate the CA signed, and which are revoked |
//! | `revoke --state-dir DIR --cluster FILE SERIAL… [--reason TEXT]` | `pki/revoked/<serial>` in Chainfire (over mutual TLS, as an operator certificate made in memory) and in `pki/revoked.log`; exit 75 when Chainfire cannot be reached |
//! | `import --state-dir DIR --cert FILE --key FILE` | takes an existing CA into a state directory that holds none |
//!
//! Issued certificates go to `pki/issued.log` (`how`: `offline`). Keys made here are written
//! only to `--out` (0600, directory 0700) and never logged.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use plasmacloud_contract::Contract;
use plasmacloud_pki::ca::{CertSpec, ClusterCa, NODE_DAYS, OPERATOR_DAYS};
use plasmacloud_pki::{Credentials, Identity, REVOKED_PREFIX};
use plasmacloud_store_client::StoreClient;

use crate::cert_log::{self, Revocation};
use crate::cluster_ca::{self, pki_dir, SERVER_IDENTITY};
use crate::ServerError;

/// `pxe-server pki …`.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Make the cluster CA in the state directory (nothing when one is there); print its
    /// SHA-256 fingerprint.
    Init(InitArgs),
    /// Show the CA: fingerprint, files, how many certificates it signed and revoked.
    Show(StateDirArg),
    /// Issue a node or operator certificate offline, with a key made here.
    Issue(IssueArgs),
    /// List every certificate the CA signed.
    List(StateDirArg),
    /// Revoke certificates: list their serials in Chainfire (`pki/revoked/<serial>`), which
    /// every service honours within 10 s.
    Revoke(RevokeArgs),
    /// Import an existing CA (certificate and key, PEM) into a state directory holding none.
    Import(ImportArgs),
}

/// The state directory alone.
#[derive(Debug, Clone, Args)]
pub struct StateDirArg {
    /// pxe-server's state directory (the CA is its `pki/`).
    #[arg(long, env = "PLASMACLOUD_PXE_STATE_DIR", value_name = "DIR")]
    pub state_dir: PathBuf,
}

/// `pki init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The state directory.
    #[command(flatten)]
    pub dir: StateDirArg,
    /// The contract: its cluster name goes into the CA's subject, and its `pki.ca_sha256`
    /// pin, if any, is checked.
    #[arg(long, env = "PLASMACLOUD_PXE_CLUSTER", value_name = "FILE")]
    pub cluster: Option<PathBuf>,
}

/// `pki issue`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("holder").required(true).args(["node", "operator"])))]
pub struct IssueArgs {
    /// The state directory.
    #[command(flatten)]
    pub dir: StateDirArg,
    /// A node of the contract (its name and address go into the certificate).
    #[arg(long, value_name = "NAME", requires = "cluster")]
    pub node: Option<String>,
    /// An operator (lowercase letters, digits, `-._@`): a client certificate for the services'
    /// APIs and pxe-server's management API.
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
    /// The contract (with --node).
    #[arg(long, env = "PLASMACLOUD_PXE_CLUSTER", value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Where to write the key (0600), the certificate and ca.crt.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Validity in days [default: 365 for nodes, 90 for operators].
    #[arg(long, value_name = "N")]
    pub days: Option<i64>,
}

/// `pki revoke`.
#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    /// The state directory.
    #[command(flatten)]
    pub dir: StateDirArg,
    /// The contract: Chainfire is reached at its initial voters.
    #[arg(long, env = "PLASMACLOUD_PXE_CLUSTER", value_name = "FILE")]
    pub cluster: PathBuf,
    /// Serials to revoke (hex, as `pki list` shows them).
    #[arg(required = true, value_name = "SERIAL")]
    pub serials: Vec<String>,
    /// Why (recorded with the revocation).
    #[arg(long, default_value = "revoked by the operator")]
    pub reason: String,
    /// How long to try Chainfire, seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub timeout: u64,
}

/// `pki import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The state directory.
    #[command(flatten)]
    pub dir: StateDirArg,
    /// The CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// The CA's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

fn load_contract(path: &Path) -> Result<Contract, ServerError> {
    Contract::load(path).map_err(|e| ServerError::Contract {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn read(path: &Path) -> Result<String, ServerError> {
    std::fs::read_to_string(path).map_err(|e| ServerError::Config {
        field: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })
}

/// Runs a `pki` command; what it prints goes to stdout (`out`).
pub async fn run(cmd: PkiCommand, out: &mut dyn std::io::Write) -> Result<(), ServerError> {
    let say = |out: &mut dyn std::io::Write, text: String| {
        let _ = writeln!(out, "{text}");
    };
    match cmd {
        PkiCommand::Init(a) => {
            let contract = a.cluster.as_deref().map(load_contract).transpose()?;
            let name = contract.as_ref().map(|c| c.name().to_string());
            let (ca, created) = cluster_ca::load_or_create(
                &a.dir.state_dir,
                name.as_deref().unwrap_or("plasmacloud"),
                contract.as_ref(),
            )?;
            eprintln!(
                "{} the cluster CA in {}; pin it with \"pki\": {{\"ca_sha256\": \"{}\"}} in the contract",
                if created { "created" } else { "kept" },
                pki_dir(&a.dir.state_dir).display(),
                ca.fingerprint()
            );
            say(out, ca.fingerprint());
        }
        PkiCommand::Show(a) => {
            let ca = cluster_ca::load(&a.state_dir)?;
            let issued = cert_log::read_issued(&a.state_dir)?;
            let revoked = cert_log::read_revoked(&a.state_dir)?;
            let dir = pki_dir(&a.state_dir);
            say(out, format!("ca: {}", dir.join("ca.crt").display()));
            say(out, format!("key: {} (0600)", dir.join("ca.key").display()));
            say(out, format!("sha256: {}", ca.fingerprint()));
            say(
                out,
                format!(
                    "issued: {} certificates, {} revoked",
                    issued.len(),
                    revoked.len()
                ),
            );
        }
        PkiCommand::Issue(a) => {
            let ca = cluster_ca::load(&a.dir.state_dir)?;
            let (spec, creds) = match (&a.node, &a.operator) {
                (Some(name), None) => {
                    let cluster = a.cluster.as_deref().ok_or_else(|| ServerError::Config {
                        field: "cluster".into(),
                        message: "--node needs --cluster FILE (the node's address comes from it)"
                            .into(),
                    })?;
                    let contract = load_contract(cluster)?;
                    let node = contract.node(name).map_err(|e| ServerError::Contract {
                        path: cluster.to_path_buf(),
                        message: e.to_string(),
                    })?;
                    let mut spec =
                        CertSpec::node(Identity::node(&node.name)?, IpAddr::V4(node.ipv4));
                    spec.days = a.days.unwrap_or(NODE_DAYS);
                    (spec, Credentials::node(&a.out))
                }
                (None, Some(name)) => {
                    let mut spec = CertSpec::operator(Identity::operator(name)?);
                    spec.days = a.days.unwrap_or(OPERATOR_DAYS);
                    (spec, Credentials::operator(&a.out))
                }
                _ => {
                    return Err(ServerError::Config {
                        field: "node".into(),
                        message: "give exactly one of --node NAME or --operator NAME".into(),
                    })
                }
            };
            let (issued, key) = ca.issue_with_new_key(&spec)?;
            cert_log::append_issued(&a.dir.state_dir, &issued, "offline")?;
            creds.write_all(&key, &issued.cert_pem, ca.cert_pem())?;
            eprintln!(
                "issued {} (serial {}, valid until {}): {} (0600), {}, {}",
                issued.cert.identity,
                issued.cert.serial,
                crate::state::rfc3339(u64::try_from(issued.cert.not_after).unwrap_or(0) * 1000),
                creds.key_path().display(),
                creds.cert_path().display(),
                creds.ca_path().display()
            );
            say(out, issued.cert.serial.clone());
        }
        PkiCommand::List(a) => {
            let issued = cert_log::read_issued(&a.state_dir)?;
            let revoked: Vec<String> = cert_log::read_revoked(&a.state_dir)?
                .into_iter()
                .map(|r| r.serial)
                .collect();
            say(
                out,
                format!(
                    "{:<34} {:<44} {:<24} {:<8} status",
                    "serial", "identity", "not after", "how"
                ),
            );
            for r in issued {
                let status = if revoked.contains(&r.serial) {
                    "revoked"
                } else if r.not_after < plasmacloud_pki::now_unix() {
                    "expired"
                } else {
                    "valid"
                };
                say(
                    out,
                    format!(
                        "{:<34} {:<44} {:<24} {:<8} {status}",
                        r.serial,
                        r.identity,
                        crate::state::rfc3339(u64::try_from(r.not_after).unwrap_or(0) * 1000),
                        r.how
                    ),
                );
            }
        }
        PkiCommand::Revoke(a) => revoke(a, out).await?,
        PkiCommand::Import(a) => {
            let cert = read(&a.cert)?;
            let key = read(&a.key)?;
            cluster_ca::private_dir(&a.dir.state_dir)?;
            let dir = pki_dir(&a.dir.state_dir);
            cluster_ca::private_dir(&dir)?;
            let ca = ClusterCa::import(&dir, &cert, &key)?;
            eprintln!("imported the cluster CA into {}", dir.display());
            say(out, ca.fingerprint());
        }
    }
    Ok(())
}

/// A serial as the services compare it: lowercase hex, no leading zero bytes.
fn canonical_serial(s: &str) -> Result<String, ServerError> {
    let hex: String = s
        .trim()
        .trim_start_matches("0x")
        .replace(':', "")
        .to_lowercase();
    let bytes = hex::decode(if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.clone()
    })
    .map_err(|_| ServerError::Config {
        field: "serial".into(),
        message: format!("{s:?} is not a hex serial (see `pxe-server pki list`)"),
    })?;
    Ok(plasmacloud_pki::identity::serial_hex(&bytes))
}

async fn revoke(a: RevokeArgs, out: &mut dyn std::io::Write) -> Result<(), ServerError> {
    let contract = load_contract(&a.cluster)?;
    let ca = cluster_ca::load(&a.dir.state_dir)?;
    let issued = cert_log::read_issued(&a.dir.state_dir)?;
    let mut records = Vec::new();
    for s in &a.serials {
        let serial = canonical_serial(s)?;
        let identity = issued
            .iter()
            .find(|r| r.serial == serial)
            .map(|r| r.identity.clone())
            .unwrap_or_else(|| "unknown".into());
        records.push(Revocation {
            serial,
            identity,
            revoked_at: crate::state::rfc3339(crate::state::now_ms()),
            reason: a.reason.clone(),
        });
    }
    // Locally first: pxe-server's own listeners honour it at once, and a retry has it.
    let known = cert_log::read_revoked(&a.dir.state_dir)?;
    for r in &records {
        if !known.iter().any(|k| k.serial == r.serial) {
            cert_log::append_revoked(&a.dir.state_dir, r)?;
        }
    }
    let endpoints: Vec<String> = contract
        .voters()
        .iter()
        .map(|n| n.chainfire_api())
        .collect();
    let unreachable = |message: String| {
        ServerError::ChainfireUnreachable {
        endpoints: endpoints.join(", "),
        message: format!(
            "{message}; the revocation is in {} (pxe-server honours it); run `pxe-server pki revoke` again once Chainfire answers",
            pki_dir(&a.dir.state_dir).join(cert_log::REVOKED_LOG).display()
        ),
    }
    };
    // An operator certificate for this call only, never written.
    let me = cluster_ca::in_memory_material(&ca, SERVER_IDENTITY, Vec::new())?;
    let client = StoreClient::builder(endpoints.clone())
        .tls(me)
        .timeout(Duration::from_secs(a.timeout.max(1)))
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    for r in &records {
        let key = format!("{REVOKED_PREFIX}{}", r.serial);
        let value = serde_json::to_string(r).unwrap_or_default();
        match client.put(&key, &value).await {
            Ok(_) => {
                let _ = writeln!(out, "revoked {} ({})", r.serial, r.identity);
            }
            Err(e) if e.status().is_none() => return Err(unreachable(e.to_string())),
            Err(e) => {
                return Err(ServerError::Config {
                    field: "serial".into(),
                    message: format!("Chainfire refused {key}: {e}"),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_compared_in_one_form() {
        assert_eq!(canonical_serial("00:1A:02").expect("hex"), "1a02");
        assert_eq!(canonical_serial("0x4f").expect("hex"), "4f");
        assert_eq!(canonical_serial("abc").expect("odd length"), "0abc");
        assert!(canonical_serial("xyz").is_err());
    }
}
