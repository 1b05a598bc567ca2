//! `pxe-server`: the provisioning server that network-boots a rack from the cluster contract
//! and an image bundle.
//!
//! Boot path: firmware → DHCP ([`dhcp`], full or proxy mode) → TFTP ([`tftp`]) of the iPXE
//! build for the client's architecture → iPXE asks DHCP again (user class `iPXE`) and gets the
//! HTTP URL of its node's script → HTTP ([`http`]): script, kernel, base initrd, and the node's
//! overlay through a per-boot token. In full mode an IPv6 RA responder ([`ra`]) ends iPXE's
//! wait for IPv6. Nodes report first-boot phases to the management listener ([`mgmt`]), which
//! also serves status and Prometheus metrics.
//!
//! Wire formats live in the `pxe-protocol` crate (no sockets); this crate is the listeners,
//! the lease store ([`leases`]), shared state ([`state`]: what DHCP saw, tokens, events,
//! metrics) and path confinement ([`paths`]). The binary is a thin `main.rs`.
//!
//! Layers, bottom up (a module imports only modules below it, never one that imports it back):
//! [`config`] and [`leases`]; [`state`] and [`paths`]; the listeners [`dhcp`], [`ra`],
//! [`mgmt`], [`http_conn`] (the boot plane's connection loop), then [`http`] (its router) and
//! [`tftp`] (which binds its socket the way [`dhcp`] does).
//!
//! Security: the boot network is trusted to the extent that a MAC and the address DHCP handed
//! it identify a node. The source-address check plus the unguessable per-boot token stop
//! other machines from fetching a node's overlay by guessing or replaying URLs, but not an
//! attacker who spoofs a node's MAC on the boot segment before it boots (see pxe/README.md).

pub mod config;
pub mod dhcp;
pub mod http;
pub mod http_conn;
pub mod leases;
pub mod mgmt;
pub mod paths;
pub mod ra;
pub mod state;
pub mod tftp;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::info;

use crate::config::{Config, Mode};
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

/// A one-paragraph summary of a validated configuration (what `check` prints).
pub fn describe(cfg: &Config) -> String {
    format!(
        "config ok: mode {} on {} ({}/{} mtu {}), cluster {} ({} nodes), bundle {} ({} entries), ipxe {}, state {}, http {}, management {}, dhcp-range {}, unknown-mac {:?}, ipv6-ra {}",
        cfg.mode.as_str(),
        cfg.interface.name,
        cfg.interface.ip,
        cfg.interface.netmask,
        cfg.interface.mtu,
        cfg.contract.name(),
        cfg.contract.nodes.len(),
        cfg.bundle_dir.display(),
        cfg.manifest.entries.len(),
        cfg.ipxe_dir.display(),
        cfg.state_dir.display(),
        cfg.http_addr,
        cfg.management_addr,
        cfg.dhcp_range.map(|(a, b)| format!("{a}-{b}")).unwrap_or_else(|| "none".into()),
        cfg.unknown_mac,
        if cfg.ipv6_ra && cfg.mode == Mode::Full { "on" } else { "off" },
    )
}

/// Binds every listener (failing with a clear error before serving anything), then serves
/// until the process is stopped.
pub async fn serve(cfg: Config) -> Result<(), ServerError> {
    let leases = LeaseStore::open(&cfg.state_dir)?;
    let state = Arc::new(State::new(cfg, leases));
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
    let http_app = http::router(state.clone());
    let mgmt_app = mgmt::router(state.clone());
    let http_task = tokio::spawn(http_conn::serve(http_l, http_app));
    let mgmt_task = tokio::spawn(async move { axum::serve(mgmt_l, mgmt_app).await });
    info!(
        mode = cfg.mode.as_str(),
        interface = %cfg.interface.name,
        server_ip = %cfg.interface.ip,
        dhcp_port = cfg.dhcp_port,
        tftp_port = cfg.tftp_port,
        http = %cfg.http_addr,
        management = %cfg.management_addr,
        "pxe-server ready"
    );
    tokio::select! {
        r = http_task => info!(result = ?r, "HTTP listener stopped"),
        r = mgmt_task => info!(result = ?r, "management listener stopped"),
        _ = shutdown_signal() => info!("shutting down"),
    }
    Ok(())
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
