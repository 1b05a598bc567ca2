//! The one error type of the IAM library, and how each variant answers over HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;

/// Everything that can go wrong in IAM. API variants map to one HTTP status each
/// ([`IamError::status`]); the body is always `{"error": "<message>"}`.
#[derive(Debug, thiserror::Error)]
pub enum IamError {
    /// The request is malformed or breaks a rule (unknown field, bad name, weak password).
    /// Fix the request; nothing was written.
    #[error("{0}")]
    Invalid(String),

    /// No valid credentials: wrong username/password, or a missing, malformed, expired or
    /// revoked token. Log in again (`POST /v1/auth/login`).
    #[error("{0}")]
    Unauthenticated(String),

    /// The caller is authenticated but lacks the permission the endpoint needs. Bind a role
    /// that grants it (`POST /v1/bindings`).
    #[error("{0}")]
    Forbidden(String),

    /// The named user, role or binding does not exist.
    #[error("{0}")]
    NotFound(String),

    /// The write conflicts with what is stored (already exists, bootstrap already done with
    /// other credentials, concurrent change). Re-read and retry if it still makes sense.
    #[error("{0}")]
    Conflict(String),

    /// FlareDB cannot be reached (or has no leader). Running sessions keep working from the
    /// token cache; retry new logins and changes once `GET /health` says `connected`.
    #[error("identity database unavailable: {0}")]
    Unavailable(String),

    /// FlareDB answered something IAM cannot use (bad stored record, unexpected status).
    /// Check FlareDB's logs and the record named in the message.
    #[error("identity database error: {0}")]
    Store(String),

    /// A bug or an exhausted resource inside IAM (a panicked hashing task).
    #[error("internal error: {0}")]
    Internal(String),

    /// The configuration is wrong; the message names the key and the fix. Nothing was bound.
    #[error("configuration: {0}")]
    Config(String),

    /// The signing key file cannot be read, created or parsed.
    #[error("signing key {path}: {reason}")]
    SigningKey {
        /// The file, as configured with `--signing-key`.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl IamError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            IamError::Invalid(_) => StatusCode::BAD_REQUEST,
            IamError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            IamError::Forbidden(_) => StatusCode::FORBIDDEN,
            IamError::NotFound(_) => StatusCode::NOT_FOUND,
            IamError::Conflict(_) => StatusCode::CONFLICT,
            IamError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            IamError::Store(_) => StatusCode::BAD_GATEWAY,
            IamError::Internal(_) | IamError::Config(_) | IamError::SigningKey { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for IamError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request refused");
        }
        let mut resp = (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"plasmacloud-iam\""),
            );
        }
        resp
    }
}

/// Shorthand for IAM results.
pub type Result<T, E = IamError> = std::result::Result<T, E>;
