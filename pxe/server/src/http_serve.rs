//! hyper with the listeners' bounds ([`crate::limits`]): the management and enrollment
//! listeners' accept loop over [`TlsListener`] ([`serve_tls`]), and the one way any connection
//! is handed to hyper ([`serve_http1`]), the boot plane's included (`http_conn`'s handoff).
//!
//! Every connection served here has hyper's header-read timeout ([`HEADER_TIMEOUT`], which also
//! bounds an idle kept-alive connection), a stall timeout on its I/O ([`StallIo`],
//! [`STALL_TIMEOUT`]), and a deadline on each handler ([`REQUEST_TIMEOUT`], answered with 408).
//! The TLS handshake itself is bounded by `plasmacloud_pki::TlsListener` (at most 256 at once,
//! 10 s each); the connections it yields are counted against the listener's [`Slots`].

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::Router;
use http::{Request, StatusCode};
use plasmacloud_pki::TlsListener;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;
use tracing::debug;

use crate::limits::{Slots, StallIo, HEADER_TIMEOUT, REQUEST_TIMEOUT, STALL_TIMEOUT};

/// Serves one connection with hyper (HTTP/1), every request carrying `ConnectInfo(info)`;
/// a timeout that closes it is counted on `slots`.
pub async fn serve_http1<I, A>(io: I, info: A, app: Router, slots: &Slots)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Clone + Send + Sync + std::fmt::Debug + 'static,
{
    let io = hyper_util::rt::TokioIo::new(StallIo::new(io, STALL_TIMEOUT));
    let who = info.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(info.clone()));
        let app = app.clone();
        async move {
            Ok::<_, Infallible>(
                match tokio::time::timeout(REQUEST_TIMEOUT, app.oneshot(req)).await {
                    Ok(r) => r.unwrap_or_else(|e| match e {}),
                    Err(_) => {
                        let mut r = axum::response::Response::new(axum::body::Body::from(format!(
                            "request not answered within {} s\n",
                            REQUEST_TIMEOUT.as_secs()
                        )));
                        *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
                        r
                    }
                },
            )
        }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, svc)
        .with_upgrades()
        .await;
    if let Err(e) = r {
        if is_timeout(&e) {
            slots.note_timeout();
            debug!(listener = slots.name, peer = ?who, error = %e, "connection closed by a timeout");
        } else {
            debug!(listener = slots.name, peer = ?who, error = %e, "connection ended with an error");
        }
    }
}

/// A header-read timeout, or a stall ([`StallIo`]'s `TimedOut`).
fn is_timeout(e: &hyper::Error) -> bool {
    if e.is_timeout() {
        return true;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        src = s.source();
    }
    false
}

/// Accepts TLS connections from `listener` for ever and serves `app` on each (handlers get
/// `ConnectInfo<Peer>`), holding at most what `slots` allows.
pub async fn serve_tls(mut listener: TlsListener, app: Router, slots: Arc<Slots>) {
    use axum::serve::Listener;
    loop {
        let (io, peer) = listener.accept().await;
        let slot = match slots.try_take(peer.addr.ip()) {
            Ok(s) => s,
            Err(_) => continue, // dropped: the client sees the connection closed
        };
        let app = app.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_http1(io, peer, app, &slots).await;
        });
    }
}
