//! A 3-node Chainfire cluster as real processes on 127.0.0.x with RocksDB on disk: formation
//! through the API, replication, kill -9 of the leader under concurrent writes (every
//! acknowledged write survives; one register's history is linearizable), restart with data,
//! a wiped node refused under its old id and joining under a new one (by snapshot).

mod common;
#[path = "common/lin.rs"]
mod lin;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    assert_not_initialised, client_all, form_cluster, phase, readyz_field, wait_healthy, Node,
};
use lin::{Op, OpKind};
use plasmacloud_store_client::{MemberRole, StoreClient};
use plasmacloud_testkit::wait_until_async;

const BIN: &str = "chainfire-server";

async fn leader_of(c: &StoreClient) -> u64 {
    wait_until_async("a leader", Duration::from_secs(30), || {
        let c = c.clone();
        async move { c.members().await.ok().and_then(|m| m.leader) }
    })
    .await
    .expect("leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_leader_kill_restart_and_wipe() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::new(BIN, id, tmp.path())).collect();
    for n in &mut nodes {
        // small snapshot interval so a late joiner must catch up by snapshot
        n.extra = vec!["--snapshot-logs".into(), "100".into()];
        n.start(true);
    }

    phase("form cluster: init, two learners, promote");
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        form_cluster(&refs).await;
    }
    let members = nodes[0].client().members().await.expect("members");
    assert_eq!(members.voter_ids(), vec![1, 2, 3], "{members:?}");
    // init again with the same request: a no-op; a different one: refused
    nodes[0]
        .client()
        .init(&[nodes[0].member()])
        .await
        .expect("same init is a no-op");
    let mut moved = nodes[0].member();
    moved.api_addr = "127.0.0.1:1".into();
    let e = nodes[0]
        .client()
        .init(&[moved])
        .await
        .expect_err("different init refused");
    assert!(e.is_conflict(), "{e}");
    // re-adding a member with the same addresses is idempotent
    nodes[0]
        .client()
        .add_learner(&nodes[1].member())
        .await
        .expect("idempotent add");

    phase("write through every node, read everywhere");
    for n in &nodes {
        let rev = n
            .client()
            .put(&format!("hello/from/{}", n.id), &format!("node {}", n.id))
            .await
            .expect("put via node");
        assert!(rev > 0);
    }
    for n in &nodes {
        for m in &nodes {
            let v = n
                .client()
                .get(&format!("hello/from/{}", m.id))
                .await
                .expect("get")
                .expect("present");
            assert_eq!(v.value, format!("node {}", m.id));
        }
        // each replica has it locally too (serializable read through raw HTTP)
        let url = n.api_url("/v1/kv/hello/from/1?consistency=serializable");
        let http = n.https();
        let ok = wait_until_async("local replica", Duration::from_secs(10), || {
            let (url, http) = (url.clone(), http.clone());
            async move {
                let r = http.get(&url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
        assert!(ok.is_ok(), "node {} did not replicate", n.id);
    }

    phase("concurrent writes; kill -9 the leader mid-stream");
    let all = client_all(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(5));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let acked_count = Arc::new(AtomicUsize::new(0));
    let history: Arc<Mutex<Vec<Op>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (c, stop, acked, acked_count) = (
            all.clone(),
            stop.clone(),
            acked.clone(),
            acked_count.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("bulk/{w}/{i:06}");
                let val = format!("v{w}-{i}");
                if c.put(&key, &val).await.is_ok() {
                    acked.lock().expect("lock").insert(key, val);
                    acked_count.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for t in 0..4 {
        let (c, stop, history) = (all.clone(), stop.clone(), history.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let invoke = start.elapsed().as_nanos();
                if t < 2 {
                    let val = format!("r{t}-{i}");
                    let res = c.put("register", &val).await;
                    let complete = start.elapsed().as_nanos();
                    let op = match res {
                        Ok(_) => Some(Op {
                            invoke,
                            complete: Some(complete),
                            kind: OpKind::Write(val),
                        }),
                        // certainly not applied: not part of the history
                        Err(e) if e.is_retryable() => None,
                        Err(_) => Some(Op {
                            invoke,
                            complete: None,
                            kind: OpKind::Write(val),
                        }),
                    };
                    if let Some(op) = op {
                        history.lock().expect("lock").push(op);
                    }
                } else {
                    let res = c.get("register").await;
                    let complete = start.elapsed().as_nanos();
                    if let Ok(v) = res {
                        history.lock().expect("lock").push(Op {
                            invoke,
                            complete: Some(complete),
                            kind: OpKind::Read(v.map(|v| v.value)),
                        });
                    }
                }
                i += 1;
            }
        }));
    }
    wait_until_async("writes before the kill", Duration::from_secs(30), || {
        let n = acked_count.load(Ordering::Relaxed);
        async move { (n >= 200).then_some(()) }
    })
    .await
    .expect("stream running");
    let leader = leader_of(&all).await;
    let li = nodes
        .iter()
        .position(|n| n.id == leader)
        .expect("leader is a node");
    eprintln!("killing leader {leader}");
    nodes[li].kill();
    let at_kill = acked_count.load(Ordering::Relaxed);
    wait_until_async("writes after the kill", Duration::from_secs(60), || {
        let n = acked_count.load(Ordering::Relaxed);
        async move { (n >= at_kill + 200).then_some(()) }
    })
    .await
    .expect("writes continue after failover");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }

    phase("check: every acknowledged write is present");
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let c = client_all(&survivors, Duration::from_secs(10));
    let listed = c.list("bulk/").await.expect("list");
    let have: BTreeMap<String, String> =
        listed.items.into_iter().map(|i| (i.key, i.value)).collect();
    let acked = acked.lock().expect("lock").clone();
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!("{} acknowledged writes all present", acked.len());

    phase("check: the register's history is linearizable");
    let ops = history.lock().expect("lock").clone();
    let writes = ops
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Write(_)))
        .count();
    assert!(
        writes > 20 && ops.len() > 50,
        "too little history: {} ops",
        ops.len()
    );
    lin::check(&ops, None).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("register history of {} ops is linearizable", ops.len());

    phase("restart the killed leader with its data: same member");
    nodes[li].start(false);
    wait_healthy(&nodes[li], Duration::from_secs(30)).await;
    let members = c.members().await.expect("members");
    let me = members.get(leader).expect("still a member");
    assert_eq!(me.raft_addr, nodes[li].raft.to_string());
    assert_eq!(me.role, MemberRole::Voter);
    let url = nodes[li].api_url("/v1/kv?prefix=bulk/&consistency=serializable");
    let http = nodes[li].https();
    let want = have.len();
    wait_until_async("restarted node caught up", Duration::from_secs(30), || {
        let (url, http) = (url.clone(), http.clone());
        async move {
            let v: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            (v["items"].as_array()?.len() >= want).then_some(())
        }
    })
    .await
    .expect("restarted node has the data");

    phase("wipe a follower: refused under its old id");
    let leader = leader_of(&c).await;
    let wi = nodes
        .iter()
        .position(|n| n.id != leader)
        .expect("a follower");
    let wiped_id = nodes[wi].id;
    nodes[wi].kill();
    std::fs::remove_dir_all(&nodes[wi].dir).expect("wipe");
    nodes[wi].start(true);
    let li = nodes.iter().position(|n| n.id == leader).expect("leader");
    let e = nodes[li]
        .client()
        .add_learner(&nodes[wi].member())
        .await
        .expect_err("old id refused");
    assert!(e.is_conflict(), "{e}");
    assert!(e.to_string().contains("never reused"), "{e}");
    // the leader's traffic for the old incarnation is refused too: the node stays pristine
    let p = nodes[wi].proc.as_mut().expect("running");
    p.wait_for_output("refused", Duration::from_secs(20))
        .expect("raft traffic refused");
    let h = nodes[wi].client().health().await.expect("health");
    assert_eq!(h.cluster_size, 0, "{h:?}");
    assert_not_initialised(&h);

    phase("the wiped node joins under a new id (by snapshot)");
    nodes[wi].kill();
    let purged = readyz_field(&nodes[li], "purged").await;
    assert!(
        purged > 0,
        "the leader's log should have been purged behind a snapshot"
    );
    let mut fresh = Node::new(BIN, 4, tmp.path());
    fresh.start(true);
    let lc = nodes[li].client();
    lc.remove_member(wiped_id)
        .await
        .expect("remove the wiped member");
    lc.add_learner(&fresh.member())
        .await
        .expect("join with a new id");
    lc.promote_voters(&[4]).await.expect("promote");
    wait_healthy(&fresh, Duration::from_secs(30)).await;
    let m = lc.members().await.expect("members");
    let mut voters = m.voter_ids();
    voters.sort();
    let mut want_voters: Vec<u64> = nodes
        .iter()
        .map(|n| n.id)
        .filter(|i| *i != wiped_id)
        .chain([4])
        .collect();
    want_voters.sort();
    assert_eq!(voters, want_voters);
    assert!(m.get(wiped_id).is_none());
    let snap = readyz_field(&fresh, "snapshot").await;
    assert!(snap > 0, "the new node should have installed a snapshot");
    let v = fresh
        .client()
        .get("hello/from/1")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(v.value, "node 1");
    // removing the wiped id again is a no-op
    lc.remove_member(wiped_id).await.expect("idempotent remove");
}

