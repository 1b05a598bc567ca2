//! The HTTP API both services share: health, readiness, membership, revisioned KV, time series.
//!
//! Errors are always JSON ([`ErrorBody`]). Writes, linearizable reads and membership changes
//! arriving at a non-leader are forwarded to the leader (see the crate docs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use openraft::{ChangeMembers, ServerState};
use plasmacloud_store_client::types::{valid_namespace, valid_series};
use plasmacloud_store_client::{
    AppendResponse, Bucket, BucketsBody, DeleteResponse, ErrorBody, Health, InitRequest,
    ListResponse, Member, MemberInfo, MemberRole, MembersResponse, Point, PointsBody,
    PromoteRequest, PutResponse, RaftRole,
};

use crate::network::fetch_identity;
use crate::node::{members_map, NodeState};
use crate::proposer::WriteFail;
use crate::types::{Command, CommandResult, Cond, NodeId, NodeInfo};

/// Handlers' state.
pub type St = Arc<NodeState>;

/// Marks a request a follower forwarded (a receiver that is not the leader answers 503).
pub const HDR_FORWARDED: &str = "x-plasmacloud-forwarded";
/// Largest key, bytes.
pub const MAX_KEY: usize = 4096;
/// Largest value, bytes.
pub const MAX_VALUE: usize = 1024 * 1024;
/// Default deadline for a learner to catch up.
pub const LEARNER_CATCHUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Maps openraft's server state to the API's role.
pub fn role_of(s: ServerState) -> RaftRole {
    match s {
        ServerState::Leader => RaftRole::Leader,
        ServerState::Follower => RaftRole::Follower,
        ServerState::Learner => RaftRole::Learner,
        ServerState::Candidate => RaftRole::Candidate,
        ServerState::Shutdown => RaftRole::Shutdown,
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(msg))).into_response()
}

fn retry(msg: impl Into<String>, leader: Option<NodeId>) -> Response {
    let mut b = ErrorBody::new(msg);
    b.retryable = true;
    b.leader = leader;
    (StatusCode::SERVICE_UNAVAILABLE, Json(b)).into_response()
}

fn conflict(msg: impl Into<String>, revision: u64) -> Response {
    let mut b = ErrorBody::new(msg);
    b.revision = Some(revision);
    (StatusCode::CONFLICT, Json(b)).into_response()
}

fn with_revision(mut r: Response, rev: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&rev.to_string()) {
        r.headers_mut().insert("x-revision", v);
    }
    r
}

// ---------------------------------------------------------------- health

/// Computes `/health`.
pub fn health_of(st: &NodeState) -> (StatusCode, Health) {
    let m = st.raft.metrics().borrow().clone();
    let role = role_of(m.state);
    let membership = m.membership_config.membership();
    let size = membership.nodes().count() as u64;
    let reason = if let Err(e) = &m.running_state {
        Some(format!("raft stopped: {e}"))
    } else if size == 0 {
        Some("not initialised: POST /v1/cluster/init on the seed node, or add this node as a learner".to_string())
    } else if membership.get_node(&st.id).is_none() {
        Some(format!(
            "node {} is not a member of the cluster (removed?)",
            st.id
        ))
    } else if m.current_leader.is_none() {
        Some("no leader (election in progress or no quorum)".to_string())
    } else {
        None
    };
    let h = Health {
        status: if reason.is_none() {
            "healthy"
        } else {
            "unhealthy"
        }
        .into(),
        raft: role,
        cluster_size: size,
        reason: reason.clone(),
        chainfire: st.chainfire_status().map(str::to_string),
    };
    let code = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, h)
}

async fn health(State(st): State<St>) -> Response {
    let (code, h) = health_of(&st);
    (code, Json(h)).into_response()
}

