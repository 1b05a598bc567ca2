//! Shared server state: the bundles being served, the lease store, what DHCP saw (MAC →
//! address), per-boot URL tokens, the cluster CA and the enrollment token store, boot events,
//! which bundle each node last booted, connection caps, and metrics counters.

use crate::exposition::Exposition;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use plasmacloud_pki::ca::ClusterCa;
use plasmacloud_pki::Revocations;

use crate::bundle::{Bundle, Bundles};
use crate::config::Config;
use crate::enroll_tokens::TokenStore;
use crate::events::EventLog;
use crate::leases::LeaseStore;
use crate::limits::Slots;
use crate::rack_view::{NodeHealth, RackView};

/// How many events the server keeps in memory.
pub const EVENT_CAPACITY: usize = 10_000;

pub use crate::events::BootEvent;
pub use crate::rack_view::NodeBoot;

/// One message of the live event stream (`GET /v1/events/stream`), rendered once for every
/// subscriber: `boot` (an event, `id` its sequence number), `node` (a node's row), `unknown`
/// (an unknown MAC's row). `version` orders it against a snapshot of the view: a subscriber
/// skips what its snapshot already holds.
#[derive(Debug)]
pub struct StreamItem {
    /// The view's version after the change this item tells.
    pub version: u64,
    /// The SSE event name.
    pub kind: &'static str,
    /// The SSE id (boot events: their sequence number).
    pub id: Option<u64>,
    /// JSON.
    pub data: String,
}

/// How many messages a slow subscriber may fall behind before it is sent a new snapshot.
pub const STREAM_BACKLOG: usize = 1024;

/// The live stream's gauges and counters.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Subscribers now.
    pub subscribers: AtomicU64,
    /// Subscriptions since start.
    pub opened: AtomicU64,
    /// Subscriptions refused (over the cap).
    pub refused: AtomicU64,
    /// Times a subscriber fell behind and was sent a new snapshot.
    pub lagged: AtomicU64,
}

/// Events in memory, the view built from them, and the sequence.
#[derive(Debug)]
struct Recorded {
    ring: VecDeque<BootEvent>,
    view: RackView,
    next_seq: u64,
    version: u64,
}

/// A per-boot URL token: the enrollment initrd URL of one boot of one node, valid only from
/// the address its script went to. It carries that boot's enrollment token, in memory only
/// (the token store keeps its hash).
#[derive(Clone)]
pub struct BootToken {
    /// The node.
    pub node: String,
    /// The address the node's script was served to.
    pub ip: Ipv4Addr,
    /// Unix seconds.
    pub issued: u64,
    /// The enrollment token minted with the script.
    pub enroll_token: String,
}

impl std::fmt::Debug for BootToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootToken")
            .field("node", &self.node)
            .field("ip", &self.ip)
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

/// Prometheus counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// OFFERs sent in full mode.
    pub dhcp_offers_full: AtomicU64,
    /// OFFERs sent in proxy mode.
    pub dhcp_offers_proxy: AtomicU64,
    /// ACKs sent in full mode.
    pub dhcp_acks_full: AtomicU64,
    /// ACKs sent in proxy mode.
    pub dhcp_acks_proxy: AtomicU64,
    /// NAKs sent.
    pub dhcp_naks: AtomicU64,
    /// Requests ignored (policy, other server chosen, not a boot client in proxy mode).
    pub dhcp_ignored: AtomicU64,
    /// Malformed or unanswerable DHCP packets.
    pub dhcp_errors: AtomicU64,
    /// DHCP packets dropped by the per-MAC rate limit.
    pub dhcp_rate_limited: AtomicU64,
    /// TFTP transfers completed.
    pub tftp_transfers_ok: AtomicU64,
    /// TFTP transfers failed (timeouts, client errors).
    pub tftp_transfers_failed: AtomicU64,
    /// TFTP requests refused (writes, traversal, missing, over the limit).
    pub tftp_refused: AtomicU64,
    /// Malformed TFTP packets.
    pub tftp_errors: AtomicU64,
    /// TFTP payload bytes sent (first transmissions and retransmissions).
    pub tftp_bytes: AtomicU64,
    /// TFTP DATA retransmissions.
    pub tftp_retransmits: AtomicU64,
    /// TFTP transfers running now.
    pub tftp_active: AtomicU64,
    /// HTTP requests served on the boot plane.
    pub http_requests: AtomicU64,
    /// HTTP artifact transfers started.
    pub http_transfers: AtomicU64,
    /// HTTP body bytes sent.
    pub http_bytes: AtomicU64,
    /// HTTP 403s.
    pub http_forbidden: AtomicU64,
    /// HTTP 404s and other errors.
    pub http_errors: AtomicU64,
    /// Enrollments by result.
    pub enroll_ok: AtomicU64,
    /// Enrollment requests refused (bad body, neighbour, token).
    pub enroll_refused: AtomicU64,
    /// Enrollment tokens presented again by another key.
    pub enroll_reused: AtomicU64,
    /// IPv6 RAs sent.
    pub ra_sent: AtomicU64,
    /// Bundles loaded and swapped in by a reload.
    pub bundle_reloads_ok: AtomicU64,
    /// Bundles refused by a reload (the old one kept serving).
    pub bundle_reloads_refused: AtomicU64,
}

