//! `firstboot configure`: decide this node's Raft id and write each service's TOML from the
//! contract and the node's entry.
//!
//! The Raft id rule (the design's "Interfaces decided"): the seed bootstraps with id 1 when no
//! cluster exists yet; every other node — and a seed whose disk was wiped while the cluster
//! lived on — takes a fresh id from the Chainfire counter [`ID_COUNTER_KEY`] by
//! compare-and-swap, so an id is never reused. The id is written to `<data-dir>/node_id` of
//! both stores before they start, so a node that reboots with its data keeps its id. Chainfire
//! and FlareDB use the same id for a node.

use std::path::PathBuf;
use std::time::Duration;

use plasmacloud_store_client::{Precondition, StoreClient};

use crate::ids::{check_cluster_id, node_id_path, ID_BY_NODE_PREFIX, ID_COUNTER_KEY, SEED_ID};
use crate::step::{retry_until, write_atomic, Attempt, Ctx, StepError, StepResult, Store};

/// Runs the step.
pub async fn run(ctx: &Ctx, deadline: Duration) -> StepResult<()> {
    ctx.progress("configure", "started", "").await;
    let id = resolve_raft_id(ctx, deadline).await?;
    for store in [Store::Chainfire, Store::Flaredb] {
        let path = node_id_path(ctx, store);
        if !path.exists() {
            write_atomic(&path, format!("{id}\n").as_bytes())?;
        }
    }
    write_configs(ctx, id)?;
    ctx.progress("configure", "ok", &format!("raft id {id}"))
        .await;
    Ok(())
}