/// A follower that was down while large batched entries (24 MiB of writes in ~30 entries) were
/// written catches up by log replication (append RPCs are capped at `MAX_APPEND_BYTES`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_on_large_batched_entries_catches_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::new(BIN, id, tmp.path())).collect();
    for n in &mut nodes {
        n.start(true);
    }
    form_cluster(&nodes.iter().collect::<Vec<_>>()).await;
    let c = client_all(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(30));
    let leader = leader_of(&c).await;
    let fi = nodes
        .iter()
        .position(|n| n.id != leader)
        .expect("a follower");

    phase("a follower is down while 64 writers write 24 MiB");
    nodes[fi].kill();
    let value = "v".repeat(48 * 1024);
    let mut tasks = Vec::new();
    for w in 0..64 {
        let (c, value) = (c.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..8 {
                c.put(&format!("big/{w}/{i}"), &value).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let (_, text) = nodes[(fi + 1) % 3].client().readyz().await.expect("readyz");
    eprintln!("{text}");

    phase("it comes back and catches up by log replication");
    nodes[fi].start(false);
    let target = readyz_field(&nodes[(fi + 1) % 3], "applied").await;
    let f = &nodes[fi];
    wait_until_async(
        "the follower applied everything",
        Duration::from_secs(60),
        || async { (readyz_field(f, "applied").await >= target).then_some(()) },
    )
    .await
    .expect("the follower caught up");
    let url = nodes[fi].api_url("/v1/kv/big/63/7?consistency=serializable");
    let r = nodes[fi].https().get(&url).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body").len(), value.len());
}

/// The local ports of `pid`'s established TCP connections to `remote` (from `/proc`).
fn connections_to(pid: u32, remote: std::net::SocketAddr) -> Vec<u16> {
    let inodes: std::collections::BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let std::net::SocketAddr::V4(remote) = remote else {
        return Vec::new();
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(remote.ip().octets()),
        remote.port()
    );
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state (01: established), …, inode (field 9)
            let ok = f.len() > 9 && f[2] == want && f[3] == "01" && inodes.contains(f[9]);
            let port = f.get(1)?.rsplit(':').next()?;
            ok.then(|| u16::from_str_radix(port, 16).ok()).flatten()
        })
        .collect()
}

