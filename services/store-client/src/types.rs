//! The JSON wire types of the Chainfire and FlareDB HTTP APIs.
//!
//! Both servers use these exact structs (they depend on this crate), so client and server cannot
//! drift apart. Field names are the API's; see the crate docs for the endpoints.

use serde::{Deserialize, Serialize};

/// The Raft role a node reports in `/health` and `/v1/cluster/members`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RaftRole {
    /// The node leads the cluster.
    Leader,
    /// A voter following a leader.
    Follower,
    /// A non-voting member (or a pristine node that belongs to no cluster yet).
    Learner,
    /// A voter in an election.
    Candidate,
    /// The Raft core has stopped (fatal error or shutdown).
    Shutdown,
    /// A role this client does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl RaftRole {
    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RaftRole::Leader => "leader",
            RaftRole::Follower => "follower",
            RaftRole::Learner => "learner",
            RaftRole::Candidate => "candidate",
            RaftRole::Shutdown => "shutdown",
            RaftRole::Unknown => "unknown",
        }
    }
}

/// `GET /health`: 200 with `status == "healthy"`, or 503 with `status == "unhealthy"` and a
/// `reason`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `"healthy"` or `"unhealthy"`.
    pub status: String,
    /// This node's Raft role.
    pub raft: RaftRole,
    /// Number of voters plus learners in the membership this node knows (0 when pristine).
    #[serde(default)]
    pub cluster_size: u64,
    /// Why the node is unhealthy (only when `status == "unhealthy"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// FlareDB only: `"connected"` or `"disconnected"` (its link to Chainfire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chainfire: Option<String>,
}

impl Health {
    /// `status == "healthy"`.
    pub fn is_healthy(&self) -> bool {
        self.status == "healthy"
    }
}

/// A cluster member as given to `init` and `add_learner`: its Raft id and both addresses
/// (`ip:port`, no scheme).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The Raft node id (never reused within a cluster).
    pub id: u64,
    /// `ip:port` of the node's Raft listener.
    pub raft_addr: String,
    /// `ip:port` of the node's API listener.
    pub api_addr: String,
}

/// `POST /v1/cluster/init` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// The initial voters (usually the node itself, or the contract's voter set).
    pub members: Vec<Member>,
}

/// `POST /v1/cluster/voters` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// Ids of learners to promote; ids that already vote are a no-op.
    pub ids: Vec<u64>,
}

/// `POST /v1/cluster/leader` body: move leadership away from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveLeaderRequest {
    /// When this node leads, another voter (the most caught up) takes over; otherwise the
    /// call is a no-op.
    pub away_from: u64,
}

/// Role of a member in the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Votes.
    Voter,
    /// Replicates without voting.
    Learner,
}

/// One entry of `GET /v1/cluster/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Raft id.
    pub id: u64,
    /// `ip:port` of its Raft listener.
    pub raft_addr: String,
    /// `ip:port` of its API listener.
    pub api_addr: String,
    /// Voter or learner.
    pub role: MemberRole,
}

/// `GET /v1/cluster/members` (also the answer of the membership-changing calls).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersResponse {
    /// The current leader's id, if one is known.
    pub leader: Option<u64>,
    /// Every member, voters first, then learners, each by id.
    pub members: Vec<MemberInfo>,
}

impl MembersResponse {
    /// The member with `id`, if present.
    pub fn get(&self, id: u64) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Ids of the voters.
    pub fn voter_ids(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| m.role == MemberRole::Voter)
            .map(|m| m.id)
            .collect()
    }
}

/// `PUT /v1/kv/{key}` answer (also carried in the `X-Revision` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The global revision this write created.
    pub revision: u64,
}

/// `DELETE /v1/kv/{key}` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// The store's revision after the call (a new revision when something was deleted).
    pub revision: u64,
    /// Whether the key existed.
    pub deleted: bool,
}

/// One item of a prefix listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvItem {
    /// The full key.
    pub key: String,
    /// The value (UTF-8).
    pub value: String,
    /// The key's modification revision.
    pub revision: u64,
}

/// `GET /v1/kv?prefix=P[&limit=N][&after=K]` answer: one page of the listing.
///
/// A page holds at most `limit` items (default [`LIST_DEFAULT_LIMIT`], at most
/// [`LIST_MAX_LIMIT`]) and about [`LIST_MAX_BYTES`] of keys and values (always at least one
/// item); `more` says whether keys follow, and `next` is the `after` of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    /// The store's revision at the time of the read (of this page).
    pub revision: u64,
    /// Matching items in key order (keys greater than `after`).
    pub items: Vec<KvItem>,
    /// Whether more keys match after this page.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// When `more`: the last key of this page, to send as `after` for the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Items in a listing page when the request names no `limit`.
pub const LIST_DEFAULT_LIMIT: usize = 1000;
/// The largest `limit` a listing accepts (a larger one is a 400).
pub const LIST_MAX_LIMIT: usize = 10_000;
/// Bytes of keys and values after which a listing page ends (with `more`), whatever its limit.
pub const LIST_MAX_BYTES: usize = 4 << 20;

