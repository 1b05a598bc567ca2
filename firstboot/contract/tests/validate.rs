//! The contract's rules, each tested with the message an operator would read.

use std::path::PathBuf;

use plasmacloud_contract::{Contract, ContractError, IdentitySources, MacAddr, Role};
use serde_json::{json, Value};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn base() -> Value {
    let text = std::fs::read_to_string(example("cluster-3.json")).expect("example");
    serde_json::from_str(&text).expect("example json")
}

/// Applies `edit` to the 3-node example and returns every problem line (`path: message`).
fn problems(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut v = base();
    edit(&mut v);
    match Contract::parse(&v.to_string()) {
        Ok(_) => vec![],
        Err(e) => {
            let p = e.problems();
            if p.is_empty() {
                vec![e.to_string()]
            } else {
                p.iter().map(ToString::to_string).collect()
            }
        }
    }
}

fn assert_problem(found: &[String], path: &str, fragment: &str) {
    assert!(
        found
            .iter()
            .any(|p| p.starts_with(&format!("{path}: ")) && p.contains(fragment)),
        "expected a problem at {path} containing {fragment:?}, got {found:#?}"
    );
}

#[test]
fn both_examples_are_valid() {
    for (file, n) in [("cluster-3.json", 3), ("cluster-5.json", 5)] {
        let c = Contract::load(&example(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(c.nodes.len(), n);
        assert_eq!(c.voters().len(), n);
        assert_eq!(c.seed().name, "node01");
        assert!(c.nodes.iter().all(|n| n.has_role(Role::ControlPlane)));
    }
}

#[test]
fn bad_mac_names_the_path_and_the_expected_form() {
    let p = problems(|v| v["nodes"][2]["mac"] = json!("52:54:00:zz:00:03"));
    assert_eq!(
        p,
        vec![
            r#"nodes[2].mac: "52:54:00:zz:00:03" is not a MAC address (expected six hex pairs, e.g. 52:54:00:00:00:01)"#
        ]
    );
}

#[test]
fn bad_ipv4_is_reported() {
    let p = problems(|v| v["nodes"][1]["ipv4"] = json!("10.99.0.300"));
    assert_problem(&p, "nodes[1].ipv4", "is not an IPv4 address");
}

#[test]
fn duplicate_names_macs_and_addresses_are_each_reported() {
    let p = problems(|v| {
        v["nodes"][1]["name"] = json!("node01");
        v["nodes"][2]["mac"] = json!("52:54:00:00:00:01");
        v["nodes"][2]["ipv4"] = json!("10.99.0.11");
    });
    assert_problem(&p, "nodes[1].name", "duplicate node name");
    assert_problem(&p, "nodes[2].mac", "duplicate MAC");
    assert_problem(&p, "nodes[2].ipv4", "duplicate address");
}

#[test]
fn even_voter_set_is_refused() {
    let p = problems(|v| v["initial_voters"] = json!(["node01", "node02"]));
    assert_problem(&p, "initial_voters", "expected 1, 3 or 5");
}

#[test]
fn empty_voter_set_is_refused() {
    let p = problems(|v| v["initial_voters"] = json!([]));
    assert_problem(&p, "initial_voters", "0 voter(s)");
}

#[test]
fn voter_must_exist_and_be_control_plane() {
    let p = problems(|v| {
        v["initial_voters"] = json!(["node01", "node02", "node09"]);
        v["nodes"][1]["roles"] = json!(["worker"]);
    });
    assert_problem(
        &p,
        "initial_voters[2]",
        "\"node09\" is not a node of this cluster",
    );
    assert_problem(&p, "initial_voters[1]", "is not a control-plane node");
}

#[test]
fn duplicate_voter_is_refused() {
    let p = problems(|v| v["initial_voters"] = json!(["node01", "node01", "node02"]));
    assert_problem(&p, "initial_voters[1]", "duplicate voter");
}

#[test]
fn port_out_of_range_is_refused() {
    let p = problems(|v| v["ports"]["iam_api"] = json!(70000));
    assert_problem(&p, "ports.iam_api", "70000 is out of range");
}

#[test]
fn colliding_ports_on_one_node_are_refused() {
    let p = problems(|v| v["nodes"][0]["ports"] = json!({"flaredb_api": 2379}));
    assert_problem(
        &p,
        "nodes[0].ports.flaredb_api",
        "collides with chainfire_api",
    );
    let p = problems(|v| v["ports"]["chainfire_raft"] = json!(2379));
    assert_problem(&p, "ports.chainfire_raft", "collides with chainfire_api");
    assert_eq!(p.len(), 1, "reported once, not once per node: {p:#?}");
}

#[test]
fn unknown_version_is_refused() {
    let p = problems(|v| v["version"] = json!(3));
    assert_problem(&p, "version", "not a known contract version");
}

#[test]
fn a_version_1_contract_is_told_what_to_change() {
    let p = problems(|v| {
        v["version"] = json!(1);
        v["tls"] = json!({"ca_cert": "/etc/plasmacloud/tls/ca.pem"});
        v["nodes"][1]["tls"] =
            json!({"cert": "/etc/plasmacloud/tls/n.pem", "key": "/etc/plasmacloud/tls/n.key"});
        v["iam"] = json!({"bootstrap_credential": "/etc/plasmacloud/secrets/iam.json"});
    });
    assert_problem(&p, "version", "set \"version\": 2");
    assert_problem(&p, "tls", "pxe-server pki init");
    assert_problem(&p, "nodes[1].tls", "at enrollment");
    assert_problem(&p, "iam.bootstrap_credential", "iam-server hash-password");
    assert_eq!(p.len(), 4, "{p:#?}");
}

#[test]
fn the_admin_is_a_hash_never_a_password() {
    let p =
        problems(|v| v["iam"]["admin"]["password_hash"] = json!("Example-Admin-Passphrase-2026"));
    assert_problem(&p, "iam.admin.password_hash", "never the password itself");
    let p = problems(|v| {
        v["iam"]["admin"]["password_hash"] =
            json!("$argon2i$v=19$m=19456,t=2,p=1$FCXPgIi1gahS52F7DaMVyw$hXfRVp9txfuCxGVwuE6RSUMu9bH/wtIf/qfEhEWbgWM");
        v["iam"]["admin"]["username"] = json!("Admin");
    });
    assert_problem(&p, "iam.admin.password_hash", "a argon2i hash");
    assert_problem(&p, "iam.admin.username", "not a valid user name");
    let p = problems(|v| v["iam"]["admin"]["password"] = json!("x"));
    assert!(p[0].contains("unknown field `password`"), "{p:?}");
}

#[test]
fn enrollment_port_and_ca_fingerprint_are_checked() {
    let p = problems(|v| {
        v["boot_server"]["enrollment_port"] = json!(8081);
        v["pki"] = json!({"ca_sha256": "ABCD"});
    });
    assert_problem(&p, "boot_server.enrollment_port", "collides");
    assert_problem(&p, "pki.ca_sha256", "64 lowercase hex digits");
    let ok = problems(|v| v["pki"] = json!({"ca_sha256": "0".repeat(64)}));
    assert!(ok.is_empty(), "{ok:?}");
}

#[test]
fn bad_names_are_refused() {
    let p = problems(|v| {
        v["cluster"]["name"] = json!("Demo Cluster");
        v["nodes"][0]["name"] = json!("");
    });
    assert_problem(&p, "cluster.name", "not a valid cluster name");
    assert_problem(&p, "nodes[0].name", "not a valid node name");
}

#[test]
fn node_without_roles_is_refused() {
    let p = problems(|v| v["nodes"][2]["roles"] = json!([]));
    assert_problem(&p, "nodes[2].roles", "no roles");
}

#[test]
fn unknown_role_names_the_path() {
    let p = problems(|v| v["nodes"][2]["roles"] = json!(["controller"]));
    assert!(
        p[0].contains("nodes[2].roles[0]") && p[0].contains("unknown variant"),
        "{p:?}"
    );
}

#[test]
fn unknown_field_is_refused_with_its_path() {
    let p = problems(|v| v["nodes"][1]["hostname"] = json!("x"));
    assert!(
        p[0].contains("nodes[1]") && p[0].contains("unknown field `hostname`"),
        "{p:?}"
    );
}

#[test]
fn disk_layout_is_checked() {
    let p = problems(|v| {
        v["nodes"][0]["disk"]["device"] = json!("vdb");
        v["nodes"][0]["disk"]["mount_point"] = json!("/etc/plasmacloud");
        v["nodes"][0]["disk"]["label"] = json!("a-label-that-is-far-too-long");
    });
    assert_problem(&p, "nodes[0].disk.device", "not a block device path");
    assert_problem(&p, "nodes[0].disk.mount_point", "under /var/lib");
    assert_problem(&p, "nodes[0].disk.label", "not a usable filesystem label");
}

#[test]
fn boot_server_must_not_be_a_node_address() {
    let p = problems(|v| v["boot_server"]["address"] = json!("10.99.0.12"));
    assert_problem(&p, "nodes[1].ipv4", "boot server's address");
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let p = problems(|v| {
        v["version"] = json!(7);
        v["nodes"][0]["mac"] = json!("nope");
        v["nodes"][1]["ipv4"] = json!("nope");
        v["initial_voters"] = json!(["node01", "node02"]);
    });
    assert!(p.len() >= 4, "{p:#?}");
}

#[test]
fn broken_json_reports_line_and_column() {
    let text = "{\n  \"version\": 1,\n  \"cluster\": {\"name\": \"x\" \"id\": \"y\"}\n}\n";
    match Contract::parse(text) {
        Err(ContractError::Syntax { line, column, .. }) => {
            assert_eq!(line, 3);
            assert!(column > 20, "column {column}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let e = Contract::parse("{} trailing")
        .expect_err("must fail")
        .to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn self_is_found_by_cmdline_then_identity_then_mac() {
    let c = Contract::load(&example("cluster-3.json")).expect("example");
    let mac: MacAddr = "52:54:00:00:00:03".parse().expect("mac");
    let mut s = IdentitySources {
        cmdline: Some("console=ttyS0 plasmacloud.node=node02".into()),
        identity_file: Some("node01\n".into()),
        macs: vec![("eth0".into(), mac)],
        ..Default::default()
    };
    assert_eq!(c.find_self(&s).expect("cmdline").name, "node02");
    s.cmdline = Some("console=ttyS0".into());
    assert_eq!(c.find_self(&s).expect("identity").name, "node01");
    s.identity_file = None;
    assert_eq!(c.find_self(&s).expect("mac").name, "node03");

    s.cmdline = Some("plasmacloud.node=node09".into());
    let e = c.find_self(&s).expect_err("must fail").to_string();
    assert!(
        e.contains("node09") && e.contains("known: node01, node02, node03"),
        "{e}"
    );
}

#[test]
fn self_not_found_lists_what_was_looked_at() {
    let c = Contract::load(&example("cluster-3.json")).expect("example");
    let s = IdentitySources {
        cmdline: Some("console=ttyS0".into()),
        cmdline_origin: "/proc/cmdline".into(),
        identity_origin: "/etc/plasmacloud/node".into(),
        macs: vec![("eth0".into(), "52:54:00:aa:bb:cc".parse().expect("mac"))],
        ..Default::default()
    };
    let e = c.find_self(&s).expect_err("must fail").to_string();
    for part in [
        "no plasmacloud.node= in /proc/cmdline",
        "no /etc/plasmacloud/node",
        "eth0=52:54:00:aa:bb:cc",
    ] {
        assert!(e.contains(part), "{e} lacks {part}");
    }
}

#[test]
fn identity_sources_read_from_a_system_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("proc")).expect("mkdir");
    std::fs::create_dir_all(root.join("sys/class/net/ens3")).expect("mkdir");
    std::fs::write(root.join("proc/cmdline"), "quiet\n").expect("write");
    std::fs::write(
        root.join("sys/class/net/ens3/address"),
        "52:54:00:00:00:02\n",
    )
    .expect("write");
    let c = Contract::load(&example("cluster-3.json")).expect("example");
    let s = IdentitySources::from_system(root, None);
    assert_eq!(c.find_self(&s).expect("by mac").name, "node02");
}
