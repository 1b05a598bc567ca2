//! HTTP to peers that can reboot: one retry on a fresh connection for idempotent requests.
//!
//! The rule: a connection pool holds keep-alive connections to a peer. When that peer loses
//! power and comes back, its new kernel answers the old connection with a reset, but only once
//! the client uses it again — so the first request after a reboot fails at the connection
//! level although the peer is up. An **idempotent** request — a read, or a call the API
//! defines as repeatable *even with other clients acting in between* (a membership change that
//! is a no-op the second time) — that fails that way is sent once more on a connection opened
//! just for it, and that answer counts. Anything else is never sent twice, not even a plain
//! PUT: repeated after it took effect, with another writer's PUT in between, it would apply
//! twice. Its failure is reported as "outcome unknown" ([`Failure::Broken`]), and the caller
//! reads back before it decides.
//!
//! A timeout is never retried here (the request may still be running on the peer), and a
//! refused connection is the caller's to handle (the peer is down, try another endpoint).

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// A complete answer: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body, read to the end.
    pub body: Bytes,
}

/// Why a request got no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The connection could not be opened: nothing was sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No answer before the request's deadline: the outcome is unknown.
    #[error("no answer in time (the outcome is unknown)")]
    Timeout,
    /// The connection broke after the request was sent (and, for an idempotent request, again
    /// on a fresh connection): the outcome is unknown.
    #[error("connection failed after sending (the outcome is unknown): {0}")]
    Broken(String),
}

/// Two clients built alike: one pooling keep-alive connections (the normal path), one that
/// keeps no idle connection, so each request on it opens a connection of its own.
#[derive(Debug, Clone)]
pub struct Http {
    pooled: reqwest::Client,
    fresh: reqwest::Client,
}

fn classify(e: &reqwest::Error) -> Failure {
    if e.is_connect() {
        Failure::Connect(e.to_string())
    } else if e.is_timeout() {
        Failure::Timeout
    } else {
        // Include the source chain: "connection reset by peer" sits below reqwest's wording.
        let mut text = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            let s_text = s.to_string();
            if !text.contains(&s_text) {
                text.push_str(": ");
                text.push_str(&s_text);
            }
            src = s.source();
        }
        Failure::Broken(text)
    }
}

impl Http {
    /// Builds both clients from the same settings (`make` is called twice).
    pub fn new(make: impl Fn() -> reqwest::ClientBuilder) -> reqwest::Result<Self> {
        Ok(Self {
            pooled: make().build()?,
            fresh: make()
                .pool_max_idle_per_host(0)
                .pool_idle_timeout(Duration::from_millis(1))
                .build()?,
        })
    }

    /// The pooled client, for building requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.pooled
    }

    /// Sends `req` and reads the whole answer. When it fails at the connection level after
    /// sending and `idempotent` is true, sends it once more on a fresh connection.
    pub async fn send(&self, req: reqwest::Request, idempotent: bool) -> Result<Reply, Failure> {
        let again = if idempotent { req.try_clone() } else { None };
        match Self::send_on(&self.pooled, req).await {
            Err(Failure::Broken(first)) => match again {
                Some(req) => {
                    tracing::debug!(url = %req.url(), error = %first, "connection broke; sending the idempotent request again on a fresh connection");
                    Self::send_on(&self.fresh, req).await.map_err(|e| match e {
                        Failure::Broken(second) => Failure::Broken(format!(
                            "{first}; again on a fresh connection: {second}"
                        )),
                        other => other,
                    })
                }
                None => Err(Failure::Broken(first)),
            },
            other => other,
        }
    }

    async fn send_on(client: &reqwest::Client, req: reqwest::Request) -> Result<Reply, Failure> {
        let resp = client.execute(req).await.map_err(|e| classify(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| classify(&e))?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// Is `method` safe to repeat whatever other clients do meanwhile: a read (GET, HEAD,
/// OPTIONS)? PUT and DELETE are idempotent only for a lone client (RFC 9110 §9.2.2 speaks of
/// the intended effect of one request), so they are not retried on that ground alone.
pub fn method_is_read(method: &reqwest::Method) -> bool {
    matches!(
        *method,
        reqwest::Method::GET | reqwest::Method::HEAD | reqwest::Method::OPTIONS
    )
}