/// `/readyz[?verbose]`: etcd-style check list; 200 `ok` when every required check passes.
async fn readyz(State(st): State<St>, Query(q): Query<HashMap<String, String>>) -> Response {
    let m = st.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let last = m.last_log_index.unwrap_or(0);
    let mut checks: Vec<(&str, bool, String, bool)> = vec![
        ("raft_running", m.running_state.is_ok(), String::new(), true),
        (
            "initialized",
            membership.nodes().count() > 0,
            "not initialised".into(),
            true,
        ),
        (
            "member",
            membership.get_node(&st.id).is_some(),
            "not in the membership".into(),
            true,
        ),
        (
            "leader",
            m.current_leader.is_some(),
            "no leader known".into(),
            true,
        ),
        (
            "applied",
            last.saturating_sub(applied) < 1000,
            format!("applied {applied} of {last}"),
            true,
        ),
    ];
    if let Some(cf) = st.chainfire_status() {
        checks.push(("chainfire", cf == "connected", cf.to_string(), false));
    }
    let ready = checks.iter().all(|(_, ok, _, required)| *ok || !*required);
    let verbose = q.contains_key("verbose");
    let mut body = String::new();
    if verbose {
        for (name, ok, why, required) in &checks {
            if *ok {
                body.push_str(&format!("[+]{name} ok\n"));
            } else if *required {
                body.push_str(&format!("[-]{name} failed: {why}\n"));
            } else {
                body.push_str(&format!("[-]{name} {why} (not required)\n"));
            }
        }
        body.push_str(&format!(
            "node {} role {} leader {} term {} applied {} last_log {} snapshot {} purged {}\n",
            st.id,
            role_of(m.state).as_str(),
            m.current_leader
                .map(|l| l.to_string())
                .unwrap_or_else(|| "none".into()),
            m.current_term,
            applied,
            last,
            m.snapshot.map(|l| l.index).unwrap_or(0),
            m.purged.map(|l| l.index).unwrap_or(0)
        ));
    }
    body.push_str(if ready { "ok\n" } else { "failed\n" });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

// ---------------------------------------------------------------- leader routing

enum Route {
    Local,
    Forward(String),
}

fn route(st: &NodeState, headers: &HeaderMap) -> Result<Route, Response> {
    let m = st.raft.metrics().borrow().clone();
    if m.membership_config.membership().nodes().count() == 0 {
        return Err(retry(
            format!(
                "node {} is not initialised (not part of a cluster yet)",
                st.id
            ),
            None,
        ));
    }
    match m.current_leader {
        Some(l) if l == st.id && m.state == ServerState::Leader => Ok(Route::Local),
        Some(l) => {
            if headers.contains_key(HDR_FORWARDED) {
                return Err(retry(
                    format!("node {} is no longer the leader; retry", st.id),
                    Some(l),
                ));
            }
            match m.membership_config.membership().get_node(&l) {
                Some(n) => Ok(Route::Forward(n.api_addr.clone())),
                None => Err(retry(format!("leader {l} has no known address"), Some(l))),
            }
        }
        None => Err(retry("no leader (election in progress)", None)),
    }
}

async fn forward(
    st: &NodeState,
    api_addr: &str,
    method: Method,
    uri: &OriginalUri,
    body: Bytes,
) -> Response {
    let pq = uri
        .0
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.0.path().to_string());
    let url = format!("{}://{api_addr}{pq}", st.scheme);
    let timeout = if pq.starts_with("/v1/cluster") {
        LEARNER_CATCHUP_TIMEOUT + Duration::from_secs(30)
    } else {
        st.cfg.request_timeout
    };
    let req = st
        .http
        .request(method, &url)
        .header(HDR_FORWARDED, st.id.to_string())
        .timeout(timeout)
        .body(body);
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let mut headers = HeaderMap::new();
            for name in ["content-type", "x-revision", "location"] {
                if let Some(v) = resp.headers().get(name) {
                    headers.insert(name, v.clone());
                }
            }
            match resp.bytes().await {
                Ok(b) => (status, headers, b).into_response(),
                Err(e) => err(
                    StatusCode::BAD_GATEWAY,
                    format!("forwarding to leader {api_addr}: answer broke off (the outcome is unknown): {e}"),
                ),
            }
        }
        Err(e) if e.is_connect() => retry(format!("leader {api_addr} unreachable: {e}"), None),
        Err(e) if e.is_timeout() => err(
            StatusCode::GATEWAY_TIMEOUT,
            format!("forwarding to leader {api_addr}: no answer in time (the outcome is unknown)"),
        ),
        Err(e) => err(
            StatusCode::BAD_GATEWAY,
            format!("forwarding to leader {api_addr} failed (the outcome is unknown): {e}"),
        ),
    }
}

