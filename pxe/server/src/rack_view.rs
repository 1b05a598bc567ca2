//! The rack as an operator watches it, built from boot events alone (so a restart rebuilds it
//! from the event log): per contract node its current boot — the stage it reached from DHCP
//! to cluster-ready, each stage's time, its timeline — the bundle it booted, and the last
//! health pxe-server read from its services; the MACs not in the contract that asked; and the
//! event counts `/metrics` shows. No I/O here: the state feeds it events and health results.
//!
//! The rule, where a boot begins: at a boot-plane event of a PXE client — DHCP from PXE
//! firmware or iPXE (a plain client's DHCP, the installed system's own, never begins one),
//! the first stage fetched (TFTP, or HTTP for UEFI HTTP boot), or the node's iPXE script served — once the node's current boot had reached its
//! kernel; or at a phase report of a node that was cluster-ready and reports an earlier phase
//! again (a machine that does not PXE-boot, rebooted). Refusals (`failed`) begin nothing: a
//! third host asking for a node's script must not wipe the node's row.

use std::collections::{BTreeMap, HashMap, VecDeque};

use plasmacloud_contract::NodeSpec;
use serde::{Deserialize, Serialize};

use crate::events::BootEvent;

/// A stage of a boot, as the page shows it: the phases (event names) that belong to it.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    /// Its name in JSON.
    pub name: &'static str,
    /// The phases that belong to it.
    pub phases: &'static [&'static str],
}

/// The stages from DHCP to cluster-ready, in boot order.
pub const STAGES: &[Stage] = &[
    Stage {
        name: "dhcp",
        phases: &["dhcp"],
    },
    Stage {
        name: "ipxe",
        phases: &["tftp", "http-boot", "ipxe-script", "grub-config"],
    },
    Stage {
        name: "kernel",
        phases: &["kernel", "initrd", "overlay", "enroll-initrd"],
    },
    Stage {
        name: "enroll",
        phases: &["enroll"],
    },
    Stage {
        name: "disk",
        phases: &["disk"],
    },
    Stage {
        name: "configure",
        phases: &["configure"],
    },
    Stage {
        name: "chainfire",
        phases: &["chainfire-join"],
    },
    Stage {
        name: "flaredb",
        phases: &["flaredb-join"],
    },
    Stage {
        name: "iam",
        phases: &["iam-setup"],
    },
    Stage {
        name: "health",
        phases: &["health-check"],
    },
    Stage {
        name: "cluster-ready",
        phases: &["cluster-ready"],
    },
];

/// The index of the kernel stage (a boot-plane event after it begins a new boot).
const KERNEL_STAGE: usize = 2;
/// The last stage.
const READY_STAGE: usize = STAGES.len() - 1;

/// Events kept in a node's timeline for its current boot (the oldest beyond it dropped).
pub const MAX_TIMELINE: usize = 200;
/// MACs not in the contract remembered (the least recently seen forgotten beyond it).
pub const MAX_UNKNOWN: usize = 256;

/// Phases `/metrics` names one by one; anything else a node reports counts as `other`.
const KNOWN_PHASES: &[&str] = &[
    "dhcp",
    "unknown-mac",
    "tftp",
    "http-boot",
    "ipxe-script",
    "grub-config",
    "kernel",
    "initrd",
    "overlay",
    "enroll-initrd",
    "enroll",
    "disk",
    "configure",
    "chainfire-join",
    "flaredb-join",
    "iam-setup",
    "health-check",
    "cluster-ready",
];
const KNOWN_STATUSES: &[&str] = &["started", "ok", "failed", "ignored", "security"];

/// The stage a phase belongs to.
pub fn stage_of(phase: &str) -> Option<usize> {
    STAGES.iter().position(|s| s.phases.contains(&phase))
}

/// Does `e` begin a boot (see the module's rule)? A DHCP event names the boot file it
/// offered; a client that is neither PXE firmware nor iPXE gets `no boot file (not a PXE
/// client)` (`dhcp.rs`).
pub fn starts_boot(e: &BootEvent) -> bool {
    e.source == "server"
        && e.status != "failed"
        && match e.phase.as_str() {
            "tftp" | "http-boot" | "ipxe-script" | "grub-config" => true,
            "dhcp" => !e.detail.contains("not a PXE client"),
            _ => false,
        }
}

/// The bundle a node last booted: the version of the last kernel it fetched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeBoot {
    /// The bundle version (its manifest's sha256).
    pub version: String,
    /// When the kernel fetch started (RFC 3339 UTC).
    pub at: String,
}

