//! The boot plane's connection loop: plain HTTP/1 `GET`s of artifacts go out with
//! `sendfile(2)`; everything else is served by hyper.
//!
//! Why: hyper writes a response body from user-space buffers, so every artifact byte was copied
//! twice in the server (page cache → buffer → socket) where nginx copies it zero times
//! (`sendfile`: the socket takes references to page-cache pages). With 16 clients pulling a
//! 512 MiB initrd that made the boot plane CPU-bound at about half nginx's throughput.
//!
//! How: each accepted connection starts here. While the next request head in the buffer is a
//! simple `GET` of `/files/…`, `/b/…`, `/s/…` or `/ipxe/…` (HTTP/1.0 or 1.1, no request body, no
//! `Expect` or `Upgrade`), it is turned into an `http::Request` and handed to the same axum
//! router as every other request, so the routing, the per-node token and source-address checks,
//! `Range`, `If-None-Match`/`If-Range` and `ETag` all stay in the router (`http.rs`). The request
//! carries a [`SendfileOk`] extension; `serve_file` then answers with an empty body and a
//! [`SendfileBody`] extension naming the open file and byte range, and this loop writes the head
//! itself and the body with `sendfile`. Any other response (403, 404, 304, 416) is small and is
//! written here from its collected body. The first request that is not such a `GET` (a `HEAD`,
//! anything with a body, an unparsable head, HTTP/2's preface) hands the connection, with every
//! byte already read, to hyper for the rest of its life.
//!
//! Bounds ([`crate::limits`]): at most [`BOOT_PLANE_CAPS`](crate::limits::BOOT_PLANE_CAPS)
//! connections (1024, 32 per client address; one more gets `503` and is closed); each request
//! head complete within `HEADER_TIMEOUT` (10 s) of the moment this loop waits for it, which
//! also closes idle kept-alive connections; a response that makes no progress for
//! `STALL_TIMEOUT` (30 s: a client that stopped reading) is dropped; handlers answer within
//! `REQUEST_TIMEOUT` (30 s). hyper gets the same bounds ([`crate::http_serve`]).
//!
//! A file truncated while it is being sent makes `sendfile` return 0 early: the connection is
//! closed with the body short of its `Content-Length`, which every client reports as an error
//! (the same as the read-ahead path). Bundle files are written to a temp dir and renamed, so an
//! open file is never truncated in practice.
//!
//! `sendfile` runs on the runtime's worker thread and copies nothing, but a page not in the page
//! cache is read from disk inside the call (as in nginx without `aio threads`); each call moves
//! at most one socket buffer's worth, so such a stall is bounded by that much disk read.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::limits::{Slots, HEADER_TIMEOUT, REQUEST_TIMEOUT, STALL_TIMEOUT};
use crate::state::{Metrics, State};

/// Request extension: this request came through [`serve`]'s own loop, which can send a file
/// body with `sendfile` (requests served by hyper never carry it).
#[derive(Clone, Copy, Debug)]
pub struct SendfileOk;

/// Response extension set by `serve_file` for a [`SendfileOk`] request: send `count` bytes of
/// `file` from `offset` as the body (the response's own body is empty).
#[derive(Clone)]
pub struct SendfileBody {
    /// The open artifact.
    pub file: Arc<std::fs::File>,
    /// First byte to send.
    pub offset: u64,
    /// How many bytes (the response's `Content-Length`).
    pub count: u64,
    /// For the byte counter.
    pub state: Arc<State>,
}

/// The longest request head read before handing the connection to hyper (which then answers
/// 431 or 400 itself).
const MAX_HEAD: usize = 16 << 10;
/// Most headers a request handled here may have (more: hyper serves it).
const MAX_HEADERS: usize = 64;
/// Largest non-file response body collected and written here (errors, 304s: a few bytes).
const MAX_SMALL_BODY: usize = 1 << 20;
/// Most bytes asked of one `sendfile` call (it also stops when the socket buffer is full);
/// nginx's `sendfile_max_chunk` default.
const SENDFILE_MAX: usize = 2 << 20;

/// The answer to a connection over the listener's caps (then closed).
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 22\r\nRetry-After: 1\r\n\r\ntoo many connections\r\n";

