//! The HTTP API (axum). Every error answers `{"error": "<message>"}` with the status of
//! [`IamError::status`]; request bodies are JSON objects with no unknown fields.
//!
//! | method, path | permission | body → answer |
//! |---|---|---|
//! | `GET /health` | — | `{"status":"healthy","database":"connected","version"}`, 503 `"disconnected"` |
//! | `POST /v1/bootstrap` | — | `{"username","password"}` → 200 `{"username","created":bool}`; 409 other credentials |
//! | `POST /v1/auth/login` | — | `{"username","password"}` → `{"token","token_type","expires_at","expires_in"}` |
//! | `GET /v1/auth/whoami` | any token | → `{"subject","roles","permissions","token_id","issued_at","expires_at"}` |
//! | `POST /v1/auth/revoke` | own token; others' need `iam:tokens:revoke` | empty, or `{"token"}` → `{"revoked":"<jti>"}` |
//! | `GET /v1/users` | `iam:users:read` | → `{"users":[{"username","roles","created_at"}]}` |
//! | `POST /v1/users` | `iam:users:write` | `{"username","password"}` → 201 user |
//! | `GET /v1/users/{name}` | `iam:users:read` | → user |
//! | `DELETE /v1/users/{name}` | `iam:users:write` | → `{"deleted":"name"}` |
//! | `PUT /v1/users/{name}/password` | own, or `iam:users:write` | `{"password"}` → `{"updated":"name"}` |
//! | `GET /v1/roles` | `iam:roles:read` | → `{"roles":[{"name","description","permissions","builtin"}]}` |
//! | `POST /v1/roles` | `iam:roles:write` | `{"name","description"?,"permissions"}` → 201 role |
//! | `GET /v1/roles/{name}` | `iam:roles:read` | → role |
//! | `PUT /v1/roles/{name}` | `iam:roles:write` | `{"description"?,"permissions"}` → role |
//! | `DELETE /v1/roles/{name}` | `iam:roles:write` | → `{"deleted":"name"}` (409 while bound) |
//! | `GET /v1/bindings[?user=U]` | `iam:bindings:read` | → `{"bindings":[{"user","role","created_at"}]}` |
//! | `POST /v1/bindings` | `iam:bindings:write` | `{"user","role"}` → 201 new, 200 existing |
//! | `DELETE /v1/bindings/{user}/{role}` | `iam:bindings:write` | → `{"deleted":{"user","role"}}` |

use crate::model::perm;
use crate::service::{BootstrapOutcome, Iam};
use crate::store::Store;
use crate::IamError;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The crate version reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

type ApiResult = Result<Response, IamError>;

/// A JSON body parsed strictly: errors become 400 `{"error"}` naming the problem.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = IamError;

    async fn from_request(req: Request, state: &S) -> Result<Self, IamError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| IamError::Invalid(format!("cannot read the request body: {e}")))?;
        parse_body(&bytes).map(ApiJson)
    }
}

fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, IamError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(IamError::Invalid(
            "the request body is empty; expected a JSON object".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| IamError::Invalid(format!("invalid request body: {e}")))
}

/// The bearer token of the `Authorization` header.
pub struct Bearer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = IamError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, IamError> {
        let value = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                IamError::Unauthenticated(
                    "missing Authorization header; send `Authorization: Bearer <token>` from POST /v1/auth/login".into(),
                )
            })?
            .to_str()
            .map_err(|_| IamError::Unauthenticated("malformed Authorization header".into()))?;
        let (scheme, token) = value.split_once(' ').ok_or_else(|| {
            IamError::Unauthenticated(
                "malformed Authorization header; expected `Bearer <token>`".into(),
            )
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(IamError::Unauthenticated(
                "malformed Authorization header; expected `Bearer <token>`".into(),
            ));
        }
        Ok(Bearer(token.trim().to_string()))
    }
}

