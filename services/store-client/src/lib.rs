//! Wire types and an async HTTP client for Chainfire and FlareDB.
//!
//! This crate has no storage or Raft dependency: the IAM service and the first-boot oneshots use
//! it to talk to the stores, and the servers use its [`types`] for their own JSON, so the two
//! sides cannot drift apart.
//!
//! # The client
//!
//! [`StoreClient`] holds a list of endpoints (`http://ip:port`, `https://ip:port` or bare
//! `ip:port`). Every call
//! - has a deadline ([`ClientBuilder::timeout`], [`ClientBuilder::membership_timeout`] for
//!   membership changes), after which it fails with [`Error::Timeout`] or
//!   [`Error::Unreachable`];
//! - tries the next endpoint when one cannot be connected to, and when a server answers 503 with
//!   `"retryable": true` (the request was certainly not applied: no leader yet, leader
//!   unreachable), backing off between rounds;
//! - follows `307`/`308` redirects to the leader (servers forward to the leader themselves, but
//!   the client handles both);
//! - sends a read, or a membership call (which the API defines as repeatable: the same change
//!   again is a no-op), once more on a fresh connection when the first connection broke after
//!   sending (a peer that rebooted resets the pooled connections from before; see [`http`]);
//!   it never repeats a write (put, delete, compare-and-swap, append: repeated after it took
//!   effect, with another writer's write in between, it would apply twice), nor anything after
//!   a timeout: it returns [`Error::Broken`] or [`Error::Timeout`], the outcome is unknown, and
//!   the caller reads back before it decides;
//! - reports a server's answer that the outcome is unknown (504, or `"outcome":"unknown"` in
//!   the body: Raft stopped under the write, the deadline passed after it was proposed) as
//!   [`Error::OutcomeUnknown`], never as a plain failure: such a write may have been committed.
//!   [`Error::is_outcome_unknown`] covers all three; [`Error::is_retryable`] means certainly not
//!   applied.
//!
//! Listings come in pages ([`Keyspace::list_page`], [`Keyspace::list_pages`]); the server
//! never answers a listing with everything at once. [`Keyspace::list`] reads every page.
//!
//! Chainfire's KV is [`StoreClient::kv`] (the shortcuts [`StoreClient::get`], [`StoreClient::put`]
//! … use it); FlareDB's namespaces are [`StoreClient::namespace`]; FlareDB's time series are
//! [`StoreClient::ts_append`], [`StoreClient::ts_range`], [`StoreClient::ts_downsample`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), plasmacloud_store_client::Error> {
//! use plasmacloud_store_client::{Precondition, StoreClient};
//! let cf = StoreClient::new(["127.0.0.1:2379", "10.0.0.2:2379"])?;
//! let rev = cf.put("config/a", "1").await?;
//! // compare-and-swap: only if nobody wrote since
//! cf.put_if("config/a", "2", Precondition::Revision(rev)).await?;
//! // create-only (a lock, a seed marker)
//! match cf.put_if("locks/seed", "node01", Precondition::Absent).await {
//!     Ok(_) => { /* we hold it */ }
//!     Err(e) if e.is_conflict() => { /* someone else does */ }
//!     Err(e) => return Err(e),
//! }
//! let flare = StoreClient::new(["127.0.0.1:2479"])?;
//! let iam = flare.namespace("iam")?;
//! iam.put("users/admin", "{}").await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Method, StatusCode};

pub mod http;
pub mod types;

pub use types::{
    AppendResponse, Bucket, BucketsBody, DeleteResponse, ErrorBody, Health, InitRequest, KvItem,
    ListResponse, Member, MemberInfo, MemberRole, MembersResponse, MoveLeaderRequest, Point,
    PointsBody, PromoteRequest, PutResponse, RaftRole, Versioned, LIST_DEFAULT_LIMIT,
    LIST_MAX_BYTES, LIST_MAX_LIMIT,
};

