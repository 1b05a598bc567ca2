//! What the boot server says: the bundle version it serves, and per node the version it
//! booted last and its last boot event.
//!
//! [`BootView`] is the seam: [`PxeStatus`] reads pxe-server's `GET /v1/status` with the
//! operator certificate (what `rackctl` uses); a harness without a pxe-server (the process
//! rack) gives its own.

use std::collections::BTreeMap;
use std::fmt::Debug;

use futures::future::BoxFuture;

use crate::operator::Operator;
use crate::{Error, Result};

/// One node as the boot server saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeBoot {
    /// The bundle version of the last kernel it fetched (the bundle it booted).
    pub version: Option<String>,
    /// When (RFC 3339).
    pub at: Option<String>,
    /// Its last event: phase and status (e.g. `cluster-ready ok`).
    pub last_event: Option<String>,
    /// When that event came (RFC 3339).
    pub last_event_at: Option<String>,
}

/// The boot server's view at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootSnapshot {
    /// The bundle version it serves.
    pub served: Option<String>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeBoot>,
}

/// Where boot versions come from.
pub trait BootView: Send + Sync + Debug {
    /// The view now.
    fn snapshot(&self) -> BoxFuture<'_, Result<BootSnapshot>>;

    /// Does it know which version each node booted? (A rollout's health gate checks the
    /// version only when it does.)
    fn knows_versions(&self) -> bool {
        true
    }

    /// Tells the boot server the machine with `mac` is gone (retired, or its name given to
    /// another MAC), so its DHCP lease is released and its address may go to another MAC.
    /// The address released, or `None` when it held none (or there is no server to tell).
    fn release_lease<'a>(&'a self, mac: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        let _ = mac;
        Box::pin(async { Ok(None) })
    }
}

/// Releases `mac`'s lease after a contract change that let the machine go; a boot server
/// that cannot be told is a warning, not a failure (the lease lapses on its own).
pub async fn release_departed(boot: &dyn BootView, node: &str, mac: &str) -> Option<String> {
    match boot.release_lease(mac).await {
        Ok(ip) => ip,
        Err(e) => {
            tracing::warn!(%node, %mac, error = %e, "the boot server kept the departed machine's lease; it lapses on its own");
            None
        }
    }
}

/// pxe-server's management API.
#[derive(Debug, Clone)]
pub struct PxeStatus {
    /// `https://ADDRESS:PORT` of its management listener.
    pub url: String,
    http: reqwest::Client,
}

impl PxeStatus {
    /// pxe-server at `url`, asked with the operator's certificate.
    pub fn new(url: &str, operator: &Operator) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            http: operator.http().clone(),
        }
    }
}

/// Reads `/v1/status`'s JSON (leniently: only the fields used here).
pub fn parse_status(v: &serde_json::Value) -> BootSnapshot {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let mut nodes = BTreeMap::new();
    for n in v["nodes"].as_array().into_iter().flatten() {
        let Some(name) = n["name"].as_str() else {
            continue;
        };
        let last = &n["last_event"];
        nodes.insert(
            name.to_string(),
            NodeBoot {
                version: s(&n["bundle"]["version"]),
                at: s(&n["bundle"]["at"]),
                last_event: last["phase"]
                    .as_str()
                    .map(|p| format!("{p} {}", last["status"].as_str().unwrap_or(""))),
                last_event_at: s(&last["at"]),
            },
        );
    }
    BootSnapshot {
        served: s(&v["bundle"]["version"]),
        nodes,
    }
}

impl PxeStatus {
    /// Sends `req` (to `url`) and reads its JSON answer; any failure names pxe-server's URL.
    async fn call(&self, req: reqwest::RequestBuilder, url: &str) -> Result<serde_json::Value> {
        let r = req.send().await.map_err(|e| {
            Error::Config(format!(
                "pxe-server at {url}: {e} (pass its management URL with --pxe)"
            ))
        })?;
        if !r.status().is_success() {
            return Err(Error::Config(format!(
                "pxe-server at {url} answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )));
        }
        r.json()
            .await
            .map_err(|e| Error::Config(format!("pxe-server at {url}: {e}")))
    }
}

impl BootView for PxeStatus {
    fn snapshot(&self) -> BoxFuture<'_, Result<BootSnapshot>> {
        Box::pin(async move {
            let url = format!("{}/v1/status", self.url);
            let v = self.call(self.http.get(&url), &url).await?;
            Ok(parse_status(&v))
        })
    }

    fn release_lease<'a>(&'a self, mac: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let url = format!("{}/v1/leases/{mac}", self.url);
            let v = self.call(self.http.delete(&url), &url).await?;
            Ok(v["released"]["ip"].as_str().map(str::to_string))
        })
    }
}

/// No boot server to ask (versions unknown).
#[derive(Debug, Clone, Default)]
pub struct NoBootView;

impl BootView for NoBootView {
    fn snapshot(&self) -> BoxFuture<'_, Result<BootSnapshot>> {
        Box::pin(async { Ok(BootSnapshot::default()) })
    }

    fn knows_versions(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_gives_versions_and_last_events() {
        let v = serde_json::json!({
            "cluster": "c", "bundle": {"version": "abc", "dir": "/b"},
            "nodes": [
                {"name": "node01", "mac": "m", "bundle": {"version": "abc", "at": "2026-01-01T00:00:00Z"},
                 "last_event": {"phase": "cluster-ready", "status": "ok", "at": "2026-01-01T00:01:00Z"}},
                {"name": "node02", "bundle": null, "last_event": null}
            ]
        });
        let s = parse_status(&v);
        assert_eq!(s.served.as_deref(), Some("abc"));
        assert_eq!(s.nodes["node01"].version.as_deref(), Some("abc"));
        assert_eq!(
            s.nodes["node01"].last_event.as_deref(),
            Some("cluster-ready ok")
        );
        assert_eq!(s.nodes["node02"], NodeBoot::default());
    }
}