/// `{"username","password"}` (bootstrap, login, create user).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    name: String,
    #[serde(default)]
    description: String,
    permissions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleUpdateBody {
    #[serde(default)]
    description: Option<String>,
    permissions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingBody {
    user: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingFilter {
    user: Option<String>,
}

/// The router over a shared service.
pub fn router<S: Store>(iam: Arc<Iam<S>>) -> Router {
    Router::new()
        .route("/health", get(health::<S>))
        .route("/v1/bootstrap", post(bootstrap::<S>))
        .route("/v1/auth/login", post(login::<S>))
        .route("/v1/auth/whoami", get(whoami::<S>))
        .route("/v1/auth/revoke", post(revoke::<S>))
        .route("/v1/users", get(list_users::<S>).post(create_user::<S>))
        .route(
            "/v1/users/{name}",
            get(get_user::<S>).delete(delete_user::<S>),
        )
        .route("/v1/users/{name}/password", put(set_password::<S>))
        .route("/v1/roles", get(list_roles::<S>).post(create_role::<S>))
        .route(
            "/v1/roles/{name}",
            get(get_role::<S>)
                .put(update_role::<S>)
                .delete(delete_role::<S>),
        )
        .route(
            "/v1/bindings",
            get(list_bindings::<S>).post(create_binding::<S>),
        )
        .route("/v1/bindings/{user}/{role}", delete(delete_binding::<S>))
        .fallback(|| async {
            IamError::NotFound("no such endpoint; see the iam crate docs for the API".into())
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(iam)
}

async fn health<S: Store>(State(iam): State<Arc<Iam<S>>>) -> Response {
    match iam.health().await {
        Ok(()) => Json(json!({"status": "healthy", "database": "connected", "version": VERSION}))
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unhealthy",
                "database": "disconnected",
                "version": VERSION,
                "error": e.to_string(),
            })),
        )
            .into_response(),
    }
}

async fn bootstrap<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    ApiJson(c): ApiJson<Credentials>,
) -> ApiResult {
    let outcome = iam.bootstrap(&c.username, &c.password).await?;
    Ok(Json(json!({
        "username": c.username,
        "created": outcome == BootstrapOutcome::Created,
    }))
    .into_response())
}

async fn login<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    ApiJson(c): ApiJson<Credentials>,
) -> ApiResult {
    Ok(Json(iam.login(&c.username, &c.password).await?).into_response())
}

async fn whoami<S: Store>(State(iam): State<Arc<Iam<S>>>, Bearer(t): Bearer) -> ApiResult {
    Ok(Json(iam.authenticate(&t).await?).into_response())
}

async fn revoke<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    body: Bytes,
) -> ApiResult {
    let caller = iam.authenticate(&t).await?;
    let target = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(parse_body::<RevokeBody>(&body)?.token)
    };
    let jti = iam.revoke(&caller, target.as_deref()).await?;
    Ok(Json(json!({ "revoked": jti })).into_response())
}

async fn list_users<S: Store>(State(iam): State<Arc<Iam<S>>>, Bearer(t): Bearer) -> ApiResult {
    iam.authorize(&t, perm::USERS_READ).await?;
    Ok(Json(json!({ "users": iam.list_users().await? })).into_response())
}

async fn create_user<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    ApiJson(c): ApiJson<Credentials>,
) -> ApiResult {
    iam.authorize(&t, perm::USERS_WRITE).await?;
    let user = iam.create_user(&c.username, &c.password).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

async fn get_user<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    Path(name): Path<String>,
) -> ApiResult {
    iam.authorize(&t, perm::USERS_READ).await?;
    Ok(Json(iam.get_user(&name).await?).into_response())
}

async fn delete_user<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    Path(name): Path<String>,
) -> ApiResult {
    let caller = iam.authorize(&t, perm::USERS_WRITE).await?;
    iam.delete_user(&caller, &name).await?;
    Ok(Json(json!({ "deleted": name })).into_response())
}

async fn set_password<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<PasswordBody>,
) -> ApiResult {
    let caller = iam.authenticate(&t).await?;
    iam.set_password(&caller, &name, &b.password).await?;
    Ok(Json(json!({ "updated": name })).into_response())
}

