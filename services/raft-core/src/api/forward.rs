//! Where a request runs: on this node when it leads, else at the leader, which gets the request
//! as it came (marked [`HDR_FORWARDED`]) and whose answer is relayed; plus the steps a request
//! takes on the leader (a committed write, a linearizable read, a storage read off the runtime).
//!
//! **Silent leaders.** A leader cut off from its quorum does not know it for a while (openraft
//! 0.9 keeps leading until it hears of a higher term), and its followers keep forwarding to it
//! until they elect another. Either would hold a client's request until its deadline, then
//! answer that the outcome is unknown. So, past [`NodeConfig::silence_limit`] (the leader's
//! lease, 2 s by default; followers campaign 3–4 s after the last append):
//! - a leader that has not heard from a quorum refuses new writes and linearizable reads with
//!   a retryable 503 (nothing was proposed), and answers the writes it had proposed with an
//!   unknown outcome (the entry may still be committed by the next leader);
//! - a follower that has not heard from its leader refuses to forward (a retryable 503), and
//!   answers a request it had forwarded with an unknown outcome (it may have reached the
//!   leader).
//!
//! The client then tries another node, and finds the new leader as soon as it is elected.
//!
//! [`NodeConfig::silence_limit`]: crate::node::NodeConfig::silence_limit

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
        Some(l) if l == st.id && m.state == ServerState::Leader => {
            if let Some(ms) = quorum_silent(st, &m) {
                return Err(retry(
                    format!("leader {} has not heard from a quorum for {ms} ms (cut off?); not applied, ask another node", st.id),
                    None,
                ));
            }
            Ok(Route::Local)
        }
        Some(l) => {
            if headers.contains_key(HDR_FORWARDED) {
                return Err(retry(
                    format!("node {} is no longer the leader; retry", st.id),
                    Some(l),
                ));
            }
            if let Some(quiet) = st.leader_contact.silent_for() {
                if quiet > st.cfg.silence_limit() {
                    return Err(retry(
                        format!(
                            "leader {l} has been silent for {} ms (down or cut off?); not forwarded, ask another node",
                            quiet.as_millis()
                        ),
                        None,
                    ));
                }
            }
            match m.membership_config.membership().get_node(&l) {
                Some(n) => Ok(Route::Forward(n.api_addr.clone())),
                None => Err(retry(format!("leader {l} has no known address"), Some(l))),
            }
        }
        None => Err(retry("no leader (election in progress)", None)),
    }
}

/// `Some(ms)` when this node leads more voters than itself and has not heard from a quorum
/// for longer than the silence limit.
fn quorum_silent(st: &NodeState, m: &crate::types::RaftMetrics) -> Option<u64> {
    if m.state != ServerState::Leader || m.membership_config.membership().voter_ids().count() < 2 {
        return None;
    }
    let ms = m.millis_since_quorum_ack?;
    (ms > st.cfg.silence_limit().as_millis() as u64).then_some(ms)
}

/// Resolves once this node leads without having heard from a quorum past the silence limit.
async fn quorum_lost(st: &NodeState) -> u64 {
    loop {
        let silent = quorum_silent(st, &st.raft.metrics().borrow());
        if let Some(ms) = silent {
            return ms;
        }
        tokio::time::sleep(Duration::from_millis(st.cfg.heartbeat_ms)).await;
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

/// Resolves once this node has not heard from a leader past the silence limit.
async fn leader_silent(st: &NodeState) -> Duration {
    loop {
        if let Some(quiet) = st.leader_contact.silent_for() {
            if quiet > st.cfg.silence_limit() {
                return quiet;
            }
        }
        tokio::time::sleep(Duration::from_millis(st.cfg.heartbeat_ms)).await;
    }
}

/// Forwards `r` to the leader, waiting at most `timeout` for its answer (and no longer than
/// the leader stays in touch), when this node is not the leader; `None` means: handle it here.
pub(super) async fn maybe_forward_within(
    st: &NodeState,
    r: &Req,
    timeout: Duration,
) -> Option<Response> {
    match route(st, &r.headers) {
        Ok(Route::Local) => None,
        // Moving the leader: the leader it went to stops leading on purpose, and answers once
        // another leads (or on its own deadline).
        Ok(Route::Forward(addr)) if r.uri.path() == "/v1/cluster/leader" => {
            Some(forward(st, &addr, r, timeout).await)
        }
        Ok(Route::Forward(addr)) => Some(tokio::select! {
            resp = forward(st, &addr, r, timeout) => resp,
            quiet = leader_silent(st) => {
                let what = format!("the leader at {addr} fell silent ({} ms) while it had this request", quiet.as_millis());
                if r.method == axum::http::Method::GET {
                    // A read changes nothing: ask elsewhere.
                    retry(what, None)
                } else {
                    unknown(StatusCode::GATEWAY_TIMEOUT, format!("{what}; the outcome is unknown"))
                }
            }
        }),
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
    st.metrics.proposals.inc();
    let written = tokio::select! {
        w = tokio::time::timeout(st.cfg.request_timeout, st.proposer.write(cmd)) => w,
        ms = quorum_lost(st) => {
            st.metrics.proposals_failed.inc();
            return Err(unknown(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("leader {} lost its quorum ({ms} ms without an answer) before the write was confirmed; the outcome is unknown (read back before retrying)", st.id),
            ))
        }
    };
    if !matches!(written, Ok(Ok(_))) {
        st.metrics.proposals_failed.inc();
    }
    match written {
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
    let confirmed = tokio::select! {
        c = tokio::time::timeout(st.cfg.request_timeout, st.raft.ensure_linearizable()) => c,
        ms = quorum_lost(st) => {
            return Err(retry(
                format!("linearizable read: leader {} has not heard from a quorum for {ms} ms; ask another node", st.id),
                None,
            ))
        }
    };
    match confirmed {
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

/// Runs a storage read on the blocking pool; a failure is a 500, but a read refused while a
/// snapshot install replaces the state is a retryable 503.
pub(super) async fn read_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.to_string().contains(crate::snapshot_store::INSTALLING) => {
            Err(retry(crate::snapshot_store::INSTALLING, None))
        }
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
