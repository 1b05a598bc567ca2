//! The bounds on both ports (`plasmacloud_raft::bounds`) against real abuse of a running node:
//!
//! - slowloris: connections that never finish the TLS handshake, and connections that send
//!   half a request head, on the API port and on the Raft port, are closed within the stated
//!   timeouts, and an idle kept-alive connection too, while good clients are served at once;
//! - Raft bodies: from a node certificate, a body over the cap is refused with 413, and many
//!   concurrent large bodies to a follower keep its RSS under a stated cap (excess requests
//!   get 503 at once) while the cluster keeps committing writes.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{check_writes, client_all, form_cluster, node_cert, phase, rss_mib, Node, Writers};
use plasmacloud_pki::tls::TlsMaterial;
use plasmacloud_raft::bounds::{HEADER_TIMEOUT, MAX_RAFT_BODY, MAX_RAFT_REQUESTS_PER_PEER};
use plasmacloud_testkit::loopback_ip;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = "chainfire-server";
/// How long after its timeout a held connection may still be open (scheduling on a busy
/// machine).
const SLACK: Duration = Duration::from_secs(3);
/// How long a good client may take to be served while the abuse goes on.
const GOOD_CLIENT_WITHIN: Duration = Duration::from_secs(2);
/// The TLS handshake's deadline (`plasmacloud_pki::listener::HANDSHAKE_TIMEOUT`).
const HANDSHAKE_TIMEOUT: Duration = plasmacloud_pki::listener::HANDSHAKE_TIMEOUT;

/// A TLS connection to `addr` presenting `cert`.
async fn tls_connect(
    addr: SocketAddr,
    cert: &TlsMaterial,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = Arc::new(cert.client_config().expect("client config"));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// Reads until the server closes the connection (EOF or an error); what was read.
async fn until_closed(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One slow connection: how long after it began the server closed it.
type Held = tokio::task::JoinHandle<Duration>;

/// A connection that sends the start of a TLS ClientHello and then nothing.
async fn stalled_handshake(addr: SocketAddr) -> Held {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let began = Instant::now();
    // A handshake record header announcing 512 bytes, and 3 of them.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .expect("send");
    tokio::spawn(async move {
        until_closed(tcp).await;
        began.elapsed()
    })
}

/// A TLS connection (with `cert`) that sends half a request head and then nothing.
async fn stalled_head(addr: SocketAddr, cert: &TlsMaterial, path: &str) -> Held {
    let mut s = tls_connect(addr, cert).await;
    let began = Instant::now();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ").as_bytes())
        .await
        .expect("send");
    s.flush().await.expect("flush");
    tokio::spawn(async move {
        until_closed(s).await;
        began.elapsed()
    })
}

/// Waits for every held connection and checks each was closed after about `timeout`.
async fn closed_within(what: &str, held: Vec<Held>, timeout: Duration) {
    let n = held.len();
    let (mut first, mut last) = (Duration::MAX, Duration::ZERO);
    for h in held {
        let took = tokio::time::timeout(timeout + SLACK + SLACK, h)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what}: still open {:?} after it began",
                    timeout + SLACK + SLACK
                )
            })
            .expect("reader");
        assert!(
            took <= timeout + SLACK,
            "{what}: closed after {took:?}, the bound is {timeout:?}"
        );
        assert!(
            took >= timeout - Duration::from_secs(1),
            "{what}: closed after {took:?}, before its timeout {timeout:?}: by something else"
        );
        (first, last) = (first.min(took), last.max(took));
    }
    eprintln!("slowloris: {n} × {what}: closed {first:.2?}–{last:.2?} after they began");
}

