//! The one way the harness talks HTTP, to the nodes' services and to the boot server alike:
//! every request goes through [`Http::send`], so how a request is sent is decided in one
//! place: as an operator over mutual TLS (the harness's certificate, issued by the rack's
//! pxe-server), with a 10 s deadline, and — for reads — once more on a fresh connection when a
//! pooled one broke after sending (a node that rebooted resets the connections from before
//! its reboot; `plasmacloud_store_client::http`). On top of it: JSON and text GETs that fail on
//! a non-2xx answer, and the key/value writes and reads the scenarios make through Chainfire
//! and FlareDB.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request carries.
#[derive(Debug)]
pub enum Body {
    /// Nothing.
    Empty,
    /// Raw text (a key's value).
    Text(String),
    /// A JSON document.
    Json(serde_json::Value),
}

/// An answer: its status and its body as text.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body (empty when it could not be read).
    pub body: String,
}

impl Reply {
    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// The harness's HTTP client.
#[derive(Debug, Clone)]
pub struct Http {
    http: plasmacloud_store_client::http::Http,
}

impl Http {
    /// A client that presents the operator certificate in `operator` (and trusts only the
    /// rack's CA), never goes through a proxy and gives up on a request after 10 s.
    pub fn new(operator: &plasmacloud_pki::TlsFiles) -> anyhow::Result<Self> {
        let tls = plasmacloud_pki::tls::TlsMaterial::load(operator)
            .context("while loading the harness's operator certificate")?;
        let config = tls
            .client_config()
            .context("while building the HTTP client")?;
        let http = plasmacloud_store_client::http::Http::new(|| {
            reqwest::Client::builder()
                .use_preconfigured_tls(config.clone())
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
        })
        .context("while building the HTTP client")?;
        Ok(Http { http })
    }

    /// Sends one request and reads its answer. Every request of the harness comes through
    /// here. Fails only when no answer came (connection, timeout); any status is an answer.
    pub async fn send(&self, method: Method, url: &str, body: Body) -> anyhow::Result<Reply> {
        let req = self.http.client().request(method.clone(), url);
        let req = match body {
            Body::Empty => req,
            Body::Text(t) => req.body(t),
            Body::Json(v) => req.json(&v),
        };
        let req = req.build().with_context(|| format!("{method} {url}"))?;
        let read = plasmacloud_store_client::http::method_is_read(&method);
        let r = self
            .http
            .send(req, read)
            .await
            .with_context(|| format!("{method} {url}"))?;
        Ok(Reply {
            status: r.status,
            body: String::from_utf8_lossy(&r.body).into_owned(),
        })
    }

    /// `GET url`, whatever it answers.
    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, url, Body::Empty).await
    }

    /// `GET url` that must answer 2xx; its body as text.
    pub async fn get_text(&self, url: &str) -> anyhow::Result<String> {
        let r = self.get(url).await?;
        if !r.status.is_success() {
            bail!("GET {url}: {}: {}", r.status, r.body);
        }
        Ok(r.body)
    }

    /// `GET url` that must answer 2xx with JSON.
    pub async fn get_json(&self, url: &str) -> anyhow::Result<serde_json::Value> {
        let body = self.get_text(url).await?;
        serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON: {body}"))
    }

    /// `POST url` with a JSON body, whatever it answers.
    pub async fn post_json(&self, url: &str, v: serde_json::Value) -> anyhow::Result<Reply> {
        self.send(Method::POST, url, Body::Json(v)).await
    }

    /// PUT a key through any of `ips` (following redirects to the leader) until it sticks;
    /// returns the address that took it.
    pub async fn put_any(
        &self,
        port: u16,
        ips: &[String],
        key: &str,
        value: &str,
        deadline: Duration,
    ) -> anyhow::Result<String> {
        let until = Instant::now() + deadline;
        let mut last = String::new();
        loop {
            for ip in ips {
                let url = kv_url(ip, port, key);
                match self
                    .send(Method::PUT, &url, Body::Text(value.to_string()))
                    .await
                {
                    Ok(r) if r.status.is_success() => return Ok(ip.clone()),
                    Ok(r) => last = format!("{url}: {}: {}", r.status, r.body.trim()),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() >= until {
                bail!("no write of {key} succeeded within {deadline:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A key's value on the node at `ip`. A node that has just come back may answer a
    /// retryable 503 for a while (it has not heard from the leader yet, so it forwards
    /// nothing); that is waited out for up to 15 s, anything else is an answer.
    pub async fn get_value(&self, ip: &str, port: u16, key: &str) -> anyhow::Result<String> {
        let url = kv_url(ip, port, key);
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.get(&url).await?;
            if r.status.is_success() {
                return Ok(r.body);
            }
            let retryable = r.status == StatusCode::SERVICE_UNAVAILABLE
                && r.body.contains("\"retryable\":true");
            if !retryable || Instant::now() >= until {
                bail!("GET {url}: {}: {}", r.status, r.body);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A key's URL: Chainfire's `/v1/kv/KEY`, FlareDB's namespaced `/v1/ns/vm-rack/kv/KEY`.
fn kv_url(ip: &str, port: u16, key: &str) -> String {
    if port == 2479 {
        format!("https://{ip}:{port}/v1/ns/vm-rack/kv/{key}")
    } else {
        format!("https://{ip}:{port}/v1/kv/{key}")
    }
}
