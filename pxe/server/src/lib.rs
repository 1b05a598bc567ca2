//! `pxe-server`: the provisioning server that network-boots a rack from the cluster contract
//! and an image bundle, and the cluster CA that enrolls its nodes.
//!
//! Boot path: firmware → DHCP ([`dhcp`], full or proxy mode) → TFTP ([`tftp`]) of the iPXE
//! build for the client's architecture → iPXE asks DHCP again (user class `iPXE`) and gets the
//! HTTP URL of its node's script → HTTP ([`http`]): script, kernel, base initrd, the node's
//! overlay (public), and this boot's enrollment initrd ([`enroll_initrd`]: a single-use token
//! and the CA) through a per-boot URL. The node then makes its key and trades the token and a
//! CSR for its certificate at the enrollment listener ([`enroll`], HTTPS). In full mode an
//! IPv6 RA responder ([`ra`]) ends iPXE's wait for IPv6. Nodes report first-boot phases to the
//! management listener ([`mgmt`], HTTPS), which also serves status, Prometheus metrics and a
//! live rack page ([`rack_page`] over [`event_stream`]) to operators; every event is kept on
//! disk ([`events`]) and read back on start.
//!
//! Wire formats live in the `pxe-protocol` crate (no sockets); this crate is the listeners,
//! the lease store ([`leases`]), the boot-network rule ([`boot_access`] over [`neighbours`]),
//! the CA and its logs ([`cluster_ca`], [`cert_log`]), the token store ([`enroll_tokens`]),
//! shared state ([`state`]), path confinement ([`paths`]) and the `pki` subcommands
//! ([`pki_commands`]). The binary is a thin `main.rs`.
//!
//! Layers, bottom up (a module imports only modules below it, never one that imports it back):
//! [`limits`] (connection and transfer caps, timeouts, rate limits: it imports nothing of the
//! crate); [`config`] over [`bundle`] (a loaded, checked bundle and the bundles served),
//! [`cluster_ca`] and [`leases`]; [`neighbours`], [`enroll_tokens`], [`cert_log`],
//! [`enroll_initrd`], [`events`] (the event log on disk) and [`rack_view`] (the rack built
//! from events, no I/O); [`state`] and [`paths`]; [`boot_access`]; [`node_health`] (the
//! nodes' `/health`, polled); [`reload`] (a new bundle on
//! SIGHUP or a manifest change); [`http_serve`] (hyper with the bounds, and the TLS
//! listeners' accept loop); [`event_stream`] (the rack as JSON and server-sent events) and
//! [`rack_page`] (the page's embedded files); the listeners [`dhcp`], [`ra`], [`mgmt`], [`enroll`],
//! [`http_conn`] (the boot plane's connection loop), then [`http`] (its router) and [`tftp`]
//! (which binds its socket the way [`dhcp`] does); [`pki_commands`] beside them.
//!
//! Security (pxe/README.md says it for operators): nothing the boot plane serves is worth
//! stealing but a boot's enrollment token, which goes only to the node's leased address whose
//! neighbour entry shows the node's MAC, is single-use, and names whoever spent it first. The
//! state directory (CA key, token log) is what must be protected.

pub mod boot_access;
pub mod boot_plan;
pub mod bundle;
pub mod cert_log;
pub mod cluster_ca;
pub mod config;
pub mod dhcp;
pub mod enroll;
pub mod enroll_initrd;
pub mod enroll_tokens;
pub mod event_stream;
pub mod events;
pub mod exposition;
pub mod http;
pub mod http_conn;
pub mod http_serve;
pub mod leases;
pub mod limits;
pub mod mgmt;
pub mod neighbours;
pub mod node_health;
pub mod paths;
pub mod pki_commands;
pub mod ra;
pub mod rack_page;
pub mod rack_view;
pub mod reload;
pub mod secure_boot;
pub mod state;
pub mod subnets;
pub mod tftp;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plasmacloud_pki::tls::ClientAuth;
use plasmacloud_pki::TlsListener;
use tracing::info;

