//! Running the API: bind, complete TLS handshakes with the node's certificate (client
//! certificates asked for, not required: login and tokens are open to anyone over TLS), log
//! `listening on ADDR`, serve until SIGINT/SIGTERM, and keep the background chores going
//! meanwhile: refreshing the revoked certificates from Chainfire, publishing the signing key
//! until FlareDB accepts it, pruning expired token revocations.

use crate::api::router;
use crate::cert_revocations;
use crate::service::Iam;
use crate::store::Store;
use crate::{IamError, Result};
use plasmacloud_pki::tls::{ClientAuth, TlsMaterial};
use plasmacloud_pki::{Peer, TlsListener};
use plasmacloud_store_client::StoreClient;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often expired revocation records are removed from FlareDB.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Reads the revoked certificates from `chainfire` once (so a restart does not open with an
/// empty list while Chainfire answers), binds `listen` with TLS as `tls` (revoked
/// certificates refused at the handshake), logs `listening on <addr>` (the line tests and
/// operators wait for), and serves until `shutdown` resolves.
pub async fn serve<S: Store>(
    iam: Arc<Iam<S>>,
    listen: SocketAddr,
    tls: &TlsMaterial,
    chainfire: StoreClient,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let revoked = iam.cert_revocations().clone();
    match cert_revocations::refresh_once(&chainfire, &revoked).await {
        Ok(n) => tracing::info!(revoked = n, "revocation list read from Chainfire"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the revocation list from Chainfire yet; retrying in the background")
        }
    }
    let server_config = tls
        .server_config(ClientAuth::Optional, &revoked)
        .map_err(|e| IamError::Config(format!("tls: {e}")))?;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| IamError::Config(format!("cannot bind listen_addr {listen}: {e}")))?;
    let listener = TlsListener::spawn("iam", tcp, server_config)
        .map_err(|e| IamError::Internal(format!("local_addr: {e}")))?;
    let local = axum::serve::Listener::local_addr(&listener)
        .map_err(|e| IamError::Internal(format!("local_addr: {e}")))?
        .addr;

    let chores = tokio::spawn(background_chores(iam.clone()));
    let watch = tokio::spawn(cert_revocations::watch(chainfire, revoked));
    tracing::info!(addr = %local, kid = %iam.kid(), identity = %tls.identity().identity, "listening on {local}");
    let served = axum::serve(
        listener,
        router(iam).into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|e| IamError::Internal(format!("serving the API: {e}")));
    chores.abort();
    watch.abort();
    tracing::info!("stopped");
    served
}

/// Publishes the signing key (retrying with backoff while FlareDB is away), then prunes
/// expired revocations periodically. Never returns.
async fn background_chores<S: Store>(iam: Arc<Iam<S>>) {
    let mut pause = Duration::from_millis(250);
    loop {
        match iam.ensure_key_published().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "cannot publish the signing key yet");
                tokio::time::sleep(pause).await;
                // Kept short: node tokens wait for this key.
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        match iam.prune_revocations().await {
            Ok(n) if n > 0 => tracing::info!(removed = n, "expired revocations pruned"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "revocation pruning skipped"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}