/// Forwards when this node is not the leader; `None` means: handle it here.
async fn maybe_forward(
    st: &NodeState,
    headers: &HeaderMap,
    method: Method,
    uri: &OriginalUri,
    body: Bytes,
) -> Option<Response> {
    match route(st, headers) {
        Ok(Route::Local) => None,
        Ok(Route::Forward(addr)) => Some(forward(st, &addr, method, uri, body).await),
        Err(r) => Some(r),
    }
}

async fn write(st: &NodeState, cmd: Command) -> Result<CommandResult, Response> {
    match tokio::time::timeout(st.cfg.request_timeout, st.proposer.write(cmd)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(WriteFail::ForwardToLeader(leader))) => Err(retry(
            "leadership changed before the write was committed; it was not applied",
            leader,
        )),
        Ok(Err(WriteFail::Failed(e))) => Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("write failed: {e}"),
        )),
        Err(_) => Err(err(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "write not committed within {:?} (no quorum?); the outcome is unknown",
                st.cfg.request_timeout
            ),
        )),
    }
}

async fn linearize(st: &NodeState) -> Result<(), Response> {
    match tokio::time::timeout(st.cfg.request_timeout, st.raft.ensure_linearizable()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(retry(
            format!("cannot confirm leadership for a linearizable read: {e}"),
            None,
        )),
        Err(_) => Err(err(
            StatusCode::GATEWAY_TIMEOUT,
            "linearizable read: leadership not confirmed in time (no quorum?)",
        )),
    }
}

async fn read_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::types::StorageError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storage: {e}"),
        )),
        Err(e) => Err(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storage task: {e}"),
        )),
    }
}

fn serializable(q: &HashMap<String, String>) -> bool {
    q.get("consistency").map(String::as_str) == Some("serializable")
}

// ---------------------------------------------------------------- KV

fn check_key(key: &str) -> Result<(), Response> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("keys must be 1..={MAX_KEY} bytes"),
        ));
    }
    Ok(())
}

fn parse_cond(q: &HashMap<String, String>) -> Result<Option<Cond>, Response> {
    match (q.get("prev_revision"), q.get("prev_exist")) {
        (Some(_), Some(_)) => Err(err(
            StatusCode::BAD_REQUEST,
            "give prev_revision or prev_exist, not both",
        )),
        (Some(r), None) => r
            .parse::<u64>()
            .map(|r| Some(Cond::Revision(r)))
            .map_err(|_| {
                err(
                    StatusCode::BAD_REQUEST,
                    format!("prev_revision={r:?} is not a number"),
                )
            }),
        (None, Some(e)) => match e.as_str() {
            "false" => Ok(Some(Cond::Absent)),
            "true" => Ok(Some(Cond::Exists)),
            _ => Err(err(
                StatusCode::BAD_REQUEST,
                format!("prev_exist={e:?} must be true or false"),
            )),
        },
        (None, None) => Ok(None),
    }
}

/// The inputs of every KV handler (method, URI and headers for forwarding, the query, the
/// body), extracted in one go.
struct Req {
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
    query: HashMap<String, String>,
}

impl<S: Send + Sync> FromRequest<S> for Req {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let uri = OriginalUri::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Query(query) = Query::<HashMap<String, String>>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let (method, headers) = (parts.method.clone(), parts.headers.clone());
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Req {
            method,
            uri,
            headers,
            body,
            query,
        })
    }
}

async fn kv_get(st: St, ks: String, key: String, r: Req) -> Response {
    if let Err(e) = check_key(&key) {
        return e;
    }
    if !serializable(&r.query) {
        if let Some(resp) = maybe_forward(&st, &r.headers, r.method, &r.uri, r.body).await {
            return resp;
        }
        if let Err(e) = linearize(&st).await {
            return e;
        }
    }
    let reader = st.reader.clone();
    let (ks2, key2) = (ks.clone(), key.clone());
    match read_blocking(move || reader.get(&ks2, &key2)).await {
        Ok(Some((rev, value))) => with_revision(
            ([("content-type", "text/plain; charset=utf-8")], value).into_response(),
            rev,
        ),
        Ok(None) => err(StatusCode::NOT_FOUND, format!("key {key:?} not found")),
        Err(e) => e,
    }
}