/// The header carrying a key's revision on KV answers.
pub const REVISION_HEADER: &str = "x-revision";
/// Default deadline of a KV or read call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline of a membership call (adding a learner waits for it to catch up).
pub const DEFAULT_MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(90);
/// Redirects followed per call before giving up.
const MAX_REDIRECTS: usize = 5;

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client was configured wrongly (an endpoint that is not a URL, a bad CA file, a bad
    /// namespace). Fix the argument named in the message.
    #[error("store client configuration: {0}")]
    Config(String),
    /// No endpoint could be reached before the deadline. Check that the servers run and that
    /// the addresses (and http vs https) are right.
    #[error("no store endpoint reachable within {after:?} (tried {endpoints}): {last}")]
    Unreachable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The last connection error.
        last: String,
        /// The deadline.
        after: Duration,
    },
    /// The request was sent but no answer came before the deadline; it may or may not have been
    /// applied. Read back before retrying a non-idempotent write.
    #[error("{what}: no answer from {endpoint} within {after:?} (the outcome is unknown)")]
    Timeout {
        /// The call.
        what: String,
        /// The endpoint that was asked last.
        endpoint: String,
        /// The deadline.
        after: Duration,
    },
    /// The server answered, but cannot tell whether the request took effect (HTTP 504, or
    /// any error answer with `"outcome":"unknown"`: the server's deadline passed, Raft
    /// stopped after the write was replicated, the leader's answer was lost on the way). A
    /// write may have been committed: read back before retrying it; never count it as failed.
    #[error("{endpoint} answered {status} (the outcome is unknown): {message}")]
    OutcomeUnknown {
        /// HTTP status.
        status: u16,
        /// The server's explanation.
        message: String,
        /// Who answered.
        endpoint: String,
    },
    /// The connection broke after the request was sent; the outcome is unknown.
    #[error(
        "{what}: connection to {endpoint} failed after sending (the outcome is unknown): {message}"
    )]
    Broken {
        /// The call.
        what: String,
        /// The endpoint.
        endpoint: String,
        /// The transport error.
        message: String,
    },
    /// A compare-and-swap precondition did not hold (HTTP 409 with a revision). Re-read the key
    /// and decide again.
    #[error("conflict: {message} (current revision {revision})")]
    Conflict {
        /// The key's current revision (0 when it does not exist).
        revision: u64,
        /// The server's explanation.
        message: String,
    },
    /// The server answered with an error status.
    #[error("{endpoint} answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's `error` text.
        message: String,
        /// Who answered.
        endpoint: String,
        /// Set when the server said the request was certainly not applied.
        retryable: bool,
    },
    /// The answer could not be decoded (a different server on that port?).
    #[error("{endpoint}: undecodable answer: {message}")]
    Decode {
        /// Who answered.
        endpoint: String,
        /// What did not parse.
        message: String,
    },
}

impl Error {
    /// A compare-and-swap mismatch (or a membership request that conflicts with the cluster).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. } | Error::Api { status: 409, .. }
        )
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Conflict { .. } => Some(409),
            Error::Api { status, .. } | Error::OutcomeUnknown { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the request may or may not have taken effect ([`Error::Timeout`],
    /// [`Error::Broken`], [`Error::OutcomeUnknown`]): read back before deciding. Never both
    /// this and [`Error::is_retryable`].
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::Broken { .. } | Error::OutcomeUnknown { .. }
        )
    }

    /// Whether the request certainly had no effect, so repeating it later is safe.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Api { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A compare-and-swap condition for [`Keyspace::put_if`] / [`Keyspace::delete_if`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The key's modification revision must be exactly this (`?prev_revision=N`).
    Revision(u64),
    /// The key must not exist (`?prev_exist=false`).
    Absent,
}

/// Builds a [`StoreClient`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    timeout: Duration,
    membership_timeout: Duration,
    ca_pem: Option<Vec<u8>>,
    tls: Option<plasmacloud_pki::tls::TlsMaterial>,
}

impl ClientBuilder {
    /// Per-call deadline of KV, read and health calls (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Per-call deadline of membership calls (default [`DEFAULT_MEMBERSHIP_TIMEOUT`]).
    pub fn membership_timeout(mut self, t: Duration) -> Self {
        self.membership_timeout = t;
        self
    }

    /// Trust this PEM CA (one or more certificates) for `https://` endpoints; bare `ip:port`
    /// endpoints then default to https.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Speak mutual TLS as this holder: present its certificate, trust only its cluster CA
    /// (wins over [`ClientBuilder::ca_pem`]); bare `ip:port` endpoints then default to https.
    /// Every Chainfire and FlareDB route but `/health`, `/readyz` and `/metrics` needs it.
    pub fn tls(mut self, material: plasmacloud_pki::tls::TlsMaterial) -> Self {
        self.tls = Some(material);
        self
    }

    /// Loads a holder's files (`node.{key,crt}` + `ca.crt`, or any [`TlsFiles`]) for
    /// [`ClientBuilder::tls`].
    ///
    /// [`TlsFiles`]: plasmacloud_pki::TlsFiles
    pub fn tls_files(self, files: &plasmacloud_pki::TlsFiles) -> Result<Self> {
        let m = plasmacloud_pki::tls::TlsMaterial::load(files)
            .map_err(|e| Error::Config(format!("client certificate: {e}")))?;
        Ok(self.tls(m))
    }

