//! The HTTP API (axum), served over TLS with the node's certificate. Every error answers
//! `{"error": "<message>"}` with the status of [`IamError::status`]; request bodies are JSON
//! objects with no unknown fields.
//!
//! Who may call what — the rule: IAM is the door for people and outside services, so login,
//! token verification, `/health` and `/metrics` (counts only, as on Chainfire and FlareDB) are
//! open to anyone over TLS; login and verification authenticate by password or token. Everything that changes or lists IAM's records (users, roles, bindings, acting on
//! someone else's token or password) also needs a client certificate of the cluster CA, node
//! or operator ([`Need::cluster_certificate`]), besides its admin token. Bootstrap and node
//! tokens need a node certificate ([`Need::node`]). The certificate's identity decides, never a
//! header. A connection whose certificate has been revoked since it opened is refused on every
//! route (403); a new one fails at the handshake.
//!
//! | method, path | certificate | permission | body → answer |
//! |---|---|---|---|
//! | `GET /health` | — | — | `{"status":"healthy","database":"connected","version"}`, 503 `"disconnected"` |
//! | `GET /metrics` | — | — | the Prometheus text format (OpenMetrics 1.0): see [`crate::metrics`] |
//! | `POST /v1/bootstrap` | node | — | `{"username","password_hash"}` → 200 `{"username","created":bool}`; 409 another admin |
//! | `POST /v1/auth/node-token` | node | — | no body → `{"token","token_type","expires_at","expires_in"}` for subject `node:<name>` |
//! | `POST /v1/auth/login` | — | — | `{"username","password"}` → `{"token","token_type","expires_at","expires_in"}` |
//! | `GET /v1/auth/whoami` | — | any token | → `{"subject","roles","permissions","token_id","issued_at","expires_at"}` |
//! | `POST /v1/auth/revoke` | — (own token), cluster (another's) | own token; others' need `iam:tokens:revoke` | empty, or `{"token"}` → `{"revoked":"<jti>"}` |
//! | `PUT /v1/users/{name}/password` | — (own), cluster (another's) | own, or `iam:users:write` | `{"password"}` → `{"updated":"name"}` |
//! | `GET /v1/users` | cluster | `iam:users:read` | → `{"users":[{"username","roles","created_at"}]}` |
//! | `POST /v1/users` | cluster | `iam:users:write` | `{"username","password"}` → 201 user |
//! | `GET /v1/users/{name}` | cluster | `iam:users:read` | → user |
//! | `DELETE /v1/users/{name}` | cluster | `iam:users:write` | → `{"deleted":"name"}` |
//! | `GET /v1/roles` | cluster | `iam:roles:read` | → `{"roles":[{"name","description","permissions","builtin"}]}` |
//! | `POST /v1/roles` | cluster | `iam:roles:write` | `{"name","description"?,"permissions"}` → 201 role |
//! | `GET /v1/roles/{name}` | cluster | `iam:roles:read` | → role |
//! | `PUT /v1/roles/{name}` | cluster | `iam:roles:write` | `{"description"?,"permissions"}` → role |
//! | `DELETE /v1/roles/{name}` | cluster | `iam:roles:write` | → `{"deleted":"name"}` (409 while bound) |
//! | `GET /v1/bindings[?user=U]` | cluster | `iam:bindings:read` | → `{"bindings":[{"user","role","created_at"}]}` |
//! | `POST /v1/bindings` | cluster | `iam:bindings:write` | `{"user","role"}` → 201 new, 200 existing |
//! | `DELETE /v1/bindings/{user}/{role}` | cluster | `iam:bindings:write` | → `{"deleted":{"user","role"}}` |
//!
//! Without a certificate where one is needed: 401; an operator where a node is needed, or a
//! revoked certificate: 403.

use crate::model::perm;
use crate::service::{BootstrapOutcome, Iam, Session};
use crate::store::Store;
use crate::{token, IamError};
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use plasmacloud_pki::listener::{authorize, guard, Caller, Need};
use plasmacloud_pki::{Peer, Revocations};
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

/// `{"username","password_hash"}`: the first admin, as the contract carries it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapBody {
    /// User name.
    pub username: String,
    /// argon2id PHC string (`iam-server hash-password`).
    pub password_hash: String,
}

