//! What IAM counts and serves at `GET /metrics` (open to anyone over TLS, as `/health`), in
//! the Prometheus text format (OpenMetrics 1.0, by the official `prometheus-client` crate).
//!
//! | series | type | what |
//! |---|---|---|
//! | `iam_logins_total{result,reason}` | counter | password logins: `ok`/`none`, or `failed` with `credentials`, `invalid`, `unavailable`, `error` |
//! | `iam_token_verifications_total{result,reason}` | counter | bearer tokens checked: `ok`/`none`, or `failed` with `invalid`, `expired`, `revoked`, `unavailable`, `error` |
//! | `iam_http_requests_total{route,method,code}` | counter | requests answered |
//! | `iam_http_request_duration_seconds{route,method}` | histogram | their latency |
//!
//! `route` is the matched route template (`/v1/users/{name}`), never the raw path; a request
//! no route matched counts as `unmatched`. Counters are atomics and each histogram series has
//! its own lock: nothing is shared by all requests.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::IamError;

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a login or a verification ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok` or `failed`.
    pub result: &'static str,
    /// `none` when it succeeded, else the class of the failure.
    pub reason: &'static str,
}

impl Outcome {
    const OK: Outcome = Outcome {
        result: "ok",
        reason: "none",
    };

    fn failed(reason: &'static str) -> Self {
        Outcome {
            result: "failed",
            reason,
        }
    }
}

/// The class of a failed login.
fn login_reason(e: &IamError) -> &'static str {
    match e {
        IamError::Unauthenticated(_) => "credentials",
        IamError::Invalid(_) => "invalid",
        IamError::Unavailable(_) => "unavailable",
        _ => "error",
    }
}

/// The class of a failed token verification.
fn verification_reason(e: &IamError) -> &'static str {
    match e {
        IamError::Unauthenticated(m) if m.contains("revoked") => "revoked",
        IamError::Unauthenticated(m) if m.contains("expired") => "expired",
        IamError::Unauthenticated(_) => "invalid",
        IamError::Unavailable(_) => "unavailable",
        _ => "error",
    }
}

/// The labels of a request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    code: u16,
}

/// The labels of a latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s (an argon2id login takes tens of ms).
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

/// A method as a label value without an allocation (anything unusual is `other`).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Everything IAM serves at `/metrics`.
#[derive(Debug)]
pub struct IamMetrics {
    registry: Registry,
    logins: Family<Outcome, Counter>,
    verifications: Family<Outcome, Counter>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for IamMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iam");
        let m = IamMetrics {
            registry: Registry::default(),
            logins: Family::default(),
            verifications: Family::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "logins",
            "Password logins, by result and failure class",
            m.logins.clone(),
        );
        registry.register(
            "token_verifications",
            "Bearer tokens verified, by result and failure class",
            m.verifications.clone(),
        );
        registry.register(
            "http_requests",
            "Requests answered, by matched route template, method and status code",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Request latency (until the response head), by matched route template and method",
            m.duration.clone(),
        );
        // prometheus-client leaves out a family with no series: the successes start at 0, so
        // both families are there (and rate() works) before the first login.
        drop(m.logins.get_or_create(&Outcome::OK));
        drop(m.verifications.get_or_create(&Outcome::OK));
        IamMetrics { registry, ..m }
    }
}

impl IamMetrics {
    /// Counts a login that ended with `r`.
    pub fn login<T>(&self, r: &Result<T, IamError>) {
        let o = match r {
            Ok(_) => Outcome::OK,
            Err(e) => Outcome::failed(login_reason(e)),
        };
        self.logins.get_or_create(&o).inc();
    }

    /// Counts a token verification that ended with `r`.
    pub fn verification<T>(&self, r: &Result<T, IamError>) {
        let o = match r {
            Ok(_) => Outcome::OK,
            Err(e) => Outcome::failed(verification_reason(e)),
        };
        self.verifications.get_or_create(&o).inc();
    }

    /// Counts one answered request.
    fn request(&self, route: &str, method: &Method, code: u16, started: Instant) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method,
                code,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method,
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// The text served at `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The `/metrics` answer.
    pub fn response(&self) -> Response {
        let mut r = self.render().into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        r
    }
}

/// The axum middleware counting every request (add it with `Router::layer`, so the matched
/// route is known).
pub async fn track_requests(
    State(metrics): State<Arc<IamMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let resp = next.run(req).await;
    metrics.request(
        route.as_deref().unwrap_or("unmatched"),
        &method,
        resp.status().as_u16(),
        started,
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_class() {
        let m = IamMetrics::default();
        m.login::<()>(&Ok(()));
        m.login::<()>(&Err(IamError::Unauthenticated(
            "invalid username or password".into(),
        )));
        m.verification::<()>(&Err(IamError::Unauthenticated(
            "token has been revoked; log in again".into(),
        )));
        m.verification::<()>(&Err(IamError::Unauthenticated(
            "token expired 3 s ago; log in again".into(),
        )));
        m.verification::<()>(&Err(IamError::Unauthenticated(
            "token signature is invalid".into(),
        )));
        m.request("/v1/users/{name}", &Method::GET, 200, Instant::now());
        let out = m.render();
        for line in [
            r#"iam_logins_total{result="ok",reason="none"} 1"#,
            r#"iam_logins_total{result="failed",reason="credentials"} 1"#,
            r#"iam_token_verifications_total{result="failed",reason="revoked"} 1"#,
            r#"iam_token_verifications_total{result="failed",reason="expired"} 1"#,
            r#"iam_token_verifications_total{result="failed",reason="invalid"} 1"#,
            r#"iam_http_requests_total{route="/v1/users/{name}",method="GET",code="200"} 1"#,
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
    }
}
