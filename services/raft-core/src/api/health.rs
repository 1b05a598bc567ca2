//! `/health` (the JSON summary units and harnesses wait on) and `/readyz[?verbose]` (an
//! etcd-style check list for people).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use plasmacloud_store_client::Health;

use super::handler::St;
use crate::cluster_view::role_of;
use crate::node::NodeState;

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

pub(super) async fn health(State(st): State<St>) -> Response {
    let (code, h) = health_of(&st);
    (code, Json(h)).into_response()
}

/// `/readyz[?verbose]`: etcd-style check list; 200 `ok` when every required check passes.
pub(super) async fn readyz(
    State(st): State<St>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
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
