//! The boot plane (read-only HTTP): per-node iPXE scripts, bundle artifacts, the per-boot
//! enrollment initrd, iPXE binaries for UEFI HTTP boot.
//!
//! | route | what | who may fetch it |
//! |---|---|---|
//! | `GET /boot/{mac}.ipxe` | the script for the node with that MAC (`52-54-00-…`); a new enrollment token is minted for each | the node, by [`crate::boot_access`]'s rule (else 403) |
//! | `GET /files/{path}` | any file of the current bundle (kernel, base initrd, overlays: all public) | anyone on the boot network |
//! | `GET /b/{version}/{path}` | the same from bundle `version` (the current one, or one replaced less than 10 min ago): the URLs a script names, so a boot stays on the bundle its script came from | anyone on the boot network |
//! | `GET /s/{token}/enroll.cpio.zst` | that boot's enrollment initrd (token + CA), made on the fly | only through the URL in that node's script, only from the address it went to, by the same rule |
//! | `GET /ipxe/{path}` | iPXE binaries (UEFI HTTP boot) | anyone |
//!
//! Artifacts are streamed from disk (never read whole into memory) with `HEAD`, single
//! `Range` requests, and strong `ETag`s (the manifest's sha256 for bundle files). A plain
//! HTTP/1 `GET` that reached us through [`crate::http_conn`]'s own loop (the request carries
//! [`SendfileOk`]) gets its body, whole file or range, sent with `sendfile(2)` straight from the
//! page cache; requests that hyper serves (after a `HEAD`, a request with a body, …) use the
//! read-ahead stream below.
//!
//! Bundle files are served from the handles the bundle opened when it was loaded
//! ([`crate::bundle`]): a request takes the current bundle once, and a transfer holds its file
//! to the end whatever replaces the bundle meanwhile. Kernel, initrd and overlay fetches are
//! boot events that name the bundle version; a kernel fetch by a node records the version it
//! booted (`/v1/status`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path as AxPath, Query, State as AxState};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use plasmacloud_contract::manifest::Arch;
use pxe_protocol::ipxe::{
    initrd_name, render_boot_script, render_refusal_script, BootScript, ScriptInitrd,
};
use tracing::warn;

use crate::boot_plan::{
    enrollment_for, note_enrollment_sent, plan_boot, record_not_served, BootPlan, EnrollRefusal,
    Loader,
};
use crate::bundle::Bundle;
use crate::enroll_initrd::ENROLL_INITRD_NAME;
use crate::http_conn::{SendfileBody, SendfileOk};
use crate::paths::resolve_path;
use crate::state::{peer_v4, Metrics, NewEvent, State};

/// The boot-plane router.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/boot/{file}", get(boot_script))
        .route("/files/{*path}", get(bundle_file))
        .route("/b/{version}/{*path}", get(versioned_file))
        .route("/s/{token}/{*path}", get(enroll_file))
        .route("/ipxe/{*path}", get(ipxe_file))
        .with_state(state)
}

fn forbidden(state: &State, why: &str) -> Response {
    Metrics::inc(&state.metrics.http_forbidden);
    (StatusCode::FORBIDDEN, format!("forbidden: {why}\n")).into_response()
}

fn not_found(state: &State, what: &str) -> Response {
    Metrics::inc(&state.metrics.http_errors);
    (StatusCode::NOT_FOUND, format!("not found: {what}\n")).into_response()
}

/// `?arch=` of a script request: the architecture of the iPXE asking (from its DHCP option 93,
/// see `crate::dhcp`).
#[derive(Debug, serde::Deserialize)]
struct ScriptQuery {
    arch: Option<String>,
}

fn script_response(script: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        script,
    )
        .into_response()
}

async fn boot_script(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AxPath(file): AxPath<String>,
    Query(query): Query<ScriptQuery>,
) -> Response {
    Metrics::inc(&state.metrics.http_requests);
    let Some(mac_dashed) = file.strip_suffix(".ipxe") else {
        return not_found(&state, &file);
    };
    let Ok(mac) = mac_dashed
        .replace('-', ":")
        .parse::<plasmacloud_contract::MacAddr>()
    else {
        return not_found(&state, &file);
    };
    let claimed = match query.arch.as_deref().map(|a| (a, Arch::parse(a))) {
        None => None,
        Some((_, Some(a))) => Some(a),
        Some((a, None)) => {
            let why = format!("this machine's iPXE runs on architecture {a:?}; bundles carry only x86_64 and aarch64 kernels");
            warn!(%mac, %why, "not booting");
            Metrics::inc(&state.metrics.http_errors);
            record_not_served(&state, peer, mac, Loader::Ipxe, "failed", &why);
            return script_response(render_refusal_script(&why));
        }
    };
    match plan_boot(&state, peer, mac, claimed, Loader::Ipxe).await {
        BootPlan::Boot(b) => script_response(script_for(
            &state.config.http_base(),
            &b.bundle.version,
            &b.title,
            &b.entry,
            b.url_token.as_deref(),
        )),
        BootPlan::Refuse(why) => {
            Metrics::inc(&state.metrics.http_errors);
            script_response(render_refusal_script(&why))
        }
        BootPlan::Ignored(why) => script_response(render_refusal_script(&why)),
        BootPlan::Forbidden => forbidden(
            &state,
            "this node's script is served only to the node (its leased address, whose neighbour entry shows its MAC)",
        ),
        BootPlan::NotFound(what) => not_found(&state, &what),
        BootPlan::Unavailable => {
            Metrics::inc(&state.metrics.http_errors);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot record an enrollment token; see pxe-server's log\n",
            )
                .into_response()
        }
    }
}

