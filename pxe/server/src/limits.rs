//! Resource bounds shared by the listeners: how many connections (or TFTP transfers) a
//! listener holds in total and per client address, how long a request head or a stalled
//! transfer may take, and per-key rate limits (DHCP, per MAC).
//!
//! The rules, every one stated with its figure (pxe/README.md lists them for operators):
//! - a listener holds at most [`Caps::total`] connections and, where set, at most
//!   [`Caps::per_address`] from one client address; one more is refused at once (the boot plane
//!   answers `503` and closes; TLS listeners close) and counted, with one log line per
//!   [`REFUSAL_LOG_EVERY`] naming the listener, the address and the cap;
//! - a request head must be complete within [`HEADER_TIMEOUT`] of the moment the server starts
//!   waiting for it (the connection's accept, or the end of the previous response on a kept-alive
//!   connection): that bounds slow-header (slowloris) connections and idle keep-alive alike;
//! - a connection that makes no progress (no byte read or written) for [`STALL_TIMEOUT`] while
//!   a response or a request body is under way is closed ([`StallIo`]);
//! - a handler (reading the request body included) must produce its response head within
//!   [`REQUEST_TIMEOUT`].

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Locks a mutex, recovering from poisoning (every critical section here is a few counter
/// updates). This module imports nothing of the crate: [`crate::state`] builds on it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a client has to send a whole request head, from the moment the server waits for
/// it (accept, or the previous response on a kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may make no progress at all while a response (or a request body) is
/// under way.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a handler may take to answer (reading the request body included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one refusal line per listener this often (the rest are counted into the next line).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);

/// The boot plane's caps: 1024 connections, 32 from one address (a rack behind one NAT is
/// not a boot network; 16 parallel downloads from one host still fit).
pub const BOOT_PLANE_CAPS: Caps = Caps {
    total: 1024,
    per_address: Some(32),
};
/// The management listener's cap.
pub const MANAGEMENT_CAPS: Caps = Caps {
    total: 256,
    per_address: None,
};
/// The enrollment listener's cap.
pub const ENROLLMENT_CAPS: Caps = Caps {
    total: 256,
    per_address: None,
};

/// How many a listener holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// In total.
    pub total: usize,
    /// From one client address (`None`: no per-address cap).
    pub per_address: Option<usize>,
}

/// Why a connection or transfer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds its total cap.
    Full {
        /// The cap.
        cap: usize,
    },
    /// This address holds its per-address cap.
    Address {
        /// The cap.
        cap: usize,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Full { cap } => write!(f, "the listener holds its cap of {cap}"),
            Refused::Address { cap } => {
                write!(f, "this address holds its cap of {cap}")
            }
        }
    }
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// What one listener holds, counted in total and per client address, with its counters.
#[derive(Debug)]
pub struct Slots {
    /// The listener's name in logs and metric labels (`boot`, `management`, …).
    pub name: &'static str,
    /// What a slot holds, for logs (`connection`, `transfer`).
    pub what: &'static str,
    /// Its caps.
    pub caps: Caps,
    held: Mutex<Held>,
    log: RefusalLog,
    /// Refused because the listener was full.
    pub refused_full: AtomicU64,
    /// Refused because the address held its cap.
    pub refused_address: AtomicU64,
    /// Closed by a timeout (header, stall or request).
    pub timed_out: AtomicU64,
}

/// One held slot; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut h = lock(&self.slots.held);
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                h.by_ip.remove(&self.ip);
            }
        }
    }
}

/// The address as one key (an IPv4-mapped IPv6 address counts as its IPv4 address).
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl Slots {
    /// Slots for the listener `name`, each holding one `what`, with `caps`.
    pub fn new(name: &'static str, what: &'static str, caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            name,
            what,
            caps,
            held: Mutex::new(Held::default()),
            log: RefusalLog::default(),
            refused_full: AtomicU64::new(0),
            refused_address: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        })
    }

    /// Takes a slot for `ip`, or says which cap refuses it (counted; one log line per
    /// [`REFUSAL_LOG_EVERY`]).
    pub fn try_take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let ip = canonical(ip);
        let refused = {
            let mut h = lock(&self.held);
            let here = h.by_ip.get(&ip).copied().unwrap_or(0);
            if h.total >= self.caps.total {
                Refused::Full {
                    cap: self.caps.total,
                }
            } else if self.caps.per_address.is_some_and(|cap| here >= cap) {
                Refused::Address {
                    cap: self.caps.per_address.unwrap_or(0),
                }
            } else {
                h.total += 1;
                *h.by_ip.entry(ip).or_insert(0) += 1;
                return Ok(Slot {
                    slots: self.clone(),
                    ip,
                });
            }
        };
        let counter = match refused {
            Refused::Full { .. } => &self.refused_full,
            Refused::Address { .. } => &self.refused_address,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.log.note(|suppressed| {
            tracing::warn!(
                listener = self.name,
                peer = %ip,
                %refused,
                refused_since_last_line = suppressed,
                "{}: refused a new {} from {ip}: {refused}",
                self.name,
                self.what
            );
        });
        Err(refused)
    }

    /// How many are held now.
    pub fn open(&self) -> usize {
        lock(&self.held).total
    }

    /// How many `ip` holds now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.held)
            .by_ip
            .get(&canonical(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Counts a connection closed by a timeout.
    pub fn note_timeout(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }
}

/// Logs at most once per [`REFUSAL_LOG_EVERY`], passing how many notes were not logged since.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    /// Calls `log(suppressed)` when the last line is old enough, else counts this note.
    pub fn note(&self, log: impl FnOnce(u64)) {
        let mut g = lock(&self.last);
        let now = Instant::now();
        if g.0
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            g.1 += 1;
            return;
        }
        let suppressed = g.1;
        *g = (Some(now), 0);
        drop(g);
        log(suppressed);
    }
}

