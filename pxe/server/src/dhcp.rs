//! The DHCP listeners. Each socket runs on its own OS thread with blocking I/O (DHCP is a few
//! packets per client; the lease log `fdatasync`s before every ACK, which must not stall the
//! tokio runtime; OFFERs are written but not synced, see [`crate::leases`]): UDP 67 in both
//! modes, plus UDP 4011 in proxy mode.
//!
//! Packets are taken in batches: the first one waited for, then whatever else the socket
//! already holds, up to [`BATCH`]; every ACK of a batch is recorded, the lease log is synced
//! once, and only then are the batch's replies sent (a group commit: the rule "synced before
//! the ACK" holds for each, and a rack powering on at once pays one sync per batch).
//!
//! Each MAC may send [`MAC_BURST`] packets at once and [`MAC_PER_SEC`] a second after that;
//! the rest are dropped unanswered before any work is done for them (counted in
//! `pxe_dhcp_rate_limited_total`, one log line per 5 s), so one MAC flooding DISCOVERs cannot
//! crowd the others out of the socket's queue, the lease log or the event feed.
//!
//! Full mode: the contract's nodes get their fixed address, other MACs a pool address (or no
//! answer under `--unknown-mac ignore`); the bound lease is what the boot plane later checks a
//! node's requester against. Proxy mode: only PXE/iPXE clients are answered, with boot
//! information (a URL anyone may know) and no address (yiaddr 0.0.0.0); nothing in a proxy
//! request is believed about where a node is.
//!
//! Relayed requests (`giaddr` set, RFC 2131 §4.1; option 82, RFC 3046): the subnet is the one
//! holding `giaddr` (or option 82's link selection), see [`crate::subnets`]; a relayed request
//! from a subnet nobody declared gets no answer, a contract node whose address is not on the
//! subnet its request came from gets none either (it is plugged into another rack than the
//! contract says). Replies go to the relay (`giaddr`, port 67) with its option 82 echoed
//! unchanged; a node behind a relay is off our L2, so the boot plane ties it to its address by
//! its bound lease alone (full mode) and refuses it in proxy mode ([`crate::boot_access`]).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;

use pxe_protocol::dhcp::{
    build_reply, choose_first_stage_for, parse_request, BootFile, DhcpRequest, FirstStage,
    ReplyKind, ReplyParams, RequestKind,
};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info, info_span, warn};

use crate::config::{Mode, UnknownMac};
use crate::leases::{now_unix, Lease, LeaseState};
use crate::limits::{RateLimiter, RefusalLog};
use crate::state::{lock, Metrics, NewEvent, State};
use crate::ServerError;

/// The PXE boot-server port (proxyDHCP requests).
pub const PXE_PORT: u16 = 4011;
/// How long an OFFER holds its address before the REQUEST.
pub const OFFER_HOLD_SECS: u64 = 60;
/// Packets one MAC may send at once (a PXE ROM and then iPXE each send a DISCOVER and a
/// REQUEST, and retransmit a few).
pub const MAC_BURST: u32 = 10;
/// Packets one MAC may send per second after its burst.
pub const MAC_PER_SEC: f64 = 2.0;
/// MACs the rate limiter remembers (idle ones are forgotten first).
pub const MAC_TABLE: usize = 16384;
/// Most packets handled between two lease-log syncs (and before their replies go out).
pub const BATCH: usize = 64;

