//! Raft RPC over HTTP on the Raft port: the client side ([`HttpNetwork`]) and the server routes
//! ([`raft_router`]).
//!
//! Every RPC is a `POST /raft/{append,vote,snapshot}` with a JSON body; the answer is the JSON of
//! `Result<Response, RaftError>`. Each request names the target's id and the incarnation the
//! sender believes it has (`x-target-id`, `x-target-incarnation`); a node refuses (409) traffic
//! meant for another id or another incarnation, so a node whose data directory was wiped never
//! receives log entries meant for its predecessor. `GET /raft/identity` tells a prospective
//! leader who is listening (service, id, incarnation, whether initialised). `POST /raft/elect`
//! asks a voter to campaign at once (a leader handing its leadership over: see
//! [`crate::handover`]).
//!
//! A node notes when it last heard from a leader ([`LeaderContact`], every append that does
//! not carry a stale vote), so it can refuse to forward to a leader that has gone silent.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bounds::{self, MAX_RAFT_BODY};
use crate::durability::Durable;
use crate::types::{NodeId, NodeInfo, Raft, TypeConfig};

/// Header naming the target node id.
pub const HDR_TARGET_ID: &str = "x-target-id";
/// Header naming the target's expected incarnation.
pub const HDR_TARGET_INCARNATION: &str = "x-target-incarnation";

/// `GET /raft/identity` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `chainfire` or `flaredb`.
    pub service: String,
    /// The node's id.
    pub node_id: NodeId,
    /// The data directory's incarnation.
    pub incarnation: String,
    /// Whether the node already belongs to a cluster.
    pub initialized: bool,
}

/// Largest append-entries body sent in one RPC (JSON bytes; a single larger entry still goes).
///
/// openraft 0.9 gives an append RPC one heartbeat interval to complete and sends up to
/// `max_payload_entries` entries in it; with batched entries a follower catching up could be
/// offered more than it can take in that time, again and again. Above this size the RPC is
/// refused locally as too large, and openraft retries at once with fewer entries.
pub const MAX_APPEND_BYTES: usize = 2 << 20;

/// Creates connections to peers.
#[derive(Debug, Clone)]
pub struct HttpNetwork {
    http: reqwest::Client,
    scheme: &'static str,
    durable: Option<Durable>,
}

impl HttpNetwork {
    /// A network using `http` (which carries the TLS settings) and `scheme`.
    pub fn new(http: reqwest::Client, scheme: &'static str) -> Self {
        Self {
            http,
            scheme,
            durable: None,
        }
    }

    /// Tells followers a commit index only once this node's log is on disk up to it (the rule
    /// of [`crate::durability`]).
    pub fn announcing_only_durable(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpConn;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        HttpConn {
            target,
            node: node.clone(),
            http: self.http.clone(),
            scheme: self.scheme,
            durable: self.durable.clone(),
            in_flight: None,
        }
    }
}

/// How long an RPC may run on after openraft stopped waiting for it (see [`HttpConn`]).
pub const DETACHED_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// What a detached RPC ends with: the status and body, or why there is none.
type RpcOutcome = Result<(reqwest::StatusCode, bytes::Bytes), RpcFailure>;

#[derive(Debug)]
enum RpcFailure {
    Connect(reqwest::Error),
    Other(reqwest::Error),
}

/// A connection to one peer.
///
/// openraft 0.9 gives an append RPC one heartbeat interval (100 ms by default) and drops it
/// when that passes. A dropped request takes its connection with it, and a new connection to a
/// peer that has just rebooted needs TCP and a mutual-TLS handshake first. On a busy host's
/// emulated CPUs that takes longer than 100 ms every time, so the leader never got through
/// again and the rebooted node never heard from it. So each RPC runs in its own task, bounded
/// by [`DETACHED_RPC_TIMEOUT`]: openraft still gets its answer or its timeout on time, but a
/// request it gave up on finishes in the background (its late answer is dropped; Raft
/// tolerates late and repeated messages) and leaves a live connection in the pool. At most one
/// such request per peer: the next RPC first waits for it (within openraft's own deadline),
/// then goes out at once.
#[derive(Debug)]
pub struct HttpConn {
    target: NodeId,
    node: NodeInfo,
    http: reqwest::Client,
    scheme: &'static str,
    durable: Option<Durable>,
    in_flight: Option<tokio::task::JoinHandle<RpcOutcome>>,
}

impl HttpConn {
    async fn rpc<Req, Resp, E>(
        &mut self,
        kind: &str,
        req: &Req,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.rpc_body(kind, body).await
    }