    /// Reads the CA from a PEM file (see [`ClientBuilder::ca_pem`]).
    pub fn ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| Error::Config(format!("reading CA file {}: {e}", path.display())))?;
        Ok(self.ca_pem(pem))
    }

    /// Builds the client.
    pub fn build(self) -> Result<StoreClient> {
        if self.endpoints.is_empty() {
            return Err(Error::Config("no endpoints given".into()));
        }
        let default_scheme = if self.ca_pem.is_some() || self.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for e in &self.endpoints {
            endpoints.push(normalise_endpoint(e, default_scheme)?);
        }
        let certs = match &self.ca_pem {
            Some(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| Error::Config(format!("CA PEM: {e}")))?;
                if certs.is_empty() {
                    return Err(Error::Config("CA PEM holds no certificate".into()));
                }
                Some(certs)
            }
            None => None,
        };
        let mtls = match &self.tls {
            Some(m) => Some(
                m.client_config()
                    .map_err(|e| Error::Config(format!("client certificate: {e}")))?,
            ),
            None => None,
        };
        let http = http::Http::new(|| {
            let mut b = match &mtls {
                Some(cfg) => reqwest::Client::builder().use_preconfigured_tls(cfg.clone()),
                None => reqwest::Client::builder(),
            };
            b = b
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(2))
                // The servers close a connection idle for 10 s: let it go first, so a request
                // never goes out on a connection the server is closing.
                .pool_idle_timeout(Duration::from_secs(5))
                .tcp_nodelay(true);
            if let (Some(certs), None) = (&certs, &mtls) {
                b = b.tls_built_in_root_certs(false);
                for c in certs {
                    b = b.add_root_certificate(c.clone());
                }
            }
            b
        })
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(StoreClient {
            inner: Arc::new(Inner {
                endpoints,
                http,
                timeout: self.timeout,
                membership_timeout: self.membership_timeout,
                preferred: AtomicUsize::new(0),
            }),
        })
    }
}

fn normalise_endpoint(e: &str, default_scheme: &str) -> Result<String> {
    let e = e.trim();
    if e.is_empty() {
        return Err(Error::Config("empty endpoint".into()));
    }
    let full = if e.contains("://") {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(Error::Config(format!(
                "endpoint {e:?}: only http:// and https:// are supported"
            )));
        }
        e.trim_end_matches('/').to_string()
    } else {
        format!("{default_scheme}://{}", e.trim_end_matches('/'))
    };
    let url = reqwest::Url::parse(&full)
        .map_err(|err| Error::Config(format!("endpoint {e:?} is not a URL or ip:port: {err}")))?;
    if url.host_str().is_none_or(str::is_empty) || url.path().len() > 1 {
        return Err(Error::Config(format!(
            "endpoint {e:?} needs a host and no path (ip:port or http(s)://ip:port)"
        )));
    }
    Ok(full)
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<String>,
    http: http::Http,
    timeout: Duration,
    membership_timeout: Duration,
    /// Index of the endpoint that answered last (tried first).
    preferred: AtomicUsize,
}

/// An async client for Chainfire or FlareDB. Cheap to clone (shared connection pool).
#[derive(Debug, Clone)]
pub struct StoreClient {
    inner: Arc<Inner>,
}

/// A raw answer: status, `X-Revision`, body, and who answered.
struct Answer {
    status: StatusCode,
    revision: Option<u64>,
    body: Bytes,
    endpoint: String,
}

impl Answer {
    fn error_body(&self) -> ErrorBody {
        serde_json::from_slice::<ErrorBody>(&self.body).unwrap_or_else(|_| {
            ErrorBody::new(String::from_utf8_lossy(&self.body).trim().to_string())
        })
    }

    /// Turns a non-success answer into an error (409 with a revision becomes `Conflict`; 504,
    /// or a body saying `"outcome":"unknown"`, becomes `OutcomeUnknown`).
    fn into_error(self) -> Error {
        let body = self.error_body();
        if body.is_outcome_unknown()
            || (self.status == StatusCode::GATEWAY_TIMEOUT && !body.retryable)
        {
            return Error::OutcomeUnknown {
                status: self.status.as_u16(),
                message: body.error,
                endpoint: self.endpoint,
            };
        }
        if self.status == StatusCode::CONFLICT {
            if let Some(revision) = body.revision {
                return Error::Conflict {
                    revision,
                    message: body.error,
                };
            }
        }
        Error::Api {
            status: self.status.as_u16(),
            message: body.error,
            endpoint: self.endpoint,
            retryable: body.retryable,
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Decode {
            endpoint: self.endpoint.clone(),
            message: format!("{e}: {}", String::from_utf8_lossy(&self.body)),
        })
    }

