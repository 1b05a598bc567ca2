//! Handing leadership over: a leader that is about to stop (SIGTERM) or is asked to
//! (`POST /v1/cluster/leader {"away_from": ID}`) makes another voter the leader first, so writes
//! stall for one election round trip instead of a whole election timeout.
//!
//! openraft 0.9 has no leadership transfer, but its vote rule allows one
//! (`engine_impl.rs`, `handle_vote_req`): a node whose vote is committed refuses every candidate
//! while its leader lease holds (its vote was last refreshed less than `election_timeout_max`
//! ago; followers refresh it with every append they accept), and otherwise grants a candidate
//! whose last log id is at least its own. A leader never refreshes its own vote after its
//! election, so a leader older than its lease grants; a younger one refuses, but steps down
//! anyway at the next append the candidate refuses with its higher term, and the candidate wins
//! its next round. So, in order:
//!
//! 1. **Stop proposing**: the proposer is paused ([`crate::proposer::Proposer::pause`]); writes
//!    queue, and once leadership has moved they are refused unapplied (`ForwardToLeader`, a
//!    retryable 503), so their clients go to the new leader.
//! 2. **Pick the most caught-up other voter** from the leader's replication metrics (the
//!    highest matched index; the lowest id among equals), and **wait** (bounded) until it has
//!    matched the leader's last log index, nudging replication meanwhile. With its log at least
//!    as long as anyone's, it can win, and it loses no entry.
//! 3. **Ask it to campaign** (`POST /raft/elect` on its Raft port, node certificates only:
//!    `raft.trigger().elect()`), again every [`REELECT_EVERY`] while this node still leads or
//!    no leader is known (a voter that already leads ignores the request).
//! 4. **Wait** (bounded) until this node follows a new leader, and answer with it.
//!
//! In a three-voter cluster the candidate needs the old leader's vote alone, so leadership
//! moves in about one round trip. With five voters it needs one more follower, and the others
//! hold their lease until `election_timeout_max` after the old leader's last append; so from
//! step 3 on the leader sends no heartbeats (openraft's runtime switch, turned back on when the
//! handover ends either way), the leases run out, and the handover takes about one lease
//! (less than an election timeout after a crash, and without a write lost or refused as
//! failed).
//!
//! When no voter can take over (this is the only one, or none answers) or the deadline passes,
//! nothing else changed: the pause ends and this node leads on (a stopping node then stops
//! without handing over).

use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::network::request_election;
use crate::node::NodeState;
use crate::types::NodeId;

/// How often the chosen voter is asked again to campaign while this node still leads (its
/// first round may be refused by a leader still within its lease).
pub const REELECT_EVERY: Duration = Duration::from_millis(500);

/// Why leadership did not move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoverError {
    /// This node does not lead (any more); the leader it knows, if any.
    NotLeader(Option<NodeId>),
    /// No other voter can take over; the text says why.
    NoCandidate(String),
    /// It did not happen before the deadline; the text says how far it got.
    TimedOut(String),
}

impl std::fmt::Display for HandoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandoverError::NotLeader(Some(l)) => write!(f, "this node does not lead; {l} does"),
            HandoverError::NotLeader(None) => write!(f, "this node does not lead"),
            HandoverError::NoCandidate(why) | HandoverError::TimedOut(why) => f.write_str(why),
        }
    }
}

/// The other voter with the highest matched index, and that index (`None`: no other voter has
/// answered this leader yet).
fn most_caught_up(st: &NodeState) -> Result<Option<(NodeId, u64)>, HandoverError> {
    let m = st.raft.metrics().borrow().clone();
    let others: Vec<NodeId> = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|v| *v != st.id)
        .collect();
    if others.is_empty() {
        return Err(HandoverError::NoCandidate(format!(
            "node {} is the only voter: no other voter can take over (add and promote one first)",
            st.id
        )));
    }
    let repl = m.replication.unwrap_or_default();
    Ok(others
        .iter()
        .filter_map(|id| repl.get(id).copied().flatten().map(|l| (*id, l.index)))
        .max_by_key(|(id, index)| (*index, std::cmp::Reverse(*id))))
}

