//! `firstboot enroll` without a network: what it does with the files it finds.
//! (Enrolling over the network against a real pxe-server is tested in pxe/server/tests.)

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use plasmacloud_pki::ca::{CertSpec, ClusterCa};
use plasmacloud_pki::{Credentials, Identity};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster-3.json")
}

fn enroll(contract: &Path, state: &Path, etc: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firstboot"))
        .arg("enroll")
        .arg("--cluster")
        .arg(contract)
        .args(["--node", "node02", "--deadline", "2s"])
        .arg("--state-dir")
        .arg(state)
        .arg("--etc-dir")
        .arg(etc)
        .output()
        .expect("run firstboot enroll")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn issue(ca: &ClusterCa, name: &str, dir: &Path) {
    let id = Identity::node(name).expect("id");
    let (cert, key) = ca
        .issue_with_new_key(&CertSpec::node(
            id,
            IpAddr::V4(Ipv4Addr::new(10, 99, 0, 12)),
        ))
        .expect("issue");
    Credentials::node(dir)
        .write_all(&key, &cert.cert_pem, ca.cert_pem())
        .expect("write");
}

#[test]
fn a_node_with_its_certificate_needs_no_token_and_one_without_says_how_to_get_one() {
    let d = tempfile::tempdir().expect("tempdir");
    let (state, etc) = (d.path().join("state"), d.path().join("etc"));

    // Nothing at all: exit 2, and the message says both ways out.
    let o = enroll(&example(), &state, &etc);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("no enrollment token") && t.contains("pxe-server pki issue --node node02"),
        "{t}"
    );

    // Issued offline into <state>/pki: nothing to do, no network needed.
    let ca = ClusterCa::generate("t").expect("ca");
    issue(&ca, "node02", &state.join("pki"));
    let o = enroll(&example(), &state, &etc);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Another node's certificate is not this node's: it needs a token again.
    let other = d.path().join("other");
    issue(&ca, "node03", &other.join("pki"));
    let o = enroll(&example(), &other, &etc);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn an_enrollment_ca_the_contract_does_not_pin_is_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let (state, etc) = (d.path().join("state"), d.path().join("etc"));
    let ca = ClusterCa::generate("real").expect("ca");
    let mut contract: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example()).expect("read")).expect("json");
    contract["pki"] = serde_json::json!({ "ca_sha256": ca.fingerprint() });
    let path = d.path().join("cluster.json");
    std::fs::write(&path, contract.to_string()).expect("write");

    let rogue = ClusterCa::generate("rogue").expect("rogue");
    std::fs::create_dir_all(etc.join("enroll")).expect("mkdir");
    std::fs::write(etc.join("enroll/ca.crt"), rogue.cert_pem()).expect("ca");
    std::fs::write(
        etc.join("enroll/token"),
        "00112233445566778899aabbccddeeff\n",
    )
    .expect("token");
    let o = enroll(&path, &state, &etc);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("not the CA the contract pins"),
        "{}",
        text(&o)
    );
    assert!(
        !state.join("pki/node.key").exists(),
        "nothing is written when the CA is refused"
    );
}
