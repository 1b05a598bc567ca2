//! The two Raft stores as an operator changes them: who is a member with which role, who
//! answers healthy, and the membership changes — each one alone, each waited for, none that
//! would leave a store below quorum.
//!
//! The quorum rules, checked before every change against the voters that answer `/health`:
//! - **promote** a learner: the current voters keep a majority alive, and so does the new set
//!   (the learner must answer too);
//! - **remove** a member: a majority of the current voters is alive, and of the voters left
//!   after the change;
//! - **reboot** a voter: every other voter answers (one voter down at a time).
//!
//! Demoting a voter to a learner is not offered by the stores yet (openraft's
//! `ChangeMembers::RemoveVoters` keeps removed voters only with `retain=true`, and raft-core's
//! API removes them): a contract that names fewer voters than a store has is refused, saying
//! so, and retire (a voter removed, a worker promoted in its place) is the way down.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use plasmacloud_contract::{Contract, NodeSpec};
use plasmacloud_store_client::{MemberInfo, MemberRole, MembersResponse, StoreClient};

use crate::operator::{Operator, Store};
use crate::{Error, Result};

/// A node's role in one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// A voter, and the leader.
    Leader(u64),
    /// A voter.
    Voter(u64),
    /// A learner.
    Learner(u64),
    /// Not a member.
    Absent,
}

impl NodeRole {
    /// Its Raft id, when a member.
    pub fn id(self) -> Option<u64> {
        match self {
            NodeRole::Leader(i) | NodeRole::Voter(i) | NodeRole::Learner(i) => Some(i),
            NodeRole::Absent => None,
        }
    }

    /// Is it a voter (the leader included)?
    pub fn is_voter(self) -> bool {
        matches!(self, NodeRole::Leader(_) | NodeRole::Voter(_))
    }

    /// `leader 3`, `voter 2`, `learner 7`, `-`.
    pub fn label(self) -> String {
        match self {
            NodeRole::Leader(i) => format!("leader {i}"),
            NodeRole::Voter(i) => format!("voter {i}"),
            NodeRole::Learner(i) => format!("learner {i}"),
            NodeRole::Absent => "-".into(),
        }
    }
}

/// One store's members, as one member answered.
#[derive(Debug, Clone)]
pub struct StoreView {
    /// Which store.
    pub store: Store,
    /// The answer.
    pub members: MembersResponse,
}

impl StoreView {
    /// The member at `node`'s address (Raft or API), if any. A node that was replaced keeps its
    /// address: the member there is whoever holds it now.
    pub fn member_of(&self, node: &NodeSpec) -> Option<&MemberInfo> {
        let api = self.store.api_addr(node);
        let raft = self.store.raft_addr(node);
        self.members
            .members
            .iter()
            .find(|m| m.api_addr == api || m.raft_addr == raft)
    }

    /// `node`'s role.
    pub fn role_of(&self, node: &NodeSpec) -> NodeRole {
        match self.member_of(node) {
            None => NodeRole::Absent,
            Some(m) if self.members.leader == Some(m.id) => NodeRole::Leader(m.id),
            Some(m) if m.role == MemberRole::Voter => NodeRole::Voter(m.id),
            Some(m) => NodeRole::Learner(m.id),
        }
    }

    /// The voters' ids.
    pub fn voters(&self) -> BTreeSet<u64> {
        self.members.voter_ids().into_iter().collect()
    }
}

/// `Err(answering)` when fewer than a majority of `set` are in `alive`.
fn majority(set: &BTreeSet<u64>, alive: &BTreeSet<u64>) -> Result<(), usize> {
    let answering = set.intersection(alive).count();
    if answering < set.len() / 2 + 1 {
        Err(answering)
    } else {
        Ok(())
    }
}

/// A majority of the voters alive now, or why no change can commit.
fn quorum_now(voters: &BTreeSet<u64>, alive: &BTreeSet<u64>) -> Result<(), String> {
    majority(voters, alive).map_err(|now| {
        format!(
            "only {now} of {} voters answer; no change can commit",
            voters.len()
        )
    })
}

