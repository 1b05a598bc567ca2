//! `/v1/cluster/…`: forming the cluster (`init` on the seed), reading the members, and the
//! changes — a learner added and caught up, learners promoted to voters, a member removed —
//! and leadership moved away from a node (`POST /v1/cluster/leader`, see [`crate::handover`]).
//!
//! Every change has the same shape ([`change_members`]): the request is read and checked here,
//! a non-leader forwards it to the leader, the leader makes the change under the membership lock
//! (one change at a time) and answers with the members. The handlers differ only in the change.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::ChangeMembers;
use plasmacloud_store_client::{
    InitRequest, Member, MemberInfo, MemberRole, MembersResponse, MoveLeaderRequest, PromoteRequest,
};

use super::forward::{maybe_forward_within, read_blocking};
use super::handler::{err, parse_body, retry, Req, St};
use crate::cluster_view::members_map;
use crate::handover::{hand_over, HandoverError};
use crate::network::fetch_identity;
use crate::node::NodeState;
use crate::types::{NodeId, NodeInfo};

/// Default deadline of `POST /v1/cluster/leader` (`?timeout_ms=` sets another).
pub const MOVE_LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default deadline for a learner to catch up.
pub const LEARNER_CATCHUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a follower waits for the leader's answer to a forwarded change: the leader may
/// spend the whole catch-up deadline on it.
const FORWARDED_CHANGE_TIMEOUT: Duration =
    Duration::from_secs(LEARNER_CATCHUP_TIMEOUT.as_secs() + 30);

fn members_response(st: &NodeState) -> MembersResponse {
    let m = st.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let mut members: Vec<MemberInfo> = membership
        .nodes()
        .map(|(id, n)| MemberInfo {
            id: *id,
            raft_addr: n.raft_addr.clone(),
            api_addr: n.api_addr.clone(),
            role: if voters.contains(id) {
                MemberRole::Voter
            } else {
                MemberRole::Learner
            },
        })
        .collect();
    members.sort_by_key(|m| (m.role == MemberRole::Learner, m.id));
    // A node whose Raft stopped knows no leader any more: openraft keeps the last one in its
    // metrics, and a stopped leader would go on naming itself.
    let leader = m.current_leader.filter(|_| m.running_state.is_ok());
    MembersResponse { leader, members }
}

fn answer_members(st: &NodeState) -> Response {
    Json(members_response(st)).into_response()
}

pub(super) async fn members(State(st): State<St>) -> Response {
    answer_members(&st)
}

fn check_member(m: &Member) -> Result<(), Response> {
    if m.id == 0 {
        return Err(err(StatusCode::BAD_REQUEST, "member ids start at 1"));
    }
    for (name, a) in [("raft_addr", &m.raft_addr), ("api_addr", &m.api_addr)] {
        if a.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!("member {}: {name} {a:?} must be ip:port", m.id),
            ));
        }
    }
    Ok(())
}

