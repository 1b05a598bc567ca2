//! A storage fault that heals: one node's data directory lives on a small tmpfs, which is filled
//! up while clients write through all three nodes.
//!
//! What must hold (issue 17): the node whose disk is full stops Raft and **exits non-zero**
//! (its unit's `Restart=on-failure` starts it again; here the test plays systemd and starts it
//! again at once), and while the disk stays full it waits with its ports closed instead of
//! failing its restarts; no other node names it leader; the other two keep acknowledging writes;
//! **no acknowledged write is lost, and no client is told "failed" for a write that was
//! committed** (an unknown outcome says so); once space returns the node serves again and
//! catches up with nobody doing anything else.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{check_writes, client_all, form_cluster, phase, wait_healthy, Node, Writers};
use plasmacloud_testkit::{require, wait_until_async, Need};

const BIN: &str = "chainfire-server";

/// A tmpfs mounted for the test, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(at).expect("mount point");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(st.success(), "mount -t tmpfs {}", at.display());
        SmallDisk(at.to_path_buf())
    }

    /// Writes a filler file until the filesystem is full; its path.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0xa5u8; 256 << 10];
        let mut written = 0usize;
        while f.write_all(&chunk).is_ok() {
            written += chunk.len();
        }
        // What fits of a partial chunk too.
        while f.write_all(&chunk[..4096]).is_ok() {
            written += 4096;
        }
        eprintln!("filled {} with {} MiB", self.0.display(), written >> 20);
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_stops_the_node_loses_no_write_and_heals_when_space_returns() {
    if !require(
        "a_full_disk_stops_the_node_loses_no_write_and_heals_when_space_returns",
        &[Need::Root, Need::Tool("mount")],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = SmallDisk::mount(&tmp.path().join("small"), 96);
    let mut nodes: Vec<Node> = (1..=3).map(|id| Node::new(BIN, id, tmp.path())).collect();
    // Node 1 (the seed, which leads first) keeps its data on the small disk.
    nodes[0].dir = disk.0.join("node1");
    for n in &mut nodes {
        n.start(true);
    }

    phase("form the cluster; node 1 leads; writers through all nodes");
    form_cluster(&nodes.iter().collect::<Vec<_>>()).await;
    let all = client_all(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(5));
    let leader = all.members().await.expect("members").leader;
    assert_eq!(leader, Some(1), "the seed leads a fresh cluster");
    let writers = Writers::start(&all, 8, "w");
    writers
        .wait_acked_more(200, Duration::from_secs(30), "writes before the fill")
        .await;

    phase("fill node 1's disk: it stops Raft and exits non-zero");
    let filled_at = writers.began.elapsed();
    let filler = disk.fill();
    let p = nodes[0].proc.as_mut().expect("node 1 runs");
    let code = p
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n--- node 1 ---\n{}", p.output()));
    let out = p.output();
    eprintln!("node 1 exited with {code:?}");
    assert_ne!(code, Some(0), "a stopped node must exit non-zero\n{out}");
    assert!(
        out.contains("No space left on device") || out.contains("raft stopped"),
        "{out}"
    );

    phase("the unit restarts it (here: the test): it waits for space with its ports closed");
    nodes[0].proc = None;
    nodes[0].spawn(true);
    let p = nodes[0].proc.as_mut().expect("node 1 again");
    p.wait_for_output("the data disk is full", Duration::from_secs(30))
        .expect("node 1 says it waits for space");
    assert!(
        std::net::TcpStream::connect_timeout(&nodes[0].api, Duration::from_secs(1)).is_err(),
        "a node waiting for space keeps its ports closed"
    );

    phase("the other two elect a leader that is not node 1 and keep acknowledging writes");
    let others = client_all(&[&nodes[1], &nodes[2]], Duration::from_secs(5));
    let new_leader = wait_until_async("a new leader", Duration::from_secs(30), || async {
        others
            .members()
            .await
            .ok()
            .and_then(|m| m.leader)
            .filter(|l| *l != 1)
    })
    .await
    .expect("a leader among 2 and 3");
    eprintln!("node {new_leader} leads");
    writers
        .wait_acked_more(200, Duration::from_secs(60), "writes while node 1 is down")
        .await;
    eprintln!(
        "writes acknowledged again {:?} after the disk filled",
        writers.first_ack_after(filled_at)
    );

    phase("space returns: node 1 starts by itself, serves and catches up");
    std::fs::remove_file(&filler).expect("remove the filler");
    let p = nodes[0].proc.as_mut().expect("node 1");
    p.wait_for_output("listening", Duration::from_secs(30))
        .expect("node 1 starts once there is room");
    wait_healthy(&nodes[0], Duration::from_secs(30)).await;
    writers
        .wait_acked_more(100, Duration::from_secs(30), "writes after the heal")
        .await;
    let records = writers.stop().await;
    let last = records
        .iter()
        .rev()
        .find(|r| r.told == common::Told::Acked)
        .expect("an acknowledged write");
    let local = nodes[0].client();
    wait_until_async(
        "node 1 has the last write",
        Duration::from_secs(30),
        || async {
            local
                .kv()
                .get_local(&last.key)
                .await
                .ok()
                .flatten()
                .filter(|v| v.value == last.value)
        },
    )
    .await
    .expect("node 1 caught up");

    phase("check: no acknowledged write lost, nothing committed was called failed");
    let c = check_writes(&all, "w", &records).await;
    eprintln!("{c:?}");
    assert_eq!(c.failed, 0, "no write may be told 'failed' here: {c:?}");
}