/// A token bucket per key: `burst` at once, refilled at `per_sec`; idle keys are forgotten
/// when the table grows past `max_keys`, so memory stays bounded whatever the keys.
#[derive(Debug)]
pub struct RateLimiter<K: Hash + Eq> {
    burst: f64,
    per_sec: f64,
    max_keys: usize,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `burst` at once, then `per_sec`; at most about `max_keys` keys remembered.
    pub fn new(burst: u32, per_sec: f64, max_keys: usize) -> Self {
        Self {
            burst: f64::from(burst),
            per_sec,
            max_keys,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now`; false when its bucket is empty.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if self.buckets.len() >= self.max_keys && !self.buckets.contains_key(key) {
            self.forget_idle(now);
        }
        let (burst, rate) = (self.burst, self.per_sec);
        let b = self.buckets.entry(key.clone()).or_insert((burst, now));
        b.0 = (b.0 + now.saturating_duration_since(b.1).as_secs_f64() * rate).min(burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops the keys whose bucket has refilled (they are as good as new); when every key is
    /// busy, drops them all (a flood of ever-new keys cannot be told apart anyway).
    fn forget_idle(&mut self, now: Instant) {
        let (burst, rate) = (self.burst, self.per_sec);
        self.buckets.retain(|_, (t, at)| {
            *t + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
        });
        if self.buckets.len() >= self.max_keys {
            self.buckets.clear();
        }
    }

    /// Keys remembered now.
    pub fn keys(&self) -> usize {
        self.buckets.len()
    }
}

/// An I/O stream that fails with `TimedOut` once it has made no progress (no byte read or
/// written) for `limit` while a read or a write waits: a client that stops reading a response,
/// or stops sending a body, is dropped.
pub struct StallIo<T> {
    inner: T,
    limit: Duration,
    last: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<T> StallIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, limit: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            inner,
            limit,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }

    fn progressed(&mut self) {
        self.last = tokio::time::Instant::now();
    }

    /// Pending, unless the stream has made no progress for `limit`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let due = self.last + self.limit;
        if self.timer.deadline() != due {
            self.timer.as_mut().reset(due);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no progress for {} s", self.limit.as_secs()),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_stall(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_stall(cx).map(Err),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_stall(cx).map(Err),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.poll_stall(cx).map(Err),
            r => r,
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_the_total_and_each_address_and_come_back_when_dropped() {
        let s = Slots::new(
            "test",
            "connection",
            Caps {
                total: 3,
                per_address: Some(2),
            },
        );
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let a1 = s.try_take(a).expect("first");
        let _a2 = s.try_take(mapped).expect("second, the same address mapped");
        assert_eq!(s.try_take(a).err(), Some(Refused::Address { cap: 2 }));
        let _b1 = s.try_take(b).expect("another address");
        assert_eq!(s.try_take(b).err(), Some(Refused::Full { cap: 3 }));
        assert_eq!(s.open(), 3);
        drop(a1);
        assert_eq!(s.open_from(a), 1);
        let _b2 = s.try_take(b).expect("a slot came back");
        assert_eq!(s.refused_full.load(Ordering::Relaxed), 1);
        assert_eq!(s.refused_address.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_stream_that_stops_moving_times_out_and_one_that_moves_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let limit = Duration::from_millis(200);
            // A reader that never reads: the writer fills the pipe, then stalls.
            let (a, _b) = tokio::io::duplex(1024);
            let mut w = StallIo::new(a, limit);
            let t = Instant::now();
            let e = w
                .write_all(&[0u8; 64 * 1024])
                .await
                .expect_err("a stalled write times out");
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert!(
                t.elapsed() >= limit && t.elapsed() < limit * 5,
                "{:?}",
                t.elapsed()
            );
            // A peer that sends a byte every 100 ms keeps the stream alive past the limit.
            let (a, mut b) = tokio::io::duplex(1024);
            let mut r = StallIo::new(a, limit);
            tokio::spawn(async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if b.write_all(b"x").await.is_err() {
                        return;
                    }
                }
                // Still connected, silent.
                std::future::pending::<()>().await;
                drop(b);
            });
            let mut got = [0u8; 5];
            r.read_exact(&mut got)
                .await
                .expect("progress resets the clock");
            let e = r.read(&mut got).await.expect_err("then silence times out");
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        });
    }

    #[test]
    fn rate_limiter_gives_a_burst_then_the_rate_and_forgets_idle_keys() {
        let mut r = RateLimiter::new(3, 2.0, 4);
        let t0 = Instant::now();
        let got: Vec<bool> = (0..5).map(|_| r.allow(&"a", t0)).collect();
        assert_eq!(got, [true, true, true, false, false]);
        assert!(r.allow(&"b", t0), "another key has its own bucket");
        // Half a second later "a" has one token again.
        let t1 = t0 + Duration::from_millis(500);
        assert!(r.allow(&"a", t1));
        assert!(!r.allow(&"a", t1));
        // Many new keys: the table stays bounded.
        let t2 = t1 + Duration::from_secs(10);
        for k in ["c", "d", "e", "f", "g", "h", "i"] {
            assert!(r.allow(&k, t2));
        }
        assert!(r.keys() <= 4, "{} keys", r.keys());
    }
}