/// A boot script: the entry's kernel and initrds (all under the bundle's versioned URL
/// `/b/<version>/`), then, for a node's boot, its enrollment initrd under `/s/<url token>/`.
fn script_for(
    base: &str,
    version: &str,
    title: &str,
    entry: &plasmacloud_contract::manifest::BootEntry,
    url_token: Option<&str>,
) -> String {
    let bundle_base = format!("{base}/b/{version}");
    let mut initrds: Vec<ScriptInitrd> = entry
        .initrds
        .iter()
        .enumerate()
        .map(|(i, p)| ScriptInitrd {
            name: initrd_name(p, i),
            url: format!("{bundle_base}/{p}"),
        })
        .collect();
    if let Some(t) = url_token {
        initrds.push(ScriptInitrd {
            name: ENROLL_INITRD_NAME.to_string(),
            url: format!("{base}/s/{t}/{ENROLL_INITRD_NAME}"),
        });
    }
    render_boot_script(&BootScript {
        title: title.to_string(),
        kernel_url: format!("{bundle_base}/{}", entry.kernel),
        initrds,
        cmdline: entry.cmdline.clone(),
    })
}

/// What an artifact route reads from a request besides its path: the conditional and `Range`
/// headers, `GET` or `HEAD`, and whether [`crate::http_conn`]'s own loop took the request
/// (it carries [`SendfileOk`]), so that the body may go out with `sendfile(2)`.
struct FileRequest {
    headers: HeaderMap,
    method: http::Method,
    sendfile_ok: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for FileRequest {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            headers: parts.headers.clone(),
            method: parts.method.clone(),
            sendfile_ok: parts.extensions.get::<SendfileOk>().is_some(),
        })
    }
}

async fn bundle_file(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AxPath(path): AxPath<String>,
    req: FileRequest,
) -> Response {
    Metrics::inc(&state.metrics.http_requests);
    let bundle = state.bundles.current();
    serve_bundle_file(&state, &bundle, peer, &path, &req).await
}

/// `GET /b/{version}/{path}`: a file of that bundle, while it is served.
async fn versioned_file(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AxPath((version, path)): AxPath<(String, String)>,
    req: FileRequest,
) -> Response {
    Metrics::inc(&state.metrics.http_requests);
    let Some(bundle) = state.bundles.by_version(&version) else {
        return not_found(
            &state,
            &format!(
                "bundle {version} is not served any more (a replaced bundle is kept {} s); boot again",
                crate::bundle::RETAIN.as_secs()
            ),
        );
    };
    serve_bundle_file(&state, &bundle, peer, &path, &req).await
}

