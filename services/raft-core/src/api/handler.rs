//! What every handler is made of: its state ([`St`]), its inputs ([`Req`]) and its answers
//! (JSON errors, retryable 503s, unknown outcomes, 409 conflicts, the `X-Revision` header).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Query, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use plasmacloud_store_client::ErrorBody;
use serde::de::DeserializeOwned;

use crate::node::NodeState;
use crate::types::NodeId;

/// Handlers' state.
pub type St = Arc<NodeState>;

/// The inputs of a handler that may be forwarded (method, URI and headers for forwarding, the
/// query, the body), extracted in one go.
pub(super) struct Req {
    pub(super) method: Method,
    pub(super) uri: OriginalUri,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    pub(super) query: HashMap<String, String>,
}

impl Req {
    /// `?consistency=serializable`: read the local replica, without going to the leader.
    pub(super) fn serializable(&self) -> bool {
        self.query.get("consistency").map(String::as_str) == Some("serializable")
    }
}

impl<S: Send + Sync> FromRequest<S> for Req {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let uri = OriginalUri::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Query(query) = Query::<HashMap<String, String>>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let (method, headers) = (parts.method.clone(), parts.headers.clone());
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Req {
            method,
            uri,
            headers,
            body,
            query,
        })
    }
}

/// A JSON error.
pub(super) fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(msg))).into_response()
}

/// An error whose request may or may not have taken effect (`"outcome":"unknown"`): a write
/// that may have been committed must never be reported as failed. 504 when a deadline passed,
/// 502 when the leader's answer was lost, 503 when Raft stopped under the request.
pub(super) fn unknown(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody::outcome_unknown(msg))).into_response()
}

/// 503 with `"retryable": true`: the request was certainly not applied; try again (elsewhere).
pub(super) fn retry(msg: impl Into<String>, leader: Option<NodeId>) -> Response {
    let mut b = ErrorBody::new(msg);
    b.retryable = true;
    b.leader = leader;
    (StatusCode::SERVICE_UNAVAILABLE, Json(b)).into_response()
}

/// 409 naming the key's current revision (a compare-and-swap that did not match).
pub(super) fn conflict(msg: impl Into<String>, revision: u64) -> Response {
    let mut b = ErrorBody::new(msg);
    b.revision = Some(revision);
    (StatusCode::CONFLICT, Json(b)).into_response()
}

/// Adds the `X-Revision` header.
pub(super) fn with_revision(mut r: Response, rev: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&rev.to_string()) {
        r.headers_mut().insert("x-revision", v);
    }
    r
}

/// A JSON body of the given `shape` (named in the 400 when it does not parse).
pub(super) fn parse_body<T: DeserializeOwned>(body: &Bytes, shape: &str) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            format!("body must be {shape}: {e}"),
        )
    })
}

/// 400 unless `valid`: the `what` called `name` must match `pattern`.
pub(super) fn check_name(
    valid: bool,
    what: &str,
    name: &str,
    pattern: &str,
) -> Result<(), Response> {
    if valid {
        Ok(())
    } else {
        Err(err(
            StatusCode::BAD_REQUEST,
            format!("{what} {name:?} must match {pattern}"),
        ))
    }
}