    async fn rpc_body<Resp, E>(
        &mut self,
        kind: &str,
        body: Vec<u8>,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}://{}/raft/{kind}", self.scheme, self.node.raft_addr);
        if let Some(previous) = self.in_flight.as_mut() {
            // One at a time: wait for the request openraft gave up on (its answer is stale),
            // then send this one at once, so the call openraft makes now is not wasted. Cut
            // short by openraft's deadline, the handle stays, so the next call waits too.
            let _ = previous.await;
            self.in_flight = None;
        }
        let request = self
            .http
            .post(&url)
            .header(HDR_TARGET_ID, self.target.to_string())
            .header(HDR_TARGET_INCARNATION, &self.node.incarnation)
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(DETACHED_RPC_TIMEOUT);
        let task = self.in_flight.insert(tokio::spawn(async move {
            let resp = request.send().await.map_err(|e| {
                if e.is_connect() {
                    RpcFailure::Connect(e)
                } else {
                    RpcFailure::Other(e)
                }
            })?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(RpcFailure::Other)?;
            Ok((status, body))
        }));
        // Dropped here by openraft's timeout, the task runs on (see the type's docs).
        let outcome = task.await;
        self.in_flight = None;
        let (status, body) = match outcome {
            Ok(Ok(answer)) => answer,
            Ok(Err(RpcFailure::Connect(e))) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(RpcFailure::Other(e))) => return Err(RPCError::Network(NetworkError::new(&e))),
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        if !status.is_success() {
            let msg = String::from_utf8_lossy(&body).into_owned();
            // Refused (wrong incarnation, wrong service): back off like an unreachable peer.
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(format!("{url}: {status}: {msg}")),
            )));
        }
        let res: Result<Resp, E> =
            serde_json::from_slice(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for HttpConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        if let (Some(d), Some(c)) = (&self.durable, &rpc.leader_commit) {
            // Rarely waits: the leader's sync usually ends before a follower acknowledges.
            if tokio::time::timeout(option.hard_ttl(), d.wait_for(c.index))
                .await
                .is_err()
            {
                return Err(RPCError::Network(NetworkError::new(
                    &std::io::Error::other(format!(
                        "the leader's log is not on disk up to the commit index {} yet",
                        c.index
                    )),
                )));
            }
        }
        let n = rpc.entries.len();
        let body =
            serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if n > 1 && body.len() > MAX_APPEND_BYTES {
            // openraft retries at once with at most this many entries (for the next few RPCs).
            let fits = (n * MAX_APPEND_BYTES / body.len()).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fits as u64),
            ));
        }
        self.rpc_body("append", body).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("snapshot", &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.rpc("vote", &rpc).await
    }
}

/// When this node last heard from a leader (an append or heartbeat it did not refuse).
#[derive(Debug)]
pub struct LeaderContact {
    /// Milliseconds since `epoch` + 1 (0: never).
    at: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self {
            at: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }
}

impl LeaderContact {
    /// A leader was heard from now.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.at.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago a leader was last heard from (`None`: never, since this process began).
    pub fn silent_for(&self) -> Option<Duration> {
        match self.at.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            at => {
                let now = self.epoch.elapsed().as_millis() as u64 + 1;
                Some(Duration::from_millis(now.saturating_sub(at)))
            }
        }
    }
}

/// What the Raft routes need.
#[derive(Clone)]
pub struct RaftRpcState {
    /// The Raft handle.
    pub raft: Raft,
    /// This node's identity.
    pub identity: Arc<Identity>,
    /// When a leader was last heard from (shared with the API's forwarding).
    pub contact: Arc<LeaderContact>,
}

fn check_target(st: &RaftRpcState, headers: &HeaderMap) -> Result<(), Response> {
    let id = headers
        .get(HDR_TARGET_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok());
    let inc = headers
        .get(HDR_TARGET_INCARNATION)
        .and_then(|v| v.to_str().ok());
    if id != Some(st.identity.node_id) || inc != Some(st.identity.incarnation.as_str()) {
        let msg = format!(
            "refused: this is node {} incarnation {}, the sender expected node {:?} incarnation {:?}; a node whose data directory was wiped cannot rejoin under its old id — join it as a learner with a new id",
            st.identity.node_id, st.identity.incarnation, id, inc
        );
        tracing::warn!("{msg}");
        return Err((StatusCode::CONFLICT, msg).into_response());
    }
    Ok(())
}

async fn append(
    State(st): State<RaftRpcState>,
    headers: HeaderMap,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if let Err(r) = check_target(&st, &headers) {
        return r;
    }
    let res = st.raft.append_entries(req).await;
    if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
        st.contact.touch();
    }
    Json(res).into_response()
}

