//! Reboots coordinated through Chainfire: a reboot request per node, reboot slots per group,
//! each node's last report, and the leadership handover before a voter goes down.
//!
//! The rule (FleetLock's idea, as Flatcar's Zincati follows it): **a node reboots only
//! itself, only when asked, and only while it holds a reboot slot.**
//!
//! - The operator's tool (`rackctl`) writes a [`RebootRequest`] for a node under
//!   [`REQUEST_PREFIX`]`<node>`; it never reboots a machine itself (no BMC needed).
//! - The node's reboot agent (`firstboot reboot-agent`, after `cluster-ready.target`) sees it,
//!   takes a slot of the request's [`SlotGroup`] — a counting semaphore in one Chainfire key
//!   under [`SLOTS_PREFIX`], changed only by compare-and-swap: 1 for voters (never two voters
//!   down at once, so the quorum holds), N for workers (a wave) — marks the request
//!   `rebooting` with its boot id, asks both stores to move leadership away from it when it
//!   leads, and runs its reboot command.
//! - Booted again, its agent starts only after the first-boot chain's health check passed
//!   this boot (the unit is ordered after `cluster-ready.target`), so finding its request
//!   `rebooting` under another boot id means: back and healthy. It marks the request `back`
//!   and releases its slot. A node that does not come back keeps its slot: nothing else in its
//!   group reboots until an operator looks (`rackctl rollout --abort`).
//!
//! The keys hold JSON; this module owns their shapes. Every change is a compare-and-swap on
//! the key's revision, so two writers never lose each other's change.

use std::collections::BTreeMap;
use std::time::Duration;

use plasmacloud_store_client::{Error as StoreError, Keyspace, MembersResponse, Precondition};
use serde::{Deserialize, Serialize};

/// Chainfire prefix of the reboot requests: `…/<node>`.
pub const REQUEST_PREFIX: &str = "plasmacloud/day2/reboot/";
/// Chainfire prefix of the reboot slots: `…/voters`, `…/workers`.
pub const SLOTS_PREFIX: &str = "plasmacloud/day2/slots/";
/// Chainfire prefix of each node agent's last report: `…/<node>`.
pub const NODE_REPORT_PREFIX: &str = "plasmacloud/day2/nodes/";

/// What can go wrong with the coordination keys.
#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    /// Chainfire could not be asked or refused; the message says which call.
    #[error("chainfire: {0}")]
    Store(#[from] StoreError),
    /// A key holds something that is not this module's JSON; repair or delete it by hand.
    #[error("chainfire key {key} holds something unreadable ({message}); delete it (`rackctl rollout --abort` clears the reboot keys)")]
    Corrupt {
        /// The key.
        key: String,
        /// What did not parse.
        message: String,
    },
}

/// Result alias.
pub type Result<T, E = CoordinationError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Which semaphore a reboot takes a slot of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotGroup {
    /// The Raft voters: one at a time, always.
    Voters,
    /// Everyone else: a wave at a time.
    Workers,
}

impl SlotGroup {
    /// The group's name in keys and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotGroup::Voters => "voters",
            SlotGroup::Workers => "workers",
        }
    }

    /// The slots key of this group.
    pub fn key(self) -> String {
        format!("{SLOTS_PREFIX}{}", self.as_str())
    }
}

/// Where a reboot request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestState {
    /// Written by the operator's tool; the node has not acted yet.
    Requested,
    /// The node holds a slot and ran its reboot command (from boot `boot_id`).
    Rebooting,
    /// The node came back under another boot id with its health check passed; slot released.
    Back,
    /// The node could not reboot (its command failed); slot released; `detail` says why.
    Failed,
}

impl RequestState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Requested => "requested",
            RequestState::Rebooting => "rebooting",
            RequestState::Back => "back",
            RequestState::Failed => "failed",
        }
    }
}

/// A reboot request: the value of [`REQUEST_PREFIX`]`<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootRequest {
    /// The node to reboot.
    pub node: String,
    /// This request's id (unique per request; a slot holder names it).
    pub id: String,
    /// Who asked: a rollout's id, or `reboot by <operator>`.
    pub by: String,
    /// The slot group the node reboots in.
    pub group: SlotGroup,
    /// The bundle version the node should boot (informational: pxe-server serves it).
    #[serde(default)]
    pub target_version: Option<String>,
    /// When it was asked.
    pub requested_at_ms: u64,
    /// Where it is.
    pub state: RequestState,
    /// The boot the node rebooted from (set with `rebooting`).
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The boot it came back in (set with `back`).
    #[serde(default)]
    pub back_boot_id: Option<String>,
    /// The node's last word on it.
    #[serde(default)]
    pub detail: String,
    /// When the state last changed.
    pub updated_at_ms: u64,
}