/// One service's answer to pxe-server's health poll.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceHealth {
    /// `chainfire`, `flaredb` or `iam`.
    pub service: String,
    /// `ok` (healthy), `unhealthy` (it answered so) or `unreachable` (no answer).
    pub result: String,
    /// The Raft role it reported (`leader`, `follower`, `learner`, `candidate`), for the
    /// stores.
    pub role: Option<String>,
    /// Its reason when unhealthy, or why it could not be asked.
    pub detail: String,
}

/// A node's last health poll.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeHealth {
    /// When it was read (unix ms).
    pub checked_at_ms: u64,
    /// Since when the answers have been what they are (unix ms).
    pub since_ms: u64,
    /// One per service.
    pub services: Vec<ServiceHealth>,
}

#[derive(Debug, Clone, Default)]
struct StageMark {
    first_ms: Option<u64>,
    last: Option<(u64, String)>,
}

/// What the view knows of one contract node.
#[derive(Debug, Clone, Default)]
pub struct NodeTrack {
    /// Boots seen (since the log began).
    pub boots: u32,
    /// When the current boot began (unix ms).
    pub boot_started_ms: u64,
    /// The current boot's events (at most [`MAX_TIMELINE`]).
    pub timeline: VecDeque<BootEvent>,
    /// Events of the current boot dropped from the timeline.
    pub dropped: u64,
    stages: Vec<StageMark>,
    max_stage: Option<usize>,
    current: Option<BootEvent>,
    /// When the current boot reached cluster-ready (unix ms).
    pub ready_at_ms: Option<u64>,
    /// The node's last event.
    pub last: Option<BootEvent>,
    /// The bundle of its last kernel fetch.
    pub booted: Option<NodeBoot>,
    /// The last address DHCP named for it.
    pub dhcp_ip: Option<String>,
    /// Its last health poll.
    pub health: Option<NodeHealth>,
}

impl NodeTrack {
    fn begin_boot(&mut self, at_ms: u64) {
        self.boots += 1;
        self.boot_started_ms = at_ms;
        self.timeline.clear();
        self.dropped = 0;
        self.stages = vec![StageMark::default(); STAGES.len()];
        self.max_stage = None;
        self.current = None;
        self.ready_at_ms = None;
    }

    fn apply(&mut self, e: &BootEvent) {
        let stage = stage_of(&e.phase);
        let new_boot = self.boots == 0
            || (starts_boot(e) && self.max_stage.is_some_and(|m| m >= KERNEL_STAGE))
            || (e.source == "node"
                && self.ready_at_ms.is_some()
                && stage.is_some_and(|s| s < READY_STAGE));
        if new_boot {
            self.begin_boot(e.at_ms);
        }
        if self.timeline.len() >= MAX_TIMELINE {
            self.timeline.pop_front();
            self.dropped += 1;
        }
        self.timeline.push_back(e.clone());
        if let Some(s) = stage {
            let m = &mut self.stages[s];
            m.first_ms.get_or_insert(e.at_ms);
            m.last = Some((e.at_ms, e.status.clone()));
            if self.max_stage.is_none_or(|max| s >= max) {
                self.max_stage = Some(s);
                self.current = Some(e.clone());
            }
        }
        if e.phase == "cluster-ready" && e.status == "ok" {
            self.ready_at_ms = Some(e.at_ms);
        }
        if e.phase == "kernel" {
            if let Some(v) = &e.bundle {
                self.booted = Some(NodeBoot {
                    version: v.clone(),
                    at: e.at.clone(),
                });
            }
        }
        if e.phase == "dhcp" {
            if let Some(ip) = &e.ip {
                self.dhcp_ip = Some(ip.clone());
            }
        }
        self.last = Some(e.clone());
    }

    /// The stage the current boot reached (its name), if any.
    pub fn stage(&self) -> Option<&'static str> {
        self.max_stage.map(|s| STAGES[s].name)
    }
}

/// A MAC not in the contract that asked for something.
#[derive(Debug, Clone, Serialize)]
pub struct UnknownMac {
    /// The MAC.
    pub mac: String,
    /// The last address it had, when known.
    pub ip: Option<String>,
    /// First seen (unix ms).
    pub first_ms: u64,
    /// Last seen (unix ms).
    pub last_ms: u64,
    /// Events seen from it.
    pub count: u64,
    /// Its last event.
    pub last: BootEvent,
}