    /// Parses a success body as JSON, or turns an error status into an error.
    fn ok_json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        if self.status.is_success() {
            self.json()
        } else {
            Err(self.into_error())
        }
    }
}

/// Percent-encodes a key for a URL path, keeping `/` (the servers use a wildcard route).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a query value.
fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl StoreClient {
    /// A client with default deadlines over `endpoints` (`ip:port` or URLs).
    pub fn new<I, S>(endpoints: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(endpoints).build()
    }

    /// A builder over `endpoints` (`ip:port` or URLs).
    pub fn builder<I, S>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            timeout: DEFAULT_TIMEOUT,
            membership_timeout: DEFAULT_MEMBERSHIP_TIMEOUT,
            ca_pem: None,
            tls: None,
        }
    }

    /// Parses a comma-separated endpoint list (`--chainfire URL[,URL…]`).
    pub fn from_list(list: &str) -> Result<Self> {
        Self::new(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
    }

    /// The normalised endpoint URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// Sends one request with failover, redirects and a deadline.
    async fn call(
        &self,
        what: &str,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<Answer> {
        let inner = &self.inner;
        let start = Instant::now();
        let deadline = start + timeout;
        let n = inner.endpoints.len();
        let mut idx = inner.preferred.load(Ordering::Relaxed) % n;
        let mut tried_in_round = 0usize;
        let mut backoff = Duration::from_millis(25);
        let mut last_err = String::from("nothing tried");
        let mut redirect_to: Option<String> = None;
        let mut redirects = 0usize;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Unreachable {
                    endpoints: inner.endpoints.join(","),
                    last: last_err,
                    after: timeout,
                });
            }
            let (endpoint, url) = match redirect_to.take() {
                Some(u) => (u.clone(), u),
                None => {
                    let ep = inner.endpoints[idx].clone();
                    let url = format!("{ep}{path_and_query}");
                    (ep, url)
                }
            };
            let mut req = inner
                .http
                .client()
                .request(method.clone(), &url)
                .timeout(deadline - now);
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let req = match req.build() {
                Ok(r) => r,
                Err(e) => return Err(Error::Config(format!("{what}: bad request {url}: {e}"))),
            };
            let reply = match inner.http.send(req, idempotent).await {
                Ok(r) => r,
                Err(http::Failure::Connect(e)) => {
                    tracing::debug!(%endpoint, error = %e, "{what}: cannot connect, trying next endpoint");
                    last_err = format!("{endpoint}: {e}");
                    idx = (idx + 1) % n;
                    tried_in_round += 1;
                    if tried_in_round >= n {
                        tried_in_round = 0;
                        let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                        tokio::time::sleep(pause).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                    continue;
                }
                Err(http::Failure::Timeout) => {
                    // A blackholed node (a partition, a hung host) answers nothing: the next
                    // call starts at the next endpoint, or every call would wait out its whole
                    // timeout on this one again.
                    move_off(&inner.preferred, idx, n);
                    return Err(Error::Timeout {
                        what: what.to_string(),
                        endpoint,
                        after: timeout,
                    });
                }
                Err(http::Failure::Broken(message)) => {
                    move_off(&inner.preferred, idx, n);
                    return Err(Error::Broken {
                        what: what.to_string(),
                        endpoint,
                        message,
                    });
                }
            };
            let status = reply.status;
            if status == StatusCode::TEMPORARY_REDIRECT || status == StatusCode::PERMANENT_REDIRECT
            {
                let location = reply
                    .headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                redirects += 1;
                match location {
                    Some(loc) if redirects <= MAX_REDIRECTS => {
                        let target = match reqwest::Url::parse(&url).and_then(|u| u.join(&loc)) {
                            Ok(u) => u.to_string(),
                            Err(_) => loc,
                        };
                        if let Some(i) = inner
                            .endpoints
                            .iter()
                            .position(|e| target.starts_with(e.as_str()))
                        {
                            inner.preferred.store(i, Ordering::Relaxed);
                        }
                        redirect_to = Some(target);
                        continue;
                    }
                    _ => {
                        return Err(Error::Api {
                            status: status.as_u16(),
                            message: "redirect loop or redirect without Location".into(),
                            endpoint,
                            retryable: false,
                        })
                    }
                }
            }
            let revision = reply
                .headers
                .get(REVISION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let bytes = reply.body;
            let answer = Answer {
                status,
                revision,
                body: bytes,
                endpoint: endpoint.clone(),
            };
            if status == StatusCode::SERVICE_UNAVAILABLE {
                let eb = answer.error_body();
                if eb.retryable {
                    tracing::debug!(%endpoint, error = %eb.error, "{what}: retryable, trying again");
                    last_err = format!("{endpoint}: {}", eb.error);
                    if Instant::now() + backoff >= deadline {
                        return Err(answer.into_error());
                    }
                    idx = (idx + 1) % n;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            }
            if redirects == 0 {
                inner.preferred.store(idx, Ordering::Relaxed);
            }
            return Ok(answer);
        }
    }

    /// `GET /health` of the first endpoint that answers (a 503 answer is returned as a
    /// [`Health`] with `status == "unhealthy"`, not as an error).
    pub async fn health(&self) -> Result<Health> {
        let a = self
            .call(
                "health",
                Method::GET,
                "/health",
                None,
                self.inner.timeout,
                true,
            )
            .await?;
        if a.status.is_success() || a.status == StatusCode::SERVICE_UNAVAILABLE {
            a.json()
        } else {
            Err(a.into_error())
        }
    }

    /// `GET /readyz?verbose`: `(ready, text)` of the first endpoint that answers.
    pub async fn readyz(&self) -> Result<(bool, String)> {
        let a = self
            .call(
                "readyz",
                Method::GET,
                "/readyz?verbose",
                None,
                self.inner.timeout,
                true,
            )
            .await?;
        Ok((
            a.status.is_success(),
            String::from_utf8_lossy(&a.body).into_owned(),
        ))
    }

    /// `GET /v1/cluster/members`.
    pub async fn members(&self) -> Result<MembersResponse> {
        self.call(
            "members",
            Method::GET,
            "/v1/cluster/members",
            None,
            self.inner.timeout,
            true,
        )
        .await?
        .ok_json()
    }

    fn json_body<T: serde::Serialize>(v: &T) -> Result<Bytes> {
        serde_json::to_vec(v)
            .map(Bytes::from)
            .map_err(|e| Error::Config(format!("encoding request: {e}")))
    }

    /// `POST /v1/cluster/init` on a pristine node: bootstraps a cluster of `members`. Sending
    /// the same request again is a no-op success; a different one is a 409 ([`Error::is_conflict`]).
    /// Send it to the node that bootstraps (a client with that one endpoint).
    pub async fn init(&self, members: &[Member]) -> Result<MembersResponse> {
        let body = Self::json_body(&InitRequest {
            members: members.to_vec(),
        })?;
        self.call(
            "init",
            Method::POST,
            "/v1/cluster/init",
            Some(body),
            self.inner.membership_timeout,
            true,
        )
        .await?
        .ok_json()
    }

    /// `POST /v1/cluster/learners`: adds `member` as a learner and returns once it has caught
    /// up. Re-adding the same id with the same addresses is a success; an id that belonged to
    /// another node incarnation is a 409 naming the rule.
    pub async fn add_learner(&self, member: &Member) -> Result<MembersResponse> {
        let body = Self::json_body(member)?;
        self.call(
            "add learner",
            Method::POST,
            "/v1/cluster/learners",
            Some(body),
            self.inner.membership_timeout,
            true,
        )
        .await?
        .ok_json()
    }

    /// `POST /v1/cluster/voters`: promotes learners `ids` (voters already are a no-op). Refused
    /// (409/503) while a learner has not caught up.
    pub async fn promote_voters(&self, ids: &[u64]) -> Result<MembersResponse> {
        let body = Self::json_body(&PromoteRequest { ids: ids.to_vec() })?;
        self.call(
            "promote voters",
            Method::POST,
            "/v1/cluster/voters",
            Some(body),
            self.inner.membership_timeout,
            true,
        )
        .await?
        .ok_json()
    }

    /// `DELETE /v1/cluster/members/{id}`: removes a voter or learner (its id is never reused).
    pub async fn remove_member(&self, id: u64) -> Result<MembersResponse> {
        self.call(
            "remove member",
            Method::DELETE,
            &format!("/v1/cluster/members/{id}"),
            None,
            self.inner.membership_timeout,
            true,
        )
        .await?
        .ok_json()
    }

    /// `POST /v1/cluster/leader {"away_from": id}`: when node `id` leads, another voter (the
    /// most caught up) takes over, and the answer names it once it leads; when `id` does not
    /// lead, a no-op. A rollout calls it before it stops a node. Errors: 409
    /// ([`Error::is_conflict`]) when no voter can take over (`id` is the only voter, or no
    /// other answers), and a 504 ([`Error::OutcomeUnknown`] with `status() == Some(504)`)
    /// when it did not happen within the server's deadline (10 s): leadership may still move.
    /// Repeatable, so sent once more on a fresh connection if the first one broke.
    pub async fn move_leader_away(&self, id: u64) -> Result<MembersResponse> {
        let body = Self::json_body(&MoveLeaderRequest { away_from: id })?;
        self.call(
            "move leader",
            Method::POST,
            "/v1/cluster/leader",
            Some(body),
            self.inner.membership_timeout,
            true,
        )
        .await?
        .ok_json()
    }

    /// Chainfire's key space (`/v1/kv/…`).
    pub fn kv(&self) -> Keyspace {
        Keyspace {
            client: self.clone(),
            base: "/v1/kv".into(),
        }
    }

    /// A FlareDB namespace (`/v1/ns/{ns}/kv/…`); `ns` must match `[a-z0-9_-]{1,32}`.
    pub fn namespace(&self, ns: &str) -> Result<Keyspace> {
        if !types::valid_namespace(ns) {
            return Err(Error::Config(format!(
                "namespace {ns:?} must match [a-z0-9_-]{{1,32}}"
            )));
        }
        Ok(Keyspace {
            client: self.clone(),
            base: format!("/v1/ns/{ns}/kv"),
        })
    }

    /// Chainfire `GET /v1/kv/{key}` (see [`Keyspace::get`]).
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        self.kv().get(key).await
    }

    /// Chainfire `PUT /v1/kv/{key}` (see [`Keyspace::put`]).
    pub async fn put(&self, key: &str, value: &str) -> Result<u64> {
        self.kv().put(key, value).await
    }

    /// Chainfire compare-and-swap put (see [`Keyspace::put_if`]).
    pub async fn put_if(&self, key: &str, value: &str, cond: Precondition) -> Result<u64> {
        self.kv().put_if(key, value, cond).await
    }

    /// Chainfire `DELETE /v1/kv/{key}` (see [`Keyspace::delete`]).
    pub async fn delete(&self, key: &str) -> Result<DeleteResponse> {
        self.kv().delete(key).await
    }

    /// Chainfire `GET /v1/kv?prefix=P`, every page (see [`Keyspace::list`]).
    pub async fn list(&self, prefix: &str) -> Result<ListResponse> {
        self.kv().list(prefix).await
    }

    /// FlareDB `POST /v1/ts/{series}/points`.
    pub async fn ts_append(&self, series: &str, points: &[Point]) -> Result<AppendResponse> {
        check_series(series)?;
        let body = Self::json_body(&PointsBody {
            points: points.to_vec(),
        })?;
        self.call(
            "append points",
            Method::POST,
            &format!("/v1/ts/{series}/points"),
            Some(body),
            self.inner.timeout,
            false, // a point repeated over another writer's would apply twice
        )
        .await?
        .ok_json()
    }

    /// FlareDB `GET /v1/ts/{series}?from=&to=`: raw points with `from <= t < to`.
    pub async fn ts_range(&self, series: &str, from_ms: i64, to_ms: i64) -> Result<Vec<Point>> {
        check_series(series)?;
        let b: PointsBody = self
            .call(
                "range query",
                Method::GET,
                &format!("/v1/ts/{series}?from={from_ms}&to={to_ms}"),
                None,
                self.inner.timeout,
                true,
            )
            .await?
            .ok_json()?;
        Ok(b.points)
    }

    /// FlareDB `GET /v1/ts/{series}?from=&to=&step=`: avg/min/max/count per `step` ms bucket.
    pub async fn ts_downsample(
        &self,
        series: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: u64,
    ) -> Result<Vec<Bucket>> {
        check_series(series)?;
        let b: BucketsBody = self
            .call(
                "downsampled query",
                Method::GET,
                &format!("/v1/ts/{series}?from={from_ms}&to={to_ms}&step={step_ms}"),
                None,
                self.inner.timeout,
                true,
            )
            .await?
            .ok_json()?;
        Ok(b.points)
    }
}