async fn vote(
    State(st): State<RaftRpcState>,
    headers: HeaderMap,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Response {
    if let Err(r) = check_target(&st, &headers) {
        return r;
    }
    Json(st.raft.vote(req).await).into_response()
}

async fn snapshot(
    State(st): State<RaftRpcState>,
    headers: HeaderMap,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    if let Err(r) = check_target(&st, &headers) {
        return r;
    }
    Json(st.raft.install_snapshot(req).await).into_response()
}

/// `POST /raft/elect`: campaign now (the leader asks, to hand its leadership over). Answers
/// once the election is started, not won.
async fn elect(State(st): State<RaftRpcState>, headers: HeaderMap) -> Response {
    if let Err(r) = check_target(&st, &headers) {
        return r;
    }
    if st.raft.metrics().borrow().state == openraft::ServerState::Leader {
        // A repeated request that crossed this node's election: nothing to do.
        return Json(serde_json::json!({"electing": false, "leader": true})).into_response();
    }
    match st.raft.trigger().elect().await {
        Ok(()) => {
            tracing::info!("asked to campaign by the leader handing over; election started");
            Json(serde_json::json!({"electing": true})).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {e}"),
        )
            .into_response(),
    }
}

async fn identity(State(st): State<RaftRpcState>) -> Json<Identity> {
    let mut id = (*st.identity).clone();
    id.initialized = st.raft.is_initialized().await.unwrap_or(false);
    Json(id)
}

/// The Raft port's routes, with the bounds of [`crate::bounds`]: bodies of at most
/// [`MAX_RAFT_BODY`], at most [`bounds::MAX_RAFT_REQUESTS_PER_PEER`] requests at once per peer.
pub fn raft_router(st: RaftRpcState) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/identity", get(identity))
        .route("/raft/elect", post(elect))
        // Inside the guard (crate::access): a peer's slot first, then its body.
        .route_layer(axum::middleware::from_fn_with_state(
            MAX_RAFT_BODY,
            bounds::read_body,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(bounds::PeerLimits::default()),
            bounds::limit_per_peer,
        ))
        .layer(DefaultBodyLimit::max(MAX_RAFT_BODY))
        .with_state(st)
}

/// Asks voter `target` (at `node`) to campaign now (`POST /raft/elect`).
pub async fn request_election(
    http: &reqwest::Client,
    scheme: &str,
    target: NodeId,
    node: &NodeInfo,
    timeout: Duration,
) -> Result<(), String> {
    let url = format!("{scheme}://{}/raft/elect", node.raft_addr);
    let resp = http
        .post(&url)
        .header(HDR_TARGET_ID, target.to_string())
        .header(HDR_TARGET_INCARNATION, &node.incarnation)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        let status = resp.status();
        Err(format!(
            "{url} answered {status}: {}",
            resp.text().await.unwrap_or_default()
        ))
    }
}

/// Asks the node at `raft_addr` who it is.
pub async fn fetch_identity(
    http: &reqwest::Client,
    scheme: &str,
    raft_addr: &str,
    timeout: Duration,
) -> Result<Identity, String> {
    let url = format!("{scheme}://{raft_addr}/raft/identity");
    let resp = http
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    resp.json::<Identity>()
        .await
        .map_err(|e| format!("{url}: not a PlasmaCloud store's Raft port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, Entry};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

    fn request(entries: usize, value_bytes: usize) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: (1..=entries as u64)
                .map(|i| Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                    payload: EntryPayload::Normal(Command::Put {
                        ks: String::new(),
                        key: format!("k{i}"),
                        value: "v".repeat(value_bytes),
                        cond: None,
                    }),
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn an_oversized_append_is_cut_down_before_it_is_sent() {
        // Nothing listens there: a refusal that reaches the network would be Unreachable.
        let mut conn = HttpConn {
            target: 2,
            node: NodeInfo {
                raft_addr: "127.0.0.1:9".into(),
                api_addr: "127.0.0.1:9".into(),
                incarnation: "x".into(),
            },
            http: reqwest::Client::new(),
            scheme: "http",
            durable: None,
            in_flight: None,
        };
        let opt = RPCOption::new(Duration::from_millis(500));
        // 8 entries of 1 MiB: about 4x the cap, so about 2 entries fit.
        match conn.append_entries(request(8, 1 << 20), opt.clone()).await {
            Err(RPCError::PayloadTooLarge(p)) => {
                assert!((1..=2).contains(&p.entries_hint()), "{p}");
            }
            other => panic!("want PayloadTooLarge, got {other:?}"),
        }
        // One entry over the cap still goes (and here finds nobody listening).
        match conn.append_entries(request(1, 3 << 20), opt).await {
            Err(RPCError::Unreachable(_)) | Err(RPCError::Network(_)) => {}
            other => panic!("want a network error, got {other:?}"),
        }
    }
}