/// The state of one stage in a row: `done`, `running`, `failed`, `skipped` (a later stage
/// was reached without an event here: a process rack has no DHCP) or `pending`.
#[derive(Debug, Clone, Serialize)]
pub struct StageState {
    /// The stage's name.
    pub stage: &'static str,
    /// Its state.
    pub state: &'static str,
    /// When it began (unix ms).
    pub at_ms: Option<u64>,
}

/// The phase a node is in now: the last event at the furthest stage of its current boot.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseNow {
    /// The stage.
    pub stage: &'static str,
    /// The event's phase.
    pub phase: String,
    /// Its status.
    pub status: String,
    /// Its detail.
    pub detail: String,
    /// When (unix ms).
    pub at_ms: u64,
    /// When (RFC 3339).
    pub at: String,
}

/// One line of a boot timeline, as the harnesses print it.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// Seconds since the boot began.
    pub t: f64,
    /// Seconds since the previous line.
    pub dt: f64,
    /// When (unix ms).
    pub at_ms: u64,
    /// `server` or `node`.
    pub source: String,
    /// The phase.
    pub phase: String,
    /// The status.
    pub status: String,
    /// The detail.
    pub detail: String,
    /// As the harnesses print it: `server: dhcp` (seen by pxe-server), `chainfire-join
    /// started` (reported by the node).
    pub text: String,
}

/// One row of the rack page (and of `GET /v1/rack`).
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    /// The node.
    pub name: String,
    /// Its MAC.
    pub mac: String,
    /// Its contract address.
    pub ipv4: String,
    /// Its contract roles.
    pub roles: Vec<String>,
    /// An initial voter?
    pub voter: bool,
    /// The address DHCP last named for it.
    pub dhcp_ip: Option<String>,
    /// The bundle it booted.
    pub bundle: Option<NodeBoot>,
    /// Boots seen.
    pub boots: u32,
    /// When the current boot began (unix ms).
    pub boot_started_ms: Option<u64>,
    /// When it reached cluster-ready (unix ms).
    pub ready_at_ms: Option<u64>,
    /// Seconds from the boot's first event to cluster-ready.
    pub ready_seconds: Option<f64>,
    /// Where it is now.
    pub phase: Option<PhaseNow>,
    /// Every stage's state.
    pub stages: Vec<StageState>,
    /// The current boot's timeline.
    pub timeline: Vec<TimelineEntry>,
    /// Lines dropped from its start.
    pub timeline_dropped: u64,
    /// The last health poll.
    pub health: Option<NodeHealth>,
}

/// Counts per (phase, status) for `/metrics` (phases outside the known list as `other`).
pub type EventCounts = BTreeMap<(&'static str, &'static str), u64>;

/// Health polls per (service, result).
pub type PollCounts = BTreeMap<(String, String), u64>;

/// The view.
#[derive(Debug, Default)]
pub struct RackView {
    nodes: HashMap<String, NodeTrack>,
    unknown: HashMap<String, UnknownMac>,
    /// Events recorded since start, by phase and status.
    pub counts: EventCounts,
    /// Health polls since start, by service and result.
    pub polls: PollCounts,
}

impl RackView {
    /// Applies one event (in sequence order).
    pub fn apply(&mut self, e: &BootEvent) {
        match (&e.node, &e.mac) {
            (Some(n), _) => self.nodes.entry(n.clone()).or_default().apply(e),
            (None, Some(m)) => self.note_unknown(m, e),
            _ => {}
        }
    }

    /// Counts one event for `/metrics` (new events only, not those read back at start).
    pub fn count(&mut self, e: &BootEvent) {
        let phase = KNOWN_PHASES
            .iter()
            .find(|p| **p == e.phase)
            .copied()
            .unwrap_or("other");
        let status = KNOWN_STATUSES
            .iter()
            .find(|s| **s == e.status)
            .copied()
            .unwrap_or("other");
        *self.counts.entry((phase, status)).or_default() += 1;
    }

    fn note_unknown(&mut self, mac: &str, e: &BootEvent) {
        if !self.unknown.contains_key(mac) && self.unknown.len() >= MAX_UNKNOWN {
            if let Some(oldest) = self
                .unknown
                .values()
                .min_by_key(|u| u.last_ms)
                .map(|u| u.mac.clone())
            {
                self.unknown.remove(&oldest);
            }
        }
        let u = self
            .unknown
            .entry(mac.to_string())
            .or_insert_with(|| UnknownMac {
                mac: mac.to_string(),
                ip: None,
                first_ms: e.at_ms,
                last_ms: e.at_ms,
                count: 0,
                last: e.clone(),
            });
        u.count += 1;
        u.last_ms = e.at_ms;
        u.last = e.clone();
        if e.ip.is_some() {
            u.ip = e.ip.clone();
        }
    }

