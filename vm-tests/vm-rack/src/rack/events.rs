//! The rack's event feed: pxe-server's boot events and the nodes' phase reports, read from
//! pxe-server's management API, or (in dnsmasq runs, where there is no pxe-server) taken by a
//! small sink that stands in for that API on the same address.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::http::Http;
use crate::prepare::{MGMT_PORT, SERVER_IP};

/// One observed event (server boot events and node phase reports alike).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Event {
    /// The server's sequence number.
    #[serde(default)]
    pub seq: u64,
    /// When it happened (Unix milliseconds).
    #[serde(default)]
    pub at_ms: u64,
    /// The node it concerns, when known.
    #[serde(default)]
    pub node: Option<String>,
    /// The MAC it concerns (server events).
    #[serde(default)]
    pub mac: Option<String>,
    /// `node` for a phase report, else the server.
    #[serde(default)]
    pub source: String,
    /// What happened.
    pub phase: String,
    /// `started`, `ok`, `failed` (or the server's).
    pub status: String,
    /// Free text.
    #[serde(default)]
    pub detail: String,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The event feed: pxe-server's management API, or our own sink (dnsmasq runs).
pub struct Feed {
    http: Http,
    since: u64,
    sink: Option<Arc<Mutex<Vec<Event>>>>,
}

impl Feed {
    /// A feed from pxe-server's API (`sink` none) or from the sink.
    pub fn new(http: Http, sink: Option<Arc<Mutex<Vec<Event>>>>) -> Self {
        Feed {
            http,
            since: 0,
            sink,
        }
    }

    /// The events since the last poll (none when the server did not answer).
    pub async fn poll(&mut self) -> Vec<Event> {
        if let Some(sink) = &self.sink {
            return sink
                .lock()
                .map(|mut v| v.drain(..).collect())
                .unwrap_or_default();
        }
        let url = format!(
            "https://{SERVER_IP}:{MGMT_PORT}/v1/events?since={}",
            self.since
        );
        let Ok(v) = self.http.get_json(&url).await else {
            return Vec::new();
        };
        let evs: Vec<Event> = serde_json::from_value(v["events"].clone()).unwrap_or_default();
        if let Some(n) = v["next"].as_u64() {
            self.since = self.since.max(n);
        }
        evs
    }
}

/// Starts the phase-report sink that stands in for pxe-server's management API in dnsmasq runs:
/// HTTPS on the same address with a certificate of the rack's CA (in `pxe_state`), as the
/// nodes trust nothing else.
pub async fn start_sink(pxe_state: &std::path::Path) -> anyhow::Result<Arc<Mutex<Vec<Event>>>> {
    use axum::extract::{Path as AxPath, State};
    let store: Arc<Mutex<Vec<Event>>> = Arc::default();
    async fn report(
        State(s): State<Arc<Mutex<Vec<Event>>>>,
        AxPath(name): AxPath<String>,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return axum::http::StatusCode::BAD_REQUEST;
        };
        let ev = Event {
            seq: 0,
            at_ms: now_ms(),
            node: Some(name),
            mac: None,
            source: "node".into(),
            phase: v["phase"].as_str().unwrap_or("?").to_string(),
            status: v["status"].as_str().unwrap_or("?").to_string(),
            detail: v["detail"].as_str().unwrap_or("").to_string(),
        };
        if let Ok(mut g) = s.lock() {
            g.push(ev);
        }
        axum::http::StatusCode::ACCEPTED
    }
    let app = axum::Router::new()
        .route("/v1/nodes/{name}/events", axum::routing::post(report))
        .with_state(store.clone());
    let ca = plasmacloud_pki::ClusterCa::load(&pxe_state.join("pki"))
        .context("while loading the rack's CA")?;
    let ip: std::net::IpAddr = SERVER_IP.parse().context("the server address")?;
    let spec = plasmacloud_pki::CertSpec {
        ips: vec![ip],
        server_auth: true,
        ..plasmacloud_pki::CertSpec::operator(plasmacloud_pki::Identity::operator("vm-rack-sink")?)
    };
    let (cert, key) = ca.issue_with_new_key(&spec)?;
    let tls =
        plasmacloud_pki::tls::TlsMaterial::from_pem("sink", &cert.cert_pem, &key, ca.cert_pem())?;
    let config = tls.server_config(
        plasmacloud_pki::tls::ClientAuth::Optional,
        &plasmacloud_pki::Revocations::default(),
    )?;
    let l = tokio::net::TcpListener::bind((SERVER_IP, MGMT_PORT))
        .await
        .context("while binding the phase-report sink")?;
    let l = plasmacloud_pki::TlsListener::spawn("sink", l, config)?;
    tokio::spawn(async move {
        let _ = axum::serve(
            l,
            app.into_make_service_with_connect_info::<plasmacloud_pki::Peer>(),
        )
        .await;
    });
    Ok(store)
}
