//! The bounds on a node's two ports: how long a client may take, how much it may send, and how
//! many connections and Raft requests it may hold. [`serve_port`] is the one accept loop of
//! both ports; [`read_body`] and [`PeerLimits`] are the middleware the routers put behind
//! their guards.
//!
//! The rules, each with its figure (docs/benchmarks.md, "Issue 17: bounds on the store ports",
//! lists them with what was measured):
//!
//! - **TLS handshake**: at most 10 s each and 256 at once per port
//!   (`plasmacloud_pki::listener::HANDSHAKE_TIMEOUT`, `MAX_HANDSHAKES`); a peer that opens TCP
//!   and never finishes TLS is dropped after 10 s.
//! - **Connections**: a port holds at most [`MAX_CONNECTIONS`]; one more is closed at once
//!   (counted, one log line per [`REFUSAL_LOG_EVERY`]).
//! - **Request head and idle keep-alive**: a request head must be complete within
//!   [`HEADER_TIMEOUT`] of the moment the server waits for it (the handshake's end, or the end
//!   of the previous response on a kept-alive connection). That bounds slow-header (slowloris)
//!   connections and idle ones alike: an idle connection is closed after [`HEADER_TIMEOUT`]
//!   (the clients of this workspace drop pooled connections sooner, [`CLIENT_POOL_IDLE`]).
//! - **Request body**: read whole, within [`BODY_TIMEOUT`] (else 408) and within the port's
//!   cap (else 413): [`MAX_API_BODY`] on the API port, [`MAX_RAFT_BODY`] on the Raft port.
//!   Only after the route's guard admitted the caller, so no body is read for a refused one.
//! - **Responses**: a connection whose response makes no progress (no byte written) for
//!   [`WRITE_STALL_TIMEOUT`] is closed ([`WriteStall`]): a client that stops reading.
//! - **Raft requests per peer**: at most [`MAX_RAFT_REQUESTS_PER_PEER`] at once per peer
//!   certificate (the node it names; its address under `--dev-plaintext`); one more is
//!   answered 503 at once with `Retry-After: 1`, never queued.
//!
//! Handlers themselves are not cut short here: writes and reads carry their own deadline
//! (`--request-timeout-ms`), and a learner's catch-up may take 60 s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use plasmacloud_pki::listener::Caller;
use plasmacloud_pki::Peer;
use plasmacloud_store_client::ErrorBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// How long a client has to send a whole request head, from the moment the server waits for
/// it; also how long a kept-alive connection may sit idle.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the clients of this workspace keep an idle pooled connection (shorter than
/// [`HEADER_TIMEOUT`], so a client never picks a connection the server is closing).
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(5);
/// How long a request body may take to arrive whole.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a response may make no progress before its connection is closed.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one port holds at most.
pub const MAX_CONNECTIONS: usize = 1024;
/// The API port's request body cap: a value is at most 1 MiB ([`crate::api::MAX_VALUE`]);
/// this is axum's default, which the API's extractors apply too.
pub const MAX_API_BODY: usize = 2 << 20;
/// The Raft port's request body cap.
///
/// What a correct sender sends at most: an append of several entries is cut to 2 MiB
/// ([`crate::network::MAX_APPEND_BYTES`]), but one entry always goes whole, and one entry may
/// carry a 1 MiB value that JSON escapes up to six times (`\u0000`): about 6 MiB. A snapshot
/// chunk is 1 MiB of data (`snapshot_max_chunk_size` in [`crate::node`]) sent as a JSON array
/// of numbers, up to four bytes a byte: about 4 MiB. 16 MiB is both with room to spare; the
/// 256 MiB before it let four bodies push a node to 930 MiB.
pub const MAX_RAFT_BODY: usize = 16 << 20;
/// Raft requests one peer may have under way at once. A leader sends a follower one append
/// (or snapshot chunk) at a time, plus the odd vote, election request or identity question;
/// eight leaves room for requests the sender gave up on that are still being answered here.
pub const MAX_RAFT_REQUESTS_PER_PEER: usize = 8;
/// At most one line per port this often about refused connections.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);

fn refuse(status: StatusCode, msg: String) -> Response {
    (status, Json(ErrorBody::new(msg))).into_response()
}

/// Middleware (`from_fn_with_state(cap, read_body)`, as a `route_layer` inside the guard):
/// reads the request body whole, within [`BODY_TIMEOUT`] and at most `cap` bytes, before the
/// handler runs; 413 or 408 otherwise.
pub async fn read_body(State(cap): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than this port's cap of {cap} bytes ({} MiB)",
                cap >> 20
            ),
        )
    };
    if declared.is_some_and(|n| n > cap as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, cap)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                return too_large();
            }
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            );
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// How many Raft requests each peer has under way, capped at
/// [`MAX_RAFT_REQUESTS_PER_PEER`].
#[derive(Debug, Default)]
pub struct PeerLimits {
    held: Mutex<HashMap<String, usize>>,
}

