//! Leadership handed over: on request (`POST /v1/cluster/leader {"away_from": ID}`, through
//! `StoreClient::move_leader_away`) and before a leader stops on SIGTERM.
//!
//! Each SIGTERM round has one client writing in a loop through every node; the figures printed
//! (`handover …` lines) are the write unavailability of that SIGTERM: from the signal to the
//! first acknowledged write sent after it, and the longest gap between two acknowledgements
//! around it. Rounds with the handover on (the default) and off (`--shutdown-handover-ms 0`),
//! with three voters and with five. Every round also checks that no acknowledged write was
//! lost and no client was told "failed".

mod common;

use std::process::Command;
use std::time::Duration;

use common::{check_writes, client_all, form_cluster, phase, wait_healthy, Node, Told, Writers};
use plasmacloud_store_client::StoreClient;
use plasmacloud_testkit::wait_until_async;

const BIN: &str = "chainfire-server";

async fn leader_of(c: &StoreClient) -> u64 {
    wait_until_async("a leader", Duration::from_secs(30), || async {
        c.members().await.ok().and_then(|m| m.leader)
    })
    .await
    .expect("a leader")
}

/// SIGTERM, then the exit code (within 20 s).
async fn sigterm(n: &mut Node) -> Option<i32> {
    let p = n.proc.as_mut().expect("running");
    let pid = p.pid().expect("pid");
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    // A loop, not `wait_until_async`: the check needs `&mut` to the process.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(code) = n.proc.as_mut().and_then(|p| p.try_exit_code()) {
            break code;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 20 s waiting for the node to exit\n{}",
            n.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    n.proc = None;
    code
}

/// One measured SIGTERM of the leader: `(first ack after the signal, longest gap)`, seconds.
struct Round {
    first_ack: f64,
    longest_gap: f64,
}

async fn sigterm_leader_round(nodes: &mut [Node], label: &str, round: usize) -> Round {
    let refs: Vec<&Node> = nodes.iter().collect();
    let all = client_all(&refs, Duration::from_secs(5));
    let leader = leader_of(&all).await;
    let li = nodes.iter().position(|n| n.id == leader).expect("leader");
    let writers = Writers::start(&all, 1, &format!("{label}-{round}"));
    writers
        .wait_acked_more(100, Duration::from_secs(20), "writes before the SIGTERM")
        .await;
    let at = writers.began.elapsed();
    let code = sigterm(&mut nodes[li]).await;
    assert_eq!(code, Some(0), "a SIGTERM'd node exits 0");
    writers
        .wait_acked_more(100, Duration::from_secs(30), "writes after the SIGTERM")
        .await;
    let first_ack = writers
        .first_ack_after(at)
        .expect("an acknowledgement after the SIGTERM");
    let records = writers.stop().await;
    let acks: Vec<Duration> = records
        .iter()
        .filter(|r| r.told == Told::Acked)
        .map(|r| r.answered)
        .collect();
    let longest_gap = acks
        .windows(2)
        .filter(|w| w[1] + Duration::from_millis(500) >= at)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or_default();
    let others: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let survivors = client_all(&others, Duration::from_secs(10));
    let new_leader = leader_of(&survivors).await;
    let c = check_writes(&survivors, &format!("{label}-{round}"), &records).await;
    assert_eq!(c.failed, 0, "{c:?}");
    eprintln!(
        "handover {label} round {round}: leader {leader} -> {new_leader}; first write acknowledged {:.3} s after the SIGTERM, longest gap {:.3} s ({c:?})",
        first_ack.as_secs_f64(),
        longest_gap.as_secs_f64()
    );
    // It comes back for the next round.
    nodes[li].start(false);
    wait_healthy(&nodes[li], Duration::from_secs(30)).await;
    Round {
        first_ack: first_ack.as_secs_f64(),
        longest_gap: longest_gap.as_secs_f64(),
    }
}

/// Prints the figures; `(mean, worst)` longest gap, the write unavailability (the first ack
/// after the signal can come from a write the node answered before it handled the signal).
fn summary(label: &str, rounds: &[Round]) -> (f64, f64) {
    let worst = rounds.iter().map(|r| r.first_ack).fold(0.0, f64::max);
    let gaps = rounds.iter().map(|r| r.longest_gap).fold(0.0, f64::max);
    let mean = rounds.iter().map(|r| r.first_ack).sum::<f64>() / rounds.len() as f64;
    let mean_gap = rounds.iter().map(|r| r.longest_gap).sum::<f64>() / rounds.len() as f64;
    eprintln!(
        "handover summary {label}: first ack after SIGTERM mean {mean:.3} s, worst {worst:.3} s; longest gap mean {mean_gap:.3} s, worst {gaps:.3} s over {} rounds",
        rounds.len()
    );
    (mean_gap, gaps)
}