impl Metrics {
    /// Adds one.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn inc_by(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Describes the counters for `/metrics`.
    pub fn describe(&self, x: &mut Exposition) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        x.counter("pxe_dhcp_offers_total", "DHCP OFFERs sent.")
            .row(&[("mode", "full")], g(&self.dhcp_offers_full))
            .row(&[("mode", "proxy")], g(&self.dhcp_offers_proxy));
        x.counter("pxe_dhcp_acks_total", "DHCP ACKs sent.")
            .row(&[("mode", "full")], g(&self.dhcp_acks_full))
            .row(&[("mode", "proxy")], g(&self.dhcp_acks_proxy));
        x.counter("pxe_dhcp_naks_total", "DHCP NAKs sent.")
            .value(g(&self.dhcp_naks));
        x.counter(
            "pxe_dhcp_ignored_total",
            "DHCP requests not answered by policy.",
        )
        .value(g(&self.dhcp_ignored));
        x.counter(
            "pxe_dhcp_errors_total",
            "Malformed or unanswerable DHCP packets.",
        )
        .value(g(&self.dhcp_errors));
        x.counter(
            "pxe_dhcp_rate_limited_total",
            "DHCP packets dropped unanswered by the per-MAC rate limit.",
        )
        .value(g(&self.dhcp_rate_limited));
        x.counter("pxe_tftp_transfers_total", "TFTP transfers by result.")
            .row(&[("result", "ok")], g(&self.tftp_transfers_ok))
            .row(&[("result", "failed")], g(&self.tftp_transfers_failed))
            .row(&[("result", "refused")], g(&self.tftp_refused));
        x.counter("pxe_tftp_bytes_total", "TFTP payload bytes sent.")
            .value(g(&self.tftp_bytes));
        x.counter("pxe_tftp_retransmits_total", "TFTP DATA retransmissions.")
            .value(g(&self.tftp_retransmits));
        x.counter("pxe_tftp_errors_total", "Malformed TFTP packets.")
            .value(g(&self.tftp_errors));
        x.counter("pxe_http_requests_total", "Boot-plane HTTP requests.")
            .value(g(&self.http_requests));
        x.counter(
            "pxe_http_transfers_total",
            "Boot-plane artifact transfers started.",
        )
        .value(g(&self.http_transfers));
        x.counter("pxe_http_bytes_total", "Boot-plane HTTP body bytes sent.")
            .value(g(&self.http_bytes));
        x.counter("pxe_http_errors_total", "Boot-plane HTTP errors by kind.")
            .row(&[("kind", "forbidden")], g(&self.http_forbidden))
            .row(&[("kind", "other")], g(&self.http_errors));
        x.counter("pxe_enrollments_total", "Enrollment requests by result.")
            .row(&[("result", "ok")], g(&self.enroll_ok))
            .row(&[("result", "refused")], g(&self.enroll_refused))
            .row(&[("result", "reused")], g(&self.enroll_reused));
        x.counter(
            "pxe_bundle_reloads_total",
            "Bundle reloads by result (refused: the old bundle kept serving).",
        )
        .row(&[("result", "ok")], g(&self.bundle_reloads_ok))
        .row(&[("result", "refused")], g(&self.bundle_reloads_refused));
        x.counter("pxe_ipv6_ra_sent_total", "IPv6 router advertisements sent.")
            .value(g(&self.ra_sent));
        x.gauge("pxe_tftp_active_transfers", "TFTP transfers running now.")
            .value(g(&self.tftp_active));
    }
}