/// Accepts connections on `listener` for ever, serving `app` (which gets each peer's address as
/// `ConnectInfo<SocketAddr>`), holding at most what `slots` allows (one over the caps gets a
/// `503` and is closed).
pub async fn serve(listener: TcpListener, app: Router, slots: Arc<Slots>) -> io::Result<()> {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning (as axum::serve does).
                warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match slots.try_take(peer.ip()) {
            Ok(s) => s,
            Err(_) => {
                let _ = sock.try_write(BUSY);
                continue;
            }
        };
        let app = app.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match connection(sock, peer, app, &slots).await {
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    slots.note_timeout();
                    debug!(%peer, error = %e, "HTTP connection closed by a timeout");
                }
                Err(e) => debug!(%peer, error = %e, "HTTP connection ended with an error"),
                Ok(()) => {}
            }
        });
    }
}

fn timed_out(what: &str, limit: std::time::Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} not done within {} s", limit.as_secs()),
    )
}

/// A request head this loop serves itself.
struct Head {
    req: Request<axum::body::Body>,
    len: usize,
    keep_alive: bool,
}

enum Parsed {
    Ours(Box<Head>),
    Partial,
    Hyper,
}

fn is_artifact_path(p: &str) -> bool {
    p.starts_with("/files/")
        || p.starts_with("/b/")
        || p.starts_with("/s/")
        || p.starts_with("/ipxe/")
}

fn has_token(v: &[u8], token: &str) -> bool {
    std::str::from_utf8(v).is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    let (Some("GET"), Some(path), Some(v)) = (r.method, r.path, r.version) else {
        return Parsed::Hyper;
    };
    if !is_artifact_path(path) {
        return Parsed::Hyper;
    }
    let Ok(uri) = path.parse::<http::Uri>() else {
        return Parsed::Hyper;
    };
    let mut req = Request::new(axum::body::Body::empty());
    *req.uri_mut() = uri;
    *req.version_mut() = if v == 1 {
        http::Version::HTTP_11
    } else {
        http::Version::HTTP_10
    };
    let mut keep_alive = v == 1;
    for h in r.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Hyper;
        };
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Parsed::Hyper;
        };
        if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
            || (name == header::CONTENT_LENGTH && value.as_bytes() != b"0")
        {
            return Parsed::Hyper;
        }
        if name == header::CONNECTION && has_token(value.as_bytes(), "close") {
            keep_alive = false;
        }
        req.headers_mut().append(name, value);
    }
    Parsed::Ours(Box::new(Head {
        req,
        len,
        keep_alive,
    }))
}

async fn connection(
    mut sock: TcpStream,
    peer: SocketAddr,
    app: Router,
    slots: &Slots,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // The whole head within HEADER_TIMEOUT of starting to wait for it (this also bounds an
        // idle kept-alive connection).
        let deadline = tokio::time::Instant::now() + HEADER_TIMEOUT;
        let head = loop {
            match parse_head(&buf) {
                Parsed::Ours(h) => break Some(h),
                Parsed::Hyper => break None,
                Parsed::Partial if buf.len() >= MAX_HEAD => break None,
                Parsed::Partial => {}
            }
            match tokio::time::timeout_at(deadline, sock.read_buf(&mut buf)).await {
                Err(_) => return Err(timed_out("request head", HEADER_TIMEOUT)),
                Ok(r) => {
                    if r? == 0 {
                        return Ok(()); // closed between (or in the middle of) requests
                    }
                }
            }
        };
        let Some(head) = head else {
            return handoff(sock, buf.freeze(), peer, app, slots).await;
        };
        let Head {
            mut req,
            len,
            keep_alive,
        } = *head;
        buf.advance(len);
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(SendfileOk);
        let resp = match tokio::time::timeout(REQUEST_TIMEOUT, app.clone().oneshot(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => match e {},
            Err(_) => return Err(timed_out("handler", REQUEST_TIMEOUT)),
        };
        if !respond(&mut sock, resp, keep_alive).await? || !keep_alive {
            sock.shutdown().await.ok();
            return Ok(());
        }
    }
}