/// A value read with `GET /v1/kv/{key}` (raw body + `X-Revision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: String,
    /// The key's modification revision.
    pub revision: u64,
}

/// Every error answer: `{"error":"…"}` plus optional details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do, for a person.
    pub error: String,
    /// On a 409 compare-and-swap mismatch: the key's current revision (0 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The leader's id, when the server knows it and it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// `true` when the request was certainly not applied, so a client may retry it elsewhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
    /// [`OUTCOME_UNKNOWN`] when the server cannot tell whether the request took effect (a
    /// write that may have been committed although its answer is an error: the deadline
    /// passed, Raft stopped after replicating it, the leader's answer was lost). The client
    /// reads back before it decides; it never counts such a write as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// The `outcome` of an answer whose request may or may not have taken effect.
pub const OUTCOME_UNKNOWN: &str = "unknown";

impl ErrorBody {
    /// A plain error.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            revision: None,
            leader: None,
            retryable: false,
            outcome: None,
        }
    }

    /// An error whose request may or may not have taken effect (`"outcome":"unknown"`).
    pub fn outcome_unknown(error: impl Into<String>) -> Self {
        Self {
            outcome: Some(OUTCOME_UNKNOWN.into()),
            ..Self::new(error)
        }
    }

    /// Whether the body says the outcome is unknown.
    pub fn is_outcome_unknown(&self) -> bool {
        self.outcome.as_deref() == Some(OUTCOME_UNKNOWN)
    }
}

/// One time-series point: `t` in Unix milliseconds, `v` the value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Unix time in milliseconds.
    pub t: i64,
    /// The value.
    pub v: f64,
}

/// `POST /v1/ts/{series}/points` body and `GET /v1/ts/{series}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointsBody {
    /// Points in time order (an append may carry them in any order).
    pub points: Vec<Point>,
}

/// One bucket of a downsampled read (`GET /v1/ts/{series}?from&to&step`): `t` is the bucket
/// start, `v` the average.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Bucket start, Unix ms (a multiple of `step`).
    pub t: i64,
    /// Average of the bucket's points.
    pub v: f64,
    /// Smallest value in the bucket.
    pub min: f64,
    /// Largest value in the bucket.
    pub max: f64,
    /// Number of points in the bucket.
    pub count: u64,
}

/// `GET /v1/ts/{series}?…&step=MS` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketsBody {
    /// Non-empty buckets in time order.
    pub points: Vec<Bucket>,
}

/// `POST /v1/ts/{series}/points` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    /// The global revision of the append.
    pub revision: u64,
    /// How many points were stored (a point at an existing `t` replaces it).
    pub appended: u64,
}

/// Namespace names: `[a-z0-9_-]{1,32}`.
pub fn valid_namespace(ns: &str) -> bool {
    (1..=32).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Time-series names follow the namespace rule but may be up to 128 bytes and contain `.`.
pub fn valid_series(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_parses_both_shapes() {
        let h: Health =
            serde_json::from_str(r#"{"status":"healthy","raft":"leader","cluster_size":3}"#)
                .unwrap();
        assert!(h.is_healthy());
        assert_eq!(h.raft, RaftRole::Leader);
        let h: Health = serde_json::from_str(
            r#"{"status":"unhealthy","raft":"learner","reason":"not initialised","chainfire":"disconnected"}"#,
        )
        .unwrap();
        assert!(!h.is_healthy());
        assert_eq!(h.cluster_size, 0);
        assert_eq!(h.chainfire.as_deref(), Some("disconnected"));
        let h: Health = serde_json::from_str(r#"{"status":"x","raft":"observer"}"#).unwrap();
        assert_eq!(h.raft, RaftRole::Unknown);
    }

    #[test]
    fn member_rejects_unknown_fields() {
        assert!(serde_json::from_str::<Member>(
            r#"{"id":1,"raft_addr":"a:1","api_addr":"b:2","x":1}"#
        )
        .is_err());
    }

    #[test]
    fn namespace_rule() {
        assert!(valid_namespace("iam"));
        assert!(valid_namespace("a-b_c9"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("IAM"));
        assert!(!valid_namespace(&"a".repeat(33)));
        assert!(!valid_namespace("a/b"));
    }

    #[test]
    fn error_body_omits_empty_fields() {
        let s = serde_json::to_string(&ErrorBody::new("x")).unwrap();
        assert_eq!(s, r#"{"error":"x"}"#);
        let s = serde_json::to_string(&ErrorBody::outcome_unknown("x")).unwrap();
        assert_eq!(s, r#"{"error":"x","outcome":"unknown"}"#);
        let b: ErrorBody = serde_json::from_str(&s).unwrap();
        assert!(b.is_outcome_unknown() && !b.retryable);
    }
}