/// What each listener holds ([`crate::limits`]): connections, or TFTP transfers.
#[derive(Debug)]
pub struct ListenerSlots {
    /// The boot plane's connections.
    pub boot: Arc<Slots>,
    /// The management listener's connections (after the TLS handshake).
    pub management: Arc<Slots>,
    /// The enrollment listener's connections (after the TLS handshake).
    pub enrollment: Arc<Slots>,
    /// TFTP transfers.
    pub tftp: Arc<Slots>,
}

impl ListenerSlots {
    /// The caps of `cfg`.
    pub fn new(cfg: &Config) -> Self {
        Self {
            boot: Slots::new("boot", "connection", crate::limits::BOOT_PLANE_CAPS),
            management: Slots::new("management", "connection", crate::limits::MANAGEMENT_CAPS),
            enrollment: Slots::new("enrollment", "connection", crate::limits::ENROLLMENT_CAPS),
            tftp: Slots::new(
                "tftp",
                "transfer",
                crate::limits::Caps {
                    total: cfg.tftp_max_transfers,
                    per_address: Some(cfg.tftp_max_per_client),
                },
            ),
        }
    }

    /// Describes the connection caps for `/metrics`.
    pub fn describe(&self, x: &mut Exposition) {
        let http = [&self.boot, &self.management, &self.enrollment];
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let f = x.gauge(
            "pxe_connections_open",
            "HTTP connections open now, by listener.",
        );
        for s in http {
            f.row(&[("listener", s.name)], s.open());
        }
        let f = x.counter(
            "pxe_connections_refused_total",
            "HTTP connections refused by a cap (listener total or per client address).",
        );
        for s in http {
            f.row(
                &[("listener", s.name), ("cap", "listener")],
                g(&s.refused_full),
            )
            .row(
                &[("listener", s.name), ("cap", "address")],
                g(&s.refused_address),
            );
        }
        let f = x.counter(
            "pxe_connections_timed_out_total",
            "HTTP connections closed by a header, stall or request timeout.",
        );
        for s in http {
            f.row(&[("listener", s.name)], g(&s.timed_out));
        }
        let t = &self.tftp;
        x.counter(
            "pxe_tftp_busy_total",
            "TFTP read requests refused by a cap (server total or per client address).",
        )
        .row(&[("cap", "server")], g(&t.refused_full))
        .row(&[("cap", "address")], g(&t.refused_address));
    }
}

/// Everything the listeners share.
#[derive(Debug)]
pub struct State {
    /// The validated configuration.
    pub config: Config,
    /// The bundle being served (and the replaced ones still served to boots that began on
    /// them); take [`Bundles::current`] once per request.
    pub bundles: Bundles,
    /// The bundle each node last booted, by node name.
    pub booted: Mutex<HashMap<String, NodeBoot>>,
    /// Leases (full mode).
    pub leases: Mutex<LeaseStore>,
    /// The address DHCP last saw (assigned, requested or used) for each MAC.
    pub seen: Mutex<HashMap<String, Ipv4Addr>>,
    /// Per-boot URL tokens.
    pub tokens: Mutex<HashMap<String, BootToken>>,
    /// The cluster CA.
    pub ca: ClusterCa,
    /// Single-use enrollment tokens (hashed, on disk). Its calls fsync: call them off the
    /// runtime ([`tokio::task::spawn_blocking`]).
    pub enroll_tokens: Mutex<TokenStore>,
    /// Revoked serials (from `pki/revoked.log`), refused on the TLS listeners.
    pub revocations: Revocations,
    /// Recent events and the rack view.
    events: Mutex<Recorded>,
    /// The event log on disk.
    pub event_log: EventLog,
    /// The live stream's sender.
    stream: tokio::sync::broadcast::Sender<Arc<StreamItem>>,
    /// The live stream's gauges.
    pub stream_stats: StreamStats,
    /// Counters.
    pub metrics: Metrics,
    /// What each listener holds, and its caps.
    pub listeners: ListenerSlots,
}

/// Locks a mutex, recovering from poisoning (a panicked holder leaves consistent data here:
/// every critical section is a few map operations).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The IPv4 address of a peer (also when it arrives IPv4-mapped on an IPv6 socket).
pub fn peer_v4(addr: SocketAddr) -> Option<Ipv4Addr> {
    match addr.ip() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, millisecond) form of unix milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The fields of an event before it gets a sequence number and a time.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    /// Node.
    pub node: Option<String>,
    /// MAC.
    pub mac: Option<String>,
    /// Address.
    pub ip: Option<Ipv4Addr>,
    /// `server` or `node`.
    pub source: &'static str,
    /// Phase.
    pub phase: String,
    /// Status.
    pub status: String,
    /// Detail.
    pub detail: String,
    /// The bundle version a fetch came from.
    pub bundle: Option<String>,
}

