//! FlareDB: the cluster's data store — namespaced, revisioned key-value data with
//! compare-and-swap (`iam`, `metrics`, `events`, …) and time series, replicated with the same
//! Raft core as Chainfire (`plasmacloud-raft`).
//!
//! Ports: 2479 API, 2480 Raft, both mutual TLS with the node's certificate (as Chainfire's:
//! see `plasmacloud_raft::access`). Flags as Chainfire's (`PLASMACLOUD_FLAREDB_…`), plus
//! `--chainfire URL[,URL…]`: when set, the node registers itself under the Chainfire key
//! `flaredb/members/{id}` (value: `{"id","api_addr","raft_addr"}`) and keeps checking; `/health`
//! then reports `"chainfire":"connected"|"disconnected"`; and it re-reads Chainfire's
//! `pki/revoked/` every two seconds (`plasmacloud_raft::revocation`), refusing those serials.
//! The link speaks mutual TLS with the node's own certificate. Chainfire being down never
//! blocks FlareDB's reads or writes (the last known revocation list stays in force).
//!
//! The namespaces `iam` and `system` are node-only: an operator's certificate is refused there.
//!
//! API: the membership calls, `/health`, `/readyz` and `/metrics` (series prefixed `flaredb_`)
//! are Chainfire's; data:
//! - `PUT|GET|DELETE /v1/ns/{ns}/kv/{key}`, `GET /v1/ns/{ns}/kv?prefix=P` — Chainfire's KV
//!   semantics per namespace (`[a-z0-9_-]{1,32}`), including `?prev_revision=N` /
//!   `?prev_exist=false` compare-and-swap (409 on mismatch);
//! - `POST /v1/ts/{series}/points` `{"points":[{"t":<unix ms>,"v":<f64>}]}` (a point at an
//!   existing `t` replaces it); `GET /v1/ts/{series}?from=MS&to=MS` (`from <= t < to`) →
//!   `{"points":[…]}`; `&step=MS` → per-bucket `{"t","v"(avg),"min","max","count"}`.
//!
//! Time-series retention: `--ts-retention-secs N` (`ts_retention_secs` in `--config`,
//! `PLASMACLOUD_FLAREDB_TS_RETENTION_SECS`), 60 s up to 100 years; 0 or unset (the default)
//! keeps every point, so no data disappears unless an operator asks for it (a default would
//! have to guess what the series are for and how large the disk is). With it, queries never
//! answer a point older than `now − N`, and the leader trims those points through Raft, alike
//! on every replica (`plasmacloud_raft::retention`; `flaredb_ts_horizon_ms` in `/metrics`).
//! Give every node the same value.
//!
//! Followers forward writes and linearizable reads to the leader (see `plasmacloud_raft`).

use std::sync::Arc;
use std::time::Duration;

use plasmacloud_pki::TlsFiles;
use plasmacloud_raft::config::FileConfig;
use plasmacloud_raft::node::NodeState;
use plasmacloud_raft::serve::Server;
use plasmacloud_raft::Error;
use plasmacloud_store_client::StoreClient;

/// The service name written in the data directory's marker.
pub const SERVICE: &str = "flaredb";
/// Environment variable prefix.
pub const ENV_PREFIX: &str = "PLASMACLOUD_FLAREDB";
/// How `flaredb-server` starts: API port 2479, Raft 2480 (see `plasmacloud_raft::serve`).
pub const SERVER: Server = Server::new(SERVICE, ENV_PREFIX, 2479, 2480);
/// The Chainfire prefix FlareDB nodes register under.
pub const REGISTRATION_PREFIX: &str = "flaredb/members/";
/// How often the registration is checked.
pub const REGISTRATION_INTERVAL: Duration = Duration::from_secs(2);

/// The client for `--chainfire` (or `chainfire` in `--config`), speaking mutual TLS with this
/// node's certificate (`tls_cert`, `tls_key`, `tls_ca`); `None` when no endpoint is set. A bad
/// list or certificate is a configuration error, so `--check` reports it. Without the TLS
/// files (only under `--dev-plaintext`, which the server checks) the link is plain too.
pub fn chainfire_client(cfg: &FileConfig) -> Result<Option<StoreClient>, Error> {
    let list = match cfg.chainfire.as_deref().map(str::trim) {
        Some(list) if !list.is_empty() => list,
        _ => return Ok(None),
    };
    let endpoints: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let tls = cfg.tls_cert.is_some() || cfg.tls_key.is_some() || cfg.tls_ca.is_some();
    if let Some(plain) = endpoints.iter().find(|e| e.starts_with("http://")) {
        if tls {
            return Err(Error::Config(format!(
                "--chainfire {plain}: Chainfire speaks TLS; write https:// (or a bare ip:port)"
            )));
        }
    }
    let mut b = StoreClient::builder(endpoints.iter().copied()).timeout(Duration::from_secs(2));
    if let (Some(cert), Some(key), Some(ca)) = (&cfg.tls_cert, &cfg.tls_key, &cfg.tls_ca) {
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        };
        b = b
            .tls_files(&files)
            .map_err(|e| Error::Config(format!("--chainfire: {e}")))?;
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::Config(format!("--chainfire {list:?}: {e}")))
}

/// The registration value for this node.
pub fn registration_value(st: &NodeState) -> String {
    serde_json::json!({
        "id": st.id,
        "api_addr": st.cfg.api_addr.to_string(),
        "raft_addr": st.cfg.raft_addr.to_string(),
    })
    .to_string()
}

/// Keeps `flaredb/members/{id}` in Chainfire current and the health field up to date. Runs
/// forever; every Chainfire call has a short deadline and failures only flip the link state.
pub async fn keep_registered(st: Arc<NodeState>, chainfire: StoreClient) {
    st.set_chainfire_connected(false);
    let key = format!("{REGISTRATION_PREFIX}{}", st.id);
    let value = registration_value(&st);
    loop {
        let res = match chainfire.get(&key).await {
            Ok(Some(v)) if v.value == value => Ok(()),
            Ok(_) => chainfire.put(&key, &value).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => {
                if st.chainfire_status() != Some("connected") {
                    tracing::info!(%key, "registered in chainfire");
                }
                st.set_chainfire_connected(true);
            }
            Err(e) => {
                if st.chainfire_status() != Some("disconnected") {
                    tracing::warn!(error = %e, "chainfire unreachable; serving on regardless");
                }
                st.set_chainfire_connected(false);
            }
        }
        tokio::time::sleep(REGISTRATION_INTERVAL).await;
    }
}