struct PeerPermit {
    limits: Arc<PeerLimits>,
    key: String,
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        let mut held = self.limits.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

impl PeerLimits {
    fn try_take(self: &Arc<Self>, key: &str) -> Option<PeerPermit> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(key.to_string()).or_insert(0);
        if *n >= MAX_RAFT_REQUESTS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerPermit {
            limits: self.clone(),
            key: key.to_string(),
        })
    }
}

/// Middleware (`from_fn_with_state(limits, limit_per_peer)`, as a `route_layer` inside the
/// guard): at most [`MAX_RAFT_REQUESTS_PER_PEER`] requests at once per peer; one more is
/// answered 503 with `Retry-After: 1` at once.
pub async fn limit_per_peer(
    State(limits): State<Arc<PeerLimits>>,
    req: Request,
    next: Next,
) -> Response {
    let key = match (
        req.extensions().get::<Caller>(),
        req.extensions().get::<ConnectInfo<Peer>>(),
    ) {
        (Some(Caller(c)), _) => c.identity.to_string(),
        (None, Some(ConnectInfo(p))) => p.addr.ip().to_string(),
        (None, None) => "unknown".to_string(),
    };
    let Some(_permit) = limits.try_take(&key) else {
        tracing::debug!(peer = %key, "refused a Raft request: the peer holds its cap");
        let mut r = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{key} has {MAX_RAFT_REQUESTS_PER_PEER} Raft requests under way on this node, its cap; retry when one is answered"
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    next.run(req).await
}

/// An I/O stream whose writes fail with `TimedOut` once a write has waited
/// [`WRITE_STALL_TIMEOUT`] with no byte written: a client that stops reading its response is
/// dropped. Reads pass through (heads and bodies have their own deadlines).
pub struct WriteStall<T> {
    inner: T,
    limit: Duration,
    /// When the waiting write (or flush) last made progress or began.
    last: tokio::time::Instant,
    /// Whether the last write or flush returned `Pending` (a wait is under way).
    waiting: bool,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<T> WriteStall<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, limit: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            inner,
            limit,
            last: now,
            waiting: false,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }

    /// Starts the clock at a write that does not continue a wait (an idle connection is no
    /// stall).
    fn begin(&mut self) {
        if !self.waiting {
            self.last = tokio::time::Instant::now();
        }
    }

    /// What a write or flush returned: progress restarts the clock, `Pending` checks it.
    fn after<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<R>>,
        progressed: impl Fn(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(r) => {
                self.waiting = false;
                if r.as_ref().is_ok_and(&progressed) {
                    self.last = tokio::time::Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.waiting = true;
                let due = self.last + self.limit;
                if self.timer.deadline() != due {
                    self.timer.as_mut().reset(due);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the client read nothing of the response for {} s",
                            self.limit.as_secs()
                        ),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.begin();
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after(cx, r, |n| *n > 0)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.begin();
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.after(cx, r, |()| true)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Logs at most once per [`REFUSAL_LOG_EVERY`], with how many were not logged since.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    fn note(&self, log: impl FnOnce(u64)) {
        let mut g = self.last.lock().unwrap_or_else(|p| p.into_inner());
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

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts connections from `listener` until `stop` turns true and serves `app` on each with
/// hyper (HTTP/1), under the bounds above; every request carries `ConnectInfo<Peer>`
/// (`peer_of` makes it from the listener's address). Once stopped, open connections finish
/// the request under way and close; this returns when they have.
pub async fn serve_port<L>(
    which: &'static str,
    mut listener: L,
    peer_of: fn(&L::Addr) -> Peer,
    app: Router,
    mut stop: watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refusals = RefusalLog::default();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (io, addr) = tokio::select! {
            a = listener.accept() => a,
            () = stopped(&mut stop) => break,
        };
        while conns.try_join_next().is_some() {}
        let peer = peer_of(&addr);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.note(|suppressed| {
                tracing::warn!(
                    listener = which,
                    peer = %peer.addr,
                    refused_since_last_line = suppressed,
                    "{which}: refused a connection from {}: the port holds its cap of {MAX_CONNECTIONS} connections",
                    peer.addr
                )
            });
            continue; // dropped: the client sees the connection closed
        };
        let app = app.clone();
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _slot = slot;
            let io = hyper_util::rt::TokioIo::new(WriteStall::new(io, WRITE_STALL_TIMEOUT));
            let who = peer.addr;
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer.clone()));
                let app = app.clone();
                async move {
                    let req = req.map(axum::body::Body::new);
                    Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {}))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, svc);
            let mut conn = std::pin::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(listener = which, peer = %who, error = %e, "connection closed");
            }
        });
    }
    while conns.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_cap_and_gets_slots_back() {
        let limits = Arc::new(PeerLimits::default());
        let held: Vec<_> = (0..MAX_RAFT_REQUESTS_PER_PEER)
            .map(|_| limits.try_take("node2").expect("under the cap"))
            .collect();
        assert!(limits.try_take("node2").is_none(), "one over the cap");
        assert!(limits.try_take("node3").is_some(), "another peer");
        drop(held);
        assert!(limits.try_take("node2").is_some(), "slots come back");
        assert!(
            limits.held.lock().expect("lock").is_empty(),
            "nothing left behind"
        );
    }
}
