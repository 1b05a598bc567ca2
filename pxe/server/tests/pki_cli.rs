//! `pxe-server pki …` through the real binary (no root): init is idempotent and prints the
//! fingerprint; issue writes node and operator credentials that pass `Credentials::check`;
//! list and show report them; import takes a CA into an empty state directory only; revoke
//! records locally and exits 75 naming the endpoints when Chainfire cannot be reached.
//!
//! No chainfire-server in this checkout speaks mutual TLS yet, so `revoke` is tested up to the
//! network: the write to a live Chainfire is left to the services' own revocation tests.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use plasmacloud_pki::{Credentials, Identity};

#[test]
fn init_issue_list_show_import() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    let cluster = write_contract(d, 8081, 8082);
    let s = state.to_str().unwrap();

    eprintln!("phase: init makes the CA once, 0700 directories, 0600 key");
    let fpr = init_ca(&state);
    assert_eq!(fpr.len(), 64);
    assert_eq!(init_ca(&state), fpr, "init keeps an existing CA");
    for (p, want) in [
        (state.clone(), 0o700),
        (state.join("pki"), 0o700),
        (state.join("pki/ca.key"), 0o600),
    ] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "{}", p.display());
    }

    eprintln!("phase: issue --node writes credentials that check out as that node");
    let node = issue_node(&state, &cluster, "node02", &d.join("n2"));
    let ca_pem = std::fs::read_to_string(state.join("pki/ca.crt")).unwrap();
    let creds = Credentials::node(&node.dir);
    let got = creds
        .check(Some(&Identity::node("node02").unwrap()), Some(&ca_pem))
        .unwrap();
    let key_mode = std::fs::metadata(creds.key_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let days = (got.not_after - got.not_before) / 86_400;
    assert!((364..=366).contains(&days), "{days} days");

    eprintln!("phase: issue --operator, with --days");
    let (code, serial, err) = pki(&[
        "issue",
        "--state-dir",
        s,
        "--operator",
        "alice@ops",
        "--out",
        d.join("alice").to_str().unwrap(),
        "--days",
        "7",
    ]);
    assert_eq!(code, 0, "{err}");
    let op = Credentials::operator(d.join("alice"))
        .check(Some(&Identity::operator("alice@ops").unwrap()), None)
        .unwrap();
    assert_eq!(op.serial, serial.trim());

    eprintln!("phase: issue refuses an unknown node, a missing --cluster, and no holder");
    let (code, _, err) = pki(&[
        "issue",
        "--state-dir",
        s,
        "--node",
        "node09",
        "--cluster",
        cluster.to_str().unwrap(),
        "--out",
        d.join("n9").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("node09"), "{err}");
    let (code, _, err) = pki(&["issue", "--state-dir", s, "--node", "node01", "--out", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--cluster"), "{err}");
    let (code, _, _) = pki(&["issue", "--state-dir", s, "--out", "x"]);
    assert_eq!(code, 2);

    eprintln!("phase: list and show");
    let (code, list, err) = pki(&["list", "--state-dir", s]);
    assert_eq!(code, 0, "{err}");
    assert!(
        list.contains(&got.serial) && list.contains("urn:plasmacloud:node:node02"),
        "{list}"
    );
    assert!(
        list.contains("urn:plasmacloud:operator:alice@ops") && list.contains("offline"),
        "{list}"
    );
    let (code, show, _) = pki(&["show", "--state-dir", s]);
    assert_eq!(code, 0);
    assert!(
        show.contains(&fpr) && show.contains("issued: 2 certificates, 0 revoked"),
        "{show}"
    );

    eprintln!("phase: import into a fresh state directory; never over an existing CA");
    let fresh = d.join("fresh");
    let (code, out, err) = pki(&[
        "import",
        "--state-dir",
        fresh.to_str().unwrap(),
        "--cert",
        state.join("pki/ca.crt").to_str().unwrap(),
        "--key",
        state.join("pki/ca.key").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), fpr);
    let (code, _, err) = pki(&[
        "import",
        "--state-dir",
        s,
        "--cert",
        state.join("pki/ca.crt").to_str().unwrap(),
        "--key",
        state.join("pki/ca.key").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("already there"), "{err}");
    let (code, _, err) = pki(&["show", "--state-dir", d.join("none").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("pki init"), "{err}");
}

#[test]
fn revoke_without_chainfire_exits_75_naming_the_endpoints_and_keeps_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    let s = state.to_str().unwrap();
    // A contract whose voters' Chainfire is a closed port on loopback.
    let port = plasmacloud_testkit::free_port(std::net::Ipv4Addr::LOCALHOST);
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster-3.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    v["ports"]["chainfire_api"] = port.into();
    for (i, n) in v["nodes"].as_array_mut().unwrap().iter_mut().enumerate() {
        n["ipv4"] = format!("127.0.0.{}", i + 1).into();
    }
    let cluster = d.join("cluster.json");
    std::fs::write(&cluster, v.to_string()).unwrap();
    init_ca(&state);
    let node = issue_node(&state, &cluster, "node02", &d.join("n2"));
    let serial = Credentials::node(&node.dir)
        .check(None, None)
        .unwrap()
        .serial;

    let (code, out, err) = pki(&[
        "revoke",
        "--state-dir",
        s,
        "--cluster",
        cluster.to_str().unwrap(),
        "--reason",
        "disk lost",
        "--timeout",
        "2",
        &serial.to_uppercase(),
    ]);
    assert_eq!(code, 75, "{out}{err}");
    for want in [
        "Chainfire unreachable",
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.3:{port}"),
        "revoked.log",
        "again",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    let log = std::fs::read_to_string(state.join("pki/revoked.log")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(rec["serial"], serial.as_str(), "one canonical form: {log}");
    assert_eq!(rec["identity"], "urn:plasmacloud:node:node02");
    assert_eq!(rec["reason"], "disk lost");
    // Running it again records nothing twice.
    let (code, _, _) = pki(&[
        "revoke",
        "--state-dir",
        s,
        "--cluster",
        cluster.to_str().unwrap(),
        "--timeout",
        "1",
        &serial,
    ]);
    assert_eq!(code, 75);
    assert_eq!(
        std::fs::read_to_string(state.join("pki/revoked.log"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    let (_, list, _) = pki(&["list", "--state-dir", s]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(&serial) && l.ends_with("revoked")),
        "{list}"
    );
    // A serial that is not hex is a usage error, not a retry.
    let (code, _, err) = pki(&[
        "revoke",
        "--state-dir",
        s,
        "--cluster",
        cluster.to_str().unwrap(),
        "not-hex",
    ]);
    assert_eq!(code, 2, "{err}");
}