impl RebootRequest {
    /// A fresh request.
    pub fn new(
        node: &str,
        id: &str,
        by: &str,
        group: SlotGroup,
        target_version: Option<String>,
    ) -> Self {
        let now = now_ms();
        Self {
            node: node.into(),
            id: id.into(),
            by: by.into(),
            group,
            target_version,
            requested_at_ms: now,
            state: RequestState::Requested,
            boot_id: None,
            back_boot_id: None,
            detail: String::new(),
            updated_at_ms: now,
        }
    }
}

/// The key of `node`'s reboot request.
pub fn request_key(node: &str) -> String {
    format!("{REQUEST_PREFIX}{node}")
}

/// One holder of a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotHolder {
    /// The request it reboots for.
    pub request: String,
    /// Since when.
    pub since_ms: u64,
}

/// A group's semaphore: the value of [`SLOTS_PREFIX`]`<group>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slots {
    /// How many may hold a slot at once.
    pub limit: u32,
    /// Holders by node name.
    pub holders: BTreeMap<String, SlotHolder>,
}

impl Slots {
    /// The semaphore of a group nobody configured: one slot.
    pub fn default_for(_group: SlotGroup) -> Self {
        Self {
            limit: 1,
            holders: BTreeMap::new(),
        }
    }
}

/// What a node agent last said about itself: the value of [`NODE_REPORT_PREFIX`]`<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// Its current boot id.
    pub boot_id: String,
    /// When its agent started this boot.
    pub agent_started_ms: u64,
    /// Its last health check: ready?
    pub health_ready: bool,
    /// When that check ran (the report's modification time), if known.
    #[serde(default)]
    pub health_checked_ms: Option<u64>,
    /// The checks that failed (`name: detail`).
    #[serde(default)]
    pub health_failed: Vec<String>,
}

