//! The TFTP server: read-only, on tokio.
//!
//! Why not the `async-tftp` crate: it runs on smol's `async-io` reactor (a second reactor
//! thread beside tokio), retransmits on a fixed timeout with no backoff, has no cap on
//! concurrent transfers, takes one global block-size limit rather than the boot interface's
//! MTU, and exposes no per-transfer hook for our metrics, tracing spans and boot events. The
//! wire format and option negotiation it would give us live in `pxe-protocol` anyway; what
//! remains here is the transfer loop.
//!
//! Each transfer gets its own socket (a new TID, RFC 1350 §4), a slot (the caps: at most
//! `--tftp-max-transfers` at once, default 128, and `--tftp-max-per-client` from one client
//! address, default 8; one more is refused with "server busy" or "too many transfers from
//! this address"), and a window of blocks (RFC 7440) kept in memory for retransmission. A
//! read request from a peer (address and port) whose transfer is still running is a
//! retransmitted RRQ and is ignored: the running transfer resends its first block anyway.
//!
//! Until the client has acknowledged its first DATA block (the OACK included), it has proven
//! nothing: each wait is the negotiated `timeout` (default 1 s) without backoff, and after
//! [`FIRST_ACK_RETRIES`] retransmissions, or [`FIRST_ACK_DEADLINE`] in all, the transfer is
//! dropped (so a flood of never-acknowledged requests holds each slot for about 4 s, not for
//! the whole backoff). After that, timeouts double per retry up to 8 s; after 6 retries the
//! transfer fails. Paths are confined to the root ([`crate::paths`]): absolute paths, `..`
//! and symlinks that resolve outside the root are refused with "access violation".

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pxe_protocol::tftp::{
    encode_data_into, negotiate, wire_block, ErrorCode, Limits, Packet, Request,
};
use std::io::Read;
use tokio::net::UdpSocket;
use tracing::{debug, info, info_span, warn};

use crate::limits::Refused;
use crate::paths::{resolve_path, PathRefusal};
use crate::secure_boot::{TftpFile, TftpRefusal};
use crate::state::{lock, Metrics, NewEvent, State};

/// Retransmissions before a transfer is abandoned.
pub const MAX_RETRIES: u32 = 6;
/// Longest retransmission timeout after backoff.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(8);
/// Retransmissions of the first block (or the OACK) before a transfer that was never
/// acknowledged is dropped.
pub const FIRST_ACK_RETRIES: u32 = 3;
/// The longest a transfer may wait for the acknowledgement of its first block (or OACK),
/// whatever timeout the client negotiated.
pub const FIRST_ACK_DEADLINE: Duration = Duration::from_secs(5);

/// Binds the TFTP listener on the boot interface.
pub fn bind(state: &State) -> Result<UdpSocket, crate::ServerError> {
    let std_sock = crate::dhcp::bind_udp(state, state.config.tftp_port, "TFTP")?;
    std_sock
        .set_nonblocking(true)
        .map_err(|e| crate::ServerError::Bind {
            what: "TFTP".into(),
            addr: format!("port {}", state.config.tftp_port),
            message: e.to_string(),
        })?;
    UdpSocket::from_std(std_sock).map_err(|e| crate::ServerError::Bind {
        what: "TFTP".into(),
        addr: format!("port {}", state.config.tftp_port),
        message: e.to_string(),
    })
}

