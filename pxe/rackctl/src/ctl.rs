//! One rack as `rackctl` drives it: the contract file, the operator certificate, the bundle
//! pxe-server serves, what the boot server says, pxe-server's state directory when at hand —
//! and [`Operation`], an operation holding the rollout lock.
//!
//! A contract change is applied in one order, so that pxe-server never serves a bundle for
//! another contract and nothing invalid is ever written: validate the changed contract; write
//! it beside the served one; build a new bundle from it; rename the contract into place; swap
//! the bundle in; wait (bounded) until the boot server serves the new version.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use netboot_image::bundle::BaseImage;
use plasmacloud_contract::Contract;

use crate::boot_view::BootView;
use crate::bundle::{short, BundleSite};
use crate::certs::Revoker;
use crate::cluster::{wait_for, Cluster};
use crate::contract_edit::ContractEdit;
use crate::lock::{LockRecord, RolloutLock, DEFAULT_LEASE};
use crate::operator::{Operator, Store};
use crate::{Error, Result};

/// How to reach one rack.
#[derive(Debug, Clone)]
pub struct CtlConfig {
    /// The contract file pxe-server reads (`--cluster`).
    pub contract: PathBuf,
    /// pxe-server's `--bundle` (a symlink or a directory), when bundles are managed here.
    pub bundle: Option<PathBuf>,
    /// pxe-server's state directory, when at hand (the issued log; `pki revoke`).
    pub pxe_state_dir: Option<PathBuf>,
    /// The `pxe-server` binary (for `pki revoke`).
    pub pxe_server_bin: PathBuf,
    /// The rollout lock's lease.
    pub lock_lease: Duration,
    /// How often waits look again.
    pub poll: Duration,
    /// How long to wait for the boot server to serve a swapped-in bundle.
    pub serve_timeout: Duration,
}

impl CtlConfig {
    /// Defaults for a contract: no bundle, no state directory, `pxe-server` from `PATH`.
    pub fn new(contract: impl Into<PathBuf>) -> Self {
        Self {
            contract: contract.into(),
            bundle: None,
            pxe_state_dir: None,
            pxe_server_bin: PathBuf::from("pxe-server"),
            lock_lease: DEFAULT_LEASE,
            poll: Duration::from_millis(500),
            serve_timeout: Duration::from_secs(30),
        }
    }
}

/// One rack.
#[derive(Debug, Clone)]
pub struct Ctl {
    /// How it was reached.
    pub config: CtlConfig,
    /// The operator certificate.
    pub operator: Operator,
    /// What the boot server says.
    pub boot: Arc<dyn BootView>,
    /// A base image for re-bundles other than the served bundle's (e.g. a new kernel).
    pub base: Option<BaseImage>,
}

impl Ctl {
    /// A rack from its configuration, an operator certificate and a boot view.
    pub fn new(config: CtlConfig, operator: Operator, boot: Arc<dyn BootView>) -> Self {
        Self {
            config,
            operator,
            boot,
            base: None,
        }
    }

    /// The contract as it is on disk now.
    pub fn contract(&self) -> Result<Contract> {
        Ok(Contract::load(&self.config.contract)?)
    }

    /// The stores of the contract as it is now.
    pub fn cluster(&self) -> Result<Cluster> {
        Ok(Cluster::new(self.operator.clone(), self.contract()?))
    }

    /// The bundle site, or an error naming the flag.
    pub fn bundle_site(&self) -> Result<BundleSite> {
        self.config
            .bundle
            .clone()
            .map(BundleSite::new)
            .ok_or_else(|| {
                Error::Config(
                    "no --served-bundle: give the path pxe-server's --bundle names".into(),
                )
            })
    }

    /// `operator NAME@HOST`.
    pub fn holder(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        format!("operator {}@{host}", self.operator.name())
    }