/// `GET /s/{token}/enroll.cpio.zst`: the enrollment initrd of one boot.
async fn enroll_file(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AxPath((token, path)): AxPath<(String, String)>,
    req: FileRequest,
) -> Response {
    Metrics::inc(&state.metrics.http_requests);
    let (node, body) = match enrollment_for(&state, peer, &token, &path) {
        Ok(x) => x,
        Err(EnrollRefusal::UnknownToken) => {
            return forbidden(&state, "unknown or expired boot token")
        }
        Err(EnrollRefusal::NotTheNode) => {
            return forbidden(
                &state,
                "this boot's enrollment initrd goes only to the node it was made for",
            )
        }
        Err(EnrollRefusal::NotFound(what)) => return not_found(&state, &what),
        Err(EnrollRefusal::Internal) => {
            Metrics::inc(&state.metrics.http_errors);
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if req.method == http::Method::GET {
        note_enrollment_sent(&state, &node, peer, body.len());
        Metrics::inc(&state.metrics.http_transfers);
        Metrics::inc_by(&state.metrics.http_bytes, body.len() as u64);
    }
    let len = body.len();
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::CACHE_CONTROL, "no-store");
    let body = if req.method == http::Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    resp.body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Serves a file of `bundle` from the handle it opened at load (its sha256 is the `ETag`) and
/// notes the fetch as a boot event; the callers have checked who may have it.
async fn serve_bundle_file(
    state: &Arc<State>,
    bundle: &Arc<Bundle>,
    peer: SocketAddr,
    path: &str,
    req: &FileRequest,
) -> Response {
    let Some(f) = bundle.file(path) else {
        return not_found(state, path);
    };
    let etag = format!("\"{}\"", f.sha256);
    note_artifact(state, bundle, peer, path, req);
    serve_file(state, f.file.clone(), f.size, etag, req).await
}

/// `GET /ipxe/{path}`: an iPXE binary, the file a UEFI HTTP boot client's firmware loads
/// (DHCP gave it this URL): a boot event of phase `http-boot`, so a rack can tell that the
/// firmware's own HTTP boot ran (and not PXE + TFTP).
async fn ipxe_file(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    AxPath(path): AxPath<String>,
    req: FileRequest,
) -> Response {
    Metrics::inc(&state.metrics.http_requests);
    let Ok(full) = resolve_path(&state.config.ipxe_dir, &path) else {
        return not_found(&state, &path);
    };
    if req.method == http::Method::GET && !req.headers.contains_key(header::RANGE) {
        let mac = state.mac_for_ip(peer);
        let node = mac
            .as_deref()
            .and_then(|m| state.node_of_mac(m))
            .map(|n| n.name.clone());
        state.event(NewEvent {
            node,
            mac,
            ip: peer_v4(peer),
            phase: "http-boot".into(),
            status: "started".into(),
            detail: format!("ipxe/{path} over HTTP (UEFI HTTP boot) to {peer}"),
            ..Default::default()
        });
    }
    let file = match tokio::fs::File::open(&full).await {
        Ok(f) => f.into_std().await,
        Err(e) => {
            warn!(path = %full.display(), error = %e, "cannot open artifact");
            return not_found(&state, "artifact unreadable");
        }
    };
    let (len, etag) = match file.metadata() {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            (m.len(), format!("\"{:x}-{:x}\"", m.len(), mtime))
        }
        Err(_) => return not_found(&state, &path),
    };
    serve_file(&state, Arc::new(file), len, etag, &req).await
}

fn note_artifact(state: &State, bundle: &Bundle, peer: SocketAddr, path: &str, req: &FileRequest) {
    if req.method != http::Method::GET || req.headers.contains_key(header::RANGE) {
        return;
    }
    crate::boot_plan::note_artifact(state, bundle, peer, path);
}

/// A parsed single byte range, inclusive.
fn parse_range(h: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        // Multiple ranges: serve the whole file (RFC 9110 allows ignoring Range).
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end: u64 = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse().ok()?
        };
        if start >= len || end < start {
            return Some(Err(()));
        }
        (start, end.min(len - 1))
    };
    Some(Ok(r))
}

/// Serves `len` bytes of the open `file` (whole, or the requested range) with `etag`.
async fn serve_file(
    state: &Arc<State>,
    file: Arc<std::fs::File>,
    len: u64,
    etag: String,
    req: &FileRequest,
) -> Response {
    let headers = &req.headers;
    let etag_hv = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"x\""));
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if inm.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_hv)]).into_response();
        }
    }
    // If-Range: a range only when the validator still matches.
    let range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| range_ok)
        .and_then(|h| parse_range(h, len));
    let (status, start, end) = match range {
        Some(Err(())) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
        Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag_hv)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    if req.method == http::Method::HEAD {
        return builder
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    Metrics::inc(&state.metrics.http_transfers);
    if req.sendfile_ok && count > 0 {
        // Our own connection loop sends the body with sendfile(2) (see `http_conn`).
        let mut resp = builder
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        if resp.status() != StatusCode::INTERNAL_SERVER_ERROR {
            resp.extensions_mut().insert(SendfileBody {
                file,
                offset: start,
                count,
                state: state.clone(),
            });
        }
        return resp;
    }
    let stream = read_ahead(file, start, count, state.clone());
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Chunk size of artifact reads.
const CHUNK: usize = 128 << 10;

/// Streams `count` bytes of `file` from `offset` (positioned reads: the handle may be shared)
/// from a blocking reader thread through a small channel, so disk reads run ahead of (and in
/// parallel with) socket writes, one pool hop per transfer rather than one per chunk; memory
/// stays bounded at a few chunks per transfer.
fn read_ahead(
    file: Arc<std::fs::File>,
    offset: u64,
    count: u64,
    state: Arc<State>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    use std::os::unix::fs::FileExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let mut off = offset;
        let end = offset.saturating_add(count);
        while off < end {
            let want = usize::try_from((end - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut buf = vec![0u8; want];
            let filled = match file.read_at(&mut buf, off) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if filled == 0 {
                let _ = tx.blocking_send(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "artifact shrank while being served",
                )));
                return;
            }
            buf.truncate(filled);
            off += filled as u64;
            Metrics::inc_by(&state.metrics.http_bytes, filled as u64);
            if tx.blocking_send(Ok(bytes::Bytes::from(buf))).is_err() {
                return; // the client went away
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