async fn kv_put(st: St, ks: String, key: String, r: Req) -> Response {
    if let Err(e) = check_key(&key) {
        return e;
    }
    let cond = match parse_cond(&r.query) {
        Ok(c) => c,
        Err(e) => return e,
    };
    if r.body.len() > MAX_VALUE {
        return err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("values are at most {MAX_VALUE} bytes"),
        );
    }
    let value = match std::str::from_utf8(&r.body) {
        Ok(v) => v.to_string(),
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("value is not UTF-8: {e}")),
    };
    if let Some(resp) = maybe_forward(&st, &r.headers, r.method, &r.uri, r.body).await {
        return resp;
    }
    match write(
        &st,
        Command::Put {
            ks,
            key: key.clone(),
            value,
            cond,
        },
    )
    .await
    {
        Ok(res) if res.ok => with_revision(
            Json(PutResponse {
                revision: res.revision,
            })
            .into_response(),
            res.revision,
        ),
        Ok(res) => conflict(
            format!(
                "compare failed for key {key:?}: its revision is {}",
                res.revision
            ),
            res.revision,
        ),
        Err(e) => e,
    }
}

async fn kv_delete(st: St, ks: String, key: String, r: Req) -> Response {
    if let Err(e) = check_key(&key) {
        return e;
    }
    let prev_revision = match r.query.get("prev_revision") {
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return err(
                    StatusCode::BAD_REQUEST,
                    format!("prev_revision={v:?} is not a number"),
                )
            }
        },
        None => None,
    };
    if let Some(resp) = maybe_forward(&st, &r.headers, r.method, &r.uri, r.body).await {
        return resp;
    }
    match write(
        &st,
        Command::Delete {
            ks,
            key: key.clone(),
            prev_revision,
        },
    )
    .await
    {
        Ok(res) if res.ok => with_revision(
            Json(DeleteResponse {
                revision: res.revision,
                deleted: res.deleted,
            })
            .into_response(),
            res.revision,
        ),
        Ok(res) => conflict(
            format!(
                "compare failed for key {key:?}: its revision is {}",
                res.revision
            ),
            res.revision,
        ),
        Err(e) => e,
    }
}

async fn kv_list(st: St, ks: String, r: Req) -> Response {
    let prefix = r.query.get("prefix").cloned().unwrap_or_default();
    if !serializable(&r.query) {
        if let Some(resp) = maybe_forward(&st, &r.headers, r.method, &r.uri, r.body).await {
            return resp;
        }
        if let Err(e) = linearize(&st).await {
            return e;
        }
    }
    let reader = st.reader.clone();
    match read_blocking(move || reader.list(&ks, &prefix)).await {
        Ok((revision, items)) => with_revision(
            Json(ListResponse { revision, items }).into_response(),
            revision,
        ),
        Err(e) => e,
    }
}

async fn cf_get(State(st): State<St>, Path(key): Path<String>, r: Req) -> Response {
    kv_get(st, String::new(), key, r).await
}

async fn cf_put(State(st): State<St>, Path(key): Path<String>, r: Req) -> Response {
    kv_put(st, String::new(), key, r).await
}

async fn cf_delete(State(st): State<St>, Path(key): Path<String>, r: Req) -> Response {
    kv_delete(st, String::new(), key, r).await
}

async fn cf_list(State(st): State<St>, r: Req) -> Response {
    kv_list(st, String::new(), r).await
}

fn check_ns(ns: &str) -> Result<(), Response> {
    if valid_namespace(ns) {
        Ok(())
    } else {
        Err(err(
            StatusCode::BAD_REQUEST,
            format!("namespace {ns:?} must match [a-z0-9_-]{{1,32}}"),
        ))
    }
}

async fn ns_get(State(st): State<St>, Path((ns, key)): Path<(String, String)>, r: Req) -> Response {
    if let Err(e) = check_ns(&ns) {
        return e;
    }
    kv_get(st, ns, key, r).await
}

async fn ns_put(State(st): State<St>, Path((ns, key)): Path<(String, String)>, r: Req) -> Response {
    if let Err(e) = check_ns(&ns) {
        return e;
    }
    kv_put(st, ns, key, r).await
}

async fn ns_delete(
    State(st): State<St>,
    Path((ns, key)): Path<(String, String)>,
    r: Req,
) -> Response {
    if let Err(e) = check_ns(&ns) {
        return e;
    }
    kv_delete(st, ns, key, r).await
}

async fn ns_list(State(st): State<St>, Path(ns): Path<String>, r: Req) -> Response {
    if let Err(e) = check_ns(&ns) {
        return e;
    }
    kv_list(st, ns, r).await
}

