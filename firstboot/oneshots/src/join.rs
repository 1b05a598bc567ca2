//! `firstboot chainfire-join` and `firstboot flaredb-join`: form or join a Raft store.
//!
//! Bootstrap vs join is decided from the contract and the live cluster, never guessed:
//!
//! - **Already a member** (the local server lists this node's id): nothing to do, except that a
//!   contract voter still a learner is promoted. A node that reboots with its data lands here.
//! - **Bootstrap**: only the seed (`initial_voters[0]`), and only with Raft id 1 — which
//!   `configure` hands out solely when no cluster answered. It initialises a one-member cluster
//!   on itself (`POST /v1/cluster/init`, a no-op when repeated), then writes the cluster id and
//!   the id counter with create-only compare-and-swap. Two nodes cannot both bootstrap: only
//!   one node is the seed, and `init` is refused on a node that already holds a cluster.
//! - **Join**: every other node asks the other voters: it checks the cluster id, removes an
//!   old incarnation of itself (same Raft address, older id — a wiped disk), adds itself as a
//!   learner (the call returns once it has caught up), and — only if the contract names it an
//!   initial voter — asks for promotion. Workers stay non-voting learners, so a rack of 40 still
//!   votes with 3 or 5.

use std::time::Duration;

use plasmacloud_store_client::{Member, MemberRole, MembersResponse, Precondition, StoreClient};

use crate::ids::{
    check_cluster_id, guard_keyspace, my_id, CLUSTER_ID_KEY, CLUSTER_UUID_KEY, ID_COUNTER_KEY,
    SEED_ID,
};
use crate::step::{Attempt, Ctx, StepError, StepResult, Store};

fn me_as_member(ctx: &Ctx, store: Store, id: u64) -> Member {
    Member {
        id,
        raft_addr: ctx.raft_addr(store, &ctx.me),
        api_addr: match store {
            Store::Chainfire => ctx.me.chainfire_api(),
            Store::Flaredb => ctx.me.flaredb_api(),
        },
    }
}

/// The step's name in progress reports: `chainfire-join`, `flaredb-join`.
fn step_name(store: Store) -> String {
    format!("{}-join", store.name())
}

/// Runs the join step for `store`.
pub async fn run(ctx: &Ctx, store: Store, deadline: Duration) -> StepResult<()> {
    let step = step_name(store);
    ctx.progress(&step, "started", "").await;
    let id = my_id(ctx, store)?;
    let me = me_as_member(ctx, store, id);
    let voter = ctx.me.voter;
    let local = ctx.local_client(store)?;

    // The local server must answer (even 503: a pristine node is unhealthy but serves).
    let members = ctx
        .retry_until(
            &step_name(store),
            &format!("the local {} API", store.name()),
            deadline,
            || async {
                match local.members().await {
                    Ok(m) => Ok(Attempt::Done(m)),
                    Err(e) => Ok(Attempt::NotYet(e.to_string())),
                }
            },
        )
        .await?;

    let how = if let Some(m) = members.get(id) {
        if voter && m.role == MemberRole::Learner {
            promote(ctx, store, id, deadline).await?;
            "member already; promoted to voter"
        } else {
            "member already; nothing to do"
        }
    } else if ctx.is_seed() && id == SEED_ID {
        bootstrap(ctx, store, &local, &me, deadline).await?;
        "bootstrapped the cluster"
    } else {
        join(ctx, store, &me, deadline).await?;
        if voter {
            promote(ctx, store, id, deadline).await?;
            "joined as a voter"
        } else {
            "joined as a learner (workers do not vote)"
        }
    };
    // Which cluster this node now belongs to, as its own replica says.
    let guards = guard_keyspace(&local, store)?;
    let uuid = ctx
        .retry_until(
            &step_name(store),
            &format!(
                "this node's {} replica to hold the cluster identity",
                store.name()
            ),
            deadline,
            || async {
                match guards.get_local(CLUSTER_UUID_KEY).await {
                    Ok(Some(v)) => Ok(Attempt::Done(v.value)),
                    Ok(None) => Ok(Attempt::NotYet("not applied here yet".into())),
                    Err(e) => Ok(Attempt::NotYet(e.to_string())),
                }
            },
        )
        .await?;
    ctx.mark_done(
        &step,
        serde_json::json!({"id": id, "how": how, "cluster_uuid": uuid}),
    )?;
    ctx.progress(&step, "ok", &format!("{how} (id {id}, cluster {uuid})"))
        .await;
    Ok(())
}