/// Writes `resp`; false when the connection cannot carry another response.
async fn respond(
    sock: &mut TcpStream,
    resp: Response<axum::body::Body>,
    keep_alive: bool,
) -> io::Result<bool> {
    let (mut parts, body) = resp.into_parts();
    let file = parts.extensions.remove::<SendfileBody>();
    let small = match &file {
        Some(_) => Bytes::new(),
        None => match axum::body::to_bytes(body, MAX_SMALL_BODY).await {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot collect a boot-plane response body");
                return Ok(false);
            }
        },
    };
    let status = parts.status;
    let bodiless = status == StatusCode::NOT_MODIFIED
        || status == StatusCode::NO_CONTENT
        || status.is_informational();
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    parts.headers.remove(header::CONNECTION);
    if bodiless {
        parts.headers.remove(header::CONTENT_LENGTH);
    } else if file.is_none() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(small.len()));
    }
    if !parts.headers.contains_key(header::DATE) {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        if let Ok(v) = HeaderValue::from_str(&now) {
            parts.headers.insert(header::DATE, v);
        }
    }
    if !keep_alive {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if !bodiless {
        head.extend_from_slice(&small);
    }
    if file.is_some() {
        // Hold the head back until the first file bytes join it, and send full segments
        // (nginx's `tcp_nopush`); uncorked below, which pushes out the tail.
        socket2::SockRef::from(&*sock).set_cork(true).ok();
    }
    tokio::time::timeout(STALL_TIMEOUT, sock.write_all(&head))
        .await
        .map_err(|_| timed_out("response head", STALL_TIMEOUT))??;
    if let Some(f) = file {
        let sent = send_file(sock, &f.file, f.offset, f.count).await;
        socket2::SockRef::from(&*sock).set_cork(false).ok();
        Metrics::inc_by(&f.state.metrics.http_bytes, *sent.as_ref().unwrap_or(&0));
        if sent? < f.count {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sends `count` bytes of `file` from `offset` with `sendfile(2)`; returns how many went out
/// (fewer when the file shrank under us).
async fn send_file(
    sock: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    count: u64,
) -> io::Result<u64> {
    let mut off = offset;
    let end = offset.saturating_add(count);
    while off < end {
        let want = usize::try_from(end - off)
            .unwrap_or(SENDFILE_MAX)
            .min(SENDFILE_MAX);
        match sock.try_io(Interest::WRITABLE, || {
            sendfile_once(sock, file, &mut off, want)
        }) {
            Ok(0) => {
                warn!(
                    sent = off - offset,
                    count, "artifact shrank while being served"
                );
                break;
            }
            // Let the worker's other connections run before the next chunk (nginx's
            // `sendfile_max_chunk`): a receiver that keeps draining would otherwise hold the
            // worker thread for the whole file while the other sockets sit empty.
            Ok(_) => tokio::task::yield_now().await,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(STALL_TIMEOUT, sock.writable())
                    .await
                    .map_err(|_| {
                        timed_out("a socket-buffer's worth of the body", STALL_TIMEOUT)
                    })??
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(off - offset)
}

/// One `sendfile(2)` call from `file` at `*off` to `sock`, advancing `*off` (the file's own
/// position is left alone, so concurrent transfers of one open file do not interfere).
fn sendfile_once(
    sock: &TcpStream,
    file: &std::fs::File,
    off: &mut u64,
    count: usize,
) -> io::Result<usize> {
    rustix::fs::sendfile(sock, file, Some(off), count).map_err(io::Error::from)
}

/// Serves the rest of the connection with hyper, replaying the bytes already read.
async fn handoff(
    sock: TcpStream,
    read: Bytes,
    peer: SocketAddr,
    app: Router,
    slots: &Slots,
) -> io::Result<()> {
    crate::http_serve::serve_http1(Prefixed { read, sock }, peer, app, slots).await;
    Ok(())
}

/// A socket whose first reads return bytes already taken from it.
struct Prefixed {
    read: Bytes,
    sock: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(out.remaining());
            let chunk = self.read.split_to(n);
            out.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.sock).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.sock).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.sock).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.sock.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let ours = |b: &[u8]| match parse_head(b) {
            Parsed::Ours(h) => Some((h.len, h.keep_alive)),
            _ => None,
        };
        let get = b"GET /files/k HTTP/1.1\r\nHost: x\r\n\r\nGET /";
        assert_eq!(ours(get), Some((get.len() - 5, true)));
        assert_eq!(
            ours(b"GET /ipxe/a HTTP/1.1\r\nConnection: close\r\n\r\n").map(|h| h.1),
            Some(false)
        );
        assert_eq!(
            ours(b"GET /s/t/o HTTP/1.0\r\n\r\n").map(|h| h.1),
            Some(false)
        );
        assert!(matches!(
            parse_head(b"GET /files/k HTTP/1.1\r\nHo"),
            Parsed::Partial
        ));
        for hyper in [
            &b"HEAD /files/k HTTP/1.1\r\n\r\n"[..],
            b"GET /boot/52-54-00-00-00-01.ipxe HTTP/1.1\r\n\r\n",
            b"GET /files/k HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /files/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /files/k HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(matches!(parse_head(hyper), Parsed::Hyper), "{hyper:?}");
        }
    }
}