/// Binds a UDP socket on `port` of the boot interface (SO_BINDTODEVICE, broadcast allowed).
pub fn bind_udp(state: &State, port: u16, what: &str) -> Result<UdpSocket, ServerError> {
    let iface = &state.config.interface.name;
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let bind_err = |e: std::io::Error| ServerError::Bind {
        what: what.to_string(),
        addr: format!("{addr} on {iface}"),
        message: e.to_string(),
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(bind_err)?;
    s.set_reuse_address(true).map_err(bind_err)?;
    s.set_broadcast(true).map_err(bind_err)?;
    // A rack powering on at once sends bursts; a larger queue rides them out (best effort:
    // the kernel caps it at net.core.rmem_max).
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind_device(Some(iface.as_bytes())).map_err(bind_err)?;
    s.bind(&addr.into()).map_err(bind_err)?;
    Ok(s.into())
}

/// Runs one DHCP socket forever (on the calling thread), a batch at a time (module docs).
pub fn run(state: Arc<State>, sock: UdpSocket, port: u16) {
    let mut buf = vec![0u8; 4096];
    let mut per_mac = RateLimiter::new(MAC_BURST, MAC_PER_SEC, MAC_TABLE);
    let flood_log = RefusalLog::default();
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
    loop {
        // The first packet of a batch: wait for it.
        if let Err(e) = sock.set_nonblocking(false) {
            warn!(error = %e, port, "cannot make the DHCP socket blocking");
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let reply = answer(&state, &buf[..n], from, port, &mut per_mac, &flood_log);
                replies.extend(reply);
            }
            Err(e) => {
                warn!(error = %e, port, "DHCP receive failed");
                continue;
            }
        }
        // Whatever else is queued already, up to a batch.
        let _ = sock.set_nonblocking(true);
        for _ in 1..BATCH {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let reply = answer(&state, &buf[..n], from, port, &mut per_mac, &flood_log);
                    replies.extend(reply);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!(error = %e, port, "DHCP receive failed");
                    break;
                }
            }
        }
        // One fdatasync for every ACK of the batch, before any of them goes out.
        if let Err(e) = lock(&state.leases).sync_batch() {
            warn!(error = %e, dropped = replies.len(), "cannot sync the lease log; this batch's replies are not sent");
            Metrics::inc(&state.metrics.dhcp_errors);
            replies.clear();
        }
        for (bytes, dest) in replies.drain(..) {
            if let Err(e) = sock.send_to(&bytes, dest) {
                warn!(%dest, error = %e, "DHCP send failed");
                Metrics::inc(&state.metrics.dhcp_errors);
            }
        }
    }
}

/// Parses one packet, applies the per-MAC rate limit, and answers it (the reply and where to
/// send it); a bound lease it records waits for the batch's sync.
fn answer(
    state: &State,
    packet: &[u8],
    from: SocketAddr,
    port: u16,
    per_mac: &mut RateLimiter<[u8; 6]>,
    flood_log: &RefusalLog,
) -> Option<(Vec<u8>, SocketAddr)> {
    {
        let req = match parse_request(packet) {
            Ok(r) => r,
            Err(e) => {
                Metrics::inc(&state.metrics.dhcp_errors);
                debug!(%from, error = %e, "dropped DHCP packet");
                return None;
            }
        };
        if !per_mac.allow(&req.mac, std::time::Instant::now()) {
            Metrics::inc(&state.metrics.dhcp_rate_limited);
            flood_log.note(|suppressed| {
                warn!(
                    mac = %req.mac_string(),
                    port,
                    dropped_since_last_line = suppressed,
                    "DHCP: {} sends more than {MAC_PER_SEC} packets a second (burst {MAC_BURST}); dropping the excess unanswered",
                    req.mac_string()
                )
            });
            return None;
        }
        let span = info_span!("dhcp", xid = format_args!("{:#010x}", req.xid), mac = %req.mac_string(), port);
        let _g = span.enter();
        match state.config.mode {
            Mode::Full => handle_full(state, &req),
            Mode::Proxy => handle_proxy(state, &req, port, from),
        }
    }
}

fn reply_dest(req: &DhcpRequest, port: u16, from: Option<SocketAddr>) -> SocketAddr {
    if port == PXE_PORT {
        if let Some(f) = from {
            return f;
        }
    }
    if req.relayed() {
        // RFC 2131 §4.1: to the relay's server port; it forwards to the client.
        return SocketAddr::V4(SocketAddrV4::new(req.giaddr, 67));
    }
    if !req.ciaddr.is_unspecified() {
        return SocketAddr::V4(SocketAddrV4::new(req.ciaddr, 68));
    }
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
}

