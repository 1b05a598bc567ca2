//! Mutual TLS end to end: an axum server on [`TlsListener`] with a public route and a guarded
//! one, and reqwest clients holding a node certificate, an operator certificate, none, one of
//! another CA, and a revoked one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Router};
use plasmacloud_pki::ca::{CertSpec, ClusterCa};
use plasmacloud_pki::listener::{guard, Caller, Need};
use plasmacloud_pki::tls::{reqwest_builder_trusting, ClientAuth, TlsMaterial};
use plasmacloud_pki::{Identity, Peer, Revocations, TlsListener};

fn material(ca: &ClusterCa, spec: &CertSpec) -> TlsMaterial {
    let (issued, key) = ca.issue_with_new_key(spec).expect("issue");
    TlsMaterial::from_pem("test", &issued.cert_pem, &key, ca.cert_pem()).expect("material")
}

async fn serve(server: &TlsMaterial, revoked: &Revocations) -> SocketAddr {
    let cfg = server
        .server_config(ClientAuth::Optional, revoked)
        .expect("server config");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let listener = TlsListener::spawn("test", tcp, cfg).expect("listener");
    let guarded = Router::new()
        .route(
            "/who",
            get(|Extension(Caller(c)): Extension<Caller>| async move { c.identity.to_string() }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Need::cluster_certificate(revoked),
            guard,
        ));
    let nodes_only = Router::new()
        .route("/raft", get(|| async { "raft" }))
        .route_layer(axum::middleware::from_fn_with_state(
            Need::node(revoked),
            guard,
        ));
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(guarded)
        .merge(nodes_only);
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
            .await
            .expect("serve");
    });
    addr
}

async fn get_text(c: &reqwest::Client, url: String) -> Result<(u16, String), String> {
    match c.get(url).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            Ok((s, r.text().await.unwrap_or_default()))
        }
        Err(e) => Err(format!("{e:?}")),
    }
}

#[tokio::test]
async fn only_certificates_of_the_ca_pass_and_revocation_bites_at_once() {
    let ca = ClusterCa::generate("mtls").expect("ca");
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let server = material(
        &ca,
        &CertSpec::node(Identity::node("node01").expect("id"), localhost),
    );
    let revoked = Revocations::default();
    let addr = serve(&server, &revoked).await;
    let url = |p: &str| format!("https://{addr}{p}");

    let node = material(
        &ca,
        &CertSpec::node(Identity::node("node02").expect("id"), localhost),
    );
    let node_client = node
        .reqwest_builder()
        .expect("builder")
        .build()
        .expect("client");
    assert_eq!(
        get_text(&node_client, url("/who")).await,
        Ok((200, "node node02".into()))
    );
    assert_eq!(
        get_text(&node_client, url("/raft")).await,
        Ok((200, "raft".into()))
    );

    let op = material(
        &ca,
        &CertSpec::operator(Identity::operator("alice").expect("id")),
    );
    let op_client = op.reqwest_builder().expect("b").build().expect("c");
    assert_eq!(
        get_text(&op_client, url("/who")).await,
        Ok((200, "operator alice".into()))
    );
    let (status, body) = get_text(&op_client, url("/raft")).await.expect("answer");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs a node certificate"), "{body}");

    // No certificate: the public route answers, the guarded one says what is missing.
    let anon = reqwest_builder_trusting(ca.cert_pem())
        .expect("b")
        .build()
        .expect("c");
    assert_eq!(
        get_text(&anon, url("/health")).await,
        Ok((200, "ok".into()))
    );
    let (status, body) = get_text(&anon, url("/who")).await.expect("answer");
    assert_eq!(status, 401);
    assert!(body.contains("needs a client certificate"), "{body}");

    // Another CA's certificate never completes a handshake.
    let other = ClusterCa::generate("other").expect("ca");
    let (issued, key) = other
        .issue_with_new_key(&CertSpec::node(
            Identity::node("node02").expect("id"),
            localhost,
        ))
        .expect("issue");
    let chain: Vec<_> = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .expect("key")
        .expect("a key");
    // Trust the real server, so only our certificate is in question.
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(plasmacloud_pki::tls::root_store("ca", ca.cert_pem()).expect("roots"))
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    let stranger = reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .expect("c");
    assert!(get_text(&stranger, url("/health")).await.is_err());

    // Revoked: the connection opened before is refused on its next request, a new one at
    // the handshake.
    revoked.replace([node.identity().serial.clone()]);
    let (status, body) = get_text(&node_client, url("/who")).await.expect("answer");
    assert_eq!(status, 403);
    assert!(body.contains("revoked"), "{body}");
    let fresh = node.reqwest_builder().expect("b").build().expect("c");
    assert!(get_text(&fresh, url("/who")).await.is_err());
    // Operators are unaffected.
    assert_eq!(
        get_text(&op_client, url("/who")).await,
        Ok((200, "operator alice".into()))
    );
}