fn check_series(series: &str) -> Result<()> {
    if types::valid_series(series) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "series {series:?} must match [a-z0-9_.-]{{1,128}}"
        )))
    }
}

/// A key space: Chainfire's `/v1/kv` or one FlareDB namespace. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Keyspace {
    client: StoreClient,
    base: String,
}

impl Keyspace {
    /// `GET {base}/{key}`: `None` when absent. Linearizable (served through the leader).
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        self.get_with(key, "").await
    }

    /// `GET {base}/{key}?consistency=serializable`: what the replica that answers holds, without
    /// going to the leader (use a client with one endpoint to ask one particular node).
    pub async fn get_local(&self, key: &str) -> Result<Option<Versioned>> {
        self.get_with(key, "?consistency=serializable").await
    }

    async fn get_with(&self, key: &str, query: &str) -> Result<Option<Versioned>> {
        let a = self
            .client
            .call(
                "get",
                Method::GET,
                &format!("{}/{}{query}", self.base, encode_key(key)),
                None,
                self.client.inner.timeout,
                true,
            )
            .await?;
        if a.status == StatusCode::NOT_FOUND {
            // A 404 with a JSON error naming the key is "absent"; anything else is a wrong path.
            return Ok(None);
        }
        if !a.status.is_success() {
            return Err(a.into_error());
        }
        let value = String::from_utf8(a.body.to_vec()).map_err(|e| Error::Decode {
            endpoint: a.endpoint.clone(),
            message: format!("value is not UTF-8: {e}"),
        })?;
        let revision = a.revision.ok_or_else(|| Error::Decode {
            endpoint: a.endpoint.clone(),
            message: "missing X-Revision header".into(),
        })?;
        Ok(Some(Versioned { value, revision }))
    }

    /// `PUT {base}/{key}`: stores `value`, returns the new revision.
    pub async fn put(&self, key: &str, value: &str) -> Result<u64> {
        self.put_query(key, value, "").await
    }

    /// Compare-and-swap put: stores `value` only if `cond` holds, else [`Error::Conflict`]
    /// carrying the current revision (0 when absent).
    pub async fn put_if(&self, key: &str, value: &str, cond: Precondition) -> Result<u64> {
        let q = match cond {
            Precondition::Revision(r) => format!("?prev_revision={r}"),
            Precondition::Absent => "?prev_exist=false".to_string(),
        };
        self.put_query(key, value, &q).await
    }

    async fn put_query(&self, key: &str, value: &str, query: &str) -> Result<u64> {
        let r: PutResponse = self
            .client
            .call(
                "put",
                Method::PUT,
                &format!("{}/{}{query}", self.base, encode_key(key)),
                Some(Bytes::copy_from_slice(value.as_bytes())),
                self.client.inner.timeout,
                // Never repeated: a put repeated after it took effect, with another writer's
                // put in between, would apply twice (and a compare-and-swap would answer 409).
                false,
            )
            .await?
            .ok_json()?;
        Ok(r.revision)
    }

    /// `DELETE {base}/{key}`.
    pub async fn delete(&self, key: &str) -> Result<DeleteResponse> {
        self.delete_query(key, "").await
    }

    /// `DELETE {base}/{key}?prev_revision=N`: deletes only at that revision, else
    /// [`Error::Conflict`].
    pub async fn delete_if(&self, key: &str, prev_revision: u64) -> Result<DeleteResponse> {
        self.delete_query(key, &format!("?prev_revision={prev_revision}"))
            .await
    }

    async fn delete_query(&self, key: &str, query: &str) -> Result<DeleteResponse> {
        self.client
            .call(
                "delete",
                Method::DELETE,
                &format!("{}/{}{query}", self.base, encode_key(key)),
                None,
                self.client.inner.timeout,
                // Never repeated: it could delete what another writer put in between.
                false,
            )
            .await?
            .ok_json()
    }

    /// `GET {base}?prefix=P`: every key starting with `prefix`, in key order, read page by
    /// page (see [`Keyspace::list_pages`]); the answer's revision is the first page's. Keys
    /// written while the pages are read may or may not appear. Use the pages themselves for
    /// a key space that may be large.
    pub async fn list(&self, prefix: &str) -> Result<ListResponse> {
        let mut pages = self.list_pages(prefix);
        let mut all: Option<ListResponse> = None;
        while let Some(page) = pages.next().await? {
            match &mut all {
                None => all = Some(page),
                Some(a) => a.items.extend(page.items),
            }
        }
        Ok(all
            .map(|mut a| {
                a.more = false;
                a.next = None;
                a
            })
            .unwrap_or(ListResponse {
                revision: 0,
                items: Vec::new(),
                more: false,
                next: None,
            }))
    }

    /// One page of `GET {base}?prefix=P`: keys after `after` (all when `None`), at most
    /// `limit` of them (the server's default, [`LIST_DEFAULT_LIMIT`], when `None`; at most
    /// [`LIST_MAX_LIMIT`]). `more` and `next` say where the next page starts.
    pub async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListResponse> {
        let mut q = format!("{}?prefix={}", self.base, encode_query(prefix));
        if let Some(a) = after {
            q.push_str(&format!("&after={}", encode_query(a)));
        }
        if let Some(l) = limit {
            q.push_str(&format!("&limit={l}"));
        }
        self.client
            .call(
                "list",
                Method::GET,
                &q,
                None,
                self.client.inner.timeout,
                true,
            )
            .await?
            .ok_json()
    }

    /// The pages of `GET {base}?prefix=P`, in key order, each of the server's default size:
    /// call [`ListPages::next`] until it returns `None`.
    pub fn list_pages(&self, prefix: &str) -> ListPages {
        ListPages {
            keyspace: self.clone(),
            prefix: prefix.to_string(),
            limit: None,
            after: None,
            done: false,
        }
    }
}