/// The boot file for a request, with a label for logs. `None` when the client gets no boot
/// information (plain DHCP client, or an architecture we cannot boot).
fn boot_file(state: &State, req: &DhcpRequest) -> (BootFile, String) {
    let base = state.config.http_base();
    match choose_first_stage_for(req, state.config.uefi_chain()) {
        FirstStage::IpxeScript => {
            let mut url = format!("{base}/boot/{}.ipxe", req.mac_string().replace(':', "-"));
            // iPXE names its own architecture in option 93: the script then boots a kernel
            // of that architecture or none (crate::http).
            if let Some(a) = req.arch {
                url.push_str("?arch=");
                url.push_str(&a.cpu());
            }
            (BootFile::Url(url), "ipxe-script".into())
        }
        FirstStage::TftpIpxe(f) => {
            if !state.config.ipxe_dir.join(f).is_file() {
                warn!(file = f, dir = %state.config.ipxe_dir.display(), "first stage missing from the iPXE directory; the client will fail to load it");
            }
            (BootFile::Tftp(f.to_string()), format!("tftp {f}"))
        }
        FirstStage::TftpShim(f) => (
            BootFile::Tftp(f.to_string()),
            format!("tftp {f} (Secure Boot chain)"),
        ),
        FirstStage::HttpIpxe(f) => (
            BootFile::Url(format!("{base}/ipxe/{f}")),
            format!("http {f}"),
        ),
        FirstStage::UnsupportedArch(code) => {
            warn!(arch = code, "PXE client architecture (DHCP option 93) {code} has no iPXE first stage here; not offering a boot file (supported: 0 BIOS, 7/9 x86-64 UEFI, 11 ARM64 UEFI, 16/19 UEFI HTTP)");
            (BootFile::None, format!("unsupported arch {code}"))
        }
        FirstStage::NotBootClient => (BootFile::None, "no boot file (not a PXE client)".into()),
    }
}

fn arch_label(req: &DhcpRequest) -> String {
    match (req.ipxe, req.arch) {
        (true, Some(a)) => format!("ipxe/{}", a.label()),
        (true, None) => "ipxe".into(),
        (false, Some(a)) => a.label(),
        (false, None) => "plain".into(),
    }
}

/// Drops a request from a MAC the contract does not know (`--unknown-mac ignore`): counts it,
/// and records a DISCOVER (`what`, e.g. `proxy DHCPDISCOVER`) as an `unknown-mac` event with
/// status `ignored`, so an operator sees which machine asked.
fn ignore_unknown_mac(state: &State, req: &DhcpRequest, mac: &str, what: &str) {
    if req.kind == RequestKind::Discover {
        state.event(NewEvent {
            mac: Some(mac.to_string()),
            phase: "unknown-mac".into(),
            status: "ignored".into(),
            detail: format!(
                "{what} ({}) not answered: --unknown-mac ignore",
                arch_label(req)
            ),
            ..Default::default()
        });
    }
    Metrics::inc(&state.metrics.dhcp_ignored);
}

/// Where a relayed request came from, for logs and events: `via RELAY (option 82 …)`.
fn relay_label(req: &DhcpRequest) -> String {
    if !req.relayed() {
        return String::new();
    }
    match &req.relay_agent {
        Some(r) => format!(" via relay {} ({})", req.giaddr, r.describe()),
        None => format!(" via relay {}", req.giaddr),
    }
}

