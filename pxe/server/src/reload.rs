//! Replacing the bundle under a running server: on `SIGHUP`, and when the bundle directory's
//! `manifest.json` changes.
//!
//! The rule: **a new bundle is loaded and checked whole before it is used, then swapped in one
//! step; a bundle that fails any check is refused with one log line naming the problem, and
//! the old one keeps serving.** The checks are [`Bundle::load`]'s (the contract parses, the
//! manifest parses and matches the contract, every file it lists is there with its size and
//! sha256) and [`check_replacement`]'s (the same cluster, the same boot server, the nodes on
//! the boot subnet in full mode, the contract's CA pin). Reloads run one at a time, on a
//! blocking thread (a load reads every file once).
//!
//! Why a polled stat rather than inotify: the manifest is stat'ed (following symlinks) every
//! [`POLL_EVERY`], and any change of its device, inode, size or mtime triggers a load. That
//! sees every way operators replace a bundle — a symlink flipped to a new directory, a
//! directory renamed over the old one (`netboot-image bundle --out` does this), a manifest
//! rewritten in place — where an inotify watch on the directory misses a swap of the
//! directory (or of a symlink above it) unless every parent is watched too, and costs one
//! `stat` per 2 s. A change that was tried and refused is not tried again until the manifest
//! changes once more (or `SIGHUP`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::bundle::{Bundle, FileId};
use crate::config::check_replacement;
use crate::state::{Metrics, State};
use crate::ServerError;

/// How often the manifest is stat'ed for a change.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// A new bundle is current (its version).
    Swapped(String),
    /// The bundle and contract on disk are the ones being served.
    Unchanged,
}

/// Loads the bundle and contract from their configured paths, checks them against the running
/// server and, when they pass, makes them current. Blocking. `why` names the trigger in logs.
pub fn reload(state: &State, why: &str) -> Result<Reloaded, ServerError> {
    let cfg = &state.config;
    let current = state.bundles.current();
    let outcome = Bundle::load(&cfg.bundle_dir, &cfg.cluster_path).and_then(|new| {
        if new.version == current.version && new.contract_sha256 == current.contract_sha256 {
            return Ok(None);
        }
        check_replacement(cfg, &current, &new, &state.ca.fingerprint())?;
        Ok(Some(new))
    });
    match outcome {
        Ok(None) => {
            info!(trigger = why, version = %current.version, "bundle reload: nothing changed; still serving {}", current.short());
            Ok(Reloaded::Unchanged)
        }
        Ok(Some(new)) => {
            let new = Arc::new(new);
            if state.config.secure_boot_dir.is_some() {
                crate::secure_boot::warn_unsigned_kernels(&new);
            }
            let (old, dropped) = state.bundles.swap(new.clone());
            Metrics::inc(&state.metrics.bundle_reloads_ok);
            info!(
                trigger = why,
                version = %new.version,
                previous = %old.version,
                files = new.manifest.files.len(),
                nodes = new.contract.nodes.len(),
                "bundle loaded: serving {} (was {}; boots that began on it keep it for {} s)",
                new.short(),
                old.short(),
                crate::bundle::RETAIN.as_secs()
            );
            for b in dropped {
                retired(&b);
            }
            Ok(Reloaded::Swapped(new.version.clone()))
        }
        Err(e) => {
            Metrics::inc(&state.metrics.bundle_reloads_refused);
            warn!(
                trigger = why,
                serving = %current.version,
                error = %e,
                "bundle refused: {e}; still serving {}",
                current.short()
            );
            Err(e)
        }
    }
}

fn retired(b: &Bundle) {
    info!(
        version = %b.version,
        "bundle {} retired: its files are closed (its directory may be removed)",
        b.short()
    );
}

/// Reloads on `SIGHUP` and when the manifest changes, for ever; drops replaced bundles once
/// they are retained long enough.
pub async fn watch(state: Arc<State>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot catch SIGHUP; the bundle reloads only when its manifest changes");
            None
        }
    };
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let dir = state.config.bundle_dir.clone();
    let mut tried: Option<FileId> = Some(state.bundles.current().manifest_id);
    loop {
        let why = tokio::select! {
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => "SIGHUP",
            _ = tick.tick() => {
                for b in state.bundles.prune(Instant::now()) {
                    retired(&b);
                }
                let now = FileId::of_manifest(&dir);
                if now.is_none() || now == tried {
                    // Gone for a moment (a directory being swapped), or what was last tried.
                    continue;
                }
                "manifest.json changed"
            }
        };
        tried = FileId::of_manifest(&dir);
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || reload(&st, why)).await;
    }
}
