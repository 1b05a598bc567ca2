//! The operator's certificate (`operator.key`, `operator.crt`, `ca.crt` in one directory, as
//! `pxe-server pki issue --operator NAME --out DIR` writes them) and the clients made from it:
//! Chainfire and FlareDB over given nodes, and HTTPS for `/health` and pxe-server.

use std::path::Path;
use std::time::Duration;

use plasmacloud_contract::NodeSpec;
use plasmacloud_pki::tls::TlsMaterial;
use plasmacloud_pki::{Credentials, Role, TlsFiles};
use plasmacloud_store_client::StoreClient;

use crate::{Error, Result};

/// Which Raft store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Store {
    /// Chainfire.
    Chainfire,
    /// FlareDB.
    Flaredb,
}

impl Store {
    /// Both, in the order changes are made.
    pub const BOTH: [Store; 2] = [Store::Chainfire, Store::Flaredb];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Store::Chainfire => "chainfire",
            Store::Flaredb => "flaredb",
        }
    }

    /// `ip:port` of this store's API on `node`.
    pub fn api_addr(self, node: &NodeSpec) -> String {
        match self {
            Store::Chainfire => node.chainfire_api(),
            Store::Flaredb => node.flaredb_api(),
        }
    }

    /// `ip:port` of this store's Raft port on `node`.
    pub fn raft_addr(self, node: &NodeSpec) -> String {
        match self {
            Store::Chainfire => node.chainfire_raft(),
            Store::Flaredb => node.flaredb_raft(),
        }
    }
}

/// The operator's TLS material and the clients made from it.
#[derive(Debug, Clone)]
pub struct Operator {
    material: TlsMaterial,
    http: reqwest::Client,
}

impl Operator {
    /// Loads `DIR/operator.key`, `DIR/operator.crt` and `DIR/ca.crt`; refuses a node's
    /// certificate (an operator tool acts as an operator).
    pub fn load(dir: &Path) -> Result<Self> {
        let files = TlsFiles::from(&Credentials::operator(dir));
        Self::from_files(&files)
    }

    /// Loads the material from explicit files.
    pub fn from_files(files: &TlsFiles) -> Result<Self> {
        let material = TlsMaterial::load(files).map_err(|e| {
            Error::Tls(format!(
                "{e} (expected {}, {} and {}; make them with `pxe-server pki issue --state-dir DIR --operator NAME --out DIR`)",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            ))
        })?;
        if material.identity().identity.role != Role::Operator {
            return Err(Error::Tls(format!(
                "{} names {}, not an operator; issue one with `pxe-server pki issue --operator NAME`",
                files.cert.display(),
                material.identity().identity.uri()
            )));
        }
        let http = material
            .reqwest_builder()
            .map_err(|e| Error::Tls(e.to_string()))?
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Self { material, http })
    }

    /// Who this operator is (`urn:plasmacloud:operator:NAME`).
    pub fn identity(&self) -> String {
        self.material.identity().identity.uri()
    }

    /// The operator's name alone.
    pub fn name(&self) -> String {
        self.material.identity().identity.name.clone()
    }

    /// The TLS material.
    pub fn material(&self) -> &TlsMaterial {
        &self.material
    }

    /// An HTTPS client presenting the operator certificate, trusting only the cluster CA.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A client for `store` over these nodes.
    pub fn store<'a>(
        &self,
        store: Store,
        nodes: impl IntoIterator<Item = &'a NodeSpec>,
    ) -> Result<StoreClient> {
        let endpoints: Vec<String> = nodes
            .into_iter()
            .map(|n| format!("https://{}", store.api_addr(n)))
            .collect();
        self.store_at(endpoints)
    }

    /// A client for a store at these `https://ip:port` endpoints.
    pub fn store_at(&self, endpoints: Vec<String>) -> Result<StoreClient> {
        StoreClient::builder(endpoints)
            .timeout(Duration::from_secs(5))
            .membership_timeout(Duration::from_secs(120))
            .tls(self.material.clone())
            .build()
            .map_err(|e| Error::Config(format!("store client: {e}")))
    }
}