async fn list_roles<S: Store>(State(iam): State<Arc<Iam<S>>>, Bearer(t): Bearer) -> ApiResult {
    iam.authorize(&t, perm::ROLES_READ).await?;
    Ok(Json(json!({ "roles": iam.list_roles().await? })).into_response())
}

async fn create_role<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    ApiJson(b): ApiJson<RoleBody>,
) -> ApiResult {
    iam.authorize(&t, perm::ROLES_WRITE).await?;
    let role = iam
        .create_role(&b.name, &b.description, b.permissions)
        .await?;
    Ok((StatusCode::CREATED, Json(role)).into_response())
}

async fn get_role<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    Path(name): Path<String>,
) -> ApiResult {
    iam.authorize(&t, perm::ROLES_READ).await?;
    Ok(Json(iam.get_role(&name).await?).into_response())
}

async fn update_role<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<RoleUpdateBody>,
) -> ApiResult {
    iam.authorize(&t, perm::ROLES_WRITE).await?;
    let role = iam
        .update_role(&name, b.description.as_deref(), b.permissions)
        .await?;
    Ok(Json(role).into_response())
}

async fn delete_role<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    Path(name): Path<String>,
) -> ApiResult {
    iam.authorize(&t, perm::ROLES_WRITE).await?;
    iam.delete_role(&name).await?;
    Ok(Json(json!({ "deleted": name })).into_response())
}

async fn list_bindings<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    filter: Result<Query<BindingFilter>, QueryRejection>,
) -> ApiResult {
    let Query(filter) = filter
        .map_err(|e| IamError::Invalid(format!("invalid query string: {}", e.body_text())))?;
    iam.authorize(&t, perm::BINDINGS_READ).await?;
    let bindings = iam.list_bindings(filter.user.as_deref()).await?;
    Ok(Json(json!({ "bindings": bindings })).into_response())
}

async fn create_binding<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    ApiJson(b): ApiJson<BindingBody>,
) -> ApiResult {
    iam.authorize(&t, perm::BINDINGS_WRITE).await?;
    let (binding, created) = iam.create_binding(&b.user, &b.role).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(binding)).into_response())
}