/// Serves forever.
pub async fn run(state: Arc<State>, sock: UdpSocket) {
    let slots = state.listeners.tftp.clone();
    let running: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "TFTP receive failed");
                continue;
            }
        };
        let packet = match Packet::parse(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                Metrics::inc(&state.metrics.tftp_errors);
                debug!(%peer, error = %e, "dropped TFTP packet");
                continue;
            }
        };
        match packet {
            Packet::Rrq(req) => {
                if lock(&running).contains(&peer) {
                    debug!(%peer, file = %req.filename, "read request again from a peer being served; ignored");
                    continue;
                }
                let slot = match slots.try_take(peer.ip()) {
                    Ok(s) => s,
                    Err(why) => {
                        Metrics::inc(&state.metrics.tftp_refused);
                        let msg = match why {
                            Refused::Full { .. } => "server busy, retry later",
                            Refused::Address { .. } => {
                                "too many transfers from this address, retry later"
                            }
                        };
                        let _ = sock
                            .send_to(&Packet::error(ErrorCode::NotDefined, msg), peer)
                            .await;
                        continue;
                    }
                };
                lock(&running).insert(peer);
                let st = state.clone();
                let running = running.clone();
                let span = info_span!("tftp", %peer, file = %req.filename);
                // The transfer itself runs on a blocking thread: lockstep TFTP is bound by
                // round-trip latency, and a thread parked in recv() wakes straight from the
                // kernel, with no reactor hop and no thread-pool hop per file read.
                tokio::task::spawn_blocking(move || {
                    let _g = span.enter();
                    Metrics::inc(&st.metrics.tftp_active);
                    serve_read(&st, peer, req);
                    st.metrics
                        .tftp_active
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    lock(&running).remove(&peer);
                    drop(slot);
                });
            }
            Packet::Wrq(req) => {
                Metrics::inc(&state.metrics.tftp_refused);
                info!(%peer, file = %req.filename, "write request refused (read-only server)");
                let _ = sock
                    .send_to(
                        &Packet::error(
                            ErrorCode::AccessViolation,
                            "read-only server: writes are refused",
                        ),
                        peer,
                    )
                    .await;
            }
            other => {
                debug!(%peer, packet = ?other, "unexpected packet on the TFTP port");
                let _ = sock
                    .send_to(
                        &Packet::error(ErrorCode::UnknownTid, "unknown transfer id"),
                        peer,
                    )
                    .await;
            }
        }
    }
}

fn serve_read(state: &Arc<State>, peer: SocketAddr, req: Request) {
    let cfg = &state.config;
    let sock = match std::net::UdpSocket::bind(SocketAddr::from((cfg.interface.ip, 0))) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot open a transfer socket");
            Metrics::inc(&state.metrics.tftp_transfers_failed);
            return;
        }
    };
    if sock.connect(peer).is_err() {
        Metrics::inc(&state.metrics.tftp_transfers_failed);
        return;
    }
    if req.mode != "octet" && req.mode != "netascii" {
        let _ = sock.send(&Packet::error(
            ErrorCode::IllegalOperation,
            "only octet mode",
        ));
        Metrics::inc(&state.metrics.tftp_refused);
        return;
    }
    let source = match crate::secure_boot::tftp_file(state, peer, &req.filename) {
        Some(Ok(f)) => f,
        Some(Err(why)) => {
            let (code, msg) = match why {
                TftpRefusal::NotFound(m) => {
                    (ErrorCode::FileNotFound, format!("file not found: {m}"))
                }
                TftpRefusal::Forbidden(m) => {
                    (ErrorCode::AccessViolation, format!("access violation: {m}"))
                }
                TftpRefusal::Unavailable(m) => (ErrorCode::NotDefined, m),
            };
            info!(reason = %msg, "read request refused");
            Metrics::inc(&state.metrics.tftp_refused);
            let _ = sock.send(&Packet::error(code, &msg));
            return;
        }
        None => match open_in_root(state, &req.filename) {
            Ok(f) => f,
            Err((code, msg)) => {
                Metrics::inc(&state.metrics.tftp_refused);
                let _ = sock.send(&Packet::error(code, msg));
                return;
            }
        },
    };
    let size = source.size;
    let first_stage = source.first_stage;
    let mut file = std::io::BufReader::with_capacity(1 << 20, source.reader);
    let limits = Limits::for_mtu(cfg.interface.mtu, cfg.tftp_max_window);
    let neg = negotiate(&req.options, size, limits);
    let base_timeout = Duration::from_secs(u64::from(neg.timeout_secs.unwrap_or(1)));
    let mac = state.mac_for_ip(peer);
    let node = mac
        .as_deref()
        .and_then(|m| state.node_of_mac(m))
        .map(|n| n.name.clone());
    let started = std::time::Instant::now();
    match transfer(state, &sock, &mut file, size, &neg, base_timeout) {
        Ok(sent) => {
            Metrics::inc(&state.metrics.tftp_transfers_ok);
            let secs = started.elapsed().as_secs_f64();
            info!(
                bytes = sent,
                blksize = neg.blksize,
                windowsize = neg.windowsize,
                secs,
                "transfer done"
            );
            if !first_stage {
                return;
            }
            state.event(NewEvent {
                node,
                mac,
                ip: match peer {
                    SocketAddr::V4(v) => Some(*v.ip()),
                    SocketAddr::V6(_) => None,
                },
                phase: "tftp".into(),
                status: "ok".into(),
                detail: format!(
                    "{} ({sent} bytes, blksize {}, windowsize {})",
                    req.filename, neg.blksize, neg.windowsize
                ),
                ..Default::default()
            });
        }
        Err(why) => {
            Metrics::inc(&state.metrics.tftp_transfers_failed);
            warn!(reason = %why, "transfer failed");
        }
    }
}

