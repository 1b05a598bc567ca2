//! `firstboot configure`: decide this node's Raft id and write each service's TOML from the
//! contract and the node's entry.
//!
//! The Raft id rule (the design's "Interfaces decided"): the seed bootstraps with id 1 when no
//! cluster exists yet; every other node — and a seed whose disk was wiped while the cluster
//! lived on — takes a fresh id from the Chainfire counter [`ID_COUNTER_KEY`] by
//! compare-and-swap, so an id is never reused. The id is written to `<data-dir>/node_id` of
//! both stores before they start, so a node that reboots with its data keeps its id. Chainfire
//! and FlareDB use the same id for a node.
//!
//! "No cluster exists yet" is never guessed ("Never two clusters", shared/DESIGN.md): a seed
//! without an id bootstraps only when **every** other initial voter answers that it holds no
//! cluster (a one-voter contract bootstraps at once). Any voter that holds one means: join it.
//! A voter that does not answer means: wait — up to the deadline, then exit 75 naming it —
//! never bootstrap. A pristine voter answers for itself while it waits for its own id (see
//! [`crate::pristine`]), so a cold rack does not wait on itself.

use std::path::PathBuf;
use std::time::Duration;

use plasmacloud_store_client::{Precondition, StoreClient};

use crate::ids::{check_cluster_id, node_id_path, ID_BY_NODE_PREFIX, ID_COUNTER_KEY, SEED_ID};
use crate::pristine::answer_no_cluster;
use crate::step::{write_atomic, Attempt, Ctx, StepError, StepResult, Store};

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
    let id = if ctx.is_seed() && seed_may_bootstrap(ctx, deadline).await? {
        SEED_ID
    } else {
        // An initial voter with an empty disk tells the seed so while it waits for its id.
        let _answering = if ctx.me.voter && !ctx.is_seed() {
            answer_no_cluster(ctx).await
        } else {
            None
        };
        let peers = ctx.peers_client(Store::Chainfire)?;
        allocate_id(ctx, &peers, deadline).await?
    };
    write_atomic(
        &ctx.firstboot_dir().join("raft-id"),
        format!("{id}\n").as_bytes(),
    )?;
    Ok(id)
}

/// May the seed (which holds no id) bootstrap? `true` only when every other initial voter
/// answered that it holds no cluster; `false` as soon as one holds one (join it). Silence is
/// waited for, never read as "no cluster".
pub async fn seed_may_bootstrap(ctx: &Ctx, deadline: Duration) -> StepResult<bool> {
    let others = ctx.other_voters();
    if others.is_empty() {
        return Ok(true); // one voter: nobody else could hold the cluster
    }
    let clients = others
        .iter()
        .map(|n| {
            ctx.client(Store::Chainfire, [n], Duration::from_secs(2))
                .map(|c| (n.name.clone(), c))
        })
        .collect::<StepResult<Vec<_>>>()?;
    ctx.retry_until("configure", 
        "every other initial voter to say whether it holds a cluster",
        deadline,
        || async {
            let mut silent = Vec::new();
            for (name, c) in &clients {
                match c.members().await {
                    Ok(m) if !m.members.is_empty() => {
                        tracing::info!(voter = %name, "a voter holds a cluster: the seed joins it");
                        return Ok(Attempt::Done(false));
                    }
                    Ok(_) => {}
                    Err(e) => silent.push(format!("{name} ({e})")),
                }
            }
            if silent.is_empty() {
                tracing::info!("every other initial voter holds no cluster: the seed bootstraps");
                Ok(Attempt::Done(true))
            } else {
                Ok(Attempt::NotYet(format!(
                    "no answer from {}; silence is not \"no cluster\", so the seed does not bootstrap",
                    silent.join(", ")
                )))
            }
        },
    )
    .await
}

/// Takes the next id from the counter by compare-and-swap.
async fn allocate_id(ctx: &Ctx, peers: &StoreClient, deadline: Duration) -> StepResult<u64> {
    let kv = peers.kv();
    ctx.retry_until(
        "configure",
        "a Raft id from the Chainfire counter",
        deadline,
        || async {
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
                Err(e) if e.is_conflict() => {
                    Ok(Attempt::NotYet("another node took that id".into()))
                }
                // Outcome unknown: that id may be spent; the next round takes a fresh one.
                Err(e) => Ok(Attempt::NotYet(e.to_string())),
            }
        },
    )
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
