//! The KV API on a one-node cluster (revisions, compare-and-swap, 404s, prefixes, bad input),
//! health before and after init, and TLS (a client without the CA, or speaking plain HTTP, gets
//! no answer).

mod common;

use std::time::Duration;

use common::{assert_not_initialised, https_anonymous, phase, wait_healthy, Node};
use plasmacloud_store_client::{Error, Precondition, RaftRole, StoreClient};

const BIN: &str = "chainfire-server";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_semantics_on_one_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut n = Node::new(BIN, 1, tmp.path());
    n.start(true);
    let c = n.client();

    phase("pristine node: unhealthy, not initialised");
    let h = c.health().await.expect("health");
    assert_eq!(h.status, "unhealthy");
    assert_not_initialised(&h);
    let raw = https_anonymous()
        .get(n.api_url("/health"))
        .send()
        .await
        .expect("get");
    assert_eq!(raw.status(), 503);
    let (ready, text) = c.readyz().await.expect("readyz");
    assert!(!ready && text.contains("[-]initialized"), "{text}");

    phase("init");
    c.init(&[n.member()]).await.expect("init");
    wait_healthy(&n, Duration::from_secs(20)).await;
    let h = c.health().await.expect("health");
    assert_eq!((h.raft, h.cluster_size), (RaftRole::Leader, 1));
    let (ready, text) = c.readyz().await.expect("readyz");
    assert!(ready && text.contains("[+]leader ok"), "{text}");

    phase("put, get, revisions");
    let r1 = c.put("a/b/c", "one").await.expect("put");
    let r2 = c.put("a/b/d", "two").await.expect("put");
    assert!(r2 > r1);
    let v = c.get("a/b/c").await.expect("get").expect("present");
    assert_eq!((v.value.as_str(), v.revision), ("one", r1));
    assert!(c.get("missing").await.expect("get").is_none());
    let odd = "sp ace?&%/ü";
    c.put(odd, "x").await.expect("odd key");
    assert_eq!(c.get(odd).await.expect("get").expect("present").value, "x");

    phase("compare-and-swap");
    let e = c
        .put_if("a/b/c", "lost", Precondition::Revision(r1 - 1))
        .await
        .expect_err("stale");
    match e {
        Error::Conflict { revision, .. } => assert_eq!(revision, r1),
        other => panic!("want conflict, got {other}"),
    }
    let r3 = c
        .put_if("a/b/c", "won", Precondition::Revision(r1))
        .await
        .expect("cas");
    assert!(r3 > r2);
    let e = c
        .put_if("a/b/c", "x", Precondition::Absent)
        .await
        .expect_err("exists");
    assert!(e.is_conflict());
    let e = c
        .put_if("new", "x", Precondition::Revision(5))
        .await
        .expect_err("absent");
    assert!(matches!(e, Error::Conflict { revision: 0, .. }), "{e}");
    c.put_if("lock", "me", Precondition::Absent)
        .await
        .expect("create");

    phase("concurrent writes (batched into shared entries by the proposer)");
    // 64 writers at once: distinct keys all land; racing creates of one key have exactly
    // one winner; racing writes to one key each get their own revision.
    let mut tasks = Vec::new();
    for i in 0..64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let distinct = c.put(&format!("many/{i}"), &format!("v{i}")).await;
            let create = c
                .put_if("race/create", &format!("{i}"), Precondition::Absent)
                .await;
            let same = c.put("race/same", &format!("{i}")).await;
            (distinct, create, same)
        }));
    }
    let (mut created, mut same_revs) = (0, Vec::new());
    for t in tasks {
        let (distinct, create, same) = t.await.expect("task");
        distinct.expect("distinct key put");
        match create {
            Ok(_) => created += 1,
            Err(e) => assert!(e.is_conflict(), "{e}"),
        }
        same_revs.push(same.expect("same key put"));
    }
    assert_eq!(created, 1, "exactly one create of race/create may win");
    same_revs.sort_unstable();
    same_revs.dedup();
    assert_eq!(
        same_revs.len(),
        64,
        "each write of one key has its own revision"
    );
    let l = c.list("many/").await.expect("list");
    assert_eq!(l.items.len(), 64);
    assert!(l
        .items
        .iter()
        .all(|it| it.value == format!("v{}", &it.key[5..])));
    let last = c.get("race/same").await.expect("get").expect("present");
    assert_eq!(last.revision, *same_revs.last().expect("revisions"));

    phase("list and delete");
    let l = c.list("a/b/").await.expect("list");
    assert_eq!(l.items.len(), 2);
    assert_eq!(l.items[0].key, "a/b/c");
    assert!(l.revision >= r3);
    let e = c
        .kv()
        .delete_if("a/b/d", r2 + 100)
        .await
        .expect_err("cas delete");
    assert!(e.is_conflict());
    let d = c.delete("a/b/d").await.expect("delete");
    assert!(d.deleted && d.revision > r3);
    let d = c.delete("a/b/d").await.expect("delete again");
    assert!(!d.deleted);

    phase("bad input: JSON errors");
    let http = n.https();
    let r = http
        .put(n.api_url("/v1/kv/bin"))
        .body(vec![0xff, 0xfe])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"].as_str().unwrap_or("").contains("UTF-8"),
        "{body}"
    );
    let r = http
        .put(n.api_url("/v1/kv/x?prev_revision=abc"))
        .body("v")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let r = http
        .put(n.api_url("/v1/kv/x"))
        .body("v")
        .send()
        .await
        .expect("send");
    assert!(r.headers().get("x-revision").is_some());
    let r = http
        .post(n.api_url("/v1/cluster/init"))
        .body("{")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(body["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_a_client_without_the_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut n = Node::new(BIN, 1, tmp.path());
    n.start(true);

    phase("a client with the node's certificate works");
    let good = n.client();
    assert!(good.endpoints()[0].starts_with("https://"));
    good.init(&[n.member()]).await.expect("init over TLS");
    wait_healthy(&n, Duration::from_secs(20)).await;
    good.put("secret", "s3cr3t").await.expect("put over TLS");
    assert_eq!(
        good.get("secret")
            .await
            .expect("get")
            .expect("present")
            .value,
        "s3cr3t"
    );

    phase("a client without the CA is refused");
    let bad = StoreClient::builder([format!("https://{}", n.api)])
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let e = bad.get("secret").await.expect_err("untrusted certificate");
    assert!(
        !matches!(e, Error::Api { .. }),
        "no HTTP answer expected: {e}"
    );
    let r = reqwest::Client::new()
        .get(n.api_url("/health"))
        .send()
        .await;
    assert!(r.is_err(), "a client without the CA must not get an answer");
    // plain HTTP to a TLS port gets no answer either
    let plain = StoreClient::builder([format!("http://{}", n.api)])
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    assert!(plain.get("secret").await.is_err());
}

/// Listings come in pages: a listing without `limit` gets the default page (never everything),
/// a `limit` past the maximum is refused, pages are bounded in bytes too, and the client's
/// pages and its whole-listing call see every key once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_come_in_pages() {
    use plasmacloud_store_client::{LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT};
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut n = Node::new(BIN, 1, tmp.path());
    n.start(true);
    let c = n.client();
    c.init(&[n.member()]).await.expect("init");
    wait_healthy(&n, Duration::from_secs(20)).await;

    phase("2345 keys");
    let total = 2345usize;
    let mut tasks = Vec::new();
    for w in 0..32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(32) {
                c.put(&format!("p/{i:05}"), &format!("{i}"))
                    .await
                    .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    c.put("q/outside", "x").await.expect("put");

    phase("an unpaged listing gets the default page and a cursor");
    let http = n.https();
    let r = http
        .get(n.api_url("/v1/kv?prefix=p/"))
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        body["items"].as_array().map(Vec::len),
        Some(LIST_DEFAULT_LIMIT)
    );
    assert_eq!(body["more"], true);
    assert_eq!(body["next"], format!("p/{:05}", LIST_DEFAULT_LIMIT - 1));
    let r = http
        .get(n.api_url(&format!("/v1/kv?prefix=p/&limit={}", LIST_MAX_LIMIT + 1)))
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"].as_str().unwrap_or("").contains("limit"),
        "{body}"
    );

    phase("pages of 500 and the whole listing see every key once, in order");
    let mut pages = c.kv().list_pages("p/").limit(500);
    let (mut seen, mut count) = (Vec::new(), 0);
    while let Some(page) = pages.next().await.expect("page") {
        assert!(page.items.len() <= 500);
        count += 1;
        seen.extend(page.items.into_iter().map(|i| i.key));
    }
    assert_eq!(count, total.div_ceil(500));
    let want: Vec<String> = (0..total).map(|i| format!("p/{i:05}")).collect();
    assert_eq!(seen, want);
    let all = c.list("p/").await.expect("list all");
    assert_eq!(all.items.len(), total);
    assert!(!all.more && all.next.is_none());

    phase("a page stops at its byte bound");
    let big = "b".repeat(1 << 20);
    for i in 0..6 {
        c.put(&format!("big/{i}"), &big).await.expect("put 1 MiB");
    }
    let page = c
        .kv()
        .list_page("big/", None, Some(100))
        .await
        .expect("page");
    assert!(
        page.more && page.items.len() < 6,
        "{} items",
        page.items.len()
    );
    assert_eq!(c.list("big/").await.expect("all").items.len(), 6);
}
