//! A peer that reboots between two requests of one client.
//!
//! A real `chainfire-server` sits behind [`Link`], a TCP relay that behaves like the wire to a
//! machine that loses power and comes back: while "off" it answers nothing on the connections
//! it carries; once "on" again, a connection from before answers the next bytes sent on it
//! with a reset (what a freshly booted kernel does with a connection it never knew), and new
//! connections reach the restarted server. The client keeps its pooled keep-alive connection
//! across that, exactly as the VM rack's harness did when `leader-loss` failed.
//!
//! Both speak mutual TLS, as every shipped Chainfire does: one test CA issues the server its
//! node certificate (for its address, where the relay listens too) and the client an operator
//! certificate. The relay carries the TLS bytes untouched.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use plasmacloud_pki::ca::{CertSpec, ClusterCa};
use plasmacloud_pki::tls::TlsMaterial;
use plasmacloud_pki::{Credentials, Identity, TlsFiles};
use plasmacloud_store_client::{Error, Member, Precondition, StoreClient};
use plasmacloud_testkit::{free_port, loopback_ip, wait_until_async, workspace_binary, Process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// (powered, boot number).
type Power = watch::Sender<(bool, u64)>;

/// The relay. Dropping it stops accepting; connections die with the runtime.
struct Link {
    addr: SocketAddr,
    power: Power,
}

impl Link {
    /// A relay on the backend's own address (another port), so the server's certificate
    /// names the address the client dials.
    async fn start(backend: SocketAddr) -> Link {
        let listener = TcpListener::bind((backend.ip(), 0))
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (power, _) = watch::channel((true, 0u64));
        let rx = power.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(carry(client, backend, rx.clone()));
            }
        });
        Link { addr, power }
    }

    fn power_off(&self) {
        self.power.send_modify(|(on, boot)| {
            *on = false;
            *boot += 1;
        });
    }

    fn power_on(&self) {
        self.power.send_modify(|(on, _)| *on = true);
    }
}

/// Sends a TCP reset (linger 0, then close).
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

async fn carry(
    mut client: TcpStream,
    backend: SocketAddr,
    mut power: watch::Receiver<(bool, u64)>,
) {
    let (on, boot) = *power.borrow();
    if !on {
        return; // a machine that is off does not accept (the client retransmits, then times out)
    }
    let Ok(mut server) = TcpStream::connect(backend).await else {
        reset(client);
        return;
    };
    let (mut a, mut b) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let current = *power.borrow();
        if current.1 != boot {
            // Powered off since this connection began: stop carrying anything. The next bytes
            // the client sends are answered with a reset once the machine is back on.
            drop(server);
            let mut byte = [0u8; 1];
            let _ = client.read(&mut byte).await;
            let _ = power.wait_for(|(on, _)| *on).await;
            reset(client);
            return;
        }
        tokio::select! {
            n = client.read(&mut a) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // Bytes that arrive after the power went off are not delivered.
                    if power.borrow().1 != boot {
                        let _ = power.wait_for(|(on, _)| *on).await;
                        reset(client);
                        return;
                    }
                    if server.write_all(&a[..n]).await.is_err() { return; }
                }
            },
            n = server.read(&mut b) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if client.write_all(&b[..n]).await.is_err() { return; },
            },
            _ = power.changed() => {}
        }
    }
}

/// The test CA's node certificate for `node1` at `ip`, written into `dir` as
/// `pxe-server pki issue` writes it, and an operator certificate for the client.
fn certificates(ca: &ClusterCa, dir: &Path, ip: std::net::IpAddr) -> (TlsFiles, TlsMaterial) {
    let (node, key) = ca
        .issue_with_new_key(&CertSpec::node(Identity::node("node1").expect("name"), ip))
        .expect("issue the node certificate");
    let creds = Credentials::node(dir);
    creds
        .write_all(&key, &node.cert_pem, ca.cert_pem())
        .expect("write the node's files");
    let (op, op_key) = ca
        .issue_with_new_key(&CertSpec::operator(
            Identity::operator("tester").expect("name"),
        ))
        .expect("issue the operator certificate");
    let operator = TlsMaterial::from_pem("operator tester", &op.cert_pem, &op_key, ca.cert_pem())
        .expect("operator TLS material");
    (TlsFiles::from(&creds), operator)
}