    /// The node's track, if it has had an event or a health poll.
    pub fn node(&self, name: &str) -> Option<&NodeTrack> {
        self.nodes.get(name)
    }

    /// Notes a health poll of `name`; `true` when an answer changed (the page is told).
    pub fn set_health(&mut self, name: &str, mut h: NodeHealth) -> bool {
        for s in &h.services {
            *self
                .polls
                .entry((s.service.clone(), s.result.clone()))
                .or_default() += 1;
        }
        let t = self.nodes.entry(name.to_string()).or_default();
        let changed = t
            .health
            .as_ref()
            .is_none_or(|old| old.services != h.services);
        if !changed {
            if let Some(old) = &t.health {
                h.since_ms = old.since_ms;
            }
        }
        t.health = Some(h);
        changed
    }

    /// The unknown MACs, the most recently seen first.
    pub fn unknown(&self) -> Vec<UnknownMac> {
        let mut v: Vec<UnknownMac> = self.unknown.values().cloned().collect();
        v.sort_by(|a, b| b.last_ms.cmp(&a.last_ms).then(a.mac.cmp(&b.mac)));
        v
    }

    /// One unknown MAC.
    pub fn unknown_mac(&self, mac: &str) -> Option<UnknownMac> {
        self.unknown.get(mac).cloned()
    }

    /// The bundle each node last booted.
    pub fn booted(&self) -> HashMap<String, NodeBoot> {
        self.nodes
            .iter()
            .filter_map(|(n, t)| t.booted.clone().map(|b| (n.clone(), b)))
            .collect()
    }

