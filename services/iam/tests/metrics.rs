//! `/metrics` on a real iam-server (over a real FlareDB): it answers anyone over TLS in the
//! Prometheus text format, and counts logins (ok, wrong password), token verifications (ok,
//! invalid, revoked) and requests by route template.

mod common;

use common::{binary, hash_of, no_chainfire, phase, Callers, Iam, StoreNode, PW};
use plasmacloud_testkit::scrape::Scrape;

async fn scrape(iam: &Iam, who: &reqwest::Client) -> Scrape {
    let r = who
        .get(format!("{}/metrics", iam.url))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn count(s: &Scrape, name: &str, result: &str, reason: &str) -> f64 {
    s.sum(name, &[("result", result), ("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_verifications_and_requests_are_counted() {
    let Some(bin) = binary(
        "flaredb-server",
        "logins_verifications_and_requests_are_counted",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let who = Callers::new(dir.path());

    phase("FlareDB and one IAM; bootstrap the admin");
    let flare = StoreNode::single(bin).await;
    let iam = Iam::start("iam-a", &[&flare], &no_chainfire(), dir.path());
    let (s, j) = iam.bootstrap(&who.node, "admin", &hash_of(PW)).await;
    assert_eq!(s, 200, "{j}");
    let before = scrape(&iam, &who.anon).await;
    for name in [
        "iam_logins",
        "iam_token_verifications",
        "iam_http_requests",
        "iam_http_request_duration_seconds",
    ] {
        assert!(before.documents(name), "{name} not in /metrics: {before:?}");
    }

    phase("two good logins, one wrong password");
    let token = iam.login("admin", PW).await;
    iam.login("admin", PW).await;
    let (s, _) = iam.try_login("admin", "not the password").await;
    assert_eq!(s, 401);

    phase("verifications: a good token, a garbage one, a revoked one");
    let (s, _) = iam.get(&who.anon, "/v1/auth/whoami", Some(&token)).await;
    assert_eq!(s, 200);
    let (s, _) = iam
        .get(&who.anon, "/v1/auth/whoami", Some("not.a.token"))
        .await;
    assert_eq!(s, 401);
    let (s, j) = iam
        .call(&who.anon, "POST", "/v1/auth/revoke", Some(&token), None)
        .await;
    assert_eq!(s, 200, "{j}");
    let (s, _) = iam.get(&who.anon, "/v1/auth/whoami", Some(&token)).await;
    assert_eq!(s, 401);

    phase("the counters moved by exactly that");
    let after = scrape(&iam, &who.anon).await;
    let moved = |name: &str, result: &str, reason: &str| {
        count(&after, name, result, reason) - count(&before, name, result, reason)
    };
    assert_eq!(moved("iam_logins_total", "ok", "none"), 2.0);
    assert_eq!(moved("iam_logins_total", "failed", "credentials"), 1.0);
    // whoami, and revoke's own check of the token it revokes
    assert_eq!(moved("iam_token_verifications_total", "ok", "none"), 2.0);
    assert_eq!(
        moved("iam_token_verifications_total", "failed", "invalid"),
        1.0
    );
    assert_eq!(
        moved("iam_token_verifications_total", "failed", "revoked"),
        1.0
    );
    let route = |s: &Scrape, code: &str| {
        s.sum(
            "iam_http_requests_total",
            &[
                ("route", "/v1/auth/login"),
                ("method", "POST"),
                ("code", code),
            ],
        )
    };
    assert_eq!(route(&after, "200") - route(&before, "200"), 2.0);
    assert_eq!(route(&after, "401") - route(&before, "401"), 1.0);
    assert!(
        after
            .histogram_count(
                "iam_http_request_duration_seconds",
                &[("route", "/v1/auth/whoami"), ("method", "GET")]
            )
            .unwrap_or(0.0)
            >= 3.0
    );
}