impl State {
    /// Builds the state from its opened parts; `reloaded` are the events read back from the
    /// log, oldest first.
    pub fn new(
        config: Config,
        bundle: Bundle,
        leases: LeaseStore,
        ca: ClusterCa,
        enroll_tokens: TokenStore,
        event_log: EventLog,
        reloaded: Vec<BootEvent>,
    ) -> Self {
        let listeners = ListenerSlots::new(&config);
        let mut view = RackView::default();
        for e in &reloaded {
            view.apply(e);
        }
        let next_seq = reloaded.iter().map(|e| e.seq).max().unwrap_or(0) + 1;
        let skip = reloaded.len().saturating_sub(EVENT_CAPACITY);
        let ring: VecDeque<BootEvent> = reloaded.into_iter().skip(skip).collect();
        let booted = view.booted();
        Self {
            config,
            bundles: Bundles::new(bundle),
            booted: Mutex::new(booted),
            leases: Mutex::new(leases),
            seen: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            ca,
            enroll_tokens: Mutex::new(enroll_tokens),
            revocations: Revocations::default(),
            events: Mutex::new(Recorded {
                ring,
                view,
                next_seq,
                version: 0,
            }),
            event_log,
            stream: tokio::sync::broadcast::channel(STREAM_BACKLOG).0,
            stream_stats: StreamStats::default(),
            metrics: Metrics::default(),
            listeners,
        }
    }