/// Followers never send each other Raft traffic, so without care the first vote after a leader
/// fails would have to set up TCP and mutual TLS inside openraft's vote deadline (ten
/// heartbeats): on a busy host's emulated CPUs that is how two survivors went a minute without
/// a leader. Every node that does not lead keeps one live connection to each peer's Raft port;
/// the same connection is still there after longer than the server's idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_keep_a_live_connection_to_every_peer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::new(BIN, id, tmp.path())).collect();
    for n in &mut nodes {
        n.start(true);
    }
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        form_cluster(&refs).await;
    }
    let leader = leader_of(&nodes[0].client()).await;
    let followers: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    let pid = |n: &Node| n.proc.as_ref().and_then(|p| p.pid()).expect("running");

    phase("each follower opens a connection to the other follower and to the leader");
    let mut kept = Vec::new();
    for (from, to) in [(a, b), (b, a)] {
        let what = format!(
            "a connection from node {} to node {}'s Raft port",
            from.id, to.id
        );
        let port = wait_until_async(&what, Duration::from_secs(10), || async {
            connections_to(pid(from), to.raft).first().copied()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let li = nodes.iter().position(|n| n.id == leader).expect("leader");
        assert!(
            !connections_to(pid(from), nodes[li].raft).is_empty(),
            "node {} has no connection to the leader's Raft port",
            from.id
        );
        kept.push((from, to, port));
    }

    phase("the connections outlive the server's idle timeout (they are used, not redialled)");
    let until = Instant::now() + Duration::from_secs(13);
    while Instant::now() < until {
        for (from, to, port) in &kept {
            let now = connections_to(pid(from), to.raft);
            assert!(
                now.contains(port),
                "node {} dropped its connection (local port {port}) to node {}: now {now:?}",
                from.id,
                to.id
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