async fn bootstrap(
    ctx: &Ctx,
    store: Store,
    local: &StoreClient,
    me: &Member,
    deadline: Duration,
) -> StepResult<()> {
    ctx.retry_until(&step_name(store), &format!("{} to initialise", store.name()), deadline, || async {
        match local.init(std::slice::from_ref(me)).await {
            Ok(_) => Ok(Attempt::Done(())),
            Err(e) if e.status() == Some(409) => Err(StepError::Config(format!(
                "{} on this node already holds a different cluster ({e}); its data disk belongs to another cluster — wipe it to join as a new member",
                store.name()
            ))),
            Err(e) => Ok(Attempt::NotYet(e.to_string())),
        }
    })
    .await?;
    // Wait for leadership, then record the cluster id and start the id counter.
    let guards = guard_keyspace(local, store)?;
    ctx.retry_until(
        &step_name(store),
        &format!("{} to elect itself leader", store.name()),
        deadline,
        || async {
            match local.health().await {
                Ok(h) if h.is_healthy() => Ok(Attempt::Done(())),
                Ok(h) => Ok(Attempt::NotYet(format!("raft {}", h.raft.as_str()))),
                Err(e) => Ok(Attempt::NotYet(e.to_string())),
            }
        },
    )
    .await?;
    ctx.retry_until(
        &step_name(store),
        "the cluster id to be recorded",
        deadline,
        || async {
            match guards
                .put_if(CLUSTER_ID_KEY, ctx.contract.id(), Precondition::Absent)
                .await
            {
                Ok(_) => Ok(Attempt::Done(())),
                Err(e) if e.is_conflict() => match guards.get(CLUSTER_ID_KEY).await {
                    Ok(Some(v)) if v.value == ctx.contract.id() => Ok(Attempt::Done(())),
                    Ok(Some(v)) => Err(StepError::Config(format!(
                        "this {} holds cluster {:?}, the contract says {:?}",
                        store.name(),
                        v.value,
                        ctx.contract.id()
                    ))),
                    Ok(None) => Ok(Attempt::NotYet("cluster id vanished".into())),
                    Err(e) => Ok(Attempt::NotYet(e.to_string())),
                },
                Err(e) => Ok(Attempt::NotYet(e.to_string())),
            }
        },
    )
    .await?;
    // The cluster's own identity: made once, at this bootstrap. Two clusters formed from one
    // contract share its id but can never share this.
    let uuid = match store {
        Store::Chainfire => {
            let mut b = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
            hex::encode(b)
        }
        // FlareDB belongs to the cluster Chainfire formed: it carries the same identity.
        Store::Flaredb => {
            let cf = guard_keyspace(&ctx.local_client(Store::Chainfire)?, Store::Chainfire)?;
            ctx.retry_until(
                &step_name(store),
                "Chainfire's cluster identity",
                deadline,
                || async {
                    match cf.get_local(CLUSTER_UUID_KEY).await {
                        Ok(Some(v)) => Ok(Attempt::Done(v.value)),
                        Ok(None) => Ok(Attempt::NotYet("not recorded yet".into())),
                        Err(e) => Ok(Attempt::NotYet(e.to_string())),
                    }
                },
            )
            .await?
        }
    };
    ctx.retry_until(
        &step_name(store),
        "the cluster identity to be recorded",
        deadline,
        || async {
            match guards
                .put_if(CLUSTER_UUID_KEY, &uuid, Precondition::Absent)
                .await
            {
                Ok(_) => Ok(Attempt::Done(())),
                // Recorded by an earlier run of this very bootstrap: keep that one.
                Err(e) if e.is_conflict() => Ok(Attempt::Done(())),
                Err(e) => Ok(Attempt::NotYet(e.to_string())),
            }
        },
    )
    .await?;
    if store == Store::Chainfire {
        ctx.retry_until(
            &step_name(store),
            "the Raft id counter to be created",
            deadline,
            || async {
                match guards
                    .put_if(
                        ID_COUNTER_KEY,
                        &(SEED_ID + 1).to_string(),
                        Precondition::Absent,
                    )
                    .await
                {
                    Ok(_) => Ok(Attempt::Done(())),
                    Err(e) if e.is_conflict() => Ok(Attempt::Done(())),
                    Err(e) => Ok(Attempt::NotYet(e.to_string())),
                }
            },
        )
        .await?;
    }
    Ok(())
}