    /// Runs `f` on the enrollment token store on a blocking thread (its writes fsync).
    pub async fn with_enroll_tokens<R: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&mut TokenStore) -> R + Send + 'static,
    ) -> Result<R, crate::ServerError> {
        let state = self.clone();
        let path = self.config.state_dir.join("enroll");
        tokio::task::spawn_blocking(move || f(&mut lock(&state.enroll_tokens)))
            .await
            .map_err(|e| crate::ServerError::State {
                path,
                message: format!("token store task failed: {e}"),
            })
    }

    /// Records an event: a sequence number, the log on disk, the ring, the view, the live
    /// stream (and a log line).
    pub fn event(&self, e: NewEvent) -> BootEvent {
        let mut rec = lock(&self.events);
        let at_ms = now_ms();
        let ev = BootEvent {
            seq: rec.next_seq,
            at_ms,
            at: rfc3339(at_ms),
            node: e.node,
            mac: e.mac,
            ip: e.ip.map(|i| i.to_string()),
            source: if e.source.is_empty() {
                "server".into()
            } else {
                e.source.into()
            },
            phase: e.phase,
            status: e.status,
            detail: e.detail,
            bundle: e.bundle,
        };
        rec.next_seq += 1;
        self.event_log.append(&ev);
        if rec.ring.len() >= EVENT_CAPACITY {
            rec.ring.pop_front();
        }
        rec.ring.push_back(ev.clone());
        rec.view.apply(&ev);
        rec.view.count(&ev);
        rec.version += 1;
        if self.stream.receiver_count() > 0 {
            self.tell_event(&rec, &ev);
        }
        drop(rec);
        tracing::info!(
            seq = ev.seq,
            node = ev.node.as_deref().unwrap_or("-"),
            mac = ev.mac.as_deref().unwrap_or("-"),
            phase = %ev.phase,
            status = %ev.status,
            detail = %ev.detail,
            "boot event"
        );
        ev
    }

    /// Sends the stream what `ev` changed (under the events lock, so in version order).
    fn tell_event(&self, rec: &Recorded, ev: &BootEvent) {
        let send = |kind, id, data: Option<String>| {
            if let Some(data) = data {
                let _ = self.stream.send(Arc::new(StreamItem {
                    version: rec.version,
                    kind,
                    id,
                    data,
                }));
            }
        };
        send("boot", Some(ev.seq), serde_json::to_string(ev).ok());
        match (&ev.node, &ev.mac) {
            (Some(n), _) => send("node", None, self.node_row_json(&rec.view, n)),
            (None, Some(m)) => send(
                "unknown",
                None,
                rec.view
                    .unknown_mac(m)
                    .and_then(|u| serde_json::to_string(&u).ok()),
            ),
            _ => {}
        }
    }

    fn node_row_json(&self, view: &RackView, name: &str) -> Option<String> {
        let bundle = self.bundles.current();
        let spec = bundle.contract.node(name).ok()?;
        let seen = self.seen_ip(&spec.mac.to_string()).map(|i| i.to_string());
        serde_json::to_string(&view.node_row(spec, seen)).ok()
    }

    /// Notes a health poll of `node`; the stream is told when an answer changed.
    pub fn note_health(&self, node: &str, h: NodeHealth) {
        let mut rec = lock(&self.events);
        if rec.view.set_health(node, h) {
            rec.version += 1;
            if self.stream.receiver_count() > 0 {
                let _ = self.node_row_json(&rec.view, node).map(|data| {
                    self.stream.send(Arc::new(StreamItem {
                        version: rec.version,
                        kind: "node",
                        id: None,
                        data,
                    }))
                });
            }
        }
    }

    /// A receiver of the live stream; take it before [`State::with_view`]'s snapshot, and skip
    /// items whose version the snapshot holds.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<StreamItem>> {
        self.stream.subscribe()
    }

    /// Runs `f` on the view, its version and the last sequence number given out.
    pub fn with_view<R>(&self, f: impl FnOnce(&RackView, u64, u64) -> R) -> R {
        let rec = lock(&self.events);
        f(&rec.view, rec.version, rec.next_seq - 1)
    }

    /// Waits until every event recorded so far is fsynced (a phase report's `202` waits).
    pub async fn sync_events(&self) -> bool {
        self.event_log.sync().await
    }

    /// Describes the events, their log, the live stream and the rack view for `/metrics`.
    pub fn describe_events(&self, x: &mut Exposition) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let bundle = self.bundles.current();
        let rec = lock(&self.events);
        let view = &rec.view;
        let f = x.counter("pxe_events_total", "Boot events recorded since start, by phase (a node's own phase names outside the known ones: other) and status.");
        for ((phase, status), n) in &view.counts {
            f.row(&[("phase", phase), ("status", status)], *n);
        }
        let mut at_stage: Vec<(&str, u64)> = crate::rack_view::STAGES
            .iter()
            .map(|s| (s.name, 0))
            .chain([("none", 0)])
            .collect();
        let mut ready = Vec::new();
        for n in &bundle.contract.nodes {
            let t = view.node(&n.name);
            let stage = t.and_then(|t| t.stage()).unwrap_or("none");
            if let Some(c) = at_stage.iter_mut().find(|(s, _)| *s == stage) {
                c.1 += 1;
            }
            if let Some(t) = t {
                if let Some(r) = t.ready_at_ms {
                    ready.push((n.name.clone(), r.saturating_sub(t.boot_started_ms)));
                }
            }
        }
        let f = x.gauge(
            "pxe_nodes_at_stage",
            "Contract nodes by the stage their current boot has reached (none: no event yet).",
        );
        for (stage, n) in at_stage {
            f.row(&[("stage", stage)], n);
        }
        let f = x.gauge("pxe_node_boot_seconds", "Seconds from the first event of a node's current boot to its cluster-ready report (nodes that got there).");
        for (node, ms) in ready {
            f.row(&[("node", &node)], ms as f64 / 1000.0);
        }
        let mut up = Vec::new();
        let mut leaders = Vec::new();
        for n in &bundle.contract.nodes {
            if let Some(h) = view.node(&n.name).and_then(|t| t.health.as_ref()) {
                for s in &h.services {
                    up.push((
                        n.name.clone(),
                        s.service.clone(),
                        u64::from(s.result == "ok"),
                    ));
                    if s.role.is_some() {
                        leaders.push((
                            n.name.clone(),
                            s.service.clone(),
                            u64::from(s.role.as_deref() == Some("leader")),
                        ));
                    }
                }
            }
        }
        let f = x.gauge(
            "pxe_node_service_up",
            "1 when pxe-server's last health poll found the node's service healthy, else 0.",
        );
        for (node, service, v) in &up {
            f.row(&[("node", node), ("service", service)], *v);
        }
        let f = x.gauge(
            "pxe_node_raft_leader",
            "1 when the node's last health poll reported it the Raft leader of the store, else 0.",
        );
        for (node, store, v) in &leaders {
            f.row(&[("node", node), ("store", store)], *v);
        }
        let f = x.counter(
            "pxe_node_health_polls_total",
            "Health polls of the nodes' services by result (ok, unhealthy, unreachable).",
        );
        for ((service, result), n) in &view.polls {
            f.row(&[("service", service), ("result", result)], *n);
        }
        x.gauge(
            "pxe_unknown_macs",
            "MACs not in the contract seen (the most recent 256).",
        )
        .value(view.unknown().len());
        drop(rec);
        let l = &self.event_log.stats;
        for (name, counter, help, v) in [
            (
                "pxe_event_log_bytes",
                false,
                "Bytes in the event log's files.",
                g(&l.bytes),
            ),
            (
                "pxe_event_log_files",
                false,
                "Files of the event log.",
                g(&l.files),
            ),
            (
                "pxe_event_log_written_total",
                true,
                "Events written to the log since start.",
                g(&l.written),
            ),
            (
                "pxe_event_log_fsyncs_total",
                true,
                "fsyncs of the event log since start.",
                g(&l.fsyncs),
            ),
            (
                "pxe_event_log_rotations_total",
                true,
                "Rotations of the event log since start.",
                g(&l.rotations),
            ),
            (
                "pxe_event_log_errors_total",
                true,
                "Failed writes, fsyncs and rotations of the event log.",
                g(&l.errors),
            ),
            (
                "pxe_event_log_reloaded",
                false,
                "Events read back from the log at start.",
                g(&l.reloaded),
            ),
            (
                "pxe_event_log_skipped_lines",
                false,
                "Lines of the log skipped at start (a torn last line, unreadable lines).",
                g(&l.skipped),
            ),
            (
                "pxe_event_stream_subscribers",
                false,
                "Live event streams open now (rack pages and other subscribers).",
                g(&self.stream_stats.subscribers),
            ),
            (
                "pxe_event_stream_lagged_total",
                true,
                "Times a subscriber fell behind and was sent a new snapshot.",
                g(&self.stream_stats.lagged),
            ),
        ] {
            if counter {
                x.counter(name, help).value(v);
            } else {
                x.gauge(name, help).value(v);
            }
        }
        x.counter(
            "pxe_event_stream_subscriptions_total",
            "Live event stream subscriptions by result (refused: over the cap).",
        )
        .row(&[("result", "ok")], g(&self.stream_stats.opened))
        .row(&[("result", "refused")], g(&self.stream_stats.refused));
    }

    /// Events with `seq > since`.
    pub fn events_since(&self, since: u64) -> Vec<BootEvent> {
        lock(&self.events)
            .ring
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect()
    }

    /// The last event per node name (and per unknown MAC under key `mac:…`).
    pub fn last_events(&self) -> HashMap<String, BootEvent> {
        let rec = lock(&self.events);
        let mut out = HashMap::new();
        let bundle = self.bundles.current();
        for n in &bundle.contract.nodes {
            if let Some(e) = rec.view.node(&n.name).and_then(|t| t.last.clone()) {
                out.insert(n.name.clone(), e);
            }
        }
        for u in rec.view.unknown() {
            out.insert(format!("mac:{}", u.mac), u.last);
        }
        out
    }

    /// Notes the address a MAC was seen at: the address our DHCP acknowledged (full mode), or
    /// a verified requester of the node's script (proxy mode). Shown in status and used to
    /// name the node in events; access decisions never rest on it ([`crate::boot_access`]).
    pub fn saw(&self, mac: &str, ip: Ipv4Addr) {
        if !ip.is_unspecified() {
            lock(&self.seen).insert(mac.to_string(), ip);
        }
    }

    /// The address a MAC was last seen at.
    pub fn seen_ip(&self, mac: &str) -> Option<Ipv4Addr> {
        lock(&self.seen).get(mac).copied()
    }

    /// The MAC last seen at this peer's address, if any.
    pub fn mac_for_ip(&self, peer: SocketAddr) -> Option<String> {
        let ip = peer_v4(peer)?;
        lock(&self.seen)
            .iter()
            .find(|(_, a)| **a == ip)
            .map(|(m, _)| m.clone())
    }

    /// The contract node of a MAC string (in the current bundle's contract).
    pub fn node_of_mac(&self, mac: &str) -> Option<plasmacloud_contract::NodeSpec> {
        let m: plasmacloud_contract::MacAddr = mac.parse().ok()?;
        self.bundles.current().contract.node_by_mac(m).cloned()
    }

    /// Notes that `node` fetched its kernel from bundle `version`.
    pub fn note_boot(&self, node: &str, version: &str) {
        lock(&self.booted).insert(
            node.to_string(),
            NodeBoot {
                version: version.to_string(),
                at: rfc3339(now_ms()),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
    }
}
