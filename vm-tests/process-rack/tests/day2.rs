//! Day 2 on racks of real processes, driven through `rackctl`'s library (and its binary where
//! the command line matters): grow, replace, rolling re-image (and one that stops at a node
//! failing its health gate), the rollout lock, retire. Each test reads as phases; every wait
//! has a deadline; a client writes through the changes and every acknowledged write is read
//! back.

#![allow(clippy::unwrap_used)] // a test that cannot set up its fixture should panic

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use firstboot::reboots::{self, SlotGroup};
use local_rack::day2::WriteLoad;
use local_rack::{node_ip, Rack, RackSpec};
use plasmacloud_store_client::{MemberRole, MembersResponse, StoreClient};
use plasmacloud_testkit::workspace_binary;
use rackctl::contract_edit::NewNode;
use rackctl::operator::Store;
use rackctl::rollout::RolloutPlan;

fn bin_dir() -> PathBuf {
    workspace_binary("firstboot")
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

fn rack(nodes: usize, subnet: u8, work: &std::path::Path, agents: bool) -> Arc<Rack> {
    Arc::new(
        Rack::new(RackSpec {
            nodes,
            subnet,
            work: work.to_path_buf(),
            bin_dir: bin_dir(),
            delays: vec![],
            timeout: Duration::from_secs(300),
            verbose: true,
            agents,
            // Three voters however many nodes: workers to grow into, waves of workers.
            voters: Some(3),
        })
        .unwrap(),
    )
}

/// Phase: a ready rack serving bundle v1.
async fn ready(rack: &Arc<Rack>) -> String {
    let v1 = rack.serve_first_bundle().unwrap();
    let n = rack.run_all().await;
    assert_eq!(n, rack.spec.nodes, "{:#?}", rack.timelines.lock().unwrap());
    eprintln!("{}", rack.summary_line());
    v1
}

/// An operator's Chainfire client over the first three nodes (the voters a rack starts with).
fn chainfire(rack: &Rack) -> StoreClient {
    let endpoints: Vec<String> = (0..3.min(rack.spec.nodes))
        .map(|i| format!("https://{}:2379", node_ip(rack.spec.subnet, i)))
        .collect();
    StoreClient::builder(endpoints)
        .tls_files(&rack.operator_files())
        .unwrap()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn members(rack: &Rack, store: Store) -> MembersResponse {
    rack.ctl()
        .cluster()
        .unwrap()
        .view(store)
        .await
        .unwrap()
        .members
}

fn new_node(rack: &Rack, i: usize, voter: bool) -> NewNode {
    NewNode {
        name: local_rack::node_name(i),
        mac: format!("52:54:00:{:02x}:ee:{:02x}", rack.spec.subnet, i),
        ipv4: node_ip(rack.spec.subnet, i).to_string(),
        voter,
    }
}

/// Boots nodes in the background (new machines powered on).
fn power_on(rack: &Arc<Rack>, names: &[&str]) -> Vec<tokio::task::JoinHandle<Result<(), String>>> {
    names
        .iter()
        .map(|n| {
            let r = Arc::clone(rack);
            let n = n.to_string();
            tokio::spawn(async move { r.boot(&n).await })
        })
        .collect()
}

/// A copy of `name`'s key, certificate and CA in `to` (to show them refused later).
fn keep_pki(rack: &Rack, name: &str, to: &std::path::Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in ["node.key", "node.crt", "ca.crt"] {
        std::fs::copy(rack.node_dir(name).join("state/pki").join(f), to.join(f)).unwrap();
    }
    to.to_path_buf()
}

async fn check_writes(load: WriteLoad, rack: &Rack) -> local_rack::day2::WriteReport {
    let report = load.stop().await;
    eprintln!("writes: {}", report.summary());
    let lost = report.lost(&chainfire(rack)).await;
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(!report.acked.is_empty(), "the client wrote nothing");
    report
}

/// Waits until a revoked certificate is refused (every service honours it within 10 s).
async fn refused(rack: &Rack, pki: &std::path::Path) -> f64 {
    let files = plasmacloud_pki::TlsFiles::from(&plasmacloud_pki::Credentials::node(pki));
    let c = StoreClient::builder([format!("https://{}:2379", node_ip(rack.spec.subnet, 0))])
        .tls_files(&files)
        .unwrap()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let start = Instant::now();
    loop {
        match c.members().await {
            Err(e) if e.status() == Some(403) || e.to_string().contains("certificate") => {
                return start.elapsed().as_secs_f64()
            }
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "still accepted after 15 s: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_gains_two_workers_then_goes_from_three_to_five_voters_while_a_client_writes() {
    let dir = tempfile::tempdir().unwrap();
    let rack = rack(3, 71, dir.path(), false);
    let v1 = ready(&rack).await;
    let ctl = rack.ctl();
    let load = WriteLoad::start(chainfire(&rack), "grow");

    // Phase: two workers into the contract; the bundle is rebuilt and swapped in. An earlier
    // grow of the same two stopped (its rackctl killed) right after its contract edit, before
    // any bundle for it: the contract names them, the served bundle does not. The same
    // command goes on from there; the same name with another MAC is refused, changing nothing.
    let plan = rackctl::grow::GrowPlan {
        add: vec![new_node(&rack, 3, false), new_node(&rack, 4, false)],
        make_voters: vec![],
    };
    let mut crashed = rackctl::contract_edit::ContractEdit::load(&rack.contract).unwrap();
    for n in &plan.add {
        crashed.add_node(n).unwrap();
    }
    crashed.save().unwrap();
    assert_eq!(
        rackctl::bundle::version_of(&rack.bundle_link()).unwrap(),
        v1
    );
    let s = rackctl::status::status(&ctl).await.unwrap();
    for n in ["node04", "node05"] {
        assert!(
            s.errors
                .iter()
                .any(|e| e.starts_with(n) && e.contains("run it again")),
            "status should say the bundle lacks {n}: {:?}",
            s.errors
        );
    }
    let mut other = plan.clone();
    other.add[0].mac = "52:54:00:99:99:99".into();
    let before = std::fs::read(&rack.contract).unwrap();
    let e = rackctl::grow::grow(&ctl, &other, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("in the contract already"), "{e}");
    assert_eq!(std::fs::read(&rack.contract).unwrap(), before);
    assert!(rackctl::lock::read(&chainfire(&rack).kv())
        .await
        .unwrap()
        .is_none());
    let op = ctl.begin(&plan.describe()).await.unwrap();
    let prepared = rackctl::grow::prepare(&op, &plan).await.unwrap();
    let v2 = prepared.bundle.clone().unwrap();
    assert_ne!(v1, v2, "a new bundle for the new contract");
    let manifest =
        plasmacloud_contract::manifest::BundleManifest::load(&rack.bundle_link()).unwrap();
    assert!(manifest.entries.contains_key("node04") && manifest.entries.contains_key("node05"));

    // Phase: the machines boot (certificates offline: they do not PXE-boot here) and join.
    for n in ["node04", "node05"] {
        rack.issue_node(n, &rack.contract).unwrap();
    }
    let boots = power_on(&rack, &["node04", "node05"]);
    let report = rackctl::grow::complete(&op, &prepared, Duration::from_secs(120))
        .await
        .unwrap();
    op.finish().await.unwrap();
    for b in boots {
        b.await.unwrap().unwrap();
    }
    assert_eq!(report.joined.len(), 2);
    assert_eq!(report.voters, 3);
    for store in Store::BOTH {
        let m = members(&rack, store).await;
        assert_eq!(m.voter_ids().len(), 3, "{store:?}: {m:?}");
        assert_eq!(m.members.len(), 5, "{store:?}: {m:?}");
    }

    // Phase: two voters more, 3 -> 5, one membership change at a time.
    let plan = rackctl::grow::GrowPlan {
        add: vec![new_node(&rack, 5, true), new_node(&rack, 6, true)],
        make_voters: vec![],
    };
    let op = ctl.begin(&plan.describe()).await.unwrap();
    let prepared = rackctl::grow::prepare(&op, &plan).await.unwrap();
    assert_eq!(prepared.contract.voters().len(), 5);
    for n in ["node06", "node07"] {
        rack.issue_node(n, &rack.contract).unwrap();
    }
    let boots = power_on(&rack, &["node06", "node07"]);
    let report = rackctl::grow::complete(&op, &prepared, Duration::from_secs(120))
        .await
        .unwrap();
    op.finish().await.unwrap();
    for b in boots {
        b.await.unwrap().unwrap();
    }
    assert_eq!(report.voters, 5);
    for store in Store::BOTH {
        let m = members(&rack, store).await;
        assert_eq!(m.voter_ids().len(), 5, "{store:?}: {m:?}");
        assert_eq!(m.members.len(), 7, "{store:?}: {m:?}");
        assert!(m.leader.is_some());
    }
    ctl.cluster().unwrap().check_voters().await.unwrap();

    // Phase: 0 acknowledged writes lost.
    check_writes(load, &rack).await;

    // Phase: status shows every node with its roles and certificate.
    let s = rackctl::status::status(&ctl).await.unwrap();
    eprintln!("{}", rackctl::status::render(&s));
    assert_eq!(s.nodes.len(), 7);
    let n6 = s.nodes.iter().find(|n| n.name == "node06").unwrap();
    assert_eq!(n6.contract_role, "voter");
    assert!(
        n6.chainfire.starts_with("voter") || n6.chainfire.starts_with("leader"),
        "{n6:?}"
    );
    let n4 = s.nodes.iter().find(|n| n.name == "node04").unwrap();
    assert!(n4.flaredb.starts_with("learner"), "{n4:?}");
    assert!(s.nodes.iter().all(|n| n.cert_not_after.is_some()), "{s:?}");
    assert!(s.lock.is_none());
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    rack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_gives_a_dead_voters_name_to_a_new_machine() {
    let dir = tempfile::tempdir().unwrap();
    let rack = rack(3, 72, dir.path(), false);
    ready(&rack).await;
    let ctl = rack.ctl();
    let load = WriteLoad::start(chainfire(&rack), "replace");

    // Phase: node02's machine dies for good: processes gone, disk gone.
    let old_pki = keep_pki(&rack, "node02", &dir.path().join("node02-old-pki"));
    let before = members(&rack, Store::Chainfire).await;
    let cluster = ctl.cluster().unwrap();
    let node02 = cluster.contract.node("node02").unwrap().clone();
    let view = cluster.view(Store::Chainfire).await.unwrap();
    let old_id = view.role_of(&node02).id().unwrap();
    rack.power_off("node02").await;
    std::fs::remove_dir_all(rack.node_dir("node02").join("state")).unwrap();

    // Phase: replace refuses a machine that still answers (node03 is alive).
    let op = ctl.begin("replace node03 (refused)").await.unwrap();
    let plan = rackctl::replace::ReplacePlan {
        name: "node03".into(),
        mac: "52:54:00:48:ee:03".into(),
        serials: vec![],
        force: false,
    };
    let e = rackctl::replace::prepare(&op, &plan, Duration::from_secs(30))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("still answer"), "{e}");
    op.finish().await.unwrap();

    // Phase: the new machine takes the name: contract, bundle, members, certificate.
    let op = ctl.begin("replace node02").await.unwrap();
    let plan = rackctl::replace::ReplacePlan {
        name: "node02".into(),
        mac: "52:54:00:48:ee:02".into(),
        serials: vec![],
        force: false,
    };
    let prepared = rackctl::replace::prepare(&op, &plan, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        prepared.removed.iter().all(|(_, id)| *id == old_id),
        "{prepared:?}"
    );
    assert_eq!(prepared.removed.len(), 2);
    assert!(
        !prepared.revoked.is_empty(),
        "the old certificate is revoked"
    );
    let c = plasmacloud_contract::Contract::load(&rack.contract).unwrap();
    assert_eq!(
        c.node("node02").unwrap().mac.to_string(),
        "52:54:00:48:ee:02"
    );
    let released =
        std::fs::read_to_string(rack.spec.work.join(local_rack::day2::RELEASED_LEASES)).unwrap();
    assert_eq!(
        released,
        format!("{}\n", node02.mac),
        "the old MAC's lease released"
    );
    for store in Store::BOTH {
        let m = members(&rack, store).await;
        assert!(m.get(old_id).is_none(), "{store:?}: {m:?}");
        assert_eq!(
            m.voter_ids().len(),
            2,
            "{store:?}: two voters until the new one joins"
        );
    }
    let secs = refused(&rack, &old_pki).await;
    eprintln!("the dead machine's certificate refused {secs:.1} s after the revocation");

    rack.issue_node("node02", &rack.contract).unwrap();
    let boot = power_on(&rack, &["node02"]);
    let report = rackctl::replace::complete(&op, &prepared, Duration::from_secs(120))
        .await
        .unwrap();
    op.finish().await.unwrap();
    boot.into_iter().next().unwrap().await.unwrap().unwrap();
    assert_ne!(report.new_id, old_id, "ids are never reused");
    for store in Store::BOTH {
        let m = members(&rack, store).await;
        assert_eq!(
            m.voter_ids().len(),
            3,
            "{store:?}: voter count restored: {m:?}"
        );
        assert_eq!(m.members.len(), before.members.len());
        assert!(m
            .get(report.new_id)
            .is_some_and(|x| x.role == MemberRole::Voter));
    }
    check_writes(load, &rack).await;
    rack.shutdown().await;
}

/// Every pending reboot key is gone and every slot free.
async fn coordination_is_clean(rack: &Rack) {
    let kv = chainfire(rack).kv();
    assert!(reboots::list_requests(&kv).await.unwrap().is_empty());
    for g in [SlotGroup::Voters, SlotGroup::Workers] {
        let (slots, _) = reboots::read_slots(&kv, g).await.unwrap();
        assert!(slots.holders.is_empty(), "{g:?}: {slots:?}");
    }
    assert!(rackctl::lock::read(&kv).await.unwrap().is_none());
}

/// After a rollout of `version`: every node booted it, the rack is as the contract says,
/// nothing is left held, and no acknowledged write was lost.
async fn rolled_out(rack: &Rack, ctl: &rackctl::Ctl, version: &str, load: WriteLoad) {
    for n in &rack.names {
        assert_eq!(rack.booted_version(n).as_deref(), Some(version), "{n}");
    }
    ctl.cluster().unwrap().check_voters().await.unwrap();
    coordination_is_clean(rack).await;
    let w = check_writes(load, rack).await;
    eprintln!(
        "longest write unavailability during the rollout: {:.2} s",
        w.longest_gap.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_moves_every_node_to_the_new_bundle_while_a_client_writes() {
    let dir = tempfile::tempdir().unwrap();
    let rack = rack(5, 73, dir.path(), true);
    let v1 = ready(&rack).await;
    let (v2_dir, v2) = rack.build_bundle("v2").unwrap();
    assert_ne!(v1, v2);
    let load = WriteLoad::start(chainfire(&rack), "rollout");

    // Phase: the rollout runs; meanwhile a second rollout and a human's reboot are refused.
    let ctl = rack.ctl();
    let plan = RolloutPlan {
        bundle: Some(v2_dir.clone()),
        wave_size: 2,
        wave_timeout: Duration::from_secs(90),
    };
    let started = Instant::now();
    let task = {
        let ctl = ctl.clone();
        let plan = plan.clone();
        tokio::spawn(async move { rackctl::rollout::rollout(&ctl, &plan).await })
    };
    let kv = chainfire(&rack).kv();
    plasmacloud_testkit::wait_until_async(
        "the rollout lock to be held",
        Duration::from_secs(20),
        || async { rackctl::lock::read(&kv).await.ok().flatten().map(|_| ()) },
    )
    .await
    .unwrap();
    let e = rackctl::rollout::rollout(&ctl, &plan).await.unwrap_err();
    assert!(matches!(e, rackctl::Error::LockHeld(_)), "{e}");
    assert!(e.to_string().contains("rollout"), "{e}");
    let e = rackctl::rollout::reboot(&ctl, "node04", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(e, rackctl::Error::LockHeld(_)), "{e}");
    // The binary says the same, and exits 75 (retry later).
    let out = std::process::Command::new(bin_dir().join("rackctl"))
        .arg("--cluster")
        .arg(&rack.contract)
        .arg("--tls-dir")
        .arg(dir.path().join("operator"))
        .args(["reboot", "node05"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("rollout lock is held"));

    let report = task.await.unwrap().unwrap();
    let took = started.elapsed().as_secs_f64();
    for w in &report.waves {
        eprintln!(
            "wave {:?} {:?}: {:.1} s",
            w.wave.group, w.wave.nodes, w.seconds
        );
    }
    eprintln!("rollout of 5 nodes: {took:.1} s");
    assert_eq!(report.version, v2);
    let groups: Vec<SlotGroup> = report.waves.iter().map(|w| w.wave.group).collect();
    assert_eq!(
        groups,
        [
            SlotGroup::Voters,
            SlotGroup::Voters,
            SlotGroup::Voters,
            SlotGroup::Workers
        ],
        "voters one at a time, then the two workers as one wave"
    );

    // Phase: every node on v2, the rack as the contract says, nothing left held.
    rolled_out(&rack, &ctl, &v2, load).await;

    // Phase: the same rollout again has nothing to do.
    let again = rackctl::rollout::rollout(&ctl, &plan).await.unwrap();
    assert!(again.waves.is_empty(), "{again:?}");
    assert_eq!(again.skipped.len(), 5);

    // Phase: status over the binary (no pxe-server here: versions unknown, roles known).
    let out = std::process::Command::new(bin_dir().join("rackctl"))
        .arg("--cluster")
        .arg(&rack.contract)
        .arg("--tls-dir")
        .arg(dir.path().join("operator"))
        .args(["--pxe", "https://127.0.0.1:9", "status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 5);
    assert!(v["boot_server_error"].is_string());
    rack.shutdown().await;
}

/// The operator's process dies mid-wave (its laptop's power cut): nothing is released, the
/// lock's lease lapses, and the next rollout takes the lock over, finishes the reboot the dead
/// one left under way through the same health gate, and rolls the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_whose_operator_died_mid_wave_is_finished_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let rack = rack(3, 78, dir.path(), true);
    let v1 = ready(&rack).await;
    let (v2_dir, v2) = rack.build_bundle("v2").unwrap();
    assert_ne!(v1, v2);
    let load = WriteLoad::start(chainfire(&rack), "takeover");
    let mut ctl = rack.ctl();
    ctl.config.lock_lease = Duration::from_secs(5);
    let plan = RolloutPlan {
        bundle: Some(v2_dir),
        wave_size: 1,
        wave_timeout: Duration::from_secs(90),
    };

    // Phase: the first voter goes down to reboot, and there the operator's process dies
    // (its task dropped: no release, no stop, renewal gone with it). The node stays down (as
    // if v2 were slow to come up on it) until the next rollout has taken over.
    for n in &rack.names {
        rack.break_on(n, &v2);
    }
    let task = {
        let ctl = ctl.clone();
        let plan = plan.clone();
        tokio::spawn(async move { rackctl::rollout::rollout(&ctl, &plan).await })
    };
    let kv = chainfire(&rack).kv();
    let (first, _) = plasmacloud_testkit::wait_until_async(
        "a reboot under way",
        Duration::from_secs(60),
        || async {
            reboots::list_requests(&kv)
                .await
                .ok()?
                .into_iter()
                .find(|(_, (r, _))| r.state == reboots::RequestState::Rebooting)
        },
    )
    .await
    .unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let (dead, _) = rackctl::lock::read(&kv).await.unwrap().unwrap();
    for n in &rack.names {
        rack.unbreak(n);
    }

    // Phase: until its lease lapses the dead hold still refuses a rollout; then the next one
    // takes over and waits for the reboot it left under way; the node comes back meanwhile.
    let e = rackctl::rollout::rollout(&ctl, &plan).await.unwrap_err();
    assert!(matches!(e, rackctl::Error::LockHeld(_)), "{e}");
    let next = tokio::spawn(async move {
        let start = Instant::now();
        loop {
            match rackctl::rollout::rollout(&ctl, &plan).await {
                Ok(r) => return r,
                Err(rackctl::Error::LockHeld(_)) if start.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    plasmacloud_testkit::wait_until_async(
        "the next rollout to take over the dead one's reboot",
        Duration::from_secs(30),
        || async {
            let (now, _) = rackctl::lock::read(&kv).await.ok()??;
            (now.id != dead.id && now.detail.contains("finishing")).then_some(())
        },
    )
    .await
    .unwrap();
    rack.boot(&first).await.unwrap();
    let report = next.await.unwrap();
    let ctl = rack.ctl();
    for w in &report.waves {
        eprintln!(
            "wave {:?} {:?}: {:.1} s{}",
            w.wave.group,
            w.wave.nodes,
            w.seconds,
            if w.adopted { " (adopted)" } else { "" }
        );
    }
    assert!(report.waves[0].adopted, "{report:?}");
    assert_eq!(report.waves[0].wave.nodes, std::slice::from_ref(&first));
    let mut rest: Vec<String> = report.waves[1..]
        .iter()
        .inspect(|w| assert!(!w.adopted))
        .flat_map(|w| w.wave.nodes.clone())
        .collect();
    rest.sort();
    let mut others: Vec<String> = rack
        .names
        .iter()
        .filter(|n| **n != first)
        .cloned()
        .collect();
    others.sort();
    assert_eq!(rest, others, "every other node in a wave of its own");
    assert!(rackctl::lock::read(&kv).await.unwrap().is_none());
    eprintln!(
        "{first}'s reboot, left by hold {}, finished by the next rollout",
        dead.id
    );

    // Phase: every node on v2, the rack as the contract says, nothing left held, no write lost.
    rolled_out(&rack, &ctl, &v2, load).await;
    rack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_stops_at_a_node_that_fails_its_health_gate() {
    let dir = tempfile::tempdir().unwrap();
    let rack = rack(3, 74, dir.path(), true);
    let v1 = ready(&rack).await;
    let (v2_dir, v2) = rack.build_bundle("v2").unwrap();
    rack.break_on("node02", &v2);
    let ctl = rack.ctl();
    let plan = RolloutPlan {
        bundle: Some(v2_dir.clone()),
        wave_size: 1,
        wave_timeout: Duration::from_secs(20),
    };

    // Phase: node02 does not come back on v2; the rollout stops there and says so.
    let e = rackctl::rollout::rollout(&ctl, &plan).await.unwrap_err();
    eprintln!("{e}");
    let rackctl::Error::RolloutStopped(stop) = &e else {
        panic!("expected a stopped rollout: {e}");
    };
    assert_eq!(stop.node, "node02");
    assert!(
        stop.reason.contains("not back and healthy"),
        "{}",
        stop.reason
    );
    assert!(e.to_string().contains("rollout --abort"), "{e}");
    // Nothing after node02 was asked to reboot.
    for n in &stop.pending {
        assert_eq!(
            rack.booted_version(n).as_deref(),
            Some(v1.as_str()),
            "{n} untouched"
        );
    }
    for n in &stop.done {
        assert_eq!(rack.booted_version(n).as_deref(), Some(v2.as_str()), "{n}");
    }
    assert_eq!(stop.done.len() + stop.pending.len(), 2);

    // Phase: the lock stays held, stopped, naming node02; another rollout is refused; the
    // two voters left still hold both stores.
    let kv = chainfire(&rack).kv();
    let (lock, _) = rackctl::lock::read(&kv).await.unwrap().unwrap();
    assert_eq!(lock.state, rackctl::lock::LockState::Stopped);
    assert!(lock.detail.contains("node02"), "{lock:?}");
    assert!(lock.lease_ms.is_none());
    let again = rackctl::rollout::rollout(&ctl, &plan).await.unwrap_err();
    assert!(matches!(again, rackctl::Error::LockHeld(_)), "{again}");
    for store in Store::BOTH {
        assert!(members(&rack, store).await.leader.is_some(), "{store:?}");
    }

    // Phase: the operator fixes node02 and aborts; the rollout again finishes the rest.
    rack.unbreak("node02");
    rack.boot("node02").await.unwrap();
    let aborted = rackctl::rollout::abort(&ctl).await.unwrap();
    assert!(aborted.lock.is_some());
    assert!(
        aborted.requests.iter().any(|(n, _)| n == "node02"),
        "{aborted:?}"
    );
    coordination_is_clean(&rack).await;
    let report = rackctl::rollout::rollout(&ctl, &plan).await.unwrap();
    assert!(
        report.skipped.contains(&"node02".to_string())
            || report.waves.iter().any(|w| w.wave.nodes == ["node02"])
    );
    for n in rack.names.clone() {
        assert_eq!(rack.booted_version(&n).as_deref(), Some(v2.as_str()), "{n}");
    }
    coordination_is_clean(&rack).await;
    rack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_lock_refuses_a_second_holder_and_lapses_when_its_holder_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let rack = rack(1, 75, dir.path(), false);
    ready(&rack).await;
    let ctl = rack.ctl();
    let kv = chainfire(&rack).kv();
    let lease = Duration::from_millis(1500);

    // Phase: one holder; a second, and a human's reboot, are refused.
    let a = rackctl::lock::RolloutLock::acquire(&kv, "tester a", "rollout x", lease)
        .await
        .unwrap();
    let e = rackctl::lock::RolloutLock::acquire(&kv, "tester b", "rollout y", lease)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("tester a") && e.to_string().contains("rollout x"),
        "{e}"
    );
    let e = rackctl::rollout::reboot(&ctl, "node01", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, rackctl::Error::LockHeld(_)), "{e}");
    let out = std::process::Command::new(bin_dir().join("rackctl"))
        .arg("--cluster")
        .arg(&rack.contract)
        .arg("--tls-dir")
        .arg(dir.path().join("operator"))
        .args(["--served-bundle"])
        .arg(rack.bundle_link())
        .args(["rollout", "--bundle"])
        .arg(rack.bundle_link())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Phase: the lease is renewed while the holder runs.
    let (first, _) = rackctl::lock::read(&kv).await.unwrap().unwrap();
    plasmacloud_testkit::wait_until_async("a renewal", Duration::from_secs(10), || async {
        let (now, _) = rackctl::lock::read(&kv).await.ok()??;
        (now.renewed_ms > first.renewed_ms).then_some(())
    })
    .await
    .unwrap();

    // Phase: the holder goes away without releasing; once the lease lapsed it is taken over.
    drop(a);
    let start = Instant::now();
    let c = loop {
        match rackctl::lock::RolloutLock::acquire(&kv, "tester c", "rollout z", lease).await {
            Ok(c) => break c,
            Err(rackctl::Error::LockHeld(_)) if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    eprintln!(
        "lapsed lease taken over after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(start.elapsed() >= Duration::from_millis(1000));

    // Phase: a stopped hold never lapses; --abort (the binary) releases it.
    c.stop("node09 failed its health gate").await.unwrap();
    let start = Instant::now();
    while start.elapsed() < lease * 2 {
        let e = rackctl::lock::RolloutLock::acquire(&kv, "tester d", "rollout w", lease)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("node09 failed"), "{e}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = std::process::Command::new(bin_dir().join("rackctl"))
        .arg("--cluster")
        .arg(&rack.contract)
        .arg("--tls-dir")
        .arg(dir.path().join("operator"))
        .args(["rollout", "--abort"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("released the rollout lock"));
    let e = rackctl::lock::RolloutLock::acquire(&kv, "tester e", "rollout v", lease)
        .await
        .unwrap();
    e.release().await.unwrap();
    assert!(rackctl::lock::read(&kv).await.unwrap().is_none());

    // Phase: a renewal whose write was answered "outcome unknown" (a leader that lost its
    // quorum before confirming it, as CI on 2d2f703 saw in the VM rack's grow) and landed
    // later: the key moved on, still naming this hold. Written here as that late write, the
    // same record at the next revision; the next renewal must take it for its own, not for a
    // takeover.
    let g = rackctl::lock::RolloutLock::acquire(&kv, "tester g", "rollout s", lease)
        .await
        .unwrap();
    let (mine, rev) = rackctl::lock::read(&kv).await.unwrap().unwrap();
    firstboot::reboots::write_json(
        &kv,
        rackctl::lock::LOCK_KEY,
        &mine,
        plasmacloud_store_client::Precondition::Revision(rev),
    )
    .await
    .unwrap();
    plasmacloud_testkit::wait_until_async(
        "a renewal after the late write",
        Duration::from_secs(10),
        || async {
            let (now, _) = rackctl::lock::read(&kv).await.ok()??;
            (now.renewed_ms > mine.renewed_ms).then_some(())
        },
    )
    .await
    .unwrap();
    g.check("after the late write").unwrap();
    g.release().await.unwrap();
    assert!(rackctl::lock::read(&kv).await.unwrap().is_none());

    // Phase: a release while Chainfire cannot answer (its process frozen for 4 s, as a leader
    // that lost its quorum for a moment) is ridden out, not reported as a failure.
    let f = rackctl::lock::RolloutLock::acquire(&kv, "tester f", "rollout u", lease)
        .await
        .unwrap();
    assert!(rack.signal_service("node01", "chainfire", "STOP").await);
    let thaw = {
        let rack = Arc::clone(&rack);
        tokio::spawn(async move {
            // The fault's length, not a wait for a condition.
            tokio::time::sleep(Duration::from_secs(4)).await;
            rack.signal_service("node01", "chainfire", "CONT").await
        })
    };
    let start = Instant::now();
    f.release().await.unwrap();
    assert!(thaw.await.unwrap());
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "released in {:?}, before Chainfire could answer",
        start.elapsed()
    );
    assert!(rackctl::lock::read(&kv).await.unwrap().is_none());
    rack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_removes_a_worker_and_a_voter_with_a_worker_promoted_in_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let rack = rack(5, 76, dir.path(), false);
    ready(&rack).await;
    let ctl = rack.ctl();
    let load = WriteLoad::start(chainfire(&rack), "retire");
    let node05_pki = keep_pki(&rack, "node05", &dir.path().join("node05-pki"));
    let macs = plasmacloud_contract::Contract::load(&rack.contract).unwrap();
    let mac_of = |n: &str| macs.node(n).unwrap().mac.to_string();
    let released = || {
        std::fs::read_to_string(rack.spec.work.join(local_rack::day2::RELEASED_LEASES))
            .unwrap_or_default()
    };

    // Phase: a worker leaves: both stores, its certificate, the contract, the bundle.
    let plan = rackctl::retire::RetirePlan {
        name: "node05".into(),
        promote: None,
        serials: vec![],
    };
    let r = rackctl::retire::retire(&ctl, &plan, Duration::from_secs(60))
        .await
        .unwrap();
    rack.power_off("node05").await;
    assert_eq!(r.removed.len(), 2);
    assert!(!r.revoked.is_empty());
    let c = plasmacloud_contract::Contract::load(&rack.contract).unwrap();
    assert!(c.node("node05").is_err());
    let manifest =
        plasmacloud_contract::manifest::BundleManifest::load(&rack.bundle_link()).unwrap();
    assert!(!manifest.entries.contains_key("node05"));
    assert_eq!(
        released(),
        format!("{}\n", mac_of("node05")),
        "its lease released"
    );
    let secs = refused(&rack, &node05_pki).await;
    eprintln!("the retired worker's certificate refused within {secs:.1} s");

    // Phase: a voter leaves only with a worker promoted in its place.
    let e = rackctl::retire::retire(
        &ctl,
        &rackctl::retire::RetirePlan {
            name: "node02".into(),
            promote: None,
            serials: vec![],
        },
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("--promote"), "{e}");
    let r = rackctl::retire::retire(
        &ctl,
        &rackctl::retire::RetirePlan {
            name: "node02".into(),
            promote: Some("node04".into()),
            serials: vec![],
        },
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    rack.power_off("node02").await;
    assert_eq!(r.promoted.len(), 2, "{r:?}");
    let c = plasmacloud_contract::Contract::load(&rack.contract).unwrap();
    assert_eq!(c.config.initial_voters, ["node01", "node04", "node03"]);
    assert!(released().ends_with(&format!("{}\n", mac_of("node02"))));
    for store in Store::BOTH {
        let m = members(&rack, store).await;
        assert_eq!(m.voter_ids().len(), 3, "{store:?}: {m:?}");
        assert_eq!(m.members.len(), 3, "{store:?}: {m:?}");
    }
    ctl.cluster().unwrap().check_voters().await.unwrap();
    assert!(rackctl::lock::read(&chainfire(&rack).kv())
        .await
        .unwrap()
        .is_none());
    check_writes(load, &rack).await;
    rack.shutdown().await;
}