/// Reads a stored id: the server's `node_id`, then the id this step allocated earlier.
fn stored_id(ctx: &Ctx) -> StepResult<Option<u64>> {
    for path in [
        node_id_path(ctx, Store::Chainfire),
        ctx.firstboot_dir().join("raft-id"),
    ] {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let id = text.trim().parse::<u64>().map_err(|_| {
                StepError::Config(format!(
                    "{}: {:?} is not a Raft id; the data disk holds something else — wipe it to join as a new member",
                    path.display(),
                    text.trim()
                ))
            })?;
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The id rule.
pub async fn resolve_raft_id(ctx: &Ctx, deadline: Duration) -> StepResult<u64> {
    if let Some(id) = stored_id(ctx)? {
        tracing::info!(id, "reusing the Raft id stored on the data disk");
        return Ok(id);
    }
    let id = if ctx.is_seed() && !cluster_exists(ctx).await? {
        SEED_ID
    } else {
        let peers = ctx.peers_client(Store::Chainfire)?;
        allocate_id(ctx, &peers, deadline).await?
    };
    write_atomic(
        &ctx.firstboot_dir().join("raft-id"),
        format!("{id}\n").as_bytes(),
    )?;
    Ok(id)
}

/// Does a Chainfire cluster already run on the other voters? (Only the seed asks: a wiped seed
/// must not found a second cluster beside a living one.)
async fn cluster_exists(ctx: &Ctx) -> StepResult<bool> {
    let peers = ctx.other_voters();
    if peers.is_empty() {
        return Ok(false); // a single-voter cluster has no peers to ask
    }
    // A short probe: peers that boot with us refuse connections at once.
    let peers = ctx.client(Store::Chainfire, &peers, Duration::from_millis(1500))?;
    match peers.members().await {
        Ok(m) => Ok(!m.members.is_empty()),
        Err(e) => {
            tracing::info!(error = %e, "no Chainfire peer answers; the seed bootstraps");
            Ok(false)
        }
    }
}

/// Takes the next id from the counter by compare-and-swap.
async fn allocate_id(ctx: &Ctx, peers: &StoreClient, deadline: Duration) -> StepResult<u64> {
    let kv = peers.kv();
    retry_until("a Raft id from the Chainfire counter", deadline, || async {
        if check_cluster_id(ctx, peers).await?.is_none() {
            return Ok(Attempt::NotYet(
                "the seed has not bootstrapped Chainfire yet".into(),
            ));
        }
        let current = match kv.get(ID_COUNTER_KEY).await {
            Ok(Some(v)) => v,
            Ok(None) => return Ok(Attempt::NotYet("the id counter does not exist yet".into())),
            Err(e) => return Ok(Attempt::NotYet(e.to_string())),
        };
        let n: u64 = current.value.trim().parse().map_err(|_| {
            StepError::Config(format!(
                "Chainfire key {ID_COUNTER_KEY} holds {:?}, not a number; repair it by hand",
                current.value
            ))
        })?;
        match kv
            .put_if(
                ID_COUNTER_KEY,
                &(n + 1).to_string(),
                Precondition::Revision(current.revision),
            )
            .await
        {
            Ok(_) => {
                let _ = kv
                    .put(
                        &format!("{ID_BY_NODE_PREFIX}{}", ctx.me.name),
                        &n.to_string(),
                    )
                    .await;
                tracing::info!(id = n, "allocated a Raft id");
                Ok(Attempt::Done(n))
            }
            Err(e) if e.is_conflict() => Ok(Attempt::NotYet("another node took that id".into())),
            // Outcome unknown: that id may be spent; the next round takes a fresh one.
            Err(e) => Ok(Attempt::NotYet(e.to_string())),
        }
    })
    .await
}

/// Where the services' TOML files go.
pub fn config_path(ctx: &Ctx, service: &str) -> PathBuf {
    ctx.args.etc_dir.join(format!("{service}.toml"))
}

fn toml_string(v: &str) -> String {
    // TOML basic strings share JSON's escaping for everything we write.
    serde_json::to_string(v).unwrap_or_default()
}

fn toml_list(items: &[String]) -> String {
    items
        .iter()
        .map(|u| toml_string(u))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes chainfire.toml, flaredb.toml and iam.toml.
pub fn write_configs(ctx: &Ctx, id: u64) -> StepResult<()> {
    let me = &ctx.me;
    // Every port is mutual TLS with this node's certificate (from `firstboot enroll`).
    let creds = ctx.node_credentials();
    let tls = format!(
        "tls_cert = {}\ntls_key = {}\ntls_ca = {}\n",
        toml_string(&creds.cert_path().display().to_string()),
        toml_string(&creds.key_path().display().to_string()),
        toml_string(&creds.ca_path().display().to_string())
    );
    let header = format!(
        "# Written by `firstboot configure` from {} for node {}; do not edit.\n",
        ctx.args.cluster.display(),
        me.name
    );
    let store_toml = |store: Store, extra: &str| {
        format!(
            "{header}id = {id}\ndata_dir = {}\napi_addr = {}\nraft_addr = {}\n{tls}{extra}",
            toml_string(&ctx.data_dir(store).display().to_string()),
            toml_string(&match store {
                Store::Chainfire => me.chainfire_api(),
                Store::Flaredb => me.flaredb_api(),
            }),
            toml_string(&ctx.raft_addr(store, me)),
        )
    };
    let chainfire_urls: Vec<String> = ctx
        .contract
        .voters()
        .iter()
        .map(|n| ctx.api_url(Store::Chainfire, n))
        .collect();
    let mut flaredb_urls = vec![ctx.api_url(Store::Flaredb, me)];
    flaredb_urls.extend(
        ctx.contract
            .voters()
            .iter()
            .filter(|n| n.name != me.name)
            .map(|n| ctx.api_url(Store::Flaredb, n)),
    );
    let files = [
        ("chainfire", store_toml(Store::Chainfire, "")),
        (
            "flaredb",
            store_toml(
                Store::Flaredb,
                &format!("chainfire = {}\n", toml_string(&chainfire_urls.join(","))),
            ),
        ),
        (
            "iam",
            format!(
                "{header}listen_addr = {}\nflaredb = [{}]\nchainfire = [{}]\nsigning_key = {}\n{tls}",
                toml_string(&me.iam_api()),
                toml_list(&flaredb_urls),
                toml_list(&chainfire_urls),
                toml_string(
                    &ctx.args
                        .state_dir
                        .join("iam/signing-key.pem")
                        .display()
                        .to_string()
                ),
            ),
        ),
    ];
    for (service, text) in files {
        // Check our own output parses as TOML before a service trips on it.
        text.parse::<toml::Table>().map_err(|e| {
            StepError::Config(format!("generated {service}.toml does not parse: {e}"))
        })?;
        write_atomic(&config_path(ctx, service), text.as_bytes())?;
    }
    Ok(())
}