/// The ids that answered healthy.
fn alive(answers: &[(&MemberInfo, Result<(), String>)]) -> BTreeSet<u64> {
    answers
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(m, _)| m.id)
        .collect()
}

/// How long a membership change waits for its quorum check to pass before refusing.
pub const QUORUM_PATIENCE: Duration = Duration::from_secs(20);

/// Checks a removal: a majority of the voters alive now and after. `Err` says why not.
pub fn removal_keeps_quorum(
    voters: &BTreeSet<u64>,
    alive: &BTreeSet<u64>,
    remove: u64,
) -> Result<(), String> {
    quorum_now(voters, alive)?;
    let after: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != remove).collect();
    if after.is_empty() {
        return Err(format!("{remove} is the last voter"));
    }
    majority(&after, alive).map_err(|n| {
        format!(
            "after removing {remove}, only {n} of {} voters would answer",
            after.len()
        )
    })
}

/// Checks a promotion of `learner`: a majority alive now and in the larger set.
pub fn promotion_keeps_quorum(
    voters: &BTreeSet<u64>,
    alive: &BTreeSet<u64>,
    learner: u64,
) -> Result<(), String> {
    quorum_now(voters, alive)?;
    let mut after = voters.clone();
    after.insert(learner);
    majority(&after, alive).map_err(|n| {
        format!(
            "with {learner} a voter, only {n} of {} voters would answer",
            after.len()
        )
    })
}

/// Checks a voter's reboot: every other voter answers.
pub fn reboot_keeps_quorum(
    voters: &BTreeSet<u64>,
    alive: &BTreeSet<u64>,
    node: u64,
) -> Result<(), String> {
    let down: Vec<String> = voters
        .iter()
        .filter(|v| **v != node && !alive.contains(v))
        .map(|v| v.to_string())
        .collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "voter(s) {} do not answer; rebooting {node} now could leave the store without a majority",
            down.join(", ")
        ))
    }
}

/// Runs `probe` until it returns `Ok(Some(_))` or `timeout` passes (then [`Error::Timeout`]
/// with the last `Ok(None)`/`Err` detail). Polls every `every`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let start = Instant::now();
    let mut last = String::from("not yet");
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.into(),
                after: timeout,
                detail: last,
            });
        }
        tokio::time::sleep(every.min(timeout.saturating_sub(start.elapsed()))).await;
    }
}

/// How a node's services answer `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// `(service, Ok | Err(why))` for chainfire, flaredb, iam.
    pub services: Vec<(&'static str, Result<(), String>)>,
}

impl NodeHealth {
    /// All healthy?
    pub fn ok(&self) -> bool {
        self.services.iter().all(|(_, r)| r.is_ok())
    }

    /// `ok 3/3`, or what failed.
    pub fn summary(&self) -> String {
        let bad: Vec<String> = self
            .services
            .iter()
            .filter_map(|(s, r)| r.as_ref().err().map(|e| format!("{s}: {e}")))
            .collect();
        if bad.is_empty() {
            format!("ok {}/{}", self.services.len(), self.services.len())
        } else {
            bad.join("; ")
        }
    }
}

/// The stores of one contract, asked as an operator.
#[derive(Debug, Clone)]
pub struct Cluster {
    operator: Operator,
    /// The contract the rack runs.
    pub contract: Contract,
}

impl Cluster {
    /// The stores of `contract`.
    pub fn new(operator: Operator, contract: Contract) -> Self {
        Self { operator, contract }
    }

    /// A client for `store` over every contract node, voters first.
    pub fn client(&self, store: Store) -> Result<StoreClient> {
        let mut nodes: Vec<&NodeSpec> = self.contract.voters();
        for n in &self.contract.nodes {
            if !nodes.iter().any(|v| v.name == n.name) {
                nodes.push(n);
            }
        }
        self.operator.store(store, nodes)
    }

    /// Chainfire's key space.
    pub fn chainfire_kv(&self) -> Result<plasmacloud_store_client::Keyspace> {
        Ok(self.client(Store::Chainfire)?.kv())
    }