/// The pages of a listing ([`Keyspace::list_pages`]), fetched one at a time.
#[derive(Debug, Clone)]
pub struct ListPages {
    keyspace: Keyspace,
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
    done: bool,
}

impl ListPages {
    /// Pages of at most `limit` items (else the server's default).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The next page, or `None` after the last one.
    pub async fn next(&mut self) -> Result<Option<ListResponse>> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .keyspace
            .list_page(&self.prefix, self.after.as_deref(), self.limit)
            .await?;
        match (&page.next, page.more) {
            // A server that named no new key would have us ask for the same page forever.
            (Some(n), true) if self.after.as_ref() != Some(n) => self.after = Some(n.clone()),
            _ => self.done = true,
        }
        Ok(Some(page))
    }
}

/// Moves the preferred endpoint off `idx` (to the next one) unless another call moved it
/// meanwhile.
fn move_off(preferred: &AtomicUsize, idx: usize, n: usize) {
    let _ = preferred.compare_exchange(idx, (idx + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        let c = StoreClient::new(["127.0.0.1:2379", "https://10.0.0.1:2379/"]).unwrap();
        assert_eq!(
            c.endpoints(),
            &["http://127.0.0.1:2379", "https://10.0.0.1:2379"]
        );
        assert!(StoreClient::new(Vec::<String>::new()).is_err());
        assert!(StoreClient::new(["http://"]).is_err());
        let c = StoreClient::from_list("a:1, b:2,").unwrap();
        assert_eq!(c.endpoints().len(), 2);
    }

    #[test]
    fn keys_keep_slashes_and_escape_the_rest() {
        assert_eq!(encode_key("a/b c?%"), "a/b%20c%3F%25");
        assert_eq!(encode_query("x&y=z"), "x%26y%3Dz");
    }

    #[test]
    fn bad_namespace_is_a_config_error() {
        let c = StoreClient::new(["127.0.0.1:1"]).unwrap();
        assert!(matches!(c.namespace("Bad"), Err(Error::Config(_))));
        assert!(c.namespace("iam").is_ok());
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            revision: None,
            body: Bytes::copy_from_slice(body.as_bytes()),
            endpoint: "https://n1".into(),
        }
    }

    #[test]
    fn an_unknown_outcome_is_never_a_failure() {
        // Raft stopped under a write that may be committed: unknown, not "failed".
        let e = answer(
            503,
            r#"{"error":"write not confirmed: raft stopped","outcome":"unknown"}"#,
        )
        .into_error();
        assert!(
            matches!(e, Error::OutcomeUnknown { status: 503, .. }),
            "{e}"
        );
        assert!(e.is_outcome_unknown() && !e.is_retryable());
        assert_eq!(e.status(), Some(503));
        // A deadline that passed, with or without a body saying so.
        for body in [r#"{"error":"not committed in time"}"#, "gateway timeout"] {
            let e = answer(504, body).into_error();
            assert!(e.is_outcome_unknown(), "{e}");
        }
        // Certainly not applied stays retryable; other errors stay API errors.
        let e = answer(503, r#"{"error":"no leader","retryable":true}"#).into_error();
        assert!(e.is_retryable() && !e.is_outcome_unknown(), "{e}");
        let e = answer(400, r#"{"error":"bad key"}"#).into_error();
        assert!(matches!(e, Error::Api { status: 400, .. }), "{e}");
    }

    #[tokio::test]
    async fn unreachable_endpoints_fail_at_the_deadline() {
        // Port 1 on loopback: connection refused, immediately.
        let c = StoreClient::builder(["127.0.0.1:1", "127.0.0.1:2"])
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let start = Instant::now();
        let e = c.get("k").await.unwrap_err();
        assert!(matches!(e, Error::Unreachable { .. }), "{e}");
        assert!(e.is_retryable());
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}
