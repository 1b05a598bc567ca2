//! Where a request runs: on this node when it leads, else at the leader, which gets the request
//! as it came (marked [`HDR_FORWARDED`]) and whose answer is relayed; plus the steps a request
//! takes on the leader (a committed write, a linearizable read, a storage read off the runtime).

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use openraft::ServerState;

use super::handler::{err, retry, unknown, Req};
use crate::node::NodeState;
use crate::proposer::WriteFail;
use crate::types::{Command, CommandResult, StorageError};

/// Marks a request a follower forwarded (a receiver that is not the leader answers 503).
pub const HDR_FORWARDED: &str = "x-plasmacloud-forwarded";

enum Route {
    Local,
    Forward(String),
}

fn route(st: &NodeState, headers: &HeaderMap) -> Result<Route, Response> {
    let m = st.raft.metrics().borrow().clone();
    if let Err(e) = &m.running_state {
        // The process exits on this (see `node`); until it does, nothing runs here.
        return Err(retry(
            format!("raft stopped on node {} ({e}); ask another node", st.id),
            None,
        ));
    }
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

async fn forward(st: &NodeState, api_addr: &str, r: &Req, timeout: Duration) -> Response {
    let pq = r
        .uri
        .0
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| r.uri.0.path().to_string());
    let url = format!("{}://{api_addr}{pq}", st.scheme);
    let req = st
        .http
        .request(r.method.clone(), &url)
        .header(HDR_FORWARDED, st.id.to_string())
        .timeout(timeout)
        .body(r.body.clone());
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
                Err(e) => unknown(
                    StatusCode::BAD_GATEWAY,
                    format!("forwarding to leader {api_addr}: answer broke off (the outcome is unknown): {e}"),
                ),
            }
        }
        Err(e) if e.is_connect() => retry(format!("leader {api_addr} unreachable: {e}"), None),
        Err(e) if e.is_timeout() => unknown(
            StatusCode::GATEWAY_TIMEOUT,
            format!("forwarding to leader {api_addr}: no answer in time (the outcome is unknown)"),
        ),
        Err(e) => unknown(
            StatusCode::BAD_GATEWAY,
            format!("forwarding to leader {api_addr} failed (the outcome is unknown): {e}"),
        ),
    }
}

/// Forwards `r` to the leader, waiting at most `timeout` for its answer, when this node is not
/// the leader; `None` means: handle it here.
pub(super) async fn maybe_forward_within(
    st: &NodeState,
    r: &Req,
    timeout: Duration,
) -> Option<Response> {
    match route(st, &r.headers) {
        Ok(Route::Local) => None,
        Ok(Route::Forward(addr)) => Some(forward(st, &addr, r, timeout).await),
        Err(resp) => Some(resp),
    }
}

/// Commits `cmd` on the leader: forwards `r` when this node is not the leader (the leader's
/// answer comes back as the `Err`), else proposes the command and waits for it to commit.
pub(super) async fn write_at_leader(
    st: &NodeState,
    r: &Req,
    cmd: Command,
) -> Result<CommandResult, Response> {
    if let Some(resp) = maybe_forward_within(st, r, st.cfg.request_timeout).await {
        return Err(resp);
    }
    match tokio::time::timeout(st.cfg.request_timeout, st.proposer.write(cmd)).await {
        Ok(Ok(res)) => Ok(res),
        Ok(Err(WriteFail::ForwardToLeader(leader))) => Err(retry(
            "leadership changed before the write was committed; it was not applied",
            leader,
        )),
        // Raft stopped (a storage error) or refused after the proposal: the entry may be on a
        // majority already and committed by the next leader.
        Ok(Err(WriteFail::Failed(e))) => Err(unknown(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("write not confirmed: {e}; the outcome is unknown (read back before retrying)"),
        )),
        Err(_) => Err(unknown(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "write not committed within {:?} (no quorum?); the outcome is unknown",
                st.cfg.request_timeout
            ),
        )),
    }
}

/// Makes the local replica fit for the read `r` asks for: nothing to do for
/// `?consistency=serializable`; otherwise `r` is forwarded when this node is not the leader (the
/// leader's answer comes back as the `Err`), else the leader confirms its leadership first.
pub(super) async fn ready_to_read(st: &NodeState, r: &Req) -> Result<(), Response> {
    if r.serializable() {
        return Ok(());
    }
    if let Some(resp) = maybe_forward_within(st, r, st.cfg.request_timeout).await {
        return Err(resp);
    }
    match tokio::time::timeout(st.cfg.request_timeout, st.raft.ensure_linearizable()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(retry(
            format!("cannot confirm leadership for a linearizable read: {e}"),
            None,
        )),
        Err(_) => Err(retry(
            "linearizable read: leadership not confirmed in time (no quorum?)",
            None,
        )),
    }
}

/// Runs a storage read on the blocking pool; a failure is a 500.
pub(super) async fn read_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
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