// ---------------------------------------------------------------- time series

async fn ts_append(
    State(st): State<St>,
    Path(series): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !valid_series(&series) {
        return err(
            StatusCode::BAD_REQUEST,
            format!("series {series:?} must match [a-z0-9_.-]{{1,128}}"),
        );
    }
    let parsed: PointsBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"points\":[{{\"t\":<unix ms>,\"v\":<number>}}]}}: {e}"),
            )
        }
    };
    if parsed.points.is_empty() || parsed.points.len() > 10_000 {
        return err(StatusCode::BAD_REQUEST, "send 1..=10000 points per request");
    }
    if parsed.points.iter().any(|p| !p.v.is_finite()) {
        return err(
            StatusCode::BAD_REQUEST,
            "point values must be finite numbers",
        );
    }
    if let Some(resp) = maybe_forward(&st, &headers, method, &uri, body).await {
        return resp;
    }
    let points = parsed.points.iter().map(|p| (p.t, p.v)).collect();
    match write(&st, Command::TsAppend { series, points }).await {
        Ok(res) => with_revision(
            Json(AppendResponse {
                revision: res.revision,
                appended: res.count,
            })
            .into_response(),
            res.revision,
        ),
        Err(e) => e,
    }
}

/// Downsamples sorted points into `step`-ms buckets.
pub fn downsample(points: &[(i64, f64)], step: i64) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for &(t, v) in points {
        let start = t.div_euclid(step) * step;
        match out.last_mut() {
            Some(b) if b.t == start => {
                b.v += v;
                b.min = b.min.min(v);
                b.max = b.max.max(v);
                b.count += 1;
            }
            _ => out.push(Bucket {
                t: start,
                v,
                min: v,
                max: v,
                count: 1,
            }),
        }
    }
    for b in &mut out {
        b.v /= b.count as f64;
    }
    out
}

async fn ts_query(State(st): State<St>, Path(series): Path<String>, r: Req) -> Response {
    let Req {
        method,
        uri,
        headers,
        query: q,
        ..
    } = r;
    if !valid_series(&series) {
        return err(
            StatusCode::BAD_REQUEST,
            format!("series {series:?} must match [a-z0-9_.-]{{1,128}}"),
        );
    }
    let num = |name: &str, default: i64| -> Result<i64, Response> {
        match q.get(name) {
            Some(v) => v.parse::<i64>().map_err(|_| {
                err(
                    StatusCode::BAD_REQUEST,
                    format!("{name}={v:?} is not an integer (unix ms)"),
                )
            }),
            None => Ok(default),
        }
    };
    let (from, to, step) = match (num("from", i64::MIN), num("to", i64::MAX), num("step", 0)) {
        (Ok(f), Ok(t), Ok(s)) => (f, t, s),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
    };
    if step < 0 || from > to {
        return err(StatusCode::BAD_REQUEST, "need from <= to and step > 0");
    }
    if !serializable(&q) {
        if let Some(resp) = maybe_forward(&st, &headers, method, &uri, Bytes::new()).await {
            return resp;
        }
        if let Err(e) = linearize(&st).await {
            return e;
        }
    }
    let reader = st.reader.clone();
    let points = match read_blocking(move || reader.ts_range(&series, from, to)).await {
        Ok(p) => p,
        Err(e) => return e,
    };
    if step > 0 {
        Json(BucketsBody {
            points: downsample(&points, step),
        })
        .into_response()
    } else {
        Json(PointsBody {
            points: points.into_iter().map(|(t, v)| Point { t, v }).collect(),
        })
        .into_response()
    }
}

// ---------------------------------------------------------------- membership

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
    MembersResponse {
        leader: m.current_leader,
        members,
    }
}

async fn members(State(st): State<St>) -> Response {
    Json(members_response(&st)).into_response()
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes, shape: &str) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            format!("body must be {shape}: {e}"),
        )
    })
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