/// The key of `node`'s report.
pub fn report_key(node: &str) -> String {
    format!("{NODE_REPORT_PREFIX}{node}")
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|e| CoordinationError::Corrupt {
        key: key.into(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> String {
    // Plain data types: serialising cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

/// Reads a JSON key: the value and its revision.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    kv: &Keyspace,
    key: &str,
) -> Result<Option<(T, u64)>> {
    match kv.get(key).await? {
        Some(v) => Ok(Some((decode(key, &v.value)?, v.revision))),
        None => Ok(None),
    }
}

/// Writes a JSON key under a precondition (`Absent` to create, `Revision` to change).
pub async fn write_json<T: Serialize>(
    kv: &Keyspace,
    key: &str,
    value: &T,
    cond: Precondition,
) -> Result<u64> {
    Ok(kv.put_if(key, &encode(value), cond).await?)
}

/// Reads `node`'s reboot request.
pub async fn read_request(kv: &Keyspace, node: &str) -> Result<Option<(RebootRequest, u64)>> {
    read_json(kv, &request_key(node)).await
}

/// Every reboot request, by node.
pub async fn list_requests(kv: &Keyspace) -> Result<BTreeMap<String, (RebootRequest, u64)>> {
    let mut out = BTreeMap::new();
    for item in kv.list(REQUEST_PREFIX).await?.items {
        let req: RebootRequest = decode(&item.key, &item.value)?;
        out.insert(req.node.clone(), (req, item.revision));
    }
    Ok(out)
}

/// Moves `node`'s request to `state` (with `detail`) if it is still at revision `rev`;
/// `Ok(false)` when someone changed it first (read it again).
pub async fn advance_request(
    kv: &Keyspace,
    mut req: RebootRequest,
    rev: u64,
    state: RequestState,
    detail: &str,
    edit: impl FnOnce(&mut RebootRequest),
) -> Result<bool> {
    req.state = state;
    req.detail = detail.into();
    req.updated_at_ms = now_ms();
    edit(&mut req);
    match write_json(
        kv,
        &request_key(&req.node),
        &req,
        Precondition::Revision(rev),
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(CoordinationError::Store(e)) if e.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads a group's semaphore (the default one when nobody wrote it) and its revision (0:
/// absent).
pub async fn read_slots(kv: &Keyspace, group: SlotGroup) -> Result<(Slots, u64)> {
    Ok(read_json(kv, &group.key())
        .await?
        .unwrap_or_else(|| (Slots::default_for(group), 0)))
}

/// Applies `change` to a group's semaphore by compare-and-swap, again until it holds;
/// `change` returns `None` to leave it as it is. Returns the semaphore as left.
async fn change_slots(
    kv: &Keyspace,
    group: SlotGroup,
    mut change: impl FnMut(&Slots) -> Option<Slots>,
) -> Result<Slots> {
    for _ in 0..50 {
        let (slots, rev) = read_slots(kv, group).await?;
        let Some(next) = change(&slots) else {
            return Ok(slots);
        };
        let cond = if rev == 0 {
            Precondition::Absent
        } else {
            Precondition::Revision(rev)
        };
        match write_json(kv, &group.key(), &next, cond).await {
            Ok(_) => return Ok(next),
            Err(CoordinationError::Store(e)) if e.is_conflict() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(CoordinationError::Corrupt {
        key: group.key(),
        message: "changed by someone else 50 times in a row".into(),
    })
}

/// Takes a slot of `group` for `node` (a no-op when it holds one). `Ok(false)`: the group is
/// full; wait and try again.
pub async fn take_slot(kv: &Keyspace, group: SlotGroup, node: &str, request: &str) -> Result<bool> {
    let slots = change_slots(kv, group, |s| {
        if s.holders.contains_key(node) || s.holders.len() >= s.limit as usize {
            return None;
        }
        let mut next = s.clone();
        next.holders.insert(
            node.into(),
            SlotHolder {
                request: request.into(),
                since_ms: now_ms(),
            },
        );
        Some(next)
    })
    .await?;
    Ok(slots.holders.contains_key(node))
}

/// Releases `node`'s slot of `group` (a no-op when it holds none).
pub async fn release_slot(kv: &Keyspace, group: SlotGroup, node: &str) -> Result<()> {
    change_slots(kv, group, |s| {
        s.holders.contains_key(node).then(|| {
            let mut next = s.clone();
            next.holders.remove(node);
            next
        })
    })
    .await
    .map(drop)
}

/// Sets how many slots `group` has (holders are kept).
pub async fn set_slot_limit(kv: &Keyspace, group: SlotGroup, limit: u32) -> Result<()> {
    change_slots(kv, group, |s| {
        (s.limit != limit).then(|| Slots {
            limit,
            holders: s.holders.clone(),
        })
    })
    .await
    .map(drop)
}

/// What a request to move leadership away from a voter came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderMove {
    /// It does not lead (any more): another voter does, or it never led.
    Away {
        /// The leader now.
        leader: Option<u64>,
    },
    /// The store does not offer the handover (`POST /v1/cluster/leader` unknown): the reboot
    /// goes ahead and the stores elect a new leader when it goes down.
    Unsupported,
    /// No voter could take over (409); the message says why.
    NoTakeover(String),
    /// It did not happen within the deadline (504).
    TimedOut(String),
}

/// Asks a store (`POST /v1/cluster/leader {"away_from": id}` at the first endpoint that
/// answers) to move leadership away from voter `id`. `http` must speak mutual TLS with a
/// node or operator certificate.
pub async fn move_leader_away(
    http: &reqwest::Client,
    endpoints: &[String],
    id: u64,
    timeout: Duration,
) -> Result<LeaderMove, String> {
    let mut last = String::from("no endpoint");
    for ep in endpoints {
        let url = format!("{}/v1/cluster/leader", ep.trim_end_matches('/'));
        let r = http
            .post(&url)
            .timeout(timeout)
            .json(&serde_json::json!({ "away_from": id }))
            .send()
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        return Ok(match status {
            200 => {
                let m: MembersResponse = serde_json::from_str(&text)
                    .map_err(|e| format!("{url}: undecodable members answer: {e}"))?;
                if m.leader == Some(id) {
                    LeaderMove::TimedOut(format!("{url} answered 200 but {id} still leads"))
                } else {
                    LeaderMove::Away { leader: m.leader }
                }
            }
            404 | 405 => LeaderMove::Unsupported,
            409 => LeaderMove::NoTakeover(text),
            504 => LeaderMove::TimedOut(text),
            503 => {
                last = format!("{url} answered 503: {text}");
                continue;
            }
            other => return Err(format!("{url} answered {other}: {text}")),
        });
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_slots_round_trip_as_json() {
        let r = RebootRequest::new("node02", "r1-node02", "rollout r1", SlotGroup::Voters, None);
        let text = encode(&r);
        assert!(text.contains("\"state\":\"requested\""), "{text}");
        assert!(text.contains("\"group\":\"voters\""), "{text}");
        let back: RebootRequest = decode("k", &text).expect("decodes");
        assert_eq!(back, r);
        let s = Slots {
            limit: 2,
            holders: BTreeMap::from([(
                "node04".to_string(),
                SlotHolder {
                    request: "x".into(),
                    since_ms: 1,
                },
            )]),
        };
        assert_eq!(decode::<Slots>("k", &encode(&s)).expect("decodes"), s);
        let e = decode::<Slots>("plasmacloud/day2/slots/voters", "{\"limit\":1}").unwrap_err();
        assert!(e.to_string().contains("slots/voters"), "{e}");
    }

    #[test]
    fn keys_name_the_node_and_the_group() {
        assert_eq!(request_key("node03"), "plasmacloud/day2/reboot/node03");
        assert_eq!(SlotGroup::Workers.key(), "plasmacloud/day2/slots/workers");
        assert_eq!(report_key("node01"), "plasmacloud/day2/nodes/node01");
    }
}