/// A file of the iPXE directory (the TFTP root), or the TFTP error refusing it.
fn open_in_root(state: &State, name: &str) -> Result<TftpFile, (ErrorCode, &'static str)> {
    let path = resolve_path(&state.config.ipxe_dir, name).map_err(|why| {
        info!(reason = ?why, "read request refused");
        match why {
            PathRefusal::NotFound => (ErrorCode::FileNotFound, "file not found"),
            PathRefusal::Unsafe | PathRefusal::OutsideRoot => (
                ErrorCode::AccessViolation,
                "access violation: path outside the served root",
            ),
        }
    })?;
    let file = std::fs::File::open(&path).map_err(|e| {
        warn!(error = %e, "cannot open");
        (ErrorCode::FileNotFound, "cannot open file")
    })?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(TftpFile {
        reader: Box::new(file),
        size,
        first_stage: true,
    })
}

/// Receives one datagram before `deadline`; `Ok(None)` on timeout.
fn recv_until(
    sock: &std::net::UdpSocket,
    buf: &mut [u8],
    deadline: std::time::Instant,
) -> Result<Option<usize>, String> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Ok(None);
    }
    sock.set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    match sock.recv(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Ok(None)
        }
        // ICMP port unreachable from a client that went away shows up here.
        Err(e) => Err(e.to_string()),
    }
}

/// How long to wait next, and whether to go on after a timeout: until the first DATA block
/// is acknowledged, no backoff, [`FIRST_ACK_RETRIES`] and [`FIRST_ACK_DEADLINE`]; then
/// doubling up to [`MAX_TIMEOUT`], [`MAX_RETRIES`].
struct Patience {
    base: Duration,
    timeout: Duration,
    retries: u32,
    /// `Some(deadline)` until the client has acknowledged a DATA block.
    unproven: Option<std::time::Instant>,
}

impl Patience {
    fn new(base: Duration) -> Self {
        Self {
            base,
            timeout: base,
            retries: 0,
            unproven: Some(std::time::Instant::now() + FIRST_ACK_DEADLINE),
        }
    }

    /// The deadline of the wait that starts now.
    fn wait_deadline(&self) -> std::time::Instant {
        let d = std::time::Instant::now() + self.timeout;
        match self.unproven {
            Some(u) => d.min(u),
            None => d,
        }
    }

    /// The client moved the transfer on (`data`: it acknowledged a DATA block).
    fn progress(&mut self, data: bool) {
        self.retries = 0;
        self.timeout = self.base;
        if data {
            self.unproven = None;
        }
    }

    /// A wait ran out: `Err(why)` when the transfer is to be dropped.
    fn timed_out(&mut self, what: &str) -> Result<(), String> {
        self.retries += 1;
        match self.unproven {
            Some(deadline) => {
                if self.retries > FIRST_ACK_RETRIES || std::time::Instant::now() >= deadline {
                    return Err(format!(
                        "no ACK for {what} after {} tries: dropped (a client that never acknowledges its first block holds a slot at most {} s)",
                        self.retries,
                        FIRST_ACK_DEADLINE.as_secs()
                    ));
                }
            }
            None => {
                if self.retries > MAX_RETRIES {
                    return Err(format!("no ACK for {what} after {MAX_RETRIES} retries"));
                }
                self.timeout = (self.timeout * 2).min(MAX_TIMEOUT);
            }
        }
        Ok(())
    }
}