fn handle_full(state: &State, req: &DhcpRequest) -> Option<(Vec<u8>, SocketAddr)> {
    let cfg = &state.config;
    let mac = req.mac_string();
    let node = state.node_of_mac(&mac).map(|n| (n.name.clone(), n.ipv4));
    let now = now_unix();
    if node.is_none() && cfg.unknown_mac == UnknownMac::Ignore {
        ignore_unknown_mac(state, req, &mac, "DHCPDISCOVER");
        return None;
    }
    let link = req.link_address();
    let Some(subnet) = cfg.subnets.for_giaddr(link) else {
        warn!(relay = %req.giaddr, link = %link, "relayed request from a subnet no --subnet declares; not answered (add --subnet CIDR for the relay's rack)");
        Metrics::inc(&state.metrics.dhcp_ignored);
        return None;
    };
    if let Some((name, ip)) = &node {
        if !subnet.cidr.contains(*ip) {
            warn!(node = %name, %ip, subnet = %subnet.cidr, relay = %req.giaddr, "node's contract address is not on the subnet its request came from; not answered");
            if req.kind == RequestKind::Discover {
                state.event(NewEvent {
                    node: Some(name.clone()),
                    mac: Some(mac.clone()),
                    phase: "dhcp".into(),
                    status: "failed".into(),
                    detail: format!(
                        "request from subnet {}{} but the contract puts {name} at {ip}; not answered",
                        subnet.cidr,
                        relay_label(req)
                    ),
                    ..Default::default()
                });
            }
            Metrics::inc(&state.metrics.dhcp_ignored);
            return None;
        }
    }
    let router = subnet
        .router
        .or_else(|| subnet.relayed.then_some(req.giaddr));
    if let Some(sid) = req.server_id {
        if sid != cfg.interface.ip {
            debug!(server = %sid, "client chose another DHCP server");
            Metrics::inc(&state.metrics.dhcp_ignored);
            return None;
        }
    }
    // The address this MAC gets.
    let address = || -> Option<Ipv4Addr> {
        if let Some((_, ip)) = &node {
            return Some(*ip);
        }
        let range = subnet.range?;
        let contract = &state.bundles.current().contract;
        let reserved = |ip: Ipv4Addr| {
            ip == cfg.interface.ip
                || Some(ip) == router
                || (subnet.relayed && ip == req.giaddr)
                || contract.nodes.iter().any(|n| n.ipv4 == ip)
        };
        lock(&state.leases).pick_pool_address(&mac, range, &reserved, now)
    };
    let node_name = node.as_ref().map(|(n, _)| n.clone());
    let (boot, boot_label) = boot_file(state, req);
    let params = |kind, yiaddr: Option<Ipv4Addr>| ReplyParams {
        kind,
        server_ip: cfg.interface.ip,
        yiaddr,
        subnet_mask: Some(subnet.cidr.netmask()),
        router,
        lease_secs: yiaddr.map(|_| cfg.lease_secs),
        boot: boot.clone(),
        pxe_options: req.is_boot_client(),
        ipxe_no_proxydhcp: true,
    };
    match req.kind {
        RequestKind::Discover => {
            let Some(ip) = address() else {
                warn!(
                    subnet = %subnet.cidr,
                    "no address to offer: {}",
                    if subnet.range.is_none() {
                        if subnet.relayed {
                            "MAC not in the contract and no range= for this relayed --subnet"
                        } else {
                            "MAC not in the contract and no --dhcp-range"
                        }
                    } else {
                        "the pool is exhausted"
                    }
                );
                Metrics::inc(&state.metrics.dhcp_ignored);
                return None;
            };
            let lease = Lease {
                mac: mac.clone(),
                ip,
                expires: now + OFFER_HOLD_SECS,
                state: LeaseState::Offered,
                node: node_name.clone(),
            };
            // A bound lease keeps its (longer) expiry; an offer never shortens it.
            let keep = lock(&state.leases)
                .get(&mac)
                .is_some_and(|l| l.ip == ip && l.state == LeaseState::Bound && l.expires > now);
            if !keep {
                if let Err(e) = lock(&state.leases).record(lease) {
                    warn!(error = %e, "cannot hold the address for this offer");
                    Metrics::inc(&state.metrics.dhcp_errors);
                    return None;
                }
            }
            let bytes = encode(state, req, &params(ReplyKind::Offer, Some(ip)))?;
            Metrics::inc(&state.metrics.dhcp_offers_full);
            info!(%ip, boot = %boot_label, arch = %arch_label(req), relay = %req.giaddr, "offer");
            state.event(NewEvent {
                node: node_name,
                mac: Some(mac),
                ip: Some(ip),
                phase: "dhcp".into(),
                status: "started".into(),
                detail: format!(
                    "offer {ip} ({}, {boot_label}){}",
                    arch_label(req),
                    relay_label(req)
                ),
                ..Default::default()
            });
            Some((bytes, reply_dest(req, 67, None)))
        }
        RequestKind::Request => {
            let wanted = req
                .requested_ip
                .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr));
            let ip = address();
            let ok = matches!((ip, wanted), (Some(a), Some(w)) if a == w);
            if !ok {
                // Only NAK what we are authoritative for: a request naming us, or a MAC we know.
                if req.server_id.is_none()
                    && node.is_none()
                    && lock(&state.leases).get(&mac).is_none()
                {
                    Metrics::inc(&state.metrics.dhcp_ignored);
                    return None;
                }
                info!(wanted = ?wanted, expected = ?ip, "nak");
                let bytes = encode(state, req, &params(ReplyKind::Nak, None))?;
                Metrics::inc(&state.metrics.dhcp_naks);
                // RFC 2131 §4.3.2: a NAK is broadcast, or sent to the relay that forwarded it.
                let dest = if req.relayed() {
                    SocketAddr::V4(SocketAddrV4::new(req.giaddr, 67))
                } else {
                    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
                };
                return Some((bytes, dest));
            }
            let ip = ip?;
            let lease = Lease {
                mac: mac.clone(),
                ip,
                expires: now + u64::from(cfg.lease_secs),
                state: LeaseState::Bound,
                node: node_name.clone(),
            };
            // Synced with the rest of the batch before this ACK is sent (`run`).
            if let Err(e) = lock(&state.leases).record_batched(lease) {
                warn!(error = %e, "cannot bind the lease");
                Metrics::inc(&state.metrics.dhcp_errors);
                return None;
            }
            state.saw(&mac, ip);
            let bytes = encode(state, req, &params(ReplyKind::Ack, Some(ip)))?;
            Metrics::inc(&state.metrics.dhcp_acks_full);
            info!(%ip, boot = %boot_label, arch = %arch_label(req), relay = %req.giaddr, "ack");
            state.event(NewEvent {
                node: node_name.clone(),
                mac: Some(mac),
                ip: Some(ip),
                phase: if node_name.is_some() {
                    "dhcp".into()
                } else {
                    "unknown-mac".into()
                },
                status: "ok".into(),
                detail: format!(
                    "ack {ip} ({}, {boot_label}){}",
                    arch_label(req),
                    relay_label(req)
                ),
                ..Default::default()
            });
            Some((bytes, reply_dest(req, 67, None)))
        }
        RequestKind::Inform => {
            let mut p = params(ReplyKind::Ack, None);
            p.lease_secs = None;
            let bytes = encode(state, req, &p)?;
            Metrics::inc(&state.metrics.dhcp_acks_full);
            Some((bytes, reply_dest(req, 67, None)))
        }
        RequestKind::Release | RequestKind::Decline => {
            let existing = lock(&state.leases).get(&mac).cloned();
            if let Some(mut l) = existing {
                if req.kind == RequestKind::Release && node.is_none() {
                    l.state = LeaseState::Released;
                    if let Err(e) = lock(&state.leases).record(l) {
                        warn!(error = %e, "cannot record the release");
                    }
                }
            }
            if req.kind == RequestKind::Decline {
                warn!("client declined its address (another host answers ARP for it?)");
            }
            None
        }
    }
}