/// The leader this node follows, once it is not the leader itself.
fn followed_leader(st: &NodeState) -> Option<NodeId> {
    let m = st.raft.metrics().borrow().clone();
    match (m.state, m.current_leader) {
        (ServerState::Leader, _) => None,
        (_, Some(l)) if l != st.id => Some(l),
        _ => None,
    }
}

/// Heartbeats off while it lives, back on when it drops.
struct Quiet<'a>(&'a NodeState);

impl<'a> Quiet<'a> {
    fn new(st: &'a NodeState) -> Self {
        st.raft.runtime_config().heartbeat(false);
        Quiet(st)
    }
}

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        self.0.raft.runtime_config().heartbeat(true);
    }
}

/// Makes another voter the leader before `deadline` (the steps of the module docs); the new
/// leader. Call it on the leader, holding the membership lock (no membership change may run
/// meanwhile).
pub async fn hand_over(st: &NodeState, deadline: Instant) -> Result<NodeId, HandoverError> {
    let started = Instant::now();
    if st.raft.metrics().borrow().state != ServerState::Leader {
        return Err(HandoverError::NotLeader(
            st.raft.metrics().borrow().current_leader,
        ));
    }
    most_caught_up(st)?;
    let _paused = st.proposer.pause();
    let mut rx = st.raft.metrics();

    // Step 2: the most caught-up voter, once it has the whole log.
    let target = loop {
        if let Some(l) = followed_leader(st) {
            return Ok(l);
        }
        let last = st.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let best = most_caught_up(st)?;
        if let Some((id, matched)) = best {
            if matched >= last {
                break id;
            }
        }
        if Instant::now() >= deadline {
            return Err(match best {
                None => HandoverError::NoCandidate(format!(
                    "no other voter answers leader {} (all down or cut off?); nobody can take over",
                    st.id
                )),
                Some((id, matched)) => HandoverError::TimedOut(format!(
                    "voter {id}, the most caught up, matched {matched} of {last} entries within the deadline; leadership stays with {}",
                    st.id
                )),
            });
        }
        let _ = st.raft.trigger().heartbeat().await;
        let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
    };
    let caught_up = started.elapsed();
    // With more than three voters the candidate needs a follower's vote too, and followers
    // refuse while their lease holds, which every heartbeat of this leader renews: so this
    // leader goes quiet until the handover ends (the guard turns heartbeats back on, whether
    // leadership moved or not).
    let voters = st
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    let _quiet = (voters > 3).then(|| Quiet::new(st));

    // Steps 3 and 4.
    let node = st
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&target)
        .cloned()
        .ok_or_else(|| HandoverError::NoCandidate(format!("voter {target} has no address")))?;
    let mut asked: Option<Instant> = None;
    loop {
        if let Some(l) = followed_leader(st) {
            tracing::info!(
                from = st.id,
                to = l,
                caught_up_ms = caught_up.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "leadership handed over"
            );
            return Ok(l);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HandoverError::TimedOut(format!(
                "voter {target} was asked to campaign but no new leader was seen within the deadline; leadership stays with {} if it still leads",
                st.id
            )));
        }
        // Asked again while this node leads (a leader within its lease refused the round) or
        // while nobody leads (with five voters the others refuse until their lease ends; a
        // new round then wins at once instead of after the candidate's own timeout).
        let m = st.raft.metrics().borrow().clone();
        let again = m.state == ServerState::Leader || m.current_leader.is_none();
        if again && asked.is_none_or(|t| t.elapsed() >= REELECT_EVERY) {
            let left = deadline
                .saturating_duration_since(now)
                .min(Duration::from_secs(2));
            match request_election(&st.http, st.scheme, target, &node, left).await {
                Ok(()) => tracing::info!(target, "asked voter {target} to campaign"),
                Err(e) => tracing::warn!(target, "asking voter {target} to campaign: {e}"),
            }
            asked = Some(Instant::now());
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
    }
}