/// Runs the transfer (blocking); returns the payload bytes delivered.
fn transfer(
    state: &State,
    sock: &std::net::UdpSocket,
    file: &mut impl Read,
    size: u64,
    neg: &pxe_protocol::tftp::Negotiated,
    base_timeout: Duration,
) -> Result<u64, String> {
    let mut rx = vec![0u8; 2048];
    let mut patience = Patience::new(base_timeout);
    // RFC 2347: an OACK first, acknowledged with ACK 0.
    if !neg.oack.is_empty() {
        let oack = Packet::Oack(neg.oack.clone()).encode();
        'oack: loop {
            sock.send(&oack).map_err(|e| e.to_string())?;
            let deadline = patience.wait_deadline();
            while let Some(n) = recv_until(sock, &mut rx, deadline)? {
                match Packet::parse(&rx[..n]) {
                    Ok(Packet::Ack(0)) => break 'oack,
                    Ok(Packet::Error { code, message }) => {
                        return Err(format!("client refused the options: {code} {message}"))
                    }
                    _ => {}
                }
            }
            patience.timed_out("the OACK")?;
            Metrics::inc(&state.metrics.tftp_retransmits);
        }
        patience.progress(false);
    }
    let blksize = usize::from(neg.blksize);
    let window = u64::from(neg.windowsize.max(1));
    let total_blocks = size / blksize as u64 + 1; // the last block is short (maybe empty)
                                                  // Blocks [base, base + blocks.len()) are read and unacknowledged.
    let mut base: u64 = 1;
    let mut blocks: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut next_to_read: u64 = 1;
    let mut pkt = Vec::with_capacity(blksize + 4);
    let mut sent_bytes: u64 = 0;
    let mut first_send_upto: u64 = 0; // highest block sent at least once
    while base <= total_blocks {
        // Fill the window.
        while next_to_read <= total_blocks && next_to_read < base + window {
            let mut b = spare.pop().unwrap_or_default();
            b.resize(blksize, 0);
            let mut filled = 0;
            while filled < blksize {
                let n = file.read(&mut b[filled..]).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            b.truncate(filled);
            blocks.push_back(b);
            next_to_read += 1;
        }
        // Send the window: all new after a full-window ACK; after a timeout or an ACK in
        // mid-window (the client saw a gap, RFC 7440 §4) the unacknowledged rest again.
        for (i, data) in blocks.iter().enumerate() {
            let n = base + i as u64;
            encode_data_into(&mut pkt, wire_block(n), data);
            sock.send(&pkt).map_err(|e| e.to_string())?;
            Metrics::inc_by(&state.metrics.tftp_bytes, data.len() as u64);
            if n > first_send_upto {
                first_send_upto = n;
                sent_bytes += data.len() as u64;
            } else {
                Metrics::inc(&state.metrics.tftp_retransmits);
            }
        }
        // Wait for an ACK that moves the window.
        let deadline = patience.wait_deadline();
        let mut advanced = false;
        while let Some(n) = recv_until(sock, &mut rx, deadline)? {
            match Packet::parse(&rx[..n]) {
                Ok(Packet::Ack(w)) => {
                    // Which of the outstanding blocks does it acknowledge?
                    let hit = (0..blocks.len() as u64)
                        .map(|i| base + i)
                        .find(|&b| wire_block(b) == w);
                    if let Some(b) = hit {
                        for _ in 0..(b - base + 1) {
                            if let Some(done) = blocks.pop_front() {
                                spare.push(done);
                            }
                        }
                        base = b + 1;
                        advanced = true;
                        break;
                    }
                    // A duplicate ACK of an earlier block: ignore (no Sorcerer's Apprentice).
                }
                Ok(Packet::Error { code, message }) => {
                    return Err(format!("client aborted: {code} {message}"));
                }
                _ => {}
            }
        }
        if advanced {
            patience.progress(true);
        } else {
            patience.timed_out(&format!("block {base}"))?;
            debug!(block = base, timeout = ?patience.timeout, "retransmitting window");
        }
    }
    Ok(sent_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unproven_client_gets_three_retransmissions_then_backoff_once_it_acks() {
        let mut p = Patience::new(Duration::from_secs(1));
        for _ in 0..FIRST_ACK_RETRIES {
            p.timed_out("block 1").expect("still patient");
            assert_eq!(
                p.timeout,
                Duration::from_secs(1),
                "no backoff before the first ACK"
            );
        }
        let e = p.timed_out("block 1").expect_err("dropped");
        assert!(e.contains("dropped"), "{e}");
        let mut p = Patience::new(Duration::from_secs(1));
        p.progress(true);
        assert!(p.unproven.is_none());
        for _ in 0..MAX_RETRIES {
            p.timed_out("block 9").expect("patient");
        }
        assert_eq!(p.timeout, MAX_TIMEOUT);
        assert!(p.timed_out("block 9").is_err());
    }
}