/// A good client's request, with a fresh connection; how long it took.
async fn served(client: &reqwest::Client, url: &str) -> Duration {
    let t = Instant::now();
    let r = client
        .get(url)
        .send()
        .await
        .expect("a good client's request");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_connections_are_closed_and_good_clients_served() {
    let root = tempfile::tempdir().expect("tmp");
    let mut n = Node::new(BIN, 1, root.path());
    n.start(true);
    form_cluster(&[&n]).await;

    phase("hold 50 slow connections on each port: 25 stalled handshakes, 25 half heads");
    let mut handshakes = Vec::new();
    let mut heads = Vec::new();
    for _ in 0..25 {
        for addr in [n.api, n.raft] {
            handshakes.push(stalled_handshake(addr).await);
        }
        heads.push(stalled_head(n.api, &n.cert, "/health").await);
        heads.push(stalled_head(n.raft, &n.cert, "/raft/identity").await);
    }

    phase("an idle kept-alive connection after one answered request");
    let mut idle = tls_connect(n.api, &n.cert).await;
    idle.write_all(b"GET /v1/cluster/members HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let idle_began = Instant::now();
    let idle = tokio::spawn(async move {
        let got = until_closed(idle).await;
        (got, idle_began.elapsed())
    });

    phase("good clients are served meanwhile, each on a fresh connection");
    for round in 0..3 {
        let c = n.https();
        let api = served(&c, &n.api_url("/v1/cluster/members")).await;
        let raft = served(&n.https(), &n.raft_url("/raft/identity")).await;
        eprintln!("good client round {round}: api {api:?}, raft {raft:?}");
        assert!(api <= GOOD_CLIENT_WITHIN, "api answered after {api:?}");
        assert!(raft <= GOOD_CLIENT_WITHIN, "raft answered after {raft:?}");
        n.client()
            .put(&format!("slow/{round}"), "v")
            .await
            .expect("a write while the slow connections are held");
    }

    phase("every slow connection is closed by its timeout");
    closed_within("a stalled TLS handshake", handshakes, HANDSHAKE_TIMEOUT).await;
    closed_within("a half request head", heads, HEADER_TIMEOUT).await;
    let (got, took) = idle.await.expect("idle reader");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "the idle connection's answer: {got}"
    );
    assert!(
        took <= HEADER_TIMEOUT + SLACK && took >= HEADER_TIMEOUT - Duration::from_secs(1),
        "the idle connection was closed after {took:?}, the bound is {HEADER_TIMEOUT:?}"
    );
    eprintln!("slowloris: 100 slow connections and 1 idle one closed by their timeouts");
}

/// The RSS a follower may reach under the concurrent bodies below: the bodies it admits
/// (8 at once, each buffered and copied once: 8 × 2 × 12 MiB = 192 MiB) plus its own 100 MiB.
const RSS_CAP_MIB: u64 = 320;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_bodies_are_capped_in_size_and_per_peer_concurrency() {
    let root = tempfile::tempdir().expect("tmp");
    let mut nodes: Vec<Node> = (1..=3).map(|i| Node::new(BIN, i, root.path())).collect();
    for n in nodes.iter_mut() {
        n.start(true);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    form_cluster(&refs).await;
    // The follower under attack, and a node certificate that is not a member (a node's
    // certificate, so past the Raft port's guard).
    let target = &nodes[1];
    let pid = target.proc.as_ref().and_then(|p| p.pid()).expect("pid");
    let attacker = common::https_as(&node_cert("node9", loopback_ip().into()));
    let url = target.raft_url("/raft/append");

    phase("a body over the cap is refused with 413, from its length, before it is read");
    // The body never comes: the refusal must rest on the declared length alone. (Sending the
    // bytes would race the server's close against the client's writing: a broken pipe
    // instead of the answer.)
    let never = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    let r = attacker
        .post(&url)
        .header("content-type", "application/json")
        .header("content-length", (MAX_RAFT_BODY + 1).to_string())
        .body(reqwest::Body::wrap_stream(never))
        .send()
        .await
        .expect("an answer to the oversize body");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains(&MAX_RAFT_BODY.to_string()),
        "names the cap: {text}"
    );

    let c = client_all(&refs, Duration::from_secs(10));
    let writers = Writers::start(&c, 4, "bodies");
    let (base, _) = rss_mib(pid);

    phase("48 concurrent 12 MiB bodies, twice over, while 4 clients write");
    let body = Arc::new(format!("{{\"junk\":\"{}\"}}", "y".repeat(12 << 20)));
    let (mut refused, mut read_whole, mut broken) = (0, 0, 0);
    let attack_began = writers.began.elapsed();
    for _round in 0..2 {
        let tasks: Vec<_> = (0..48)
            .map(|_| {
                let (a, url, body) = (attacker.clone(), url.clone(), body.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = a
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.as_bytes().to_vec())
                        .send()
                        .await;
                    match r {
                        Ok(r) => {
                            let retry = r.headers().contains_key("retry-after");
                            (Some(r.status().as_u16()), retry, t.elapsed())
                        }
                        Err(_) => (None, false, t.elapsed()),
                    }
                })
            })
            .collect();
        for t in tasks {
            match t.await.expect("attacker") {
                (Some(503), retry, took) => {
                    assert!(retry, "a 503 of the per-peer cap says when to retry");
                    assert!(
                        took < Duration::from_secs(5),
                        "refused after {took:?}: queued"
                    );
                    refused += 1;
                }
                (Some(s), _, _) if (400..500).contains(&s) => read_whole += 1,
                (Some(s), _, _) => panic!("a junk body got {s}"),
                (None, _, _) => broken += 1,
            }
        }
    }
    let attack_ended = writers.began.elapsed();
    let attack_took = attack_ended - attack_began;
    let (now, peak) = rss_mib(pid);
    eprintln!(
        "raft bodies: {read_whole} read whole and refused as junk, {refused} refused 503 at once, {broken} cut off; follower RSS {base} MiB before, peak {peak} MiB, {now} MiB after; {attack_took:?}"
    );
    assert!(
        refused > 0,
        "some requests over the per-peer cap of {MAX_RAFT_REQUESTS_PER_PEER}"
    );
    assert!(read_whole > 0, "some bodies were admitted and read");
    assert!(
        peak <= RSS_CAP_MIB,
        "the follower's RSS peaked at {peak} MiB, over the cap of {RSS_CAP_MIB} MiB"
    );

    phase("the cluster committed writes meanwhile, and still does");
    writers
        .wait_acked_more(50, Duration::from_secs(20), "writes after the attack")
        .await;
    let records = writers.stop().await;
    let during = records
        .iter()
        .filter(|r| {
            r.told == common::Told::Acked && r.sent >= attack_began && r.answered <= attack_ended
        })
        .count();
    eprintln!("raft bodies: {during} writes acknowledged during the attack");
    assert!(during > 0, "no write was acknowledged during the attack");
    check_writes(&c, "bodies", &records).await;
}