/// `POST /v1/cluster/init` on the seed node: forms the cluster from the given members (the same
/// request again is a no-op; a different membership is 409).
pub(super) async fn init(State(st): State<St>, body: Bytes) -> Response {
    let req: InitRequest = match parse_body(&body, r#"{"members":[{"id","raft_addr","api_addr"}]}"#)
    {
        Ok(r) => r,
        Err(e) => return e,
    };
    if req.members.is_empty() {
        return err(StatusCode::BAD_REQUEST, "members is empty");
    }
    let mut ids = BTreeSet::new();
    for m in &req.members {
        if let Err(e) = check_member(m) {
            return e;
        }
        if !ids.insert(m.id) {
            return err(
                StatusCode::BAD_REQUEST,
                format!("duplicate member id {}", m.id),
            );
        }
    }
    let _guard = st.membership_lock.lock().await;
    // "The same request again" also covers a cluster that has grown since: every requested
    // member is still there with the same addresses.
    let same_as_current = |current: &BTreeMap<NodeId, NodeInfo>| {
        !current.is_empty()
            && req.members.iter().all(|m| {
                current
                    .get(&m.id)
                    .is_some_and(|n| n.raft_addr == m.raft_addr && n.api_addr == m.api_addr)
            })
    };
    let current = members_map(&st.raft);
    if !current.is_empty() {
        return if same_as_current(&current) {
            answer_members(&st)
        } else {
            err(
                StatusCode::CONFLICT,
                format!(
                    "node {} is already initialised with a different membership ({:?}); init only works on a pristine node",
                    st.id,
                    current.keys().collect::<Vec<_>>()
                ),
            )
        };
    }
    let me = match req.members.iter().find(|m| m.id == st.id) {
        Some(m) => m,
        None => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("the members must include this node (id {})", st.id),
            )
        }
    };
    if me.raft_addr != st.cfg.raft_addr.to_string() || me.api_addr != st.cfg.api_addr.to_string() {
        return err(
            StatusCode::BAD_REQUEST,
            format!(
                "member {} addresses ({}, {}) differ from this node's ({}, {})",
                st.id, me.raft_addr, me.api_addr, st.cfg.raft_addr, st.cfg.api_addr
            ),
        );
    }
    let mut nodes = BTreeMap::new();
    for m in &req.members {
        let info = if m.id == st.id {
            st.self_info()
        } else {
            match fetch_identity(&st.http, st.scheme, &m.raft_addr, Duration::from_secs(5)).await {
                Ok(ident) if ident.service != st.cfg.service || ident.node_id != m.id => {
                    return err(
                        StatusCode::CONFLICT,
                        format!(
                            "{} is {} node {}, not {} node {}",
                            m.raft_addr, ident.service, ident.node_id, st.cfg.service, m.id
                        ),
                    )
                }
                Ok(ident) if ident.initialized => {
                    return err(
                        StatusCode::CONFLICT,
                        format!(
                            "member {} at {} already belongs to a cluster",
                            m.id, m.raft_addr
                        ),
                    )
                }
                Ok(ident) => NodeInfo {
                    raft_addr: m.raft_addr.clone(),
                    api_addr: m.api_addr.clone(),
                    incarnation: ident.incarnation,
                },
                Err(e) => return retry(format!("member {}: {e}; start it first", m.id), None),
            }
        };
        nodes.insert(m.id, info);
    }
    if let Err(e) = st.raft.initialize(nodes).await {
        let current = members_map(&st.raft);
        if !same_as_current(&current) {
            return err(StatusCode::CONFLICT, format!("initialise failed: {e}"));
        }
    }
    // Wait (bounded) for a leader so the caller can write right away.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rx = st.raft.metrics();
    while rx.borrow().current_leader.is_none() && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
    tracing::info!(members = ?ids, "cluster initialised");
    answer_members(&st)
}

/// The log index the learner has matched, from the leader's replication metrics.
fn matched_index(st: &NodeState, id: NodeId) -> Option<u64> {
    let m = st.raft.metrics().borrow().clone();
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned())
        .flatten()
        .map(|l| l.index)
}

