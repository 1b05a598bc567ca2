//! Where the ids live: this node's Raft id on its data disk (`<data-dir>/node_id`, the same id
//! for Chainfire and FlareDB), and in Chainfire the cluster id, the Raft id counter and which
//! node took which id.
//!
//! `configure` decides the ids (the rule is in its module docs); `join` and `health-check` read
//! them from here, so no step needs another step's module.

use std::path::PathBuf;

use plasmacloud_store_client::{Keyspace, StoreClient};

use crate::step::{Ctx, StepError, StepResult, Store};

/// Chainfire key of the Raft id counter (the next id to hand out).
pub const ID_COUNTER_KEY: &str = "plasmacloud/raft-ids/next";
/// Chainfire key recording which node took which id (`…/<node>` → id), for operators.
pub const ID_BY_NODE_PREFIX: &str = "plasmacloud/raft-ids/by-node/";
/// Chainfire key holding the contract's cluster id, written once by the seed.
pub const CLUSTER_ID_KEY: &str = "plasmacloud/cluster-id";
/// The cluster's own identity: 128 random bits made at bootstrap (Chainfire's KV, and FlareDB's
/// `system` namespace with the same value). Two clusters formed from one contract share the
/// contract's id, never this.
pub const CLUSTER_UUID_KEY: &str = "plasmacloud/cluster-uuid";
/// The id the seed bootstraps with.
pub const SEED_ID: u64 = 1;

/// The file a store's server reads its id from: `<data-dir of store>/node_id`.
pub fn node_id_path(ctx: &Ctx, store: Store) -> PathBuf {
    ctx.data_dir(store).join("node_id")
}

/// The Raft id `configure` chose (it is in `<data-dir>/node_id` of both stores).
pub fn my_id(ctx: &Ctx, store: Store) -> StepResult<u64> {
    let path = node_id_path(ctx, store);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        StepError::Config(format!(
            "{}: {e}; firstboot-configure.service must run first",
            path.display()
        ))
    })?;
    text.trim()
        .parse()
        .map_err(|_| StepError::Config(format!("{}: not a Raft id", path.display())))
}

/// Checks that the cluster the peers run is the contract's: `Some(())` when it is, `None` when
/// no cluster id is recorded yet, a configuration error when another contract's id is.
pub async fn check_cluster_id(ctx: &Ctx, client: &StoreClient) -> StepResult<Option<()>> {
    match client.kv().get(CLUSTER_ID_KEY).await {
        Ok(Some(v)) if v.value == ctx.contract.id() => Ok(Some(())),
        Ok(Some(v)) => Err(StepError::Config(format!(
            "the running cluster has id {:?} but {} says {:?}: two contracts disagree; boot this node with the contract of that cluster",
            v.value,
            ctx.args.cluster.display(),
            ctx.contract.id()
        ))),
        Ok(None) => Ok(None),
        Err(e) => Err(StepError::Retry(e.to_string())),
    }
}

/// Where the cluster's identity keys live: Chainfire's KV, FlareDB's `system` namespace.
pub fn guard_keyspace(client: &StoreClient, store: Store) -> StepResult<Keyspace> {
    match store {
        Store::Chainfire => Ok(client.kv()),
        Store::Flaredb => client
            .namespace("system")
            .map_err(|e| StepError::Config(e.to_string())),
    }
}

/// The cluster identity this node recorded when it joined `store` (its done-marker).
pub fn joined_uuid(ctx: &Ctx, store: Store) -> Option<String> {
    ctx.done(&format!("{}-join", store.name()))
        .and_then(|v| v["detail"]["cluster_uuid"].as_str().map(str::to_string))
}
