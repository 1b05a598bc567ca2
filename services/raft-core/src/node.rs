//! Starting and running one node: data directory, listeners, Raft, TLS, sd-notify.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use openraft::{Config, ServerState, SnapshotPolicy};
use plasmacloud_pki::{Peer, TlsFiles, TlsListener};

use crate::access::{Access, Port};
use crate::cluster_view::role_of;
use crate::config::HOW_TO_GET_A_CERTIFICATE;
use crate::datadir::{open_data_dir, write_marker, DataDir};
use crate::db::open_db;
use crate::error::Error;
use crate::log_store::LogStore;
use crate::network::{raft_router, HttpNetwork, Identity, RaftRpcState};
use crate::state_machine::{StateMachine, StateReader};
use crate::types::{NodeId, NodeInfo, Raft};

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `chainfire` or `flaredb` (also the data directory's marker).
    pub service: &'static str,
    /// `--id`; optional once `<data-dir>/node_id` exists.
    pub id: Option<NodeId>,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--api-addr` (bound and advertised).
    pub api_addr: SocketAddr,
    /// `--raft-addr` (bound and advertised).
    pub raft_addr: SocketAddr,
    /// This node's certificate, key and the cluster CA: mutual TLS on both ports. Required
    /// unless `dev_plaintext`.
    pub tls: Option<TlsFiles>,
    /// `--dev-plaintext`: no TLS at all, allowed only when both addresses are loopback.
    pub dev_plaintext: bool,
    /// Build a snapshot (and purge the log behind it) every this many entries.
    pub snapshot_logs: u64,
    /// Raft heartbeat interval, ms; see [`ELECTION_MIN_HEARTBEATS`] for the election timing
    /// that follows from it.
    pub heartbeat_ms: u64,
    /// Deadline of one client request inside the server (writes, reads, forwarding).
    pub request_timeout: Duration,
    /// How long a leader stopping on SIGTERM may spend handing its leadership over
    /// ([`crate::handover`]); zero: it stops without.
    pub shutdown_handover: Duration,
    /// FlareDB's time-series retention (`None`: keep every point); see [`crate::retention`].
    pub ts_retention: Option<Duration>,
}

/// Default deadline of the handover at shutdown.
pub const DEFAULT_SHUTDOWN_HANDOVER: Duration = Duration::from_secs(5);

/// An election timeout is at least this many heartbeats.
///
/// How long a cluster goes without a leader after its leader fails follows from it: openraft
/// 0.9 lets a follower campaign only once the leader's lease (`election_timeout_max`) *and* its
/// own election timeout (random in min..max) have passed since the last append, so with a
/// 100 ms heartbeat (10–20 heartbeats) a follower campaigns 3–4 s after the last append. That is
/// slower than it could be (5–10 heartbeats fail over in about 2.5 s), but a node has to stall
/// for 3 s before its peers elect another leader, and the nodes this runs on include emulated
/// CPUs on a busy host (the VM rack under TCG), where 1.5 s stalls happen and a shorter timeout
/// turned them into elections. A leader that stops on purpose hands over instead
/// ([`crate::handover`]), so planned restarts do not wait for this timeout.
pub const ELECTION_MIN_HEARTBEATS: u64 = 10;
/// An election timeout is at most this many heartbeats (also the leader's lease).
pub const ELECTION_MAX_HEARTBEATS: u64 = 20;

/// Default snapshot interval (entries).
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 10_000;
/// Default heartbeat (ms).
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;

impl NodeConfig {
    /// A configuration with defaults for everything but the four required settings.
    pub fn new(
        service: &'static str,
        id: Option<NodeId>,
        data_dir: PathBuf,
        api_addr: SocketAddr,
        raft_addr: SocketAddr,
    ) -> Self {
        Self {
            service,
            id,
            data_dir,
            api_addr,
            raft_addr,
            tls: None,
            dev_plaintext: false,
            snapshot_logs: DEFAULT_SNAPSHOT_LOGS,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            request_timeout: Duration::from_secs(10),
            shutdown_handover: DEFAULT_SHUTDOWN_HANDOVER,
            ts_retention: None,
        }
    }

    /// How long a leader may go without hearing from a quorum, or a follower without hearing
    /// from its leader, before it stops taking requests for that leader: the leader's lease
    /// (an election timeout at its longest; see `api::forward`), after which followers may
    /// campaign any moment.
    pub fn silence_limit(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms * ELECTION_MAX_HEARTBEATS)
    }

    /// Checks values that do not need I/O.
    pub fn validate(&self) -> Result<(), Error> {
        if self.api_addr == self.raft_addr {
            return Err(Error::Config(format!(
                "--api-addr and --raft-addr are both {}; give them different ports",
                self.api_addr
            )));
        }
        for (flag, a) in [
            ("--api-addr", self.api_addr),
            ("--raft-addr", self.raft_addr),
        ] {
            if a.ip().is_unspecified() {
                return Err(Error::Config(format!(
                    "{flag} {a}: peers are told this address, so it must be a concrete IP, not {}",
                    a.ip()
                )));
            }
            if a.port() == 0 {
                return Err(Error::Config(format!(
                    "{flag} {a}: port 0 is not supported"
                )));
            }
        }
        if self.snapshot_logs < 10 {
            return Err(Error::Config("--snapshot-logs must be at least 10".into()));
        }
        if !(10..=10_000).contains(&self.heartbeat_ms) {
            return Err(Error::Config(
                "--heartbeat-ms must be between 10 and 10000".into(),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(Error::Config("--data-dir is empty".into()));
        }
        self.validate_transport()
    }

    /// TLS is mandatory; `--dev-plaintext` is the loopback-only way out.
    fn validate_transport(&self) -> Result<(), Error> {
        match (&self.tls, self.dev_plaintext) {
            (Some(_), false) => Ok(()),
            (None, false) => Err(Error::Config(format!(
                "TLS is mandatory: set tls_cert, tls_key and tls_ca (--tls-cert/--tls-key/--tls-ca, or those keys in --config) to this node's certificate, its key and the cluster CA; {HOW_TO_GET_A_CERTIFICATE}"
            ))),
            (Some(_), true) => Err(Error::Config(
                "--dev-plaintext turns TLS off, but tls_cert/tls_key/tls_ca are set too; give one or the other".into(),
            )),
            (None, true) => {
                for (flag, a) in [
                    ("--api-addr", self.api_addr),
                    ("--raft-addr", self.raft_addr),
                ] {
                    if !a.ip().is_loopback() {
                        return Err(Error::Config(format!(
                            "--dev-plaintext is for development on loopback only, and {flag} {a} is not a loopback address; give the node its certificate (tls_cert, tls_key, tls_ca) instead"
                        )));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Everything the API handlers share.
pub struct NodeState {
    /// This node's id.
    pub id: NodeId,
    /// This node's data-directory incarnation.
    pub incarnation: String,
    /// The configuration.
    pub cfg: NodeConfig,
    /// The Raft handle.
    pub raft: Raft,
    /// Reads of the applied state.
    pub reader: StateReader,
    /// HTTP client for peers (forwarding, identity), presenting this node's certificate.
    pub http: reqwest::Client,
    /// `https` (`http` only under `--dev-plaintext`).
    pub scheme: &'static str,
    /// TLS material, revocation set and the guards of both ports.
    pub access: Access,
    /// Membership changes run one at a time.
    pub membership_lock: tokio::sync::Mutex<()>,
    /// FlareDB's link to Chainfire: 0 = not applicable, 1 = connected, 2 = disconnected.
    pub chainfire_link: AtomicU8,
    /// Client writes go through it (batched into single entries under load).
    pub proposer: crate::proposer::Proposer,
    /// When this node last heard from a leader (its Raft port notes every append).
    pub leader_contact: Arc<crate::network::LeaderContact>,
    /// What `/metrics` serves ([`crate::metrics`]).
    pub metrics: crate::metrics::SharedMetrics,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("id", &self.id)
            .field("service", &self.cfg.service)
            .finish()
    }
}

impl NodeState {
    /// This node as a membership record.
    pub fn self_info(&self) -> NodeInfo {
        NodeInfo {
            raft_addr: self.cfg.raft_addr.to_string(),
            api_addr: self.cfg.api_addr.to_string(),
            incarnation: self.incarnation.clone(),
        }
    }

    /// Sets FlareDB's Chainfire link state (reported in `/health`).
    pub fn set_chainfire_connected(&self, connected: bool) {
        self.chainfire_link
            .store(if connected { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// `Some("connected" | "disconnected")` once a Chainfire link is configured.
    pub fn chainfire_status(&self) -> Option<&'static str> {
        match self.chainfire_link.load(Ordering::Relaxed) {
            1 => Some("connected"),
            2 => Some("disconnected"),
            _ => None,
        }
    }
}

/// A started node whose listeners are bound but not yet serving.
pub struct StoreNode {
    state: Arc<NodeState>,
    api_listener: std::net::TcpListener,
    raft_listener: std::net::TcpListener,
}

fn bind(which: &'static str, addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let l = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind {
        which,
        addr,
        source,
    })?;
    l.set_nonblocking(true).map_err(|source| Error::Bind {
        which,
        addr,
        source,
    })?;
    Ok(l)
}

impl StoreNode {
    /// Validates the configuration, binds both ports, opens (or creates) the data directory and
    /// starts Raft. Nothing is created when any step before opening the directory fails.
    pub async fn start(cfg: NodeConfig) -> Result<StoreNode, Error> {
        cfg.validate()?;
        let access = Access::load(&cfg)?;
        // Both server configurations are built here, so a bad key fails before anything binds.
        access.server_config(Port::Api)?;
        access.server_config(Port::Raft)?;
        let http = access.peer_client()?;
        // A full disk would stop Raft at once: wait for room with the ports closed.
        let dir = cfg.data_dir.clone();
        tokio::task::spawn_blocking(move || crate::space::wait_for_space(&dir))
            .await
            .map_err(|e| Error::Raft(format!("checking the data disk's free space: {e}")))?;
        let api_listener = bind("api", cfg.api_addr)?;
        let raft_listener = bind("raft", cfg.raft_addr)?;

        let storage_metrics = crate::metrics::StorageMetrics::default();
        let log_metrics = storage_metrics.clone();
        let (path, service, id) = (cfg.data_dir.clone(), cfg.service, cfg.id);
        let (dir, sm, log) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let dir: DataDir = open_data_dir(&path, service, id)?;
            let db = loop {
                match open_db(&dir.db_path(), dir.fresh) {
                    // Filled up since the check above: wait again (a full disk is not damage).
                    Err(Error::DataDir { problem, .. })
                        if crate::space::is_out_of_space(&problem) =>
                    {
                        tracing::warn!("opening the database: {problem}");
                        std::thread::sleep(crate::space::RETRY_EVERY);
                        crate::space::wait_for_space(&dir.path);
                    }
                    other => break other?,
                }
            };
            if dir.fresh {
                write_marker(&dir, service)?;
            }
            let log = LogStore::counting_into(db.clone(), dir.node_id, log_metrics)
                .map_err(|e| Error::Raft(format!("reading the log: {e}")))?;
            // Finishes an install a power cut interrupted before Raft sees the state.
            let sm = StateMachine::open(
                db.clone(),
                dir.path.join(crate::snapshot_store::SNAPSHOT_DIR),
            )
            .map_err(|e| Error::Raft(format!("opening the snapshots: {e}")))?;
            Ok((dir, sm, log))
        })
        .await
        .map_err(|e| Error::Raft(format!("opening the data directory: {e}")))??;
        tracing::info!(
            node_id = dir.node_id,
            incarnation = %dir.incarnation,
            data_dir = %dir.path.display(),
            created = dir.fresh,
            "data directory ready"
        );

        let hb = cfg.heartbeat_ms;
        let raft_cfg = Config {
            cluster_name: cfg.service.to_string(),
            heartbeat_interval: hb,
            election_timeout_min: hb * ELECTION_MIN_HEARTBEATS,
            election_timeout_max: hb * ELECTION_MAX_HEARTBEATS,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
            max_in_snapshot_log_to_keep: cfg.snapshot_logs / 2,
            purge_batch_size: (cfg.snapshot_logs / 4).clamp(1, 256),
            snapshot_max_chunk_size: 1024 * 1024,
            max_payload_entries: 512,
            ..Default::default()
        };
        let raft_cfg = Arc::new(
            raft_cfg
                .validate()
                .map_err(|e| Error::Config(format!("raft settings: {e}")))?,
        );
        let scheme = access.scheme();
        // The leader syncs its log beside replication (crate::durability): what follows from a
        // commit waits for that sync.
        let network = HttpNetwork::new(http.clone(), scheme).announcing_only_durable(log.durable());
        let sm = sm
            .applying_only_durable(log.durable())
            .counting_into(storage_metrics.clone());
        let metrics = Arc::new(crate::metrics::StoreMetrics::new(
            cfg.service,
            storage_metrics,
        ));
        let reader = sm.reader();
        let raft = Raft::new(dir.node_id, raft_cfg, network, log, sm)
            .await
            .map_err(|e| Error::Raft(format!("starting raft: {e}")))?;
        let proposer = crate::proposer::Proposer::start(raft.clone());
        let state = Arc::new(NodeState {
            proposer,
            id: dir.node_id,
            incarnation: dir.incarnation,
            cfg,
            raft,
            reader,
            http,
            scheme,
            access,
            membership_lock: tokio::sync::Mutex::new(()),
            chainfire_link: AtomicU8::new(0),
            leader_contact: Arc::default(),
            metrics,
        });
        Ok(StoreNode {
            state,
            api_listener,
            raft_listener,
        })
    }

    /// The shared state (for building the API router).
    pub fn state(&self) -> Arc<NodeState> {
        self.state.clone()
    }

    /// Serves `api` on the API port and Raft on the Raft port until SIGTERM or SIGINT, then
    /// shuts Raft down. Logs `listening …` and sends `READY=1` once both ports serve. `api`
    /// carries its own guards (see [`crate::api::app`]); the Raft routes are guarded here.
    pub async fn serve(self, api: Router) -> Result<(), Error> {
        let st = self.state.clone();
        if !st.access.is_mtls() {
            tracing::warn!(
                "--dev-plaintext: NO TLS and NO client authentication on {} and {}; anyone on this host can read, write and join. Development only",
                st.cfg.api_addr,
                st.cfg.raft_addr
            );
        }
        let raft_routes = raft_router(RaftRpcState {
            raft: st.raft.clone(),
            identity: Arc::new(Identity {
                service: st.cfg.service.to_string(),
                node_id: st.id,
                incarnation: st.incarnation.clone(),
                initialized: false,
            }),
            contact: st.leader_contact.clone(),
        });
        let raft_app = st.access.guard(Port::Raft, raft_routes);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut api_task = spawn_server(
            "api",
            self.api_listener,
            st.access.server_config(Port::Api)?,
            api,
            stop_rx.clone(),
        )?;
        let mut raft_task = spawn_server(
            "raft",
            self.raft_listener,
            st.access.server_config(Port::Raft)?,
            raft_app,
            stop_rx,
        )?;
        tracing::info!(
            node_id = st.id,
            api = %st.cfg.api_addr,
            raft = %st.cfg.raft_addr,
            mtls = st.access.is_mtls(),
            "{} listening on api {} raft {}",
            st.cfg.service,
            st.cfg.api_addr,
            st.cfg.raft_addr
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        tokio::spawn(watch_role(st.clone()));
        tokio::spawn(nudge_replication(st.raft.clone()));
        tokio::spawn(keep_peer_connections_warm(st.clone()));

        let outcome = tokio::select! {
            _ = shutdown_signal() => Ok(()),
            e = raft_stopped(st.raft.clone()) => Err(e),
        };
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        if outcome.is_ok() {
            // Both ports still serve: writes queue meanwhile and then go to the new leader.
            hand_over_before_stopping(&st).await;
        }
        let _ = stop_tx.send(true);
        match &outcome {
            Ok(()) => {
                tracing::info!("shutting down");
                let _ = tokio::time::timeout(Duration::from_secs(5), st.raft.shutdown()).await;
            }
            Err(e) => {
                // Requests under way got their answers (an unknown outcome for writes Raft
                // had taken); give the servers a moment to send them.
                tracing::error!("{e}");
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let _ = (&mut api_task).await;
                    let _ = (&mut raft_task).await;
                })
                .await;
            }
        }
        api_task.abort();
        raft_task.abort();
        outcome
    }
}

/// A leader that stops hands its leadership over first (bounded by `shutdown_handover`; see
/// [`crate::handover`]), so writes stall for an election round trip, not an election timeout.
/// Anything else — not the leader, the only voter, no voter caught up in time — stops as it is.
async fn hand_over_before_stopping(st: &NodeState) {
    let budget = st.cfg.shutdown_handover;
    if budget.is_zero() || st.raft.metrics().borrow().state != ServerState::Leader {
        return;
    }
    let deadline = std::time::Instant::now() + budget;
    let _ = sd_notify::notify(
        false,
        &[sd_notify::NotifyState::Status(
            "handing leadership over before stopping",
        )],
    );
    let Ok(_guard) = tokio::time::timeout(budget, st.membership_lock.lock()).await else {
        tracing::warn!("a membership change holds the lock; stopping without handing over");
        return;
    };
    match crate::handover::hand_over(st, deadline).await {
        Ok(to) => tracing::info!(to, "stopping: leadership handed to node {to}"),
        Err(e) => tracing::warn!("stopping without handing leadership over: {e}"),
    }
}

/// Resolves once Raft has stopped by itself (a storage error: openraft's core quit, and it
/// cannot be restarted in this process), with the error the process exits with. The service
/// manager starts the node again (`Restart=on-failure`), from what is on disk; see
/// [`crate::space`] for a disk that is still full.
async fn raft_stopped(raft: Raft) -> Error {
    // openraft's core holds the metrics' senders: they close when it quits. (The server
    // metrics change with the role only, not with every write.)
    let mut rx = raft.server_metrics();
    while rx.changed().await.is_ok() {}
    let why = match &raft.metrics().borrow().running_state {
        Err(e) => e.to_string(),
        Ok(()) => "its core task ended".to_string(),
    };
    Error::Raft(format!(
        "raft stopped: {why}; exiting so that the service manager starts this node again from its data"
    ))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// Logs role changes and reports them as sd-notify `STATUS=` lines. It watches the server
/// metrics, which change with the role, the leader or the membership only (the full metrics
/// change with every write, and waking for each cost the write path a thread wake-up).
async fn watch_role(st: Arc<NodeState>) {
    let mut rx = st.raft.server_metrics();
    let mut last: Option<(ServerState, Option<NodeId>, usize)> = None;
    let mut last_leader = None;
    loop {
        let now = {
            let m = rx.borrow_and_update();
            (
                m.state,
                m.current_leader,
                m.membership_config.membership().nodes().count(),
            )
        };
        st.metrics.leader_seen(&mut last_leader, now.1);
        if last != Some(now) {
            let (state, leader, size) = now;
            let role = role_of(state).as_str();
            let leader_s = leader
                .map(|l| l.to_string())
                .unwrap_or_else(|| "none".into());
            tracing::info!(role, leader = %leader_s, cluster_size = size, "raft role");
            let _ = sd_notify::notify(
                false,
                &[sd_notify::NotifyState::Status(&format!(
                    "raft {role}, leader {leader_s}, cluster size {size}"
                ))],
            );
            last = Some(now);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps replication streaming while a leader has entries its followers lack.
///
/// openraft 0.9 sends a follower its next batch of entries only when a new client write
/// arrives or the heartbeat ticks, not when the previous batch is acknowledged. Under load the
/// writers are the very clients waiting for that acknowledgement, so entries that arrived
/// during one round trip would wait for the next write (or the 100 ms heartbeat) before being
/// sent. Each time a follower's matched index advances while it still lags the leader's log,
/// this asks openraft for a heartbeat round, which sends each idle stream everything it lacks
/// (a stream with a request in flight is left alone).
async fn nudge_replication(raft: Raft) {
    let mut rx = raft.data_metrics();
    let mut matched: std::collections::BTreeMap<NodeId, u64> = Default::default();
    loop {
        let lagging_advanced = {
            let m = rx.borrow_and_update();
            let mut hit = false;
            if let (Some(repl), Some(last)) = (&m.replication, m.last_log.map(|l| l.index)) {
                for (id, log) in repl {
                    let at = log.map_or(0, |l| l.index);
                    let before = matched.insert(*id, at);
                    if before.is_some_and(|b| at > b) && at < last {
                        hit = true;
                    }
                }
            } else {
                matched.clear();
            }
            hit
        };
        if lagging_advanced && raft.trigger().heartbeat().await.is_err() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// How often a node that does not lead touches every other member's Raft port.
pub const PEER_WARM_EVERY: Duration = Duration::from_secs(2);

/// Keeps a live, authenticated connection from this node to every other member's Raft port
/// while it does not lead (a leader's appends keep its own connections live).
///
/// Followers never talk to each other, so when the leader fails, the first vote request a
/// candidate sends to another follower has to open a TCP connection and run a full mutual-TLS
/// handshake first, and openraft gives the whole request only `election_timeout_min` (ten
/// heartbeats, 1 s by default). A busy host's emulated CPUs (the VM rack under TCG beside a
/// build) can take longer than that for the handshake; the request is then cancelled with its
/// half-made connection, and the next election starts from scratch again: two surviving voters
/// went a minute without a leader that way. With a `GET /raft/identity` every
/// [`PEER_WARM_EVERY`] (well inside the client's [`crate::bounds::CLIENT_POOL_IDLE`] and the
/// server's idle timeout) the pool holds a connection to each peer, and a vote costs one round
/// trip.
async fn keep_peer_connections_warm(st: Arc<NodeState>) {
    let mut tick = tokio::time::interval(PEER_WARM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One touch in flight per peer. It is never cut short before the server's own handshake
    // deadline: cancelling a slow handshake is what kept the connection from ever existing.
    let mut in_flight: std::collections::BTreeMap<NodeId, tokio::task::JoinHandle<()>> =
        Default::default();
    loop {
        tick.tick().await;
        let m = st.raft.metrics().borrow().clone();
        if m.state == ServerState::Shutdown {
            return;
        }
        if m.state == ServerState::Leader {
            continue;
        }
        let membership = m.membership_config.membership();
        in_flight.retain(|id, h| !h.is_finished() && membership.get_node(id).is_some());
        for (id, node) in membership.nodes() {
            if *id == st.id || in_flight.contains_key(id) {
                continue;
            }
            let (id, raft_addr, st) = (*id, node.raft_addr.clone(), st.clone());
            let touch = tokio::spawn(async move {
                if let Err(e) = crate::network::fetch_identity(
                    &st.http,
                    st.scheme,
                    &raft_addr,
                    plasmacloud_pki::listener::HANDSHAKE_TIMEOUT,
                )
                .await
                {
                    tracing::debug!(peer = id, "keeping the connection to {raft_addr} warm: {e}");
                }
            });
            in_flight.insert(id, touch);
        }
    }
}

fn spawn_server(
    which: &'static str,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Raft(e.to_string()))?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Bind {
        which,
        addr,
        source,
    })?;
    let task = match tls {
        None => tokio::spawn(crate::bounds::serve_port(
            which,
            axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            |addr| Peer {
                addr: *addr,
                cert: None,
            },
            app,
            stop,
        )),
        Some(cfg) => {
            let l = TlsListener::spawn(which, listener, cfg).map_err(|source| Error::Bind {
                which,
                addr,
                source,
            })?;
            tokio::spawn(crate::bounds::serve_port(which, l, Peer::clone, app, stop))
        }
    };
    Ok(task)
}