/// Restarts every node with `extra` flags (followers first; the leader last, which hands over
/// on its way down if it may).
async fn restart_all_with(nodes: &mut [Node], extra: &[&str]) {
    let all = client_all(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(5));
    let leader = leader_of(&all).await;
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|i| nodes[*i].id == leader);
    for i in order {
        sigterm(&mut nodes[i]).await;
        nodes[i].extra = extra.iter().map(|s| s.to_string()).collect();
        nodes[i].start(false);
        wait_healthy(&nodes[i], Duration::from_secs(30)).await;
    }
}

async fn cluster(tmp: &std::path::Path, n: u64) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=n).map(|id| Node::new(BIN, id, tmp)).collect();
    for n in &mut nodes {
        n.start(true);
    }
    form_cluster(&nodes.iter().collect::<Vec<_>>()).await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_call_moves_leadership_and_names_the_new_leader() {
    let tmp = tempfile::tempdir().expect("tempdir");

    phase("one voter: nobody can take over (409)");
    let mut solo = Node::new(BIN, 9, tmp.path());
    solo.start(true);
    let sc = solo.client();
    sc.init(&[solo.member()]).await.expect("init");
    wait_healthy(&solo, Duration::from_secs(20)).await;
    let e = sc.move_leader_away(9).await.expect_err("the only voter");
    assert!(e.is_conflict(), "{e}");
    assert!(e.to_string().contains("only voter"), "{e}");
    solo.kill();

    phase("three voters: away from a follower is a no-op, away from the leader moves it");
    let nodes = cluster(tmp.path(), 3).await;
    let all = client_all(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(10));
    let leader = leader_of(&all).await;
    let follower = nodes.iter().find(|n| n.id != leader).expect("a follower");
    let m = all.move_leader_away(follower.id).await.expect("no-op");
    assert_eq!(m.leader, Some(leader));
    let started = std::time::Instant::now();
    // Through a follower: forwarded to the leader like the other membership calls.
    let m = follower
        .client()
        .move_leader_away(leader)
        .await
        .expect("move the leader away");
    let took = started.elapsed();
    let new = m.leader.expect("a new leader");
    assert_ne!(new, leader, "{m:?}");
    eprintln!("move_leader_away: leader {leader} -> {new} in {took:?}");
    for n in &nodes {
        let seen = wait_until_async(
            "everyone follows the new leader",
            Duration::from_secs(10),
            || async {
                n.client()
                    .members()
                    .await
                    .ok()
                    .and_then(|m| m.leader)
                    .filter(|l| *l == new)
            },
        )
        .await;
        assert!(seen.is_ok(), "node {} does not follow {new}", n.id);
    }
    all.put("after/move", "x").await.expect("writes go on");

    phase("a deadline too short to hand over: 504");
    let leader = leader_of(&all).await;
    let ln = nodes.iter().find(|n| n.id == leader).expect("leader");
    let r = ln
        .https()
        .post(ln.api_url("/v1/cluster/leader?timeout_ms=0"))
        .body(format!(r#"{{"away_from":{leader}}}"#))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 504, "{:?}", r.text().await);
    let r = ln
        .https()
        .post(ln.api_url("/v1/cluster/leader"))
        .body(r#"{"away":1}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    leader_of(&all).await;
    all.put("after/504", "x").await.expect("writes go on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigtermed_leader_hands_over_three_voters() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes = cluster(tmp.path(), 3).await;

    phase("SIGTERM the leader, with the handover (the default)");
    let mut with = Vec::new();
    for round in 1..=3 {
        with.push(sigterm_leader_round(&mut nodes, "3-with", round).await);
    }
    phase("SIGTERM the leader, without (--shutdown-handover-ms 0)");
    restart_all_with(&mut nodes, &["--shutdown-handover-ms", "0"]).await;
    let mut without = Vec::new();
    for round in 1..=3 {
        without.push(sigterm_leader_round(&mut nodes, "3-without", round).await);
    }
    let (w_mean, w) = summary("3 voters with handover", &with);
    let (wo_mean, _) = summary("3 voters without handover", &without);
    assert!(
        w < 2.5,
        "with the handover writes resume within 2.5 s ({w:.3} s; without, a follower cannot even campaign for 3 s)"
    );
    assert!(
        w_mean < wo_mean,
        "the handover shortens the stall ({w_mean:.3} vs {wo_mean:.3} s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigtermed_leader_hands_over_five_voters() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut nodes = cluster(tmp.path(), 5).await;

    phase("five voters: SIGTERM the leader, with the handover");
    let mut with = Vec::new();
    for round in 1..=2 {
        with.push(sigterm_leader_round(&mut nodes, "5-with", round).await);
    }
    phase("five voters: without");
    restart_all_with(&mut nodes, &["--shutdown-handover-ms", "0"]).await;
    let mut without = Vec::new();
    for round in 1..=2 {
        without.push(sigterm_leader_round(&mut nodes, "5-without", round).await);
    }
    // Two rounds without are too few to compare means (one ran 0.01 s, another 5.2 s): the
    // bound is the claim here, the figures go to docs/benchmarks.md.
    let (_, w) = summary("5 voters with handover", &with);
    summary("5 voters without handover", &without);
    assert!(
        w < 3.0,
        "with the handover writes resume within 3 s ({w:.3} s; about one 2 s lease)"
    );
}