/// `{"username","password"}` (login, create user).
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

/// The router over a shared service; serve it with
/// `into_make_service_with_connect_info::<Peer>()` on a [`plasmacloud_pki::TlsListener`], so
/// the guards see each connection's certificate. Revoked certificates are those of
/// [`Iam::cert_revocations`].
pub fn router<S: Store>(iam: Arc<Iam<S>>) -> Router {
    let revoked = iam.cert_revocations().clone();
    // Open to anyone over TLS: they authenticate by password or token (the two routes that
    // may act on someone else check for a certificate themselves).
    let open = Router::new()
        .route("/health", get(health::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/v1/auth/login", post(login::<S>))
        .route("/v1/auth/whoami", get(whoami::<S>))
        .route("/v1/auth/revoke", post(revoke::<S>))
        .route("/v1/users/{name}/password", put(set_password::<S>));
    let nodes = Router::new()
        .route("/v1/bootstrap", post(bootstrap::<S>))
        .route("/v1/auth/node-token", post(node_token::<S>))
        .route_layer(from_fn_with_state(Need::node(&revoked), guard));
    let admin = Router::new()
        .route("/v1/users", get(list_users::<S>).post(create_user::<S>))
        .route(
            "/v1/users/{name}",
            get(get_user::<S>).delete(delete_user::<S>),
        )
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
        .route_layer(from_fn_with_state(
            Need::cluster_certificate(&revoked),
            guard,
        ));
    Router::new()
        .merge(open)
        .merge(nodes)
        .merge(admin)
        .fallback(|| async {
            IamError::NotFound("no such endpoint; see the iam crate docs for the API".into())
        })
        .layer(from_fn_with_state(revoked, refuse_revoked))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn_with_state(
            iam.metrics().clone(),
            crate::metrics::track_requests,
        ))
        .with_state(iam)
}

/// Refuses every request on a connection whose certificate was revoked after it opened (a new
/// connection with it fails at the handshake already).
async fn refuse_revoked(State(revoked): State<Revocations>, req: Request, next: Next) -> Response {
    let cert = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .and_then(|ConnectInfo(p)| p.cert.clone());
    if let Some(cert) = cert {
        if revoked.is_revoked(&cert.serial) {
            return IamError::Forbidden(format!(
                "certificate {} ({}) is revoked",
                cert.serial, cert.identity
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// Acting on someone else (their token, their password) needs a cluster certificate too.
fn need_certificate_for_others<S: Store>(
    iam: &Iam<S>,
    peer: &Peer,
    caller: &Session,
    subject: &str,
) -> Result<(), Box<Response>> {
    if caller.subject == subject {
        return Ok(());
    }
    authorize(peer, &Need::cluster_certificate(iam.cert_revocations())).map(|_| ())
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

async fn metrics<S: Store>(State(iam): State<Arc<Iam<S>>>) -> Response {
    iam.metrics().response()
}

async fn bootstrap<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Extension(Caller(node)): Extension<Caller>,
    ApiJson(c): ApiJson<BootstrapBody>,
) -> ApiResult {
    let outcome = iam.bootstrap(&c.username, &c.password_hash).await?;
    tracing::info!(by = %node.identity, username = %c.username, ?outcome, "bootstrap");
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

async fn node_token<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    Extension(Caller(node)): Extension<Caller>,
) -> ApiResult {
    Ok(Json(iam.issue_node_token(&node).await?).into_response())
}

async fn whoami<S: Store>(State(iam): State<Arc<Iam<S>>>, Bearer(t): Bearer) -> ApiResult {
    Ok(Json(iam.authenticate(&t).await?).into_response())
}

async fn revoke<S: Store>(
    State(iam): State<Arc<Iam<S>>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Bearer(t): Bearer,
    body: Bytes,
) -> ApiResult {
    let caller = iam.authenticate(&t).await?;
    let target = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(parse_body::<RevokeBody>(&body)?.token)
    };
    // Whose token it claims to be decides whether a certificate is needed; `revoke` then
    // checks the signature, so a forged subject gets nowhere.
    if let Some(sub) = target
        .as_deref()
        .and_then(|t| token::parse(t).ok())
        .map(|u| u.claims.sub)
    {
        if let Err(r) = need_certificate_for_others(&iam, &peer, &caller, &sub) {
            return Ok(*r);
        }
    }
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
    ConnectInfo(peer): ConnectInfo<Peer>,
    Bearer(t): Bearer,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<PasswordBody>,
) -> ApiResult {
    let caller = iam.authenticate(&t).await?;
    if let Err(r) = need_certificate_for_others(&iam, &peer, &caller, &name) {
        return Ok(*r);
    }
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
    use plasmacloud_pki::{Identity, PeerCert};
    use tower::ServiceExt as _;

    const PW: &str = "correct horse battery";

    fn hash() -> &'static str {
        static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        HASH.get_or_init(|| crate::password::hash_blocking(PW).unwrap())
    }

    /// A connection as the TLS listener hands it over: with this certificate, or none.
    fn peer(identity: Option<Identity>) -> Peer {
        let now = crate::model::now_unix() as i64;
        Peer {
            addr: "127.0.0.1:40000".parse().unwrap(),
            cert: identity.map(|identity| {
                Arc::new(PeerCert {
                    serial: format!("5e{}", identity.name.len()),
                    identity,
                    not_before: now - 60,
                    not_after: now + 86_400,
                    sha256: "00".repeat(32),
                })
            }),
        }
    }

    fn anon() -> Peer {
        peer(None)
    }
    fn node() -> Peer {
        peer(Some(Identity::node("node01").unwrap()))
    }
    fn operator() -> Peer {
        peer(Some(Identity::operator("alice").unwrap()))
    }

    async fn call(
        app: &Router,
        from: &Peer,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut req = req
            .header("content-type", "application/json")
            .body(Body::from(body.unwrap_or("").to_string()))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(from.clone()));
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

    fn bootstrap_body(user: &str, hash: &str) -> String {
        json!({"username": user, "password_hash": hash}).to_string()
    }

    #[tokio::test]
    async fn health_reports_the_database_to_anyone() {
        let (iam, app) = app();
        let (s, j) = call(&app, &anon(), "GET", "/health", None, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(j["status"], "healthy");
        assert_eq!(j["database"], "connected");
        assert_eq!(j["version"], VERSION);
        iam.store().set_down(true);
        let (s, j) = call(&app, &anon(), "GET", "/health", None, None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(j["database"], "disconnected");
    }

    #[tokio::test]
    async fn bootstrap_takes_only_a_node_and_only_once() {
        let (iam, app) = app();
        let body = bootstrap_body("admin", hash());
        let (s, j) = call(&app, &anon(), "POST", "/v1/bootstrap", None, Some(&body)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{j}");
        assert!(j["error"].as_str().unwrap().contains("client certificate"));
        let (s, j) = call(
            &app,
            &operator(),
            "POST",
            "/v1/bootstrap",
            None,
            Some(&body),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{j}");
        assert!(j["error"].as_str().unwrap().contains("node certificate"));
        assert_eq!(iam.store().count(""), 0);

        let (s, j) = call(&app, &node(), "POST", "/v1/bootstrap", None, Some(&body)).await;
        assert_eq!(
            (s, j["created"].clone()),
            (StatusCode::OK, true.into()),
            "{j}"
        );
        assert_eq!(j["username"], "admin");
        let before = iam.store().count("");
        let (s, j) = call(&app, &node(), "POST", "/v1/bootstrap", None, Some(&body)).await;
        assert_eq!(
            (s, j["created"].clone()),
            (StatusCode::OK, false.into()),
            "{j}"
        );
        assert_eq!(iam.store().count(""), before);
        let other_hash = crate::password::hash_blocking("another good one").unwrap();
        for other in [
            bootstrap_body("eve", hash()),
            bootstrap_body("admin", &other_hash),
        ] {
            let (s, j) = call(&app, &node(), "POST", "/v1/bootstrap", None, Some(&other)).await;
            assert_eq!(s, StatusCode::CONFLICT, "{j}");
            assert!(j["error"]
                .as_str()
                .unwrap()
                .contains("already bootstrapped"));
        }

        // The hash is the user's: logins verify the password against it.
        let creds = json!({"username": "admin", "password": PW}).to_string();
        let (s, j) = call(&app, &anon(), "POST", "/v1/auth/login", None, Some(&creds)).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let wrong = json!({"username": "admin", "password": "not the password"}).to_string();
        let (s, _) = call(&app, &anon(), "POST", "/v1/auth/login", None, Some(&wrong)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn login_and_tokens_are_open_administration_needs_a_certificate() {
        let (_, app) = app();
        let body = bootstrap_body("admin", hash());
        call(&app, &node(), "POST", "/v1/bootstrap", None, Some(&body)).await;
        let creds = json!({"username": "admin", "password": PW}).to_string();
        let (s, j) = call(&app, &anon(), "POST", "/v1/auth/login", None, Some(&creds)).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["token_type"], "Bearer");
        let tok = j["token"].as_str().unwrap().to_string();
        let (s, j) = call(&app, &anon(), "GET", "/v1/auth/whoami", Some(&tok), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["subject"], "admin");
        assert_eq!(j["roles"], json!(["admin"]));

        // An admin token alone does not administer: a cluster certificate is needed too.
        let user = r#"{"username":"viewer1","password":"tiger lily 4821"}"#;
        let admin_calls: &[(&str, &str, Option<&str>)] = &[
            ("GET", "/v1/users", None),
            ("POST", "/v1/users", Some(user)),
            ("GET", "/v1/users/admin", None),
            ("DELETE", "/v1/users/viewer1", None),
            ("GET", "/v1/roles", None),
            (
                "POST",
                "/v1/roles",
                Some(r#"{"name":"r1","permissions":["x:y"]}"#),
            ),
            ("GET", "/v1/roles/admin", None),
            ("PUT", "/v1/roles/r1", Some(r#"{"permissions":["x:y"]}"#)),
            ("DELETE", "/v1/roles/r1", None),
            ("GET", "/v1/bindings", None),
            (
                "POST",
                "/v1/bindings",
                Some(r#"{"user":"admin","role":"viewer"}"#),
            ),
            ("DELETE", "/v1/bindings/admin/viewer", None),
            (
                "PUT",
                "/v1/users/viewer1/password",
                Some(r#"{"password":"a new good one"}"#),
            ),
            ("POST", "/v1/auth/node-token", None),
        ];
        for (m, p, b) in admin_calls {
            let (s, j) = call(&app, &anon(), m, p, Some(&tok), *b).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p}: {j}");
            assert!(
                j["error"].as_str().unwrap().contains("client certificate"),
                "{j}"
            );
        }

        // With an operator's certificate and the admin token, administration works.
        let (s, j) = call(
            &app,
            &operator(),
            "POST",
            "/v1/users",
            Some(&tok),
            Some(user),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{j}");
        let (s, _) = call(
            &app,
            &node(),
            "POST",
            "/v1/bindings",
            Some(&tok),
            Some(r#"{"user":"viewer1","role":"viewer"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        // A certificate without the permission is not enough either.
        let vcreds = r#"{"username":"viewer1","password":"tiger lily 4821"}"#;
        let (_, j) = call(&app, &anon(), "POST", "/v1/auth/login", None, Some(vcreds)).await;
        let vtok = j["token"].as_str().unwrap().to_string();
        let (s, j) = call(&app, &operator(), "GET", "/v1/users", Some(&vtok), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["users"].as_array().unwrap().len(), 2);
        let (s, j) = call(
            &app,
            &operator(),
            "POST",
            "/v1/users",
            Some(&vtok),
            Some(user),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{j}");
        assert!(j["error"].as_str().unwrap().contains("iam:users:write"));

        // Self-service needs no certificate: one's own password, one's own token.
        let (s, j) = call(
            &app,
            &anon(),
            "PUT",
            "/v1/users/viewer1/password",
            Some(&vtok),
            Some(r#"{"password":"a new good one"}"#),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        // Revoking another's token needs one.
        let other = json!({ "token": tok }).to_string();
        let (s, j) = call(
            &app,
            &anon(),
            "POST",
            "/v1/auth/revoke",
            Some(&vtok),
            Some(&other),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{j}");
        let (s, j) = call(&app, &anon(), "POST", "/v1/auth/revoke", Some(&vtok), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let (s, j) = call(&app, &anon(), "GET", "/v1/auth/whoami", Some(&vtok), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{j}");
        assert!(j["error"].as_str().unwrap().contains("revoked"));
    }

    #[tokio::test]
    async fn node_tokens_go_to_node_certificates_only() {
        let (iam, app) = app();
        let (s, _) = call(&app, &anon(), "POST", "/v1/auth/node-token", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = call(&app, &operator(), "POST", "/v1/auth/node-token", None, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, j) = call(&app, &node(), "POST", "/v1/auth/node-token", None, None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["token_type"], "Bearer");
        let tok = j["token"].as_str().unwrap().to_string();
        // Anyone holding it can have it checked, with or without a certificate.
        let (s, j) = call(&app, &anon(), "GET", "/v1/auth/whoami", Some(&tok), None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        assert_eq!(j["subject"], "node:node01");
        assert_eq!(j["roles"], json!(["node"]));
        // No user record was needed.
        assert_eq!(iam.store().count("users/"), 0);
        // It administers nothing.
        let (s, _) = call(&app, &node(), "GET", "/v1/users", Some(&tok), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn a_revoked_certificate_is_refused_on_every_route() {
        let iam = Iam::new(MemStore::default(), TokenSigner::generate(), 600);
        let revoked = Revocations::default();
        let app = router(Arc::new(iam.with_cert_revocations(revoked.clone())));
        let (s, j) = call(&app, &node(), "POST", "/v1/auth/node-token", None, None).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        let tok = j["token"].as_str().unwrap().to_string();
        let serial = node().cert.unwrap().serial.clone();
        revoked.replace([serial]);
        for (m, p) in [
            ("GET", "/health"),
            ("POST", "/v1/auth/node-token"),
            ("POST", "/v1/bootstrap"),
            ("GET", "/v1/users"),
        ] {
            let (s, j) = call(&app, &node(), m, p, None, None).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{m} {p}: {j}");
            assert!(j["error"].as_str().unwrap().contains("revoked"), "{j}");
        }
        // Its token dies with it, whoever presents it.
        let (s, j) = call(&app, &anon(), "GET", "/v1/auth/whoami", Some(&tok), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{j}");
        assert!(j["error"].as_str().unwrap().contains("revoked"), "{j}");
        // Others are unaffected.
        let (s, _) = call(&app, &operator(), "GET", "/health", None, None).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn bad_input_is_a_json_4xx() {
        let (iam, app) = app();
        let cases: &[(&str, &str, Option<&str>, StatusCode, &str)] = &[
            (
                "POST",
                "/v1/bootstrap",
                Some(r#"{"username":"admin","password":"correct horse battery"}"#),
                StatusCode::BAD_REQUEST,
                "unknown field `password`",
            ),
            (
                "POST",
                "/v1/bootstrap",
                Some(r#"{"username":"admin"}"#),
                StatusCode::BAD_REQUEST,
                "password_hash",
            ),
            (
                "POST",
                "/v1/bootstrap",
                Some(r#"{"username":"","password_hash":"x"}"#),
                StatusCode::BAD_REQUEST,
                "empty",
            ),
            (
                "POST",
                "/v1/bootstrap",
                Some(r#"{"username":"admin","password_hash":"correct horse battery"}"#),
                StatusCode::BAD_REQUEST,
                "password_hash is not an argon2id PHC string",
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
            let (s, j) = call(&app, &node(), m, p, None, *body).await;
            assert_eq!(s, *want, "{m} {p} {body:?}: {j}");
            let msg = j["error"].as_str().unwrap_or_default();
            assert!(msg.contains(needle), "{m} {p}: {msg:?} lacks {needle:?}");
        }
        for tok in ["garbage", "a.b.c", &"x".repeat(3000)] {
            let (s, j) = call(&app, &anon(), "GET", "/v1/auth/whoami", Some(tok), None).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{j}");
            assert!(j["error"].as_str().unwrap().contains("malformed"), "{j}");
        }
        assert_eq!(iam.store().count(""), 0);
        let big = format!(
            r#"{{"username":"admin","password_hash":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let (s, _) = call(&app, &node(), "POST", "/v1/bootstrap", None, Some(&big)).await;
        assert!(s.is_client_error(), "{s}");
        assert_eq!(iam.store().count(""), 0);
    }
}