async fn join(ctx: &Ctx, store: Store, me: &Member, deadline: Duration) -> StepResult<()> {
    let peers = ctx.peers_client(store)?;
    if store == Store::Chainfire {
        ctx.retry_until(
            &step_name(store),
            "the Chainfire cluster id",
            deadline,
            || async {
                Ok(match check_cluster_id(ctx, &peers).await? {
                    Some(()) => Attempt::Done(()),
                    None => Attempt::NotYet("the seed has not recorded the cluster id yet".into()),
                })
            },
        )
        .await?;
    }
    ctx.retry_until(
        &step_name(store),
        &format!("{} to add {} as a learner", store.name(), ctx.me.name),
        deadline,
        || async {
            let members = match peers.members().await {
                Ok(m) if !m.members.is_empty() => m,
                Ok(_) => return Ok(Attempt::NotYet("no peer holds a cluster yet".into())),
                Err(e) => return Ok(Attempt::NotYet(e.to_string())),
            };
            if members.get(me.id).is_some() {
                return Ok(Attempt::Done(()));
            }
            remove_old_incarnations(&peers, &members, me).await?;
            match peers.add_learner(me).await {
                Ok(_) => Ok(Attempt::Done(())),
                Err(e) if e.status() == Some(409) && !e.is_retryable() => {
                    // A refusal by rule (an id used before) is final; a change in progress is not.
                    let text = e.to_string();
                    if text.contains("in progress") || text.contains("one at a time") {
                        Ok(Attempt::NotYet(text))
                    } else {
                        Err(StepError::Config(format!(
                            "{} refused {} as a learner: {text}",
                            store.name(),
                            ctx.me.name
                        )))
                    }
                }
                Err(e) => Ok(Attempt::NotYet(e.to_string())),
            }
        },
    )
    .await
}

/// A wiped node comes back with a new id but the same addresses: drop the old member first,
/// so the voter set never grows past the contract's.
async fn remove_old_incarnations(
    peers: &StoreClient,
    members: &MembersResponse,
    me: &Member,
) -> StepResult<()> {
    for old in members
        .members
        .iter()
        .filter(|m| m.id != me.id && (m.raft_addr == me.raft_addr || m.api_addr == me.api_addr))
    {
        tracing::warn!(
            old = old.id,
            new = me.id,
            "removing an old incarnation of this node"
        );
        peers
            .remove_member(old.id)
            .await
            .map_err(|e| StepError::Retry(format!("removing old member {}: {e}", old.id)))?;
    }
    Ok(())
}

async fn promote(ctx: &Ctx, store: Store, id: u64, deadline: Duration) -> StepResult<()> {
    let peers = ctx.client(store, ctx.contract.voters(), Duration::from_secs(5))?;
    ctx.retry_until(
        &step_name(store),
        &format!("{} to promote id {id} to voter", store.name()),
        deadline,
        || async {
            match peers.promote_voters(&[id]).await {
                Ok(m) if m.get(id).is_some_and(|m| m.role == MemberRole::Voter) => {
                    Ok(Attempt::Done(()))
                }
                Ok(_) => Ok(Attempt::NotYet("not a voter yet".into())),
                Err(e) => Ok(Attempt::NotYet(e.to_string())),
            }
        },
    )
    .await
}
