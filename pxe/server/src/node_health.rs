//! pxe-server asks each contract node's services how they are: Chainfire's and FlareDB's
//! `GET /health` (healthy or not, and the node's Raft role in that store) and IAM's, over TLS
//! with pxe-server's own certificate of the cluster CA, every [`POLL_INTERVAL`], and hands the
//! answers to the rack view ([`State::note_health`]), which tells the rack page when one
//! changes.
//!
//! Why ask rather than be told: a node reports its phases once, while it boots, but its Raft
//! role changes whenever a leader fails or steps down, and whether its services answer is
//! worth knowing long after its last report; the answer comes from the node's own certificate
//! (the CA is checked), and `/health` needs no credential, so nothing new is trusted and the
//! nodes' first-boot code does not change. The cost: three small HTTPS requests per node per
//! poll on kept-alive connections, each bounded by [`POLL_TIMEOUT`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use plasmacloud_contract::NodeSpec;
use plasmacloud_pki::tls::TlsMaterial;
use plasmacloud_store_client::http::Http;
use plasmacloud_store_client::StoreClient;

use crate::rack_view::{NodeHealth, ServiceHealth};
use crate::state::{now_ms, State};

/// How often every node is asked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How long one answer may take.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest detail kept from an error.
const DETAIL_CHARS: usize = 200;

/// The clients of one node (kept while its addresses stay the same).
struct NodeClients {
    key: (String, String, String),
    chainfire: Option<StoreClient>,
    flaredb: Option<StoreClient>,
    iam: Option<Http>,
}

impl NodeClients {
    fn new(n: &NodeSpec, tls: &TlsMaterial) -> Self {
        let store = |addr: String| {
            StoreClient::builder([addr])
                .tls(tls.clone())
                .timeout(POLL_TIMEOUT)
                .build()
                .ok()
        };
        let iam = Http::new(|| {
            tls.reqwest_builder()
                .map(|b| b.timeout(POLL_TIMEOUT).connect_timeout(POLL_TIMEOUT))
                .unwrap_or_default()
        })
        .ok();
        Self {
            key: Self::key_of(n),
            chainfire: store(n.chainfire_api()),
            flaredb: store(n.flaredb_api()),
            iam,
        }
    }

    fn key_of(n: &NodeSpec) -> (String, String, String) {
        (n.chainfire_api(), n.flaredb_api(), n.iam_api())
    }
}

fn short(text: &str) -> String {
    text.chars().take(DETAIL_CHARS).collect()
}

async fn store_health(service: &str, client: Option<&StoreClient>) -> ServiceHealth {
    let mut h = ServiceHealth {
        service: service.into(),
        result: "unreachable".into(),
        role: None,
        detail: String::new(),
    };
    let Some(client) = client else {
        h.detail = "no client (bad address in the contract?)".into();
        return h;
    };
    match client.health().await {
        Ok(a) => {
            h.result = if a.is_healthy() { "ok" } else { "unhealthy" }.into();
            h.role = Some(a.raft.as_str().to_string());
            h.detail = short(a.reason.as_deref().unwrap_or_default());
        }
        Err(e) => h.detail = short(&e.to_string()),
    }
    h
}

async fn iam_health(http: Option<&Http>, addr: &str) -> ServiceHealth {
    let mut h = ServiceHealth {
        service: "iam".into(),
        result: "unreachable".into(),
        role: None,
        detail: String::new(),
    };
    let Some(http) = http else {
        h.detail = "no client".into();
        return h;
    };
    let req = match http.client().get(format!("https://{addr}/health")).build() {
        Ok(r) => r,
        Err(e) => {
            h.detail = short(&e.to_string());
            return h;
        }
    };
    match http.send(req, true).await {
        Ok(reply) => {
            let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            let healthy = reply.status.is_success() && v["status"] == "healthy";
            h.result = if healthy { "ok" } else { "unhealthy" }.into();
            if !healthy {
                h.detail = short(
                    v["error"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("answered {}", reply.status))
                        .as_str(),
                );
            }
        }
        Err(e) => h.detail = short(&e.to_string()),
    }
    h
}

async fn poll_node(name: String, iam_addr: String, c: &NodeClients) -> (String, NodeHealth) {
    let (cf, fd, iam) = tokio::join!(
        store_health("chainfire", c.chainfire.as_ref()),
        store_health("flaredb", c.flaredb.as_ref()),
        iam_health(c.iam.as_ref(), &iam_addr),
    );
    let now = now_ms();
    (
        name,
        NodeHealth {
            checked_at_ms: now,
            since_ms: now,
            services: vec![cf, fd, iam],
        },
    )
}

/// Polls every node of the current contract for ever (the contract may change with a bundle).
pub async fn watch(state: Arc<State>, tls: TlsMaterial) {
    let mut clients: HashMap<String, NodeClients> = HashMap::new();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let bundle = state.bundles.current();
        let nodes = &bundle.contract.nodes;
        clients.retain(|name, c| {
            nodes
                .iter()
                .any(|n| &n.name == name && NodeClients::key_of(n) == c.key)
        });
        for n in nodes {
            clients
                .entry(n.name.clone())
                .or_insert_with(|| NodeClients::new(n, &tls));
        }
        let polls = nodes.iter().filter_map(|n| {
            clients
                .get(&n.name)
                .map(|c| poll_node(n.name.clone(), n.iam_api(), c))
        });
        for (name, h) in futures::future::join_all(polls).await {
            state.note_health(&name, h);
        }
    }
}