async fn init(State(st): State<St>, body: Bytes) -> Response {
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
    let current = members_map(&st);
    if !current.is_empty() {
        return if same_as_current(&current) {
            Json(members_response(&st)).into_response()
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
        let current = members_map(&st);
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
    Json(members_response(&st)).into_response()
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

fn timeout_param(q: &HashMap<String, String>) -> Duration {
    q.get("timeout_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(LEARNER_CATCHUP_TIMEOUT)
}

async fn add_learner(State(st): State<St>, r: Req) -> Response {
    let Req {
        method,
        uri,
        headers,
        body,
        query: q,
    } = r;
    let m: Member = match parse_body(&body, r#"{"id","raft_addr","api_addr"}"#) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if let Err(e) = check_member(&m) {
        return e;
    }
    if let Some(resp) = maybe_forward(&st, &headers, method, &uri, body).await {
        return resp;
    }
    let deadline = Instant::now() + timeout_param(&q);
    let _guard = st.membership_lock.lock().await;
    let ident =
        match fetch_identity(&st.http, st.scheme, &m.raft_addr, Duration::from_secs(5)).await {
            Ok(i) => i,
            Err(e) => {
                return retry(
                    format!("cannot ask the new node who it is: {e}; start it first"),
                    None,
                )
            }
        };
    if ident.service != st.cfg.service {
        return err(
            StatusCode::CONFLICT,
            format!(
                "{} is a {} node, not {}",
                m.raft_addr, ident.service, st.cfg.service
            ),
        );
    }
    if ident.node_id != m.id {
        return err(
            StatusCode::CONFLICT,
            format!(
                "the node at {} has id {}, not {}",
                m.raft_addr, ident.node_id, m.id
            ),
        );
    }
    let current = members_map(&st);
    if let Some(n) = current.get(&m.id) {
        if n.incarnation == ident.incarnation
            && n.raft_addr == m.raft_addr
            && n.api_addr == m.api_addr
        {
            drop(_guard);
            return match wait_caught_up(&st, m.id, deadline).await {
                Ok(()) => Json(members_response(&st)).into_response(),
                Err(e) => e,
            };
        }
        return err(
            StatusCode::CONFLICT,
            format!(
                "node id {} is already a member ({}) and the node at {} is another incarnation ({}); node ids are never reused — a node whose data directory was wiped must join with a new id",
                m.id, n, m.raft_addr, ident.incarnation
            ),
        );
    }
    let reader = st.reader.clone();
    let id = m.id;
    match read_blocking(move || reader.node_ever(id)).await {
        Ok(Some(old)) => {
            return err(
                StatusCode::CONFLICT,
                format!(
                    "node id {} was used before by {old}; node ids are never reused — join this node with a new id",
                    m.id
                ),
            )
        }
        Ok(None) => {}
        Err(e) => return e,
    }
    if ident.initialized {
        return err(
            StatusCode::CONFLICT,
            format!(
                "the node at {} already belongs to a cluster; only a pristine node can join",
                m.raft_addr
            ),
        );
    }
    let info = NodeInfo {
        raft_addr: m.raft_addr.clone(),
        api_addr: m.api_addr.clone(),
        incarnation: ident.incarnation,
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, st.raft.add_learner(m.id, info, false)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return retry(format!("adding learner {} failed: {e}", m.id), None),
        Err(_) => return err(StatusCode::GATEWAY_TIMEOUT, "adding the learner timed out"),
    }
    drop(_guard);
    tracing::info!(id = m.id, raft = %m.raft_addr, "learner added; waiting for it to catch up");
    match wait_caught_up(&st, m.id, deadline).await {
        Ok(()) => Json(members_response(&st)).into_response(),
        Err(e) => e,
    }
}

async fn promote(
    State(st): State<St>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: PromoteRequest = match parse_body(&body, r#"{"ids":[…]}"#) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if let Some(resp) = maybe_forward(&st, &headers, method, &uri, body).await {
        return resp;
    }
    let _guard = st.membership_lock.lock().await;
    let (voters, nodes, last) = {
        let m = st.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        (
            mem.voter_ids().collect::<BTreeSet<_>>(),
            mem.nodes().map(|(id, _)| *id).collect::<BTreeSet<_>>(),
            m.last_log_index.unwrap_or(0),
        )
    };
    let mut to_add = BTreeSet::new();
    for id in &req.ids {
        if voters.contains(id) {
            continue;
        }
        if !nodes.contains(id) {
            return err(
                StatusCode::NOT_FOUND,
                format!("node {id} is not a member; add it as a learner first"),
            );
        }
        let matched = matched_index(&st, *id).unwrap_or(0);
        // etcd's rule: a learner is ready when it has at least 90% of the leader's log.
        if matched.saturating_mul(10) < last.saturating_mul(9) {
            return err(
                StatusCode::CONFLICT,
                format!("learner {id} has not caught up (matched {matched} of {last} entries); retry once it has"),
            );
        }
        to_add.insert(*id);
    }
    if !to_add.is_empty() {
        match tokio::time::timeout(
            LEARNER_CATCHUP_TIMEOUT,
            st.raft
                .change_membership(ChangeMembers::AddVoterIds(to_add.clone()), false),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!(ids = ?to_add, "promoted to voters"),
            Ok(Err(e)) => return retry(format!("promotion failed: {e}"), None),
            Err(_) => {
                return err(
                    StatusCode::GATEWAY_TIMEOUT,
                    "promotion did not commit in time",
                )
            }
        }
    }
    Json(members_response(&st)).into_response()
}

async fn remove_member(
    State(st): State<St>,
    Path(id): Path<u64>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = maybe_forward(&st, &headers, method, &uri, Bytes::new()).await {
        return resp;
    }
    let _guard = st.membership_lock.lock().await;
    let (voters, nodes) = {
        let m = st.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        (
            mem.voter_ids().collect::<BTreeSet<_>>(),
            mem.nodes().map(|(id, _)| *id).collect::<BTreeSet<_>>(),
        )
    };
    let change = if voters.contains(&id) {
        if voters.len() == 1 {
            return err(
                StatusCode::CONFLICT,
                format!("node {id} is the last voter; it cannot be removed"),
            );
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else if nodes.contains(&id) {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    } else {
        let reader = st.reader.clone();
        return match read_blocking(move || reader.node_ever(id)).await {
            Ok(Some(_)) => Json(members_response(&st)).into_response(),
            Ok(None) => err(
                StatusCode::NOT_FOUND,
                format!("node {id} was never a member"),
            ),
            Err(e) => e,
        };
    };
    match tokio::time::timeout(
        LEARNER_CATCHUP_TIMEOUT,
        st.raft.change_membership(change, false),
    )
    .await
    {
        Ok(Ok(_)) => {
            tracing::info!(id, "member removed");
            Json(members_response(&st)).into_response()
        }
        Ok(Err(e)) => retry(format!("removing {id} failed: {e}"), None),
        Err(_) => err(
            StatusCode::GATEWAY_TIMEOUT,
            "removal did not commit in time",
        ),
    }
}

async fn not_found(uri: OriginalUri) -> Response {
    err(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.0.path()),
    )
}

/// `/health`, `/readyz` and `/v1/cluster/…`.
pub fn cluster_routes(st: St) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/readyz", get(readyz))
        .route("/v1/cluster/init", post(init))
        .route("/v1/cluster/members", get(members))
        .route("/v1/cluster/learners", post(add_learner))
        .route("/v1/cluster/voters", post(promote))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .fallback(not_found)
        .with_state(st)
}

/// Chainfire's key space: `/v1/kv` and `/v1/kv/{*key}`.
pub fn chainfire_kv_routes(st: St) -> Router {
    Router::new()
        .route("/v1/kv", get(cf_list))
        .route("/v1/kv/{*key}", get(cf_get).put(cf_put).delete(cf_delete))
        .with_state(st)
}

/// FlareDB's namespaces (`/v1/ns/{ns}/kv…`) and time series (`/v1/ts/{series}…`).
pub fn flaredb_routes(st: St) -> Router {
    Router::new()
        .route("/v1/ns/{ns}/kv", get(ns_list))
        .route(
            "/v1/ns/{ns}/kv/{*key}",
            get(ns_get).put(ns_put).delete(ns_delete),
        )
        .route("/v1/ts/{series}/points", post(ts_append))
        .route("/v1/ts/{series}", get(ts_query))
        .with_state(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsample_buckets_avg_min_max_count() {
        let pts = [(0, 1.0), (5, 3.0), (10, 10.0), (-1, 7.0)];
        let mut sorted = pts.to_vec();
        sorted.sort_by_key(|p| p.0);
        let b = downsample(&sorted, 10);
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].t, b[0].count), (-10, 1));
        assert_eq!(
            (b[1].t, b[1].v, b[1].min, b[1].max, b[1].count),
            (0, 2.0, 1.0, 3.0, 2)
        );
        assert_eq!((b[2].t, b[2].v), (10, 10.0));
    }
}
