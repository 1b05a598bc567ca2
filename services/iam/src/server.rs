//! Running the API: bind, log `listening on ADDR`, serve until SIGINT/SIGTERM, and keep the
//! background chores (publishing the signing key until FlareDB accepts it, pruning expired
//! revocations) going meanwhile.

use crate::api::router;
use crate::service::Iam;
use crate::store::Store;
use crate::{IamError, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often expired revocation records are removed from FlareDB.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Binds `listen`, logs `listening on <addr>` (the line tests and operators wait for), and
/// serves until `shutdown` resolves.
pub async fn serve<S: Store>(
    iam: Arc<Iam<S>>,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| IamError::Config(format!("cannot bind listen_addr {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| IamError::Internal(format!("local_addr: {e}")))?;

    let chores = tokio::spawn(background_chores(iam.clone()));
    tracing::info!(addr = %local, kid = %iam.kid(), "listening on {local}");
    let served = axum::serve(listener, router(iam))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| IamError::Internal(format!("serving the API: {e}")));
    chores.abort();
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
                pause = (pause * 2).min(Duration::from_secs(30));
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
