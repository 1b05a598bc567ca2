//! FlareDB's time series: `POST /v1/ts/{series}/points` appends (a point at an existing `t`
//! replaces it), `GET /v1/ts/{series}?from=&to=[&step=]` reads raw points or per-step buckets.
//!
//! The bound: one answer carries at most [`MAX_POINTS`] points (raw) or buckets (with `step`).
//! A query that would carry more is answered 400 naming the maximum and what to ask instead (a
//! narrower `from`/`to`, or a `step`, or a larger one); the server stops reading the series as
//! soon as it knows, so a query never holds more than that in memory.
//!
//! Retention: on a node with `ts_retention_secs`, a query never answers a point older than
//! `now − retention` by the answering node's clock, whether or not the leader's trim
//! ([`crate::retention`]) has dropped it yet.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use plasmacloud_store_client::types::valid_series;
use plasmacloud_store_client::{AppendResponse, Bucket, BucketsBody, Point, PointsBody};

use super::forward::{read_blocking, ready_to_read, write_at_leader};
use super::handler::{check_name, err, parse_body, with_revision, Req, St};
use crate::types::Command;

fn check_series(series: &str) -> Result<(), Response> {
    check_name(valid_series(series), "series", series, "[a-z0-9_.-]{1,128}")
}

pub(super) async fn ts_append(
    State(st): State<St>,
    Path(series): Path<String>,
    r: Req,
) -> Response {
    if let Err(e) = check_series(&series) {
        return e;
    }
    let parsed: PointsBody =
        match parse_body(&r.body, r#"{"points":[{"t":<unix ms>,"v":<number>}]}"#) {
            Ok(p) => p,
            Err(e) => return e,
        };
    if parsed.points.is_empty() || parsed.points.len() > MAX_POINTS {
        return err(
            StatusCode::BAD_REQUEST,
            format!("send 1..={MAX_POINTS} points per request"),
        );
    }
    if parsed.points.iter().any(|p| !p.v.is_finite()) {
        return err(
            StatusCode::BAD_REQUEST,
            "point values must be finite numbers",
        );
    }
    let points = parsed.points.iter().map(|p| (p.t, p.v)).collect();
    match write_at_leader(&st, &r, Command::TsAppend { series, points }).await {
        Ok(res) => with_revision(
            Json(AppendResponse {
                revision: res.revision,
                appended: res.count,
            })
            .into_response(),
            res.revision,
        ),
        Err(e) => e,
    }
}

/// The most points (raw) or buckets (with `step`) one query answers; also the most points one
/// append takes.
pub const MAX_POINTS: usize = 10_000;

/// Adds the point `(t, v)` (in time order) to `step`-ms buckets whose `v` is still a sum.
fn add_to_buckets(out: &mut Vec<Bucket>, step: i64, t: i64, v: f64) {
    let start = t.div_euclid(step) * step;
    match out.last_mut() {
        Some(b) if b.t == start => {
            b.v += v;
            b.min = b.min.min(v);
            b.max = b.max.max(v);
            b.count += 1;
        }
        _ => out.push(Bucket {
            t: start,
            v,
            min: v,
            max: v,
            count: 1,
        }),
    }
}

/// Turns the buckets' sums into averages.
fn average(mut out: Vec<Bucket>) -> Vec<Bucket> {
    for b in &mut out {
        b.v /= b.count as f64;
    }
    out
}

/// Downsamples sorted points into `step`-ms buckets.
pub fn downsample(points: &[(i64, f64)], step: i64) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for &(t, v) in points {
        add_to_buckets(&mut out, step, t, v);
    }
    average(out)
}

/// What a query answers: raw points, or buckets.
enum Read {
    Points(Vec<Point>),
    Buckets(Vec<Bucket>),
}

/// Reads what `from..to` at `step` (0: raw) answers, stopping at [`MAX_POINTS`] + 1.
fn read_bounded(
    reader: &crate::state_machine::StateReader,
    series: &str,
    from: i64,
    to: i64,
    step: i64,
) -> Result<Option<Read>, crate::types::StorageError> {
    let mut over = false;
    if step > 0 {
        let mut out = Vec::new();
        reader.ts_scan(series, from, to, |t, v| {
            add_to_buckets(&mut out, step, t, v);
            over = out.len() > MAX_POINTS;
            !over
        })?;
        Ok((!over).then(|| Read::Buckets(average(out))))
    } else {
        let mut out = Vec::new();
        reader.ts_scan(series, from, to, |t, v| {
            out.push(Point { t, v });
            over = out.len() > MAX_POINTS;
            !over
        })?;
        Ok((!over).then_some(Read::Points(out)))
    }
}

pub(super) async fn ts_query(State(st): State<St>, Path(series): Path<String>, r: Req) -> Response {
    if let Err(e) = check_series(&series) {
        return e;
    }
    let num = |name: &str, default: i64| -> Result<i64, Response> {
        match r.query.get(name) {
            Some(v) => v.parse::<i64>().map_err(|_| {
                err(
                    StatusCode::BAD_REQUEST,
                    format!("{name}={v:?} is not an integer (unix ms)"),
                )
            }),
            None => Ok(default),
        }
    };
    let (from, to, step) = match (num("from", i64::MIN), num("to", i64::MAX), num("step", 0)) {
        (Ok(f), Ok(t), Ok(s)) => (f, t, s),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
    };
    if step < 0 || from > to {
        return err(StatusCode::BAD_REQUEST, "need from <= to and step > 0");
    }
    if let Err(resp) = ready_to_read(&st, &r).await {
        return resp;
    }
    // After `ready_to_read`: a forwarded read is answered by the leader's clock.
    let (from, to) = match st
        .cfg
        .ts_retention
        .and_then(crate::retention::query_horizon)
    {
        Some(h) if h > from => (h, to.max(h)),
        _ => (from, to),
    };
    let reader = st.reader.clone();
    let read = read_blocking(move || read_bounded(&reader, &series, from, to, step)).await;
    match read {
        Ok(Some(Read::Points(points))) => Json(PointsBody { points }).into_response(),
        Ok(Some(Read::Buckets(points))) => Json(BucketsBody { points }).into_response(),
        Ok(None) if step > 0 => err(
            StatusCode::BAD_REQUEST,
            format!(
                "from={from}&to={to}&step={step} makes more than {MAX_POINTS} buckets, the most one answer carries: ask for a larger step or a narrower from/to"
            ),
        ),
        Ok(None) => err(
            StatusCode::BAD_REQUEST,
            format!(
                "from={from}&to={to} holds more than {MAX_POINTS} points, the most one answer carries: ask for a narrower from/to, or for buckets with step=<ms>"
            ),
        ),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsample_buckets_avg_min_max_count() {
        let pts = [(0, 1.0), (5, 3.0), (10, 10.0), (-1, 7.0)];
        let mut sorted = pts.to_vec();
        sorted.sort_by_key(|p| p.0);
        let b = downsample(&sorted, 10);
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].t, b[0].count), (-10, 1));
        assert_eq!(
            (b[1].t, b[1].v, b[1].min, b[1].max, b[1].count),
            (0, 2.0, 1.0, 3.0, 2)
        );
        assert_eq!((b[2].t, b[2].v), (10, 10.0));
    }
}