use crate::bundle::Bundle;
use crate::config::{Config, Mode};
use crate::enroll_tokens::TokenStore;
use crate::leases::LeaseStore;
use crate::state::State;

/// Everything that stops the server from starting (or a lease from being recorded).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A configuration value is missing or wrong; the field names the flag / TOML key.
    #[error("--{field}: {message}")]
    Config {
        /// Flag / key.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The contract or the bundle manifest does not load or validate; fix the file named.
    #[error("{}: {message}", path.display())]
    Contract {
        /// The file.
        path: PathBuf,
        /// The contract crate's error, naming the field.
        message: String,
    },
    /// A file the bundle or the iPXE directory must hold is missing or wrong.
    #[error("{}: {message}", path.display())]
    MissingArtifact {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A listener could not be bound (port in use, no permission, interface gone).
    #[error("cannot bind {what} on {addr}: {message} (is another DHCP/TFTP/HTTP server running there? ports below 1024 need root or CAP_NET_BIND_SERVICE)")]
    Bind {
        /// Which listener.
        what: String,
        /// Where.
        addr: String,
        /// The OS error.
        message: String,
    },
    /// The lease state could not be read or written; check the state directory's disk.
    #[error("lease state {}: {message}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// A certificate, key or CA problem; the message names the file and the fix.
    #[error(transparent)]
    Pki(#[from] plasmacloud_pki::PkiError),
    /// The contract pins a CA (`pki.ca_sha256`) that the state directory does not hold.
    #[error("the contract pins the cluster CA sha256 {pinned}: {message}")]
    CaPin {
        /// The pinned fingerprint.
        pinned: String,
        /// What the state directory holds and what to do.
        message: String,
    },
    /// Chainfire could not be reached (exit 75: retry later).
    #[error("Chainfire unreachable at {endpoints}: {message}")]
    ChainfireUnreachable {
        /// The endpoints tried.
        endpoints: String,
        /// What happened and what to do.
        message: String,
    },
    /// An address is held by another MAC (the store refuses to give it twice).
    #[error("{ip} is leased to {holder}, not giving it to {asker}")]
    AddressTaken {
        /// The address.
        ip: Ipv4Addr,
        /// Who holds it.
        holder: String,
        /// Who asked.
        asker: String,
    },
}

/// A one-paragraph summary of a validated configuration and its bundle (what `check` prints).
pub fn describe(cfg: &Config, bundle: &Bundle) -> String {
    let ca = match &cfg.ca {
        cluster_ca::CaStatus::Present(f) => format!(
            "ca sha256 {f}{}",
            if bundle.contract.ca_sha256().is_some() {
                " (pinned by the contract)"
            } else {
                " (not pinned: add pki.ca_sha256 to the contract to pin it)"
            }
        ),
        cluster_ca::CaStatus::Absent => "ca none yet (serve creates one)".to_string(),
    };
    format!(
        "config ok: mode {} on {} ({}/{} mtu {}), cluster {} ({} nodes), bundle {} ({} entries, version {}), ipxe {}, uefi {}, state {}, http {}, management {} (https), enrollment {} (https), enroll-token-ttl {}s, {ca}, dhcp-range {}, unknown-mac {:?}, ipv6-ra {}",
        cfg.mode.as_str(),
        cfg.interface.name,
        cfg.interface.ip,
        cfg.interface.netmask,
        cfg.interface.mtu,
        bundle.contract.name(),
        bundle.contract.nodes.len(),
        cfg.bundle_dir.display(),
        bundle.manifest.entries.len(),
        bundle.version,
        cfg.ipxe_dir.display(),
        match &cfg.secure_boot_dir {
            Some(d) => format!("shim + signed GRUB from {} (Secure Boot chain)", d.display()),
            None => "ipxe".to_string(),
        },
        cfg.state_dir.display(),
        cfg.http_addr,
        cfg.management_addr,
        cfg.enrollment_addr,
        cfg.enroll_token_ttl,
        cfg.dhcp_range.map(|(a, b)| format!("{a}-{b}")).unwrap_or_else(|| "none".into()),
        cfg.unknown_mac,
        if cfg.ipv6_ra && cfg.mode == Mode::Full { "on" } else { "off" },
    )
}

/// Binds every listener (failing with a clear error before serving anything), then serves
/// `bundle` (and the bundles that replace it, [`reload`]) until the process is stopped.
pub async fn serve(cfg: Config, bundle: Bundle) -> Result<(), ServerError> {
    raise_open_file_limit();
    if cfg.secure_boot_dir.is_some() {
        secure_boot::warn_unsigned_kernels(&bundle);
    }
    let state_dir = cfg.state_dir.clone();
    let (ca, _) =
        cluster_ca::load_or_create(&state_dir, bundle.contract.name(), Some(&bundle.contract))?;
    let leases = LeaseStore::open(&state_dir)?;
    let tokens = {
        let dir = state_dir.clone();
        tokio::task::spawn_blocking(move || TokenStore::open(&dir, leases::now_unix()))
            .await
            .map_err(|e| ServerError::State {
                path: state_dir.join("enroll"),
                message: e.to_string(),
            })??
    };
    cluster_ca::private_dir(&state_dir.join("enroll"))?;
    let (event_log, reloaded) = {
        let dir = state_dir.clone();
        tokio::task::spawn_blocking(move || events::EventLog::open(&dir))
            .await
            .map_err(|e| ServerError::State {
                path: state_dir.join(events::EVENTS_DIR),
                message: e.to_string(),
            })??
    };
    info!(
        events = reloaded.events.len(),
        skipped = reloaded.skipped,
        dir = %event_log.dir().display(),
        "boot events read back"
    );
    let tls = cluster_ca::in_memory_material(
        &ca,
        cluster_ca::SERVER_IDENTITY,
        cluster_ca::server_ips(
            cfg.interface.ip,
            &[cfg.http_addr, cfg.management_addr, cfg.enrollment_addr],
        ),
    )?;
    let state = Arc::new(State::new(
        cfg,
        bundle,
        leases,
        ca,
        tokens,
        event_log,
        reloaded.events,
    ));
    refresh_revocations(&state);
    let cfg = &state.config;
    let bind_tcp = |what: &'static str, addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::Bind {
                what: what.into(),
                addr: addr.to_string(),
                message: e.to_string(),
            })
    };
    let http_l = bind_tcp("HTTP boot plane", cfg.http_addr).await?;
    let mgmt_l = bind_tcp("management API", cfg.management_addr).await?;
    let enroll_l = bind_tcp("enrollment", cfg.enrollment_addr).await?;
    let tls_cfg = tls.server_config(ClientAuth::Optional, &state.revocations)?;
    let tls_listener =
        |what: &'static str, l: tokio::net::TcpListener, addr: std::net::SocketAddr| {
            TlsListener::spawn(what, l, tls_cfg.clone()).map_err(|e| ServerError::Bind {
                what: what.into(),
                addr: addr.to_string(),
                message: e.to_string(),
            })
        };
    let mgmt_l = tls_listener("management API", mgmt_l, cfg.management_addr)?;
    let enroll_l = tls_listener("enrollment", enroll_l, cfg.enrollment_addr)?;
    let tftp_s = tftp::bind(&state)?;
    let dhcp_s = dhcp::bind_udp(&state, cfg.dhcp_port, "DHCP")?;
    let pxe_s = if cfg.mode == Mode::Proxy {
        Some(dhcp::bind_udp(
            &state,
            dhcp::PXE_PORT,
            "proxyDHCP (PXE port 4011)",
        )?)
    } else {
        None
    };
    let ra_s = if cfg.mode == Mode::Full && cfg.ipv6_ra {
        Some(ra::bind(&state)?)
    } else {
        None
    };

    let st = state.clone();
    let port = cfg.dhcp_port;
    spawn_thread("dhcp", move || dhcp::run(st, dhcp_s, port))?;
    if let Some(s) = pxe_s {
        let st = state.clone();
        spawn_thread("dhcp-4011", move || dhcp::run(st, s, dhcp::PXE_PORT))?;
    }
    if let Some(s) = ra_s {
        let st = state.clone();
        spawn_thread("ipv6-ra", move || ra::run(st, s))?;
    }
    tokio::spawn(tftp::run(state.clone(), tftp_s));
    tokio::spawn(reload::watch(state.clone()));
    tokio::spawn(node_health::watch(state.clone(), tls.clone()));
    let st = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REVOCATION_REFRESH);
        loop {
            tick.tick().await;
            let s = st.clone();
            let _ = tokio::task::spawn_blocking(move || refresh_revocations(&s)).await;
        }
    });
    let http_app = http::router(state.clone());
    let mgmt_app = mgmt::router(state.clone());
    let enroll_app = enroll::router(state.clone());
    let http_task = tokio::spawn(http_conn::serve(
        http_l,
        http_app,
        state.listeners.boot.clone(),
    ));
    let mgmt_task = tokio::spawn(http_serve::serve_tls(
        mgmt_l,
        mgmt_app,
        state.listeners.management.clone(),
    ));
    let enroll_task = tokio::spawn(http_serve::serve_tls(
        enroll_l,
        enroll_app,
        state.listeners.enrollment.clone(),
    ));
    info!(
        mode = cfg.mode.as_str(),
        interface = %cfg.interface.name,
        server_ip = %cfg.interface.ip,
        dhcp_port = cfg.dhcp_port,
        tftp_port = cfg.tftp_port,
        http = %cfg.http_addr,
        management = %cfg.management_addr,
        enrollment = %cfg.enrollment_addr,
        ca_sha256 = %state.ca.fingerprint(),
        bundle = %state.bundles.current().version,
        "pxe-server ready"
    );
    tokio::select! {
        r = http_task => info!(result = ?r, "HTTP listener stopped"),
        r = mgmt_task => info!(result = ?r, "management listener stopped"),
        r = enroll_task => info!(result = ?r, "enrollment listener stopped"),
        _ = shutdown_signal() => info!("shutting down"),
    }
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || st.event_log.flush(Duration::from_secs(5))).await;
    Ok(())
}