    /// The members of `store`.
    pub async fn view(&self, store: Store) -> Result<StoreView> {
        let members = self
            .client(store)?
            .members()
            .await
            .map_err(|e| Error::store(format!("reading {} members", store.name()), e))?;
        Ok(StoreView { store, members })
    }

    /// `GET https://ADDR/health` answered 200 healthy?
    pub async fn healthy(&self, addr: &str) -> Result<(), String> {
        let url = format!("https://{addr}/health");
        match self
            .operator
            .http()
            .get(&url)
            .timeout(Duration::from_secs(3))
            .send()
            .await
        {
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                if status.is_success() && body.contains("\"healthy\"") {
                    Ok(())
                } else {
                    Err(format!("{status} {}", body.trim()))
                }
            }
            Err(e) => Err(format!("unreachable ({e})")),
        }
    }

    /// How `node`'s services answer.
    pub async fn node_health(&self, node: &NodeSpec) -> NodeHealth {
        let (cf, fd, iam) = (node.chainfire_api(), node.flaredb_api(), node.iam_api());
        let (a, b, c) = futures::join!(self.healthy(&cf), self.healthy(&fd), self.healthy(&iam));
        NodeHealth {
            services: vec![("chainfire", a), ("flaredb", b), ("iam", c)],
        }
    }

    /// The voters of `view` whose API answers healthy.
    pub async fn alive_voters(&self, view: &StoreView) -> BTreeSet<u64> {
        alive(&self.voter_answers(view, None).await)
    }

    /// Each voter (and `extra`, a learner about to be one) with how its `/health` answered.
    async fn voter_answers<'v>(
        &self,
        view: &'v StoreView,
        extra: Option<u64>,
    ) -> Vec<(&'v MemberInfo, Result<(), String>)> {
        let asked: Vec<&MemberInfo> = view
            .members
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Voter || Some(m.id) == extra)
            .collect();
        let answers =
            futures::future::join_all(asked.iter().map(|m| self.healthy(&m.api_addr))).await;
        asked.into_iter().zip(answers).collect()
    }

    /// Promotes learner `id` in `store` (a no-op for a voter), after the quorum check.
    pub async fn promote(&self, store: Store, id: u64, timeout: Duration) -> Result<()> {
        let view = self.view(store).await?;
        if view.voters().contains(&id) {
            return Ok(());
        }
        self.wait_quorum(
            store,
            Some(id),
            &format!("promoting {id}"),
            |voters, alive| promotion_keeps_quorum(voters, alive, id),
        )
        .await?;
        let client = self.client(store)?;
        wait_for(
            &format!("{} to promote {id} to voter", store.name()),
            timeout,
            Duration::from_millis(500),
            || async {
                match client.promote_voters(&[id]).await {
                    Ok(m) if m.get(id).is_some_and(|m| m.role == MemberRole::Voter) => Ok(Some(())),
                    Ok(_) => Err("not a voter yet".into()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;
        tracing::info!(store = store.name(), id, "promoted to voter");
        Ok(())
    }

    /// A membership change's quorum check, given [`QUORUM_PATIENCE`] to pass: right after a
    /// leadership move or the previous change, voters answer "no leader" for a moment. When it
    /// never passes, the error names each voter that did not answer and what it said.
    async fn wait_quorum(
        &self,
        store: Store,
        extra: Option<u64>,
        what: &str,
        check: impl Fn(&BTreeSet<u64>, &BTreeSet<u64>) -> Result<(), String>,
    ) -> Result<()> {
        let until = Instant::now() + QUORUM_PATIENCE;
        loop {
            let view = self.view(store).await?;
            let answers = self.voter_answers(&view, extra).await;
            let alive = alive(&answers);
            let e = match check(&view.voters(), &alive) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= until {
                let silent: Vec<String> = answers
                    .iter()
                    .filter_map(|(m, r)| {
                        r.as_ref()
                            .err()
                            .map(|why| format!("{} at {}: {why}", m.id, m.api_addr))
                    })
                    .collect();
                return Err(Error::Quorum(format!(
                    "{}: {what}: {e} (for {} s; {})",
                    store.name(),
                    QUORUM_PATIENCE.as_secs(),
                    silent.join("; ")
                )));
            }
            tracing::info!(store = store.name(), %what, why = %e, "waiting for enough voters to answer");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Removes member `id` from `store` (a voter only after the quorum check).
    pub async fn remove(&self, store: Store, id: u64, timeout: Duration) -> Result<()> {
        let view = self.view(store).await?;
        if view.members.get(id).is_none() {
            return Ok(());
        }
        if view.voters().contains(&id) {
            self.wait_quorum(store, None, &format!("removing {id}"), |voters, alive| {
                removal_keeps_quorum(voters, alive, id)
            })
            .await?;
        }
        let client = self.client(store)?;
        wait_for(
            &format!("{} to remove member {id}", store.name()),
            timeout,
            Duration::from_millis(500),
            || async {
                match client.remove_member(id).await {
                    Ok(m) if m.get(id).is_none() => Ok(Some(())),
                    Ok(_) => Err("still a member".into()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;
        tracing::info!(store = store.name(), id, "member removed");
        Ok(())
    }

    /// Moves leadership away from `id` in `store` when it leads. A store without the handover
    /// call is logged and left to elect a leader when that node goes.
    pub async fn move_leader_away(&self, store: Store, id: u64) -> Result<()> {
        use firstboot::reboots::LeaderMove;
        let view = self.view(store).await?;
        if view.members.leader != Some(id) {
            return Ok(());
        }
        let endpoints: Vec<String> = self
            .contract
            .voters()
            .iter()
            .map(|n| format!("https://{}", store.api_addr(n)))
            .collect();
        match firstboot::reboots::move_leader_away(
            self.operator.http(),
            &endpoints,
            id,
            Duration::from_secs(30),
        )
        .await
        {
            Ok(LeaderMove::Away { leader }) => {
                tracing::info!(store = store.name(), from = id, ?leader, "leadership moved");
                Ok(())
            }
            Ok(LeaderMove::Unsupported) => {
                tracing::warn!(
                    store = store.name(),
                    "this store cannot hand leadership over (no POST /v1/cluster/leader); it elects a new leader when {id} goes"
                );
                Ok(())
            }
            Ok(LeaderMove::NoTakeover(why)) => Err(Error::Quorum(format!(
                "{}: no voter can take over from {id}: {why}",
                store.name()
            ))),
            Ok(LeaderMove::TimedOut(why)) => Err(Error::Timeout {
                what: format!("{} to move leadership away from {id}", store.name()),
                after: Duration::from_secs(30),
                detail: why,
            }),
            Err(e) => Err(Error::Quorum(format!(
                "{}: cannot ask to move leadership: {e}",
                store.name()
            ))),
        }
    }

    /// The rack as the contract says, in both stores: a leader, the contract's voters exactly
    /// (each a voter), every other contract node that is a member a learner. `Err` lists what
    /// differs.
    pub async fn check_voters(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for store in Store::BOTH {
            let view = match self.view(store).await {
                Ok(v) => v,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            let s = store.name();
            if view.members.leader.is_none() {
                problems.push(format!("{s}: no leader"));
            }
            let mut want = BTreeSet::new();
            for n in self.contract.voters() {
                match view.role_of(n) {
                    r if r.is_voter() => {
                        want.insert(r.id().unwrap_or(0));
                    }
                    r => problems.push(format!(
                        "{s}: {} is {} (expected a voter)",
                        n.name,
                        r.label()
                    )),
                }
            }
            for id in view.voters().difference(&want) {
                problems.push(format!("{s}: voter {id} is not a contract voter"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Makes the stores' voters the contract's, one change at a time, each waited for:
    /// contract voters that are learners are promoted (in contract order); a store voter the
    /// contract does not name is refused (see the module docs on demotion). Waits up to
    /// `timeout` for contract voters that have not joined yet. Returns what was done.
    pub async fn reconcile_voters(&self, timeout: Duration) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for store in Store::BOTH {
            for node in self.contract.voters() {
                let id = wait_for(
                    &format!("{} to be a {} member", node.name, store.name()),
                    timeout,
                    Duration::from_millis(500),
                    || async {
                        let view = self.view(store).await.map_err(|e| e.to_string())?;
                        match view.role_of(node) {
                            NodeRole::Absent => Err("not a member yet".into()),
                            r => Ok(Some(r)),
                        }
                    },
                )
                .await?;
                if let NodeRole::Learner(i) = id {
                    self.promote(store, i, timeout).await?;
                    done.push(format!("{}: promoted {} ({i})", store.name(), node.name));
                }
            }
            let view = self.view(store).await?;
            let wanted: BTreeSet<u64> = self
                .contract
                .voters()
                .iter()
                .filter_map(|n| view.role_of(n).id())
                .collect();
            let extra: Vec<String> = view
                .voters()
                .difference(&wanted)
                .map(|i| i.to_string())
                .collect();
            if !extra.is_empty() {
                return Err(Error::Unsupported(format!(
                    "{}: voter(s) {} are not contract voters, and the stores cannot demote a voter to a learner yet (raft-core would need a call that changes membership with retain=true); retire such a node, or name it a voter again",
                    store.name(),
                    extra.join(", ")
                )));
            }
        }
        wait_for(
            "the stores' voters to be the contract's",
            timeout,
            Duration::from_millis(500),
            || async { self.check_voters().await.map(Some) },
        )
        .await?;
        Ok(done)
    }

    /// Waits until `node` is a member of both stores under an id other than `not` (a new
    /// machine), with the contract's role. Returns its id.
    pub async fn wait_joined(
        &self,
        node: &NodeSpec,
        not: Option<u64>,
        timeout: Duration,
    ) -> Result<u64> {
        wait_for(
            &format!("{} to join both stores", node.name),
            timeout,
            Duration::from_millis(500),
            || async {
                let mut id = None;
                for store in Store::BOTH {
                    let view = self.view(store).await.map_err(|e| e.to_string())?;
                    match view.role_of(node).id() {
                        Some(i) if Some(i) != not => id = Some(i),
                        Some(i) => {
                            return Err(format!("{}: still the old member {i}", store.name()))
                        }
                        None => return Err(format!("{}: not a member yet", store.name())),
                    }
                }
                Ok(id)
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn quorum_rules() {
        // Three voters, one dead: removing the dead one keeps 2 of 2.
        assert!(removal_keeps_quorum(&set(&[1, 2, 3]), &set(&[1, 2]), 3).is_ok());
        // ... removing a live one would leave 1 of 2.
        assert!(removal_keeps_quorum(&set(&[1, 2, 3]), &set(&[1, 2]), 2).is_err());
        // Two dead of three: nothing commits.
        assert!(removal_keeps_quorum(&set(&[1, 2, 3]), &set(&[1]), 3).is_err());
        assert!(removal_keeps_quorum(&set(&[1]), &set(&[1]), 1).is_err());
        // Promoting a live learner into 3: 4 of 4; a dead learner into 3 with one dead: 2 of 4.
        assert!(promotion_keeps_quorum(&set(&[1, 2, 3]), &set(&[1, 2, 3, 4]), 4).is_ok());
        assert!(promotion_keeps_quorum(&set(&[1, 2, 3]), &set(&[1, 2]), 4).is_err());
        // Rebooting a voter: every other one answers.
        assert!(reboot_keeps_quorum(&set(&[1, 2, 3]), &set(&[1, 2, 3]), 2).is_ok());
        assert!(reboot_keeps_quorum(&set(&[1, 2, 3]), &set(&[1, 3]), 2).is_ok());
        let e = reboot_keeps_quorum(&set(&[1, 2, 3]), &set(&[1, 2]), 1).unwrap_err();
        assert!(e.contains("voter(s) 3"), "{e}");
    }
}