    /// The row of contract node `spec`; `seen_ip` is what DHCP saw this run.
    pub fn node_row(&self, spec: &NodeSpec, seen_ip: Option<String>) -> NodeRow {
        let t = self.nodes.get(&spec.name);
        let roles = spec
            .roles
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let mut row = NodeRow {
            name: spec.name.clone(),
            mac: spec.mac.to_string(),
            ipv4: spec.ipv4.to_string(),
            roles,
            voter: spec.voter,
            dhcp_ip: seen_ip.or_else(|| t.and_then(|t| t.dhcp_ip.clone())),
            bundle: t.and_then(|t| t.booted.clone()),
            boots: 0,
            boot_started_ms: None,
            ready_at_ms: None,
            ready_seconds: None,
            phase: None,
            stages: STAGES
                .iter()
                .map(|s| StageState {
                    stage: s.name,
                    state: "pending",
                    at_ms: None,
                })
                .collect(),
            timeline: Vec::new(),
            timeline_dropped: 0,
            health: t.and_then(|t| t.health.clone()),
        };
        let Some(t) = t.filter(|t| t.boots > 0) else {
            return row;
        };
        row.boots = t.boots;
        row.boot_started_ms = Some(t.boot_started_ms);
        row.ready_at_ms = t.ready_at_ms;
        row.ready_seconds = t
            .ready_at_ms
            .map(|r| r.saturating_sub(t.boot_started_ms) as f64 / 1000.0);
        row.phase = t.current.as_ref().and_then(|e| {
            Some(PhaseNow {
                stage: STAGES[stage_of(&e.phase)?].name,
                phase: e.phase.clone(),
                status: e.status.clone(),
                detail: e.detail.clone(),
                at_ms: e.at_ms,
                at: e.at.clone(),
            })
        });
        for (i, st) in row.stages.iter_mut().enumerate() {
            let mark = &t.stages[i];
            st.at_ms = mark.first_ms;
            st.state = match (t.max_stage, &mark.last) {
                (Some(max), None) if i < max => "skipped",
                (Some(max), Some(_)) if i < max => "done",
                (Some(max), Some((_, status))) if i == max => match status.as_str() {
                    "ok" => "done",
                    "started" => "running",
                    _ => "failed",
                },
                _ => "pending",
            };
        }
        let mut prev = t.boot_started_ms;
        row.timeline = t
            .timeline
            .iter()
            .map(|e| {
                let entry = TimelineEntry {
                    t: e.at_ms.saturating_sub(t.boot_started_ms) as f64 / 1000.0,
                    dt: e.at_ms.saturating_sub(prev) as f64 / 1000.0,
                    at_ms: e.at_ms,
                    source: e.source.clone(),
                    phase: e.phase.clone(),
                    status: e.status.clone(),
                    detail: e.detail.clone(),
                    text: if e.source == "node" {
                        format!("{} {}", e.phase, e.status)
                    } else {
                        format!("server: {}", e.phase)
                    },
                };
                prev = e.at_ms;
                entry
            })
            .collect();
        row.timeline_dropped = t.dropped;
        row
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(seq: u64, source: &str, phase: &str, status: &str, detail: &str) -> BootEvent {
        BootEvent {
            seq,
            at_ms: 1000 * seq,
            at: format!("t{seq}"),
            node: Some("node01".into()),
            mac: Some("52:54:00:aa:00:01".into()),
            ip: Some("10.0.0.11".into()),
            source: source.into(),
            phase: phase.into(),
            status: status.into(),
            detail: detail.into(),
            bundle: (phase == "kernel").then(|| "v1".to_string()),
        }
    }

    fn spec() -> NodeSpec {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster-3.json");
        let c = plasmacloud_contract::Contract::load(&path).unwrap();
        let mut n = c.nodes[0].clone();
        n.name = "node01".into();
        n
    }

    /// One PXE boot to cluster-ready, as the events arrive from a VM rack.
    fn a_boot(first_seq: u64) -> Vec<BootEvent> {
        let s = first_seq;
        vec![
            ev(
                s,
                "server",
                "dhcp",
                "started",
                "offer 10.0.0.11 (bios, tftp undionly.kpxe)",
            ),
            ev(
                s + 1,
                "server",
                "dhcp",
                "ok",
                "ack 10.0.0.11 (bios, tftp undionly.kpxe)",
            ),
            ev(s + 2, "server", "tftp", "ok", "undionly.kpxe"),
            ev(
                s + 3,
                "server",
                "dhcp",
                "ok",
                "ack 10.0.0.11 (ipxe/bios, ipxe-script)",
            ),
            ev(s + 4, "server", "ipxe-script", "ok", "served"),
            ev(s + 5, "server", "kernel", "started", "vmlinuz"),
            ev(s + 6, "server", "initrd", "started", "initrd.img"),
            ev(
                s + 7,
                "server",
                "dhcp",
                "ok",
                "ack 10.0.0.11 (plain, no boot file (not a PXE client))",
            ),
            ev(s + 8, "node", "enroll", "started", ""),
            ev(s + 9, "server", "enroll", "ok", "serial 01"),
            ev(s + 10, "node", "enroll", "ok", "enrolled"),
            ev(s + 11, "node", "configure", "ok", "raft id 1"),
            ev(s + 12, "node", "chainfire-join", "started", ""),
            ev(s + 13, "node", "chainfire-join", "ok", "bootstrapped"),
            ev(s + 14, "node", "flaredb-join", "ok", ""),
            ev(s + 15, "node", "iam-setup", "ok", ""),
            ev(s + 16, "node", "health-check", "started", ""),
            ev(s + 17, "node", "cluster-ready", "ok", ""),
        ]
    }

    #[test]
    fn a_boot_reaches_cluster_ready_with_every_stage_in_order() {
        let mut v = RackView::default();
        let evs = a_boot(1);
        for (i, e) in evs.iter().enumerate() {
            v.apply(e);
            if i == 12 {
                let row = v.node_row(&spec(), None);
                let p = row.phase.unwrap();
                assert_eq!((p.stage, p.status.as_str()), ("chainfire", "started"));
                assert_eq!(row.stages[6].state, "running");
                assert_eq!(
                    row.stages[4].state, "skipped",
                    "no disk report in this boot"
                );
            }
        }
        let row = v.node_row(&spec(), None);
        assert_eq!(row.boots, 1);
        assert_eq!(row.phase.as_ref().unwrap().stage, "cluster-ready");
        assert_eq!(row.ready_seconds, Some(17.0));
        assert_eq!(row.bundle.as_ref().unwrap().version, "v1");
        assert_eq!(row.timeline.len(), evs.len());
        assert_eq!(row.timeline[0].text, "server: dhcp");
        assert_eq!(row.timeline[17].text, "cluster-ready ok");
        assert_eq!(row.timeline[17].t, 17.0);
        let states: Vec<&str> = row.stages.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [
                "done", "done", "done", "done", "skipped", "done", "done", "done", "done", "done",
                "done"
            ]
        );
    }