/// How often `pki/revoked.log` is read again (a `pki revoke` reaches the TLS listeners within
/// this long).
pub const REVOCATION_REFRESH: std::time::Duration = std::time::Duration::from_secs(3);

/// Reads `pki/revoked.log` into the listeners' revocation set (blocking; tiny file).
fn refresh_revocations(state: &State) {
    match cert_log::read_revoked(&state.config.state_dir) {
        Ok(list) => {
            state
                .revocations
                .replace(list.into_iter().map(|r| r.serial));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the revocation log; keeping the last list")
        }
    }
}

/// Raises the soft limit on open files to the hard one (at most 2^20): the connection and
/// transfer caps, and the bundles' open files, are sized for more than the usual 1024.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let want = lim.maximum.unwrap_or(1 << 20).min(1 << 20);
    if lim.current.is_some_and(|c| c < want) {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: lim.maximum,
            },
        ) {
            Ok(()) => info!(from = ?lim.current, to = want, "raised the open-file limit"),
            Err(e) => tracing::warn!(
                current = ?lim.current,
                error = %e,
                "cannot raise the open-file limit; the connection caps may meet it first (raise LimitNOFILE)"
            ),
        }
    }
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), ServerError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| ServerError::Bind {
            what: name.to_string(),
            addr: "thread".into(),
            message: e.to_string(),
        })
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
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