async fn delete_binding<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Bearer(t): Bearer,
    Path((user, role)): Path<(String, String)>,
) -> ApiResult {
    let caller = iam.authorize(&t, perm::BINDINGS_WRITE).await?;
    iam.delete_binding(&caller, &user, &role).await?;
    Ok(Json(json!({ "deleted": { "user": user, "role": role } })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemStore;
    use crate::token::TokenSigner;
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    const PW: &str = "correct horse battery";

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .header("content-type", "application/json")
            .body(Body::from(body.unwrap_or("").to_string()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    fn app() -> (Arc<Iam<MemStore>>, Router) {
        let iam = Arc::new(Iam::new(MemStore::default(), TokenSigner::generate(), 600));
        (iam.clone(), router(iam))
    }

    #[tokio::test]
    async fn health_reports_the_database() {
        let (iam, app) = app();
        let (s, j) = call(&app, "GET", "/health", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(j["status"], "healthy");
        assert_eq!(j["database"], "connected");
        assert_eq!(j["version"], VERSION);
        iam.store().set_down(true);
        let (s, j) = call(&app, "GET", "/health", None, None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(j["database"], "disconnected");
    }

    #[tokio::test]
    async fn the_whole_flow_over_http() {
        let (_, app) = app();
        let creds = format!(r#"{{"username":"admin","password":"{PW}"}}"#);
        let (s, j) = call(&app, "POST", "/v1/bootstrap", None, Some(&creds)).await;
        assert_eq!(
            (s, j["created"].clone()),
            (StatusCode::OK, true.into()),
            "{j}"
        );
        let (s, j) = call(&app, "POST", "/v1/bootstrap", None, Some(&creds)).await;
        assert_eq!(
            (s, j["created"].clone()),
            (StatusCode::OK, false.into()),
            "{j}"
        );
        let other = r#"{"username":"eve","password":"another good one"}"#;
        let (s, j) = call(&app, "POST", "/v1/bootstrap", None, Some(other)).await;
        assert_eq!(s, StatusCode::CONFLICT, "{j}");
        assert!(j["error"]
            .as_str()
            .unwrap()
            .contains("already bootstrapped"));

        let (s, j) = call(&app, "POST", "/v1/auth/login", None, Some(&creds)).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["token_type"], "Bearer");
        let tok = j["token"].as_str().unwrap().to_string();

        let (s, j) = call(&app, "GET", "/v1/auth/whoami", Some(&tok), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["subject"], "admin");
        assert_eq!(j["roles"], serde_json::json!(["admin"]));

        let (s, _) = call(
            &app,
            "POST",
            "/v1/users",
            Some(&tok),
            Some(r#"{"username":"viewer1","password":"tiger lily 4821"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _) = call(
            &app,
            "POST",
            "/v1/bindings",
            Some(&tok),
            Some(r#"{"user":"viewer1","role":"viewer"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, j) = call(
            &app,
            "POST",
            "/v1/auth/login",
            None,
            Some(r#"{"username":"viewer1","password":"tiger lily 4821"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let vtok = j["token"].as_str().unwrap().to_string();
        let (s, j) = call(&app, "GET", "/v1/users", Some(&vtok), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["users"].as_array().unwrap().len(), 2);
        let (s, j) = call(
            &app,
            "POST",
            "/v1/users",
            Some(&vtok),
            Some(r#"{"username":"x","password":"tiger lily 4821"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{j}");
        assert!(j["error"].as_str().unwrap().contains("iam:users:write"));

        let (s, j) = call(&app, "POST", "/v1/auth/revoke", Some(&vtok), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let (s, j) = call(&app, "GET", "/v1/auth/whoami", Some(&vtok), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{j}");
        assert!(j["error"].as_str().unwrap().contains("revoked"));
    }

    #[tokio::test]
    async fn bad_input_is_a_json_4xx() {
        let (iam, app) = app();
        let cases: &[(&str, &str, Option<&str>, StatusCode, &str)] = &[
            (
                "POST",
                "/v1/bootstrap",
                Some(r#"{"username":"admin","password":"correct horse battery","admin":true}"#),
                StatusCode::BAD_REQUEST,
                "unknown field",
            ),
            (
                "POST",
                "/v1/bootstrap",
                Some(r#"{"username":"","password":"correct horse battery"}"#),
                StatusCode::BAD_REQUEST,
                "empty",
            ),
            (
                "POST",
                "/v1/bootstrap",
                Some(r#"{"username":"admin","password":"weak"}"#),
                StatusCode::BAD_REQUEST,
                "weak",
            ),
            (
                "POST",
                "/v1/bootstrap",
                None,
                StatusCode::BAD_REQUEST,
                "empty",
            ),
            (
                "POST",
                "/v1/bootstrap",
                Some("not json"),
                StatusCode::BAD_REQUEST,
                "invalid",
            ),
            (
                "GET",
                "/v1/auth/whoami",
                None,
                StatusCode::UNAUTHORIZED,
                "Authorization",
            ),
            (
                "GET",
                "/v1/nope",
                None,
                StatusCode::NOT_FOUND,
                "no such endpoint",
            ),
        ];
        for (m, p, body, want, needle) in cases {
            let (s, j) = call(&app, m, p, None, *body).await;
            assert_eq!(s, *want, "{m} {p} {body:?}: {j}");
            let msg = j["error"].as_str().unwrap_or_default();
            assert!(msg.contains(needle), "{m} {p}: {msg:?} lacks {needle:?}");
        }
        for tok in ["garbage", "a.b.c", &"x".repeat(3000)] {
            let (s, j) = call(&app, "GET", "/v1/auth/whoami", Some(tok), None).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{j}");
            assert!(j["error"].as_str().unwrap().contains("malformed"), "{j}");
        }
        assert_eq!(iam.store().count(""), 0);
        let big = format!(
            r#"{{"username":"admin","password":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let (s, _) = call(&app, "POST", "/v1/bootstrap", None, Some(&big)).await;
        assert!(s.is_client_error(), "{s}");
        assert_eq!(iam.store().count(""), 0);
    }
}
