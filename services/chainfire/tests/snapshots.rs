//! Snapshots are streamed through files, never held whole in memory: a learner that joins
//! behind a purged log installs a state many times the 1 MiB chunk size with its peak RSS
//! under a cap below that state's size, and so does the leader that builds and sends it.

mod common;

use std::time::{Duration, Instant};

use common::{form_cluster, phase, readyz_field, rss_mib, wait_healthy, Node};
use plasmacloud_testkit::wait_until_async;

const BIN: &str = "chainfire-server";
/// Keys of [`VALUE_LEN`] bytes each: the state is about `KEYS` MiB.
const KEYS: usize = 512;
const VALUE_LEN: usize = 1_000_000;
/// The peak RSS either node may reach while the snapshot is built, sent and installed: below
/// the state's own size (488 MiB), so holding it whole even once fails; the in-memory
/// snapshots held it two to three times. Measured at 384 MB: learner 212–241 MiB, or 340 MiB
/// when RocksDB's second 64 MiB memtable filled before the first was flushed (both memtables
/// of the state's column family, RocksDB's default bound); leader 249–291 MiB. None of it
/// grows with the state: the same at half of it.
const RSS_CAP_MIB: u64 = 420;

fn value(i: usize) -> String {
    // Incompressible enough that the state on disk and in flight is its full size.
    let seed = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut x = seed;
    let mut s = String::with_capacity(VALUE_LEN);
    while s.len() < VALUE_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(VALUE_LEN);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_installs_a_large_state_by_streamed_snapshot_with_bounded_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut leader = Node::new(BIN, 1, tmp.path());
    leader.extra = vec!["--snapshot-logs".into(), "50".into()];
    leader.start(true);
    form_cluster(&[&leader]).await;

    phase("write the state: 384 keys of 1 MB");
    let started = Instant::now();
    let kv = leader.client().kv();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let mut top = 0;
            for i in (w..KEYS).step_by(4) {
                let rev = kv
                    .put(&format!("big/{i:03}"), &value(i))
                    .await
                    .unwrap_or_else(|e| panic!("put big/{i:03}: {e}"));
                top = top.max(rev);
            }
            top
        }));
    }
    let mut big_rev = 0;
    for t in tasks {
        big_rev = big_rev.max(t.await.expect("writer"));
    }
    // Small writes until a snapshot covers every big key and the log behind it is gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut small = 0usize;
    while readyz_field(&leader, "purged").await <= big_rev {
        assert!(
            Instant::now() < deadline,
            "the log was not purged past {big_rev} within 60 s"
        );
        kv.put(&format!("small/{small}"), "x")
            .await
            .expect("small put");
        small += 1;
    }
    let last_small = format!("small/{}", small.saturating_sub(1));
    eprintln!("wrote {KEYS} MB in {:?}", started.elapsed());

    phase("a learner joins: it can only catch up by snapshot");
    let mut learner = Node::new(BIN, 2, tmp.path());
    learner.start(true);
    // The peaks from here on: the writes above are not what is measured.
    for n in [&leader, &learner] {
        let pid = n.proc.as_ref().and_then(|p| p.pid()).expect("pid");
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    }
    let started = Instant::now();
    leader
        .client()
        .add_learner(&learner.member())
        .await
        .expect("add learner");
    let last = KEYS - 1;
    let lc = learner.client().kv();
    wait_until_async(
        "the learner holds the whole state",
        Duration::from_secs(120),
        || {
            let (lc, last_small) = (lc.clone(), last_small.clone());
            async move {
                let v = lc.get_local(&format!("big/{last:03}")).await.ok()??;
                let s = lc.get_local(&last_small).await.ok()??;
                (v.value.len() == VALUE_LEN && s.value == "x").then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- learner log ---\n{}", learner.output()));
    let took = started.elapsed();
    assert!(
        readyz_field(&learner, "snapshot").await > 0,
        "the learner should have installed a snapshot"
    );
    for i in [0, KEYS / 2, last] {
        let v = lc
            .get_local(&format!("big/{i:03}"))
            .await
            .expect("get")
            .expect("present");
        assert!(v.value == value(i), "big/{i:03} differs after the install");
    }

    let peak = |n: &Node| rss_mib(n.proc.as_ref().and_then(|p| p.pid()).expect("pid")).1;
    let (learner_peak, leader_peak) = (peak(&learner), peak(&leader));
    eprintln!(
        "snapshot of {KEYS} MB installed in {took:?}: peak RSS learner {learner_peak} MiB, leader {leader_peak} MiB (cap {RSS_CAP_MIB} MiB)"
    );
    assert!(
        learner_peak < RSS_CAP_MIB,
        "the learner reached {learner_peak} MiB installing a {KEYS} MB snapshot (cap {RSS_CAP_MIB} MiB)"
    );
    assert!(
        leader_peak < RSS_CAP_MIB,
        "the leader reached {leader_peak} MiB building and sending a {KEYS} MB snapshot (cap {RSS_CAP_MIB} MiB)"
    );

    phase("the learner restarts from its installed state and is promoted");
    learner.kill();
    learner.start(false);
    leader.client().promote_voters(&[2]).await.expect("promote");
    wait_healthy(&learner, Duration::from_secs(30)).await;
    let files: Vec<String> = std::fs::read_dir(learner.dir.join("snapshots"))
        .expect("snapshots dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "one snapshot file kept, nothing left over: {files:?}"
    );
    assert!(files[0].ends_with(".snap"), "{files:?}");
}