fn start_chainfire(
    data: &Path,
    api: SocketAddr,
    raft: SocketAddr,
    tls: &TlsFiles,
    log: &Path,
) -> Process {
    let mut p = Process::start(
        "chainfire",
        &workspace_binary("chainfire-server"),
        [
            "--tls-cert".to_string(),
            tls.cert.display().to_string(),
            "--tls-key".into(),
            tls.key.display().to_string(),
            "--tls-ca".into(),
            tls.ca.display().to_string(),
            "--id".into(),
            "1".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--api-addr".into(),
            api.to_string(),
            "--raft-addr".into(),
            raft.to_string(),
        ],
        log,
    )
    .expect("start chainfire-server");
    p.wait_for_output("listening", Duration::from_secs(30))
        .expect("chainfire-server listens");
    p
}

#[tokio::test]
async fn an_idempotent_request_after_a_reboot_succeeds_and_a_cas_reports_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ip = loopback_ip();
    let api = SocketAddr::from((ip, free_port(ip)));
    let raft = SocketAddr::from((ip, free_port(ip)));
    let data = dir.path().join("data");
    let ca = ClusterCa::generate("reboot-test").expect("test CA");
    let (tls, operator) = certificates(&ca, &dir.path().join("pki"), ip.into());

    // Phase 1: one node, a client through the link with a pooled connection.
    let mut server = start_chainfire(&data, api, raft, &tls, &dir.path().join("cf-1.log"));
    let link = Link::start(api).await;
    let client = StoreClient::builder([link.addr.to_string()])
        .tls(operator.clone())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let me = Member {
        id: 1,
        raft_addr: raft.to_string(),
        api_addr: api.to_string(),
    };
    client.init(&[me]).await.expect("init");
    wait_until_async("a leader", Duration::from_secs(20), || async {
        client.health().await.ok().filter(|h| h.is_healthy())
    })
    .await
    .expect("healthy");
    let rev = client
        .put("k", "before")
        .await
        .expect("put before the reboot");

    // Phase 2: power off, the process dies, it comes back on the same data and port.
    let reboot = |server: &mut Process, n: u32| {
        link.power_off();
        server.kill();
        let s = start_chainfire(
            &data,
            api,
            raft,
            &tls,
            &dir.path().join(format!("cf-{n}.log")),
        );
        link.power_on();
        s
    };
    server = reboot(&mut server, 2);
    let direct = StoreClient::builder([api.to_string()])
        .tls(operator.clone())
        .build()
        .expect("direct client");
    wait_until_async(
        "the restarted node's leader",
        Duration::from_secs(20),
        || async { direct.health().await.ok().filter(|h| h.is_healthy()) },
    )
    .await
    .expect("healthy after restart");

    // Phase 3: the pooled connection is dead; a GET still answers, from a fresh connection.
    let got = client
        .get("k")
        .await
        .expect("a GET after the reboot succeeds")
        .expect("the key is there");
    assert_eq!((got.value.as_str(), got.revision), ("before", rev));

    // Phase 4: a pooled connection again, another reboot; a compare-and-swap on the stale
    // connection is not repeated: it reports that its outcome is unknown, and a read afterwards
    // tells what happened.
    client
        .get("k")
        .await
        .expect("a GET that pools a connection");
    server = reboot(&mut server, 3);
    wait_until_async(
        "the node after the second restart",
        Duration::from_secs(20),
        || async { direct.health().await.ok().filter(|h| h.is_healthy()) },
    )
    .await
    .expect("healthy after the second restart");
    match client
        .put_if("k", "after", Precondition::Revision(rev))
        .await
    {
        Err(e @ Error::Broken { .. }) => {
            assert!(e.to_string().contains("outcome is unknown"), "{e}");
            assert!(
                !e.is_retryable(),
                "an unknown outcome is not 'certainly not applied'"
            );
        }
        other => {
            panic!("a CAS on a reset connection must report an unknown outcome, got {other:?}")
        }
    }
    let now = client.get("k").await.expect("read back").expect("key");
    assert_eq!(
        now.value, "before",
        "the reset request never reached the server"
    );
    drop(server);
}