fn handle_proxy(
    state: &State,
    req: &DhcpRequest,
    port: u16,
    from: SocketAddr,
) -> Option<(Vec<u8>, SocketAddr)> {
    let cfg = &state.config;
    let mac = req.mac_string();
    // No address is taken from this packet: ciaddr, requested-IP and the source of a 4011
    // request are whatever the sender wrote, and any host can send one with a node's MAC.
    // The boot plane ties a node to an address by the requester's neighbour entry alone
    // (`boot_access`).
    if !req.is_boot_client() {
        return None;
    }
    let node = state.node_of_mac(&mac).map(|n| n.name.clone());
    if node.is_none() && cfg.unknown_mac == UnknownMac::Ignore {
        ignore_unknown_mac(state, req, &mac, "proxy DHCPDISCOVER");
        return None;
    }
    let kind = match (req.kind, port) {
        (RequestKind::Discover, p) if p != PXE_PORT => ReplyKind::Offer,
        (RequestKind::Request, PXE_PORT) | (RequestKind::Inform, _) => ReplyKind::Ack,
        // A REQUEST on 67 is addressed to the real DHCP server.
        _ => return None,
    };
    let (boot, boot_label) = boot_file(state, req);
    if boot == BootFile::None {
        Metrics::inc(&state.metrics.dhcp_ignored);
        return None;
    }
    let params = ReplyParams {
        kind,
        server_ip: cfg.interface.ip,
        yiaddr: None,
        subnet_mask: None,
        router: None,
        lease_secs: None,
        boot,
        pxe_options: true,
        ipxe_no_proxydhcp: false,
    };
    let bytes = encode(state, req, &params)?;
    let counter = if kind == ReplyKind::Offer {
        &state.metrics.dhcp_offers_proxy
    } else {
        &state.metrics.dhcp_acks_proxy
    };
    Metrics::inc(counter);
    info!(boot = %boot_label, arch = %arch_label(req), reply = ?kind, relay = %req.giaddr, "proxy reply");
    state.event(NewEvent {
        node,
        mac: Some(mac.clone()),
        ip: state.seen_ip(&mac),
        phase: "dhcp".into(),
        status: if kind == ReplyKind::Offer {
            "started".into()
        } else {
            "ok".into()
        },
        detail: format!(
            "proxy {} ({}, {boot_label}){}",
            format!("{kind:?}").to_lowercase(),
            arch_label(req),
            relay_label(req)
        ),
        ..Default::default()
    });
    Some((bytes, reply_dest(req, port, Some(from))))
}

fn encode(state: &State, req: &DhcpRequest, p: &ReplyParams) -> Option<Vec<u8>> {
    match build_reply(req, p) {
        Ok(b) => Some(b),
        Err(e) => {
            warn!(error = %e, "cannot encode reply");
            Metrics::inc(&state.metrics.dhcp_errors);
            None
        }
    }
}
