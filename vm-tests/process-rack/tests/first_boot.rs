//! The first-boot chain on racks of real processes (chainfire, flaredb, iam, firstboot) on
//! 127.0.x.y. Each test reads as phases; every wait has a deadline.

#![allow(clippy::unwrap_used)] // a test that cannot set up its fixture should panic

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use local_rack::{node_ip, Rack, RackSpec};
use plasmacloud_store_client::{MemberRole, MembersResponse, StoreClient};

use plasmacloud_testkit::workspace_binary;

fn bin_dir() -> PathBuf {
    workspace_binary("firstboot")
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

fn spec(nodes: usize, subnet: u8, delays: Vec<Duration>, work: &std::path::Path) -> RackSpec {
    RackSpec {
        nodes,
        subnet,
        work: work.to_path_buf(),
        bin_dir: bin_dir(),
        delays,
        timeout: Duration::from_secs(240),
        verbose: true,
        agents: false,
        voters: None,
    }
}

/// The harness's checks speak mTLS as an operator, as an operator would.
async fn members(rack: &Rack, store: &str) -> MembersResponse {
    let port = if store == "chainfire" { 2379 } else { 2479 };
    let endpoints: Vec<String> = (0..rack.spec.nodes)
        .map(|i| format!("https://{}:{port}", node_ip(rack.spec.subnet, i)))
        .collect();
    StoreClient::builder(endpoints)
        .tls_files(&rack.operator_files())
        .expect("operator certificate")
        .build()
        .expect("client")
        .members()
        .await
        .expect("members")
}

fn ca_pem(rack: &Rack) -> String {
    std::fs::read_to_string(rack.operator_files().ca).unwrap()
}

fn voters(m: &MembersResponse) -> Vec<u64> {
    let mut v = m.voter_ids();
    v.sort();
    v
}

fn step(rack: &Rack, name: &str, step: &str) -> (i32, String) {
    let out = Command::new(bin_dir().join("firstboot"))
        .arg(step)
        .args(rack.node_args(name, Duration::from_secs(20)))
        .output()
        .expect("run firstboot");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Login is open to anyone over TLS: no client certificate, only the CA to trust.
async fn iam_login(rack: &Rack, node: usize, user: &str, password: &str) -> u16 {
    plasmacloud_pki::tls::reqwest_builder_trusting(&ca_pem(rack))
        .unwrap()
        .build()
        .unwrap()
        .post(format!(
            "https://{}:8080/v1/auth/login",
            node_ip(rack.spec.subnet, node)
        ))
        .json(&serde_json::json!({"username": user, "password": password}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_shuffled_form_one_cluster_and_reruns_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Random order, random delays: node03 first, the seed last.
    let delays = vec![
        Duration::from_millis(1500),
        Duration::from_millis(700),
        Duration::ZERO,
    ];
    let rack = Arc::new(Rack::new(spec(3, 61, delays, dir.path())).unwrap());

    // Phase: cold start of the whole chain on every node.
    let ready = rack.run_all().await;
    eprintln!("{}", rack.summary_line());
    assert_eq!(ready, 3, "{:#?}", rack.timelines.lock().unwrap());

    // Phase: exactly one cluster of 3 voters in each store, with a leader.
    for store in ["chainfire", "flaredb"] {
        let m = members(&rack, store).await;
        assert_eq!(
            voters(&m),
            vec![1, 2, 3],
            "{store}: ids 1 (seed) and 2, 3 from the counter"
        );
        assert_eq!(m.voter_ids().len(), 3, "{store}: {m:?}");
        assert!(m.leader.is_some(), "{store}: no leader");
        assert!(
            m.members.iter().all(|x| x.role == MemberRole::Voter),
            "{store}: {m:?}"
        );
    }
    let cf_before = members(&rack, "chainfire").await;
    let fd_before = members(&rack, "flaredb").await;

    // Phase: one IAM admin: the contract's hash is the password the harness made it from, on
    // every node; a second admin cannot be bootstrapped, not even by a node; and an operator
    // or an anonymous caller cannot reach bootstrap at all.
    for i in 0..3 {
        assert_eq!(
            iam_login(&rack, i, local_rack::ADMIN.0, local_rack::ADMIN.1).await,
            200,
            "login on node {i}"
        );
    }
    let intruder = serde_json::json!({"username": "intruder", "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$FCXPgIi1gahS52F7DaMVyw$hXfRVp9txfuCxGVwuE6RSUMu9bH/wtIf/qfEhEWbgWM"});
    let url = format!("https://{}:8080/v1/bootstrap", node_ip(61, 2));
    let node03 = plasmacloud_pki::TlsFiles::from(&plasmacloud_pki::Credentials::node(
        rack.node_dir("node03").join("state/pki"),
    ));
    for (who, files, want) in [
        ("node03", Some(node03), 409),
        ("an operator", Some(rack.operator_files()), 403),
        ("anyone", None, 401),
    ] {
        let client = match &files {
            Some(f) => plasmacloud_pki::tls::TlsMaterial::load(f)
                .unwrap()
                .reqwest_builder()
                .unwrap(),
            None => plasmacloud_pki::tls::reqwest_builder_trusting(&ca_pem(&rack)).unwrap(),
        };
        let r = client
            .build()
            .unwrap()
            .post(&url)
            .json(&intruder)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "bootstrap by {who}");
    }

    // Phase: every step again on every node changes nothing.
    for name in rack.names.clone() {
        for s in [
            "disk",
            "configure",
            "chainfire-join",
            "flaredb-join",
            "iam-setup",
            "health-check",
        ] {
            let (code, out) = step(&rack, &name, s);
            assert_eq!(code, 0, "{name} {s} again: {out}");
        }
    }
    assert_eq!(
        voters(&members(&rack, "chainfire").await),
        voters(&cf_before)
    );
    assert_eq!(voters(&members(&rack, "flaredb").await), voters(&fd_before));
    assert_eq!(members(&rack, "chainfire").await.members.len(), 3);

    // Phase: restart one node's services with its data: it comes back as the same member.
    let id_before =
        std::fs::read_to_string(rack.node_dir("node02").join("state/chainfire/node_id")).unwrap();
    for s in ["iam", "flaredb", "chainfire"] {
        rack.kill_service("node02", s).await;
    }
    rack.run_chain("node02").await.expect("node02 comes back");
    let id_after =
        std::fs::read_to_string(rack.node_dir("node02").join("state/chainfire/node_id")).unwrap();
    assert_eq!(id_before, id_after);
    assert_eq!(
        voters(&members(&rack, "chainfire").await),
        voters(&cf_before)
    );
    assert_eq!(voters(&members(&rack, "flaredb").await), voters(&fd_before));

    // Phase: wipe node03's disk: it joins under a fresh id, its old incarnation is removed, and
    // the voter set stays at the contract's three.
    for s in ["iam", "flaredb", "chainfire"] {
        rack.kill_service("node03", s).await;
    }
    let id_file = rack.node_dir("node03").join("state/chainfire/node_id");
    let old: u64 = std::fs::read_to_string(&id_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::fs::remove_dir_all(rack.node_dir("node03").join("state")).unwrap();
    // Its key went with the disk: it gets a new one (offline, as it does not PXE-boot here).
    rack.issue_node("node03", &rack.contract).unwrap();
    rack.run_chain("node03")
        .await
        .expect("wiped node03 rejoins");
    let new: u64 = std::fs::read_to_string(&id_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(new, 4, "a wiped node takes the next id from the counter");
    for store in ["chainfire", "flaredb"] {
        let m = members(&rack, store).await;
        let v = voters(&m);
        assert_eq!(v.len(), 3, "{store}: {m:?}");
        assert!(
            v.contains(&new) && !v.contains(&old),
            "{store}: id {old} retired, never reused: {m:?}"
        );
        assert_eq!(m.members.len(), 3, "{store}: {m:?}");
    }

    // Phase: bad input is a clear error and joins nothing.
    let (code, out) = step(&rack, "node09", "configure");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("node \"node09\" is not in cluster"), "{out}");

    let mut other = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(&rack.contract).unwrap(),
    )
    .unwrap();
    other["cluster"]["id"] = serde_json::json!("some-other-cluster");
    other["nodes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "node04", "mac": "52:54:00:3d:00:09", "ipv4": "127.0.61.13", "roles": ["worker"]
        }));
    let other_path = dir.path().join("other-contract.json");
    std::fs::write(&other_path, other.to_string()).unwrap();
    // A certificate of this very CA: only the contract is wrong.
    Command::new(bin_dir().join("pxe-server"))
        .args(["pki", "issue", "--node", "node04", "--state-dir"])
        .arg(dir.path().join("pxe-state"))
        .arg("--cluster")
        .arg(&other_path)
        .arg("--out")
        .arg(dir.path().join("node04/state/pki"))
        .status()
        .unwrap();
    let out = Command::new(bin_dir().join("firstboot"))
        .args(["configure", "--cluster"])
        .arg(&other_path)
        .args(["--node", "node04", "--deadline", "20s"])
        .arg("--state-dir")
        .arg(dir.path().join("node04/state"))
        .arg("--etc-dir")
        .arg(dir.path().join("node04/etc"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("two contracts disagree"), "{text}");
    assert_eq!(
        members(&rack, "chainfire").await.members.len(),
        3,
        "nothing half-joined"
    );
    assert!(
        !dir.path().join("node04/state/chainfire/node_id").exists(),
        "no id taken"
    );

    std::fs::write(dir.path().join("broken.json"), "{\"version\": 1,").unwrap();
    let out = Command::new(bin_dir().join("firstboot"))
        .args(["configure", "--node", "node01", "--cluster"])
        .arg(dir.path().join("broken.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.json: line 1"));

    rack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peers_past_the_deadline_exit_75_and_name_what_was_awaited() {
    let dir = tempfile::tempdir().unwrap();
    let rack = Rack::new(spec(3, 62, vec![], dir.path())).unwrap();
    // node02 alone: the seed never comes.
    let out = Command::new(bin_dir().join("firstboot"))
        .arg("configure")
        .args(rack.node_args("node02", Duration::from_secs(3)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(75), "{text}");
    assert!(
        text.contains("waiting for a Raft id from the Chainfire counter"),
        "{text}"
    );
    assert!(
        !rack
            .node_dir("node02")
            .join("state/chainfire/node_id")
            .exists(),
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_one_starting_30_s_late() {
    let dir = tempfile::tempdir().unwrap();
    let mut delays = vec![Duration::ZERO; 5];
    delays[3] = Duration::from_secs(30);
    let rack = Arc::new(Rack::new(spec(5, 63, delays, dir.path())).unwrap());
    let ready = rack.run_all().await;
    eprintln!("{}", rack.summary_line());
    assert_eq!(ready, 5, "{:#?}", rack.timelines.lock().unwrap());
    for store in ["chainfire", "flaredb"] {
        let m = members(&rack, store).await;
        assert_eq!(m.voter_ids().len(), 5, "{store}: {m:?}");
        assert_eq!(m.members.len(), 5, "{store}: {m:?}");
    }
    rack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_nodes_join_at_once_and_the_quorum_stays_five() {
    let dir = tempfile::tempdir().unwrap();
    let rack = Arc::new(Rack::new(spec(25, 64, vec![], dir.path())).unwrap());
    let ready = rack.run_all().await;
    eprintln!("{}", rack.summary_line());
    assert_eq!(ready, 25, "{:#?}", rack.timelines.lock().unwrap());
    for store in ["chainfire", "flaredb"] {
        let m = members(&rack, store).await;
        assert_eq!(m.voter_ids().len(), 5, "{store}: {m:?}");
        assert_eq!(
            m.members.len(),
            25,
            "{store}: 5 voters and 20 learners: {m:?}"
        );
        assert_eq!(
            m.members
                .iter()
                .filter(|x| x.role == MemberRole::Learner)
                .count(),
            20,
            "{store}"
        );
    }
    rack.shutdown().await;
}

/// Power to the whole rack goes out, the seed's disk is replaced, and power comes back with the
/// other two servers 2–5 s slower (as real machines are). Before the "never two clusters"
/// rule the seed bootstrapped alone every time; now it waits for its peers, finds they hold
/// the cluster, and joins it under a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_seed_powered_on_first_joins_the_cluster_its_peers_hold() {
    let dir = tempfile::tempdir().unwrap();
    let rack = Arc::new(Rack::new(spec(3, 65, vec![], dir.path())).unwrap());

    // Phase: a ready rack holding a key.
    assert_eq!(
        rack.run_all().await,
        3,
        "{:#?}",
        rack.timelines.lock().unwrap()
    );
    let cf = |i: usize| {
        StoreClient::builder([format!("https://{}:2379", node_ip(65, i))])
            .tls_files(&rack.operator_files())
            .unwrap()
            .build()
            .unwrap()
    };
    cf(1).put("survives/the-power-cut", "yes").await.unwrap();

    for (round, delays) in [[2_000u64, 5_000], [3_500, 2_500]].iter().enumerate() {
        // Phase: power off everything; the seed's disk is replaced.
        for name in rack.names.clone() {
            for s in ["iam", "flaredb", "chainfire"] {
                rack.kill_service(&name, s).await;
            }
        }
        std::fs::remove_dir_all(rack.node_dir("node01").join("state")).unwrap();
        rack.issue_node("node01", &rack.contract).unwrap();

        // Phase: power on, the seed first.
        let mut tasks = Vec::new();
        for (i, name) in rack.names.clone().into_iter().enumerate() {
            let r = Arc::clone(&rack);
            let delay = Duration::from_millis(if i == 0 { 0 } else { delays[i - 1] });
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                r.run_chain(&name).await
            }));
        }
        for t in tasks {
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }

        // Phase: one cluster of three voters, the seed under a new id, the old data everywhere.
        for store in ["chainfire", "flaredb"] {
            let m = members(&rack, store).await;
            assert_eq!(m.voter_ids().len(), 3, "round {round} {store}: {m:?}");
            assert!(
                !m.voter_ids().contains(&1),
                "round {round} {store}: the seed's old id 1 is retired: {m:?}"
            );
        }
        for i in 0..3 {
            let v = cf(i)
                .kv()
                .get_local("survives/the-power-cut")
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: node {i} lost the data"));
            assert_eq!(v.value, "yes");
        }
        // One admin, the contract's: it still logs in, and nothing else was created.
        assert_eq!(
            iam_login(&rack, 0, local_rack::ADMIN.0, local_rack::ADMIN.1).await,
            200,
            "round {round}"
        );
    }
    rack.shutdown().await;
}

/// One initial voter never comes up: the seed does not read its silence as "no cluster".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_waits_for_a_silent_voter_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let rack = Rack::new(spec(3, 66, vec![], dir.path())).unwrap();
    // node02 is pristine and waiting for its id: it answers that it holds no cluster.
    let mut node02 = tokio::process::Command::new(bin_dir().join("firstboot"))
        .arg("configure")
        .args(rack.node_args("node02", Duration::from_secs(60)))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // node03 never boots.
    let out = Command::new(bin_dir().join("firstboot"))
        .arg("configure")
        .args(rack.node_args("node01", Duration::from_secs(5)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(75), "{text}");
    assert!(text.contains("no answer from node03"), "{text}");
    assert!(!text.contains("node02 ("), "node02 answered: {text}");
    // It said so while it waited (the unit's status and a boot event), not only at the end.
    assert!(text.contains("attempt 1, waiting for"), "{text}");
    assert!(
        !rack
            .node_dir("node01")
            .join("state/chainfire/node_id")
            .exists(),
        "the seed took no id: it did not bootstrap"
    );
    let _ = node02.kill().await;
}
