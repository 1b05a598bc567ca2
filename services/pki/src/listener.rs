//! Serving axum over mutual TLS, with each connection's verified client certificate handed to
//! the handlers.
//!
//! [`TlsListener`] accepts TCP connections and runs each TLS handshake in a task of its own
//! (bounded in number and in time), so a slow or silent client never holds up the accept loop.
//! Serve it with `into_make_service_with_connect_info::<Peer>()`; a handler (or [`guard`])
//! then reads [`Peer`] from `ConnectInfo`. A certificate reaches a handler only after rustls
//! verified it against the cluster CA and the revocation set.
//!
//! [`guard`] is the middleware for routes that need a caller: it refuses a connection without
//! a certificate (401), one whose certificate names no PlasmaCloud identity or the wrong role,
//! or one revoked since the connection opened (403), and puts the [`Caller`] into the request's
//! extensions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;

use crate::identity::{inspect, PeerCert, Role};
use crate::tls::Revocations;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many handshakes may run at once per listener; more wait in the kernel's accept queue.
pub const MAX_HANDSHAKES: usize = 256;

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The verified client certificate, if the client presented one.
    pub cert: Option<Arc<PeerCert>>,
}

/// The caller of a request that passed [`guard`] (a request extension).
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<PeerCert>);

/// A listener that yields TLS streams and their [`Peer`]s.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `config`; `name` labels log lines.
    pub fn spawn(
        name: &'static str,
        tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                // Stop (and release the port) once nobody serves this listener any more.
                let accepted = tokio::select! {
                    a = tcp.accept() => a,
                    _ = tx.closed() => return,
                };
                let (tcp, addr) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let cert = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|der| inspect(der).ok())
                                .map(Arc::new);
                            let _ = tx.send((stream, Peer { addr, cert })).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(listener = name, %addr, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, %addr, "TLS handshake timed out")
                        }
                    }
                });
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            cert: None,
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// What a guarded route needs of its caller.
#[derive(Debug, Clone)]
pub struct Need {
    /// The roles allowed (empty: any role).
    pub roles: Vec<Role>,
    /// Serials refused even on connections opened before they were revoked.
    pub revoked: Revocations,
}

impl Need {
    /// Any certificate of the cluster CA (node or operator).
    pub fn cluster_certificate(revoked: &Revocations) -> Self {
        Self {
            roles: Vec::new(),
            revoked: revoked.clone(),
        }
    }

    /// A node certificate.
    pub fn node(revoked: &Revocations) -> Self {
        Self {
            roles: vec![Role::Node],
            revoked: revoked.clone(),
        }
    }
}

fn refuse(status: StatusCode, msg: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

/// Decides whether `peer` may call a route that needs `need`; the error is the answer.
pub fn authorize(peer: &Peer, need: &Need) -> Result<Arc<PeerCert>, Box<Response>> {
    let Some(cert) = &peer.cert else {
        return Err(Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "this route needs a client certificate of the cluster CA (a node's, or an operator's from `pxe-server pki issue --operator NAME`)".into(),
        )));
    };
    if need.revoked.is_revoked(&cert.serial) {
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            format!("certificate {} ({}) is revoked", cert.serial, cert.identity),
        )));
    }
    if !need.roles.is_empty() && !need.roles.contains(&cert.identity.role) {
        let want: Vec<&str> = need.roles.iter().map(|r| r.as_str()).collect();
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not call this route (it needs a {} certificate)",
                cert.identity,
                want.join(" or ")
            ),
        )));
    }
    Ok(cert.clone())
}

/// Middleware (`axum::middleware::from_fn_with_state(need, guard)`, as a `route_layer`):
/// refuses callers that do not meet `need`, else adds [`Caller`] to the request.
pub async fn guard(
    State(need): State<Need>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    match authorize(&peer, &need) {
        Ok(cert) => {
            req.extensions_mut().insert(Caller(cert));
            next.run(req).await
        }
        Err(r) => *r,
    }
}