async fn wait_caught_up(st: &NodeState, id: NodeId, deadline: Instant) -> Result<(), Response> {
    let target = st.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let mut rx = st.raft.metrics();
    loop {
        if matched_index(st, id).is_some_and(|m| m >= target) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(err(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "learner {id} did not catch up in time (matched {:?} of {target}); it stays a learner — check that it runs and can be reached",
                    matched_index(st, id)
                ),
            ));
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

/// What is left to do once a change has been made under the lock.
enum Then {
    /// Answer with the members.
    Answer,
    /// Release the lock, wait (until the deadline) for this learner to catch up, then answer.
    WaitCaughtUp(NodeId, Instant),
}

/// The shape every membership change shares: `parse` reads and checks the request (a bad one
/// is refused here, before any forwarding); a non-leader forwards it to the leader; the leader
/// runs `change` under the membership lock and answers with the members.
async fn change_members<T, Fut>(
    st: St,
    r: Req,
    parse: impl FnOnce(&Req) -> Result<T, Response>,
    change: impl FnOnce(St, T) -> Fut,
) -> Response
where
    Fut: Future<Output = Result<Then, Response>>,
{
    let input = match parse(&r) {
        Ok(v) => v,
        Err(e) => return e,
    };
    if let Some(resp) = maybe_forward_within(&st, &r, FORWARDED_CHANGE_TIMEOUT).await {
        return resp;
    }
    let then = {
        let _guard = st.membership_lock.lock().await;
        match change(st.clone(), input).await {
            Ok(then) => then,
            Err(e) => return e,
        }
    };
    if let Then::WaitCaughtUp(id, deadline) = then {
        if let Err(e) = wait_caught_up(&st, id, deadline).await {
            return e;
        }
    }
    answer_members(&st)
}

/// Commits a voter change within [`LEARNER_CATCHUP_TIMEOUT`]; `what` names it in errors
/// (`"{what} failed: …"`, `"{late} did not commit in time"`).
async fn commit_change(
    st: &NodeState,
    change: ChangeMembers<NodeId, NodeInfo>,
    what: &str,
    late: &'static str,
) -> Result<(), Response> {
    match tokio::time::timeout(
        LEARNER_CATCHUP_TIMEOUT,
        st.raft.change_membership(change, false),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(retry(format!("{what} failed: {e}"), None)),
        Err(_) => Err(err(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{late} did not commit in time"),
        )),
    }
}

/// The voters, all members and the last log index, as this node sees them now.
fn voters_and_nodes(st: &NodeState) -> (BTreeSet<NodeId>, BTreeSet<NodeId>, u64) {
    let m = st.raft.metrics().borrow().clone();
    let mem = m.membership_config.membership();
    (
        mem.voter_ids().collect(),
        mem.nodes().map(|(id, _)| *id).collect(),
        m.last_log_index.unwrap_or(0),
    )
}

/// `POST /v1/cluster/learners` with a bare member object (`?timeout_ms=` bounds the catch-up).
pub(super) async fn add_learner(State(st): State<St>, r: Req) -> Response {
    let parse = |r: &Req| -> Result<(Member, Instant), Response> {
        let m: Member = parse_body(&r.body, r#"{"id","raft_addr","api_addr"}"#)?;
        check_member(&m)?;
        let timeout = r
            .query
            .get("timeout_ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(LEARNER_CATCHUP_TIMEOUT);
        Ok((m, Instant::now() + timeout))
    };
    change_members(st, r, parse, |st, (m, deadline)| async move {
        add_learner_locked(&st, m, deadline).await
    })
    .await
}

async fn add_learner_locked(
    st: &NodeState,
    m: Member,
    deadline: Instant,
) -> Result<Then, Response> {
    let ident = fetch_identity(&st.http, st.scheme, &m.raft_addr, Duration::from_secs(5))
        .await
        .map_err(|e| {
            retry(
                format!("cannot ask the new node who it is: {e}; start it first"),
                None,
            )
        })?;
    if ident.service != st.cfg.service {
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "{} is a {} node, not {}",
                m.raft_addr, ident.service, st.cfg.service
            ),
        ));
    }
    if ident.node_id != m.id {
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "the node at {} has id {}, not {}",
                m.raft_addr, ident.node_id, m.id
            ),
        ));
    }
    let current = members_map(&st.raft);
    if let Some(n) = current.get(&m.id) {
        if n.incarnation == ident.incarnation
            && n.raft_addr == m.raft_addr
            && n.api_addr == m.api_addr
        {
            return Ok(Then::WaitCaughtUp(m.id, deadline));
        }
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "node id {} is already a member ({}) and the node at {} is another incarnation ({}); node ids are never reused — a node whose data directory was wiped must join with a new id",
                m.id, n, m.raft_addr, ident.incarnation
            ),
        ));
    }
    let reader = st.reader.clone();
    let id = m.id;
    if let Some(old) = read_blocking(move || reader.node_ever(id)).await? {
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "node id {} was used before by {old}; node ids are never reused — join this node with a new id",
                m.id
            ),
        ));
    }
    if ident.initialized {
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "the node at {} already belongs to a cluster; only a pristine node can join",
                m.raft_addr
            ),
        ));
    }
    let info = NodeInfo {
        raft_addr: m.raft_addr.clone(),
        api_addr: m.api_addr.clone(),
        incarnation: ident.incarnation,
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, st.raft.add_learner(m.id, info, false)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(retry(format!("adding learner {} failed: {e}", m.id), None)),
        Err(_) => {
            return Err(err(
                StatusCode::GATEWAY_TIMEOUT,
                "adding the learner timed out",
            ))
        }
    }
    tracing::info!(id = m.id, raft = %m.raft_addr, "learner added; waiting for it to catch up");
    Ok(Then::WaitCaughtUp(m.id, deadline))
}