    /// How certificates are revoked here: `pxe-server pki revoke` with the state directory,
    /// else straight into Chainfire.
    pub fn revoker(&self) -> Result<Revoker> {
        Ok(match &self.config.pxe_state_dir {
            Some(dir) => Revoker::PxeServer {
                bin: self.config.pxe_server_bin.clone(),
                state_dir: dir.clone(),
                contract: self.config.contract.clone(),
            },
            None => Revoker::Chainfire(self.cluster()?.client(Store::Chainfire)?),
        })
    }

    /// Takes the rollout lock for `what`.
    pub async fn begin(&self, what: &str) -> Result<Operation<'_>> {
        let kv = self.cluster()?.chainfire_kv()?;
        let lock = RolloutLock::acquire(&kv, &self.holder(), what, self.config.lock_lease).await?;
        Ok(Operation {
            ctl: self,
            lock,
            what: what.into(),
        })
    }

    /// Waits until the boot server serves `version`.
    pub async fn wait_served(&self, version: &str) -> Result<()> {
        wait_for(
            &format!("the boot server to serve bundle {}", short(version)),
            self.config.serve_timeout,
            self.config.poll,
            || async {
                match self.boot.snapshot().await {
                    Ok(s) if s.served.as_deref() == Some(version) => Ok(Some(())),
                    Ok(s) => Err(format!(
                        "it serves {}",
                        s.served
                            .as_deref()
                            .map(short)
                            .unwrap_or("nothing it reports")
                    )),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
    }

    /// Applies a contract change (see the module docs); returns the new contract and the new
    /// bundle's version (when bundles are managed here).
    pub async fn apply_contract(&self, edit: &ContractEdit) -> Result<(Contract, Option<String>)> {
        let contract = edit.validate()?;
        let Some(site) = self.config.bundle.clone().map(BundleSite::new) else {
            edit.write_to(&self.config.contract)?;
            return Ok((contract, None));
        };
        let staged = staged_path(&self.config.contract);
        edit.write_to(&staged)?;
        let built = site.build(&staged, self.base.clone());
        let (dir, version) = match built {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        };
        std::fs::rename(&staged, &self.config.contract)
            .map_err(Error::io(&self.config.contract))?;
        site.swap_in(&dir)?;
        tracing::info!(version = short(&version), "contract and bundle replaced");
        if let Err(e) = self.wait_served(&version).await {
            tracing::warn!(error = %e, "the boot server has not confirmed the new bundle");
        }
        Ok((contract, Some(version)))
    }
}

fn staged_path(contract: &Path) -> PathBuf {
    let name = contract
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("cluster-config.json");
    contract.with_file_name(format!(".{name}.rackctl-staged"))
}

/// An operation holding the rollout lock.
#[derive(Debug)]
pub struct Operation<'a> {
    /// The rack.
    pub ctl: &'a Ctl,
    /// The lock.
    pub lock: RolloutLock,
    /// What for.
    pub what: String,
}

impl Operation<'_> {
    /// `Err` once the lock is lost.
    pub fn check(&self) -> Result<()> {
        self.lock.check(&self.what)
    }

    /// Done: releases the lock.
    pub async fn finish(self) -> Result<()> {
        self.lock.release().await
    }

    /// Failed after changing something: leaves the lock held, stopped, with `why`.
    pub async fn stop(self, why: &str) -> Result<LockRecord> {
        self.lock.stop(why).await
    }

    /// Ends an operation whose preparation failed with `e`: a configuration or contract error
    /// changed nothing (the lock is released), anything later may have (left stopped).
    pub async fn end_unprepared<T>(self, e: Error) -> Result<T> {
        let changed = !matches!(e, Error::Config(_) | Error::Contract(_));
        self.end(Err(e), changed).await
    }

    /// Ends with `result`: the lock released on success, left stopped with the error on
    /// failure (when `changed`), released otherwise.
    pub async fn end<T>(self, result: Result<T>, changed: bool) -> Result<T> {
        match &result {
            Ok(_) => self.finish().await?,
            Err(e) if changed => {
                let why = e.to_string();
                if let Err(e2) = self.stop(&why).await {
                    tracing::warn!(error = %e2, "cannot mark the rollout lock stopped");
                }
            }
            Err(_) => {
                let _ = self.finish().await;
            }
        }
        result
    }
}
