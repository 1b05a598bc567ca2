//! The cluster as this node sees it, read from openraft's metrics: its role and the members.
//! Both the node's role logging and the API read it here; it imports neither.

use std::collections::BTreeMap;

use openraft::ServerState;
use plasmacloud_store_client::RaftRole;

use crate::types::{NodeId, NodeInfo, Raft};

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

/// The membership as a map (used by init comparisons).
pub fn members_map(raft: &Raft) -> BTreeMap<NodeId, NodeInfo> {
    let m = raft.metrics().borrow().membership_config.clone();
    m.membership()
        .nodes()
        .map(|(id, n)| (*id, n.clone()))
        .collect()
}