/// `POST /v1/cluster/leader` `{"away_from": ID}` (`?timeout_ms=` bounds it, default
/// [`MOVE_LEADER_TIMEOUT`]): when ID leads, it hands its leadership to the most caught-up
/// other voter ([`crate::handover`]) and answers with the members once another leads; when
/// ID does not lead, the members at once. 409 when no voter can take over, 504 when it did
/// not happen in time.
pub(super) async fn move_leader(State(st): State<St>, r: Req) -> Response {
    let parse = |r: &Req| -> Result<(MoveLeaderRequest, Instant), Response> {
        let req: MoveLeaderRequest = parse_body(&r.body, r#"{"away_from":ID}"#)?;
        let timeout = r
            .query
            .get("timeout_ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(MOVE_LEADER_TIMEOUT);
        Ok((req, Instant::now() + timeout))
    };
    change_members(st, r, parse, |st, (req, deadline)| async move {
        if req.away_from != st.id {
            return Ok(Then::Answer);
        }
        match hand_over(&st, deadline).await {
            Ok(_) => Ok(Then::Answer),
            Err(HandoverError::NotLeader(l)) if l != Some(req.away_from) => Ok(Then::Answer),
            Err(e @ HandoverError::NotLeader(_)) => Err(retry(e.to_string(), None)),
            Err(HandoverError::NoCandidate(why)) => Err(err(StatusCode::CONFLICT, why)),
            Err(HandoverError::TimedOut(why)) => Err(err(StatusCode::GATEWAY_TIMEOUT, why)),
        }
    })
    .await
}

/// `POST /v1/cluster/voters` `{"ids":[…]}`: promotes caught-up learners (voters are a no-op).
pub(super) async fn promote(State(st): State<St>, r: Req) -> Response {
    let parse = |r: &Req| parse_body::<PromoteRequest>(&r.body, r#"{"ids":[…]}"#);
    change_members(st, r, parse, |st, req| async move {
        let (voters, nodes, last) = voters_and_nodes(&st);
        let mut to_add = BTreeSet::new();
        for id in &req.ids {
            if voters.contains(id) {
                continue;
            }
            if !nodes.contains(id) {
                return Err(err(
                    StatusCode::NOT_FOUND,
                    format!("node {id} is not a member; add it as a learner first"),
                ));
            }
            let matched = matched_index(&st, *id).unwrap_or(0);
            // etcd's rule: a learner is ready when it has at least 90% of the leader's log.
            if matched.saturating_mul(10) < last.saturating_mul(9) {
                return Err(err(
                    StatusCode::CONFLICT,
                    format!("learner {id} has not caught up (matched {matched} of {last} entries); retry once it has"),
                ));
            }
            to_add.insert(*id);
        }
        if !to_add.is_empty() {
            let change = ChangeMembers::AddVoterIds(to_add.clone());
            commit_change(&st, change, "promotion", "promotion").await?;
            tracing::info!(ids = ?to_add, "promoted to voters");
        }
        Ok(Then::Answer)
    })
    .await
}

/// `DELETE /v1/cluster/members/{id}`: removes a voter (never the last) or a learner; a node
/// that was a member once and is gone already is a no-op.
pub(super) async fn remove_member(State(st): State<St>, Path(id): Path<u64>, r: Req) -> Response {
    change_members(
        st,
        r,
        |_| Ok(()),
        |st, ()| async move {
            let (voters, nodes, _) = voters_and_nodes(&st);
            let change = if voters.contains(&id) {
                if voters.len() == 1 {
                    return Err(err(
                        StatusCode::CONFLICT,
                        format!("node {id} is the last voter; it cannot be removed"),
                    ));
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else if nodes.contains(&id) {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            } else {
                let reader = st.reader.clone();
                return match read_blocking(move || reader.node_ever(id)).await? {
                    Some(_) => Ok(Then::Answer),
                    None => Err(err(
                        StatusCode::NOT_FOUND,
                        format!("node {id} was never a member"),
                    )),
                };
            };
            commit_change(&st, change, &format!("removing {id}"), "removal").await?;
            tracing::info!(id, "member removed");
            Ok(Then::Answer)
        },
    )
    .await
}