    #[test]
    fn a_reboot_begins_a_new_boot_and_a_plain_dhcp_or_a_refusal_does_not() {
        let mut v = RackView::default();
        for e in a_boot(1) {
            v.apply(&e);
        }
        // The installed system renews its lease; a third host asks for the script.
        v.apply(&ev(
            30,
            "server",
            "dhcp",
            "ok",
            "ack 10.0.0.11 (plain, no boot file (not a PXE client))",
        ));
        v.apply(&ev(
            31,
            "server",
            "ipxe-script",
            "failed",
            "refused to 10.0.0.99",
        ));
        let row = v.node_row(&spec(), None);
        assert_eq!(row.boots, 1);
        assert_eq!(row.phase.as_ref().unwrap().stage, "cluster-ready");
        // PXE again: a new boot.
        for e in a_boot(40) {
            v.apply(&e);
            if e.seq == 41 {
                let row = v.node_row(&spec(), None);
                assert_eq!(row.boots, 2);
                assert_eq!(row.ready_at_ms, None);
                assert_eq!(row.timeline.len(), 2);
                assert_eq!(row.phase.as_ref().unwrap().stage, "dhcp");
            }
        }
        assert_eq!(v.node_row(&spec(), None).ready_seconds, Some(17.0));
    }

    #[test]
    fn a_node_without_pxe_reporting_again_after_ready_begins_a_new_boot() {
        let mut v = RackView::default();
        for (i, p) in ["disk", "configure", "cluster-ready"].iter().enumerate() {
            v.apply(&ev(i as u64 + 1, "node", p, "ok", ""));
        }
        let row = v.node_row(&spec(), None);
        assert_eq!(row.stages[0].state, "skipped");
        assert_eq!(row.boots, 1);
        v.apply(&ev(10, "node", "disk", "ok", "already"));
        let row = v.node_row(&spec(), None);
        assert_eq!(row.boots, 2);
        assert_eq!(row.phase.unwrap().stage, "disk");
    }

    #[test]
    fn a_failure_shows_on_its_stage() {
        let mut v = RackView::default();
        v.apply(&ev(1, "node", "chainfire-join", "started", ""));
        v.apply(&ev(2, "node", "chainfire-join", "failed", "no quorum"));
        let row = v.node_row(&spec(), None);
        assert_eq!(row.stages[6].state, "failed");
        assert_eq!(row.phase.unwrap().detail, "no quorum");
    }

    #[test]
    fn unknown_macs_are_bounded_and_counted() {
        let mut v = RackView::default();
        for i in 0..(MAX_UNKNOWN as u64 + 10) {
            let mut e = ev(i + 1, "server", "unknown-mac", "ok", "ack");
            e.node = None;
            e.mac = Some(format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256));
            v.apply(&e);
            v.apply(&e);
        }
        let u = v.unknown();
        assert_eq!(u.len(), MAX_UNKNOWN);
        assert_eq!(u[0].count, 2);
        assert!(
            v.unknown_mac("02:00:00:00:00:00").is_none(),
            "the oldest forgotten"
        );
    }

    #[test]
    fn counts_bound_their_labels() {
        let mut v = RackView::default();
        v.count(&ev(1, "node", "chainfire-join", "ok", ""));
        v.count(&ev(2, "node", "my-own-unit", "weird", ""));
        assert_eq!(v.counts[&("chainfire-join", "ok")], 1);
        assert_eq!(v.counts[&("other", "other")], 1);
    }

    #[test]
    fn health_changes_are_told_once() {
        let mut v = RackView::default();
        let h = |ms, role: &str| NodeHealth {
            checked_at_ms: ms,
            since_ms: ms,
            services: vec![ServiceHealth {
                service: "chainfire".into(),
                result: "ok".into(),
                role: Some(role.into()),
                detail: String::new(),
            }],
        };
        assert!(v.set_health("node01", h(1, "leader")));
        assert!(!v.set_health("node01", h(2, "leader")));
        let t = v.node("node01").unwrap().health.clone().unwrap();
        assert_eq!((t.checked_at_ms, t.since_ms), (2, 1));
        assert!(v.set_health("node01", h(3, "follower")));
        assert_eq!(v.polls[&("chainfire".to_string(), "ok".to_string())], 3);
    }
}
