//! The revisioned key-value handlers: Chainfire's key space (`/v1/kv`, key space `""`) and
//! FlareDB's namespaces (`/v1/ns/{ns}/kv`) share them, with compare-and-swap through
//! `?prev_revision=N` / `?prev_exist=…` (409 on mismatch), and listings in pages
//! (`?prefix=&limit=&after=`).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use plasmacloud_pki::listener::Caller;
use plasmacloud_store_client::types::valid_namespace;
use plasmacloud_store_client::{
    DeleteResponse, ListResponse, PutResponse, LIST_DEFAULT_LIMIT, LIST_MAX_BYTES, LIST_MAX_LIMIT,
};
use serde::Serialize;

use super::forward::{read_blocking, ready_to_read, write_at_leader};
use super::handler::{check_name, conflict, err, with_revision, Req, St};
use crate::types::{Command, CommandResult, Cond};

/// Largest key, bytes.
pub const MAX_KEY: usize = 4096;
/// Largest value, bytes.
pub const MAX_VALUE: usize = 1024 * 1024;

fn check_key(key: &str) -> Result<(), Response> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("keys must be 1..={MAX_KEY} bytes"),
        ));
    }
    Ok(())
}

fn prev_revision(q: &HashMap<String, String>) -> Result<Option<u64>, Response> {
    q.get("prev_revision")
        .map(|r| {
            r.parse::<u64>().map_err(|_| {
                err(
                    StatusCode::BAD_REQUEST,
                    format!("prev_revision={r:?} is not a number"),
                )
            })
        })
        .transpose()
}

fn parse_cond(q: &HashMap<String, String>) -> Result<Option<Cond>, Response> {
    match q.get("prev_exist") {
        Some(_) if q.contains_key("prev_revision") => Err(err(
            StatusCode::BAD_REQUEST,
            "give prev_revision or prev_exist, not both",
        )),
        Some(e) => match e.as_str() {
            "false" => Ok(Some(Cond::Absent)),
            "true" => Ok(Some(Cond::Exists)),
            _ => Err(err(
                StatusCode::BAD_REQUEST,
                format!("prev_exist={e:?} must be true or false"),
            )),
        },
        None => Ok(prev_revision(q)?.map(Cond::Revision)),
    }
}

/// The answer to a (conditional) write of `key`: `body` with `X-Revision` when it was applied,
/// 409 naming the key's revision when its condition did not hold.
fn answer_write<B: Serialize>(
    key: &str,
    res: Result<CommandResult, Response>,
    body: impl FnOnce(&CommandResult) -> B,
) -> Response {
    match res {
        Ok(res) if res.ok => with_revision(Json(body(&res)).into_response(), res.revision),
        Ok(res) => conflict(
            format!(
                "compare failed for key {key:?}: its revision is {}",
                res.revision
            ),
            res.revision,
        ),
        Err(e) => e,
    }
}

pub(super) async fn get(State(st): State<St>, KvPath { ks, key }: KvPath, r: Req) -> Response {
    if let Err(e) = check_key(&key) {
        return e;
    }
    if let Err(resp) = ready_to_read(&st, &r).await {
        return resp;
    }
    let reader = st.reader.clone();
    let (ks2, key2) = (ks.clone(), key.clone());
    match read_blocking(move || reader.get(&ks2, &key2)).await {
        Ok(Some((rev, value))) => with_revision(
            ([("content-type", "text/plain; charset=utf-8")], value).into_response(),
            rev,
        ),
        Ok(None) => err(StatusCode::NOT_FOUND, format!("key {key:?} not found")),
        Err(e) => e,
    }
}

pub(super) async fn put(State(st): State<St>, KvPath { ks, key }: KvPath, r: Req) -> Response {
    if let Err(e) = check_key(&key) {
        return e;
    }
    let cond = match parse_cond(&r.query) {
        Ok(c) => c,
        Err(e) => return e,
    };
    if r.body.len() > MAX_VALUE {
        return err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("values are at most {MAX_VALUE} bytes"),
        );
    }
    let value = match std::str::from_utf8(&r.body) {
        Ok(v) => v.to_string(),
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("value is not UTF-8: {e}")),
    };
    let cmd = Command::Put {
        ks,
        key: key.clone(),
        value,
        cond,
    };
    let res = write_at_leader(&st, &r, cmd).await;
    answer_write(&key, res, |res| PutResponse {
        revision: res.revision,
    })
}

pub(super) async fn delete(State(st): State<St>, KvPath { ks, key }: KvPath, r: Req) -> Response {
    if let Err(e) = check_key(&key) {
        return e;
    }
    let prev_revision = match prev_revision(&r.query) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let cmd = Command::Delete {
        ks,
        key: key.clone(),
        prev_revision,
    };
    let res = write_at_leader(&st, &r, cmd).await;
    answer_write(&key, res, |res| DeleteResponse {
        revision: res.revision,
        deleted: res.deleted,
    })
}

/// `GET …?prefix=P[&limit=N][&after=K]`: one page of keys (see [`ListResponse`]); a listing
/// without `limit` gets the default page, never everything.
pub(super) async fn list(State(st): State<St>, KvPath { ks, .. }: KvPath, r: Req) -> Response {
    let prefix = r.query.get("prefix").cloned().unwrap_or_default();
    let after = r.query.get("after").cloned();
    let limit = match r.query.get("limit").map(|l| l.parse::<usize>()) {
        None => LIST_DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=LIST_MAX_LIMIT).contains(&l) => l,
        Some(_) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!(
                    "limit must be 1..={LIST_MAX_LIMIT}; read further pages with after=<the answer's next>"
                ),
            )
        }
    };
    if let Err(resp) = ready_to_read(&st, &r).await {
        return resp;
    }
    let reader = st.reader.clone();
    let res =
        read_blocking(move || reader.list(&ks, &prefix, after.as_deref(), limit, LIST_MAX_BYTES))
            .await;
    match res {
        Ok((revision, items, more)) => {
            let next = if more {
                items.last().map(|i| i.key.clone())
            } else {
                None
            };
            with_revision(
                Json(ListResponse {
                    revision,
                    items,
                    more,
                    next,
                })
                .into_response(),
                revision,
            )
        }
        Err(e) => e,
    }
}

/// The key space and key a KV request addresses, from its path: Chainfire's one key space
/// (`""`) under `/v1/kv/…`, a FlareDB namespace (checked, and refused to callers who may not
/// use it: see `access::NODE_ONLY_NAMESPACES`) under `/v1/ns/{ns}/kv/…`. The key is empty on
/// the listing routes. The check runs where the request arrived, before any forwarding.
pub(super) struct KvPath {
    ks: String,
    key: String,
}

impl FromRequestParts<St> for KvPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        let Path(mut params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let ks = match params.remove("ns") {
            Some(ns) => {
                check_name(valid_namespace(&ns), "namespace", &ns, "[a-z0-9_-]{1,32}")?;
                state
                    .access
                    .check_namespace(&ns, parts.extensions.get::<Caller>())?;
                ns
            }
            None => String::new(),
        };
        let key = params.remove("key").unwrap_or_default();
        Ok(KvPath { ks, key })
    }
}
