//! Bad configuration, ports in use, and foreign, corrupt or mismatched data directories: a
//! clear error, a non-zero exit, and nothing created or overwritten.

use std::path::Path;
use std::process::Command;

use plasmacloud_testkit::{free_port, loopback_ip, workspace_binary};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(workspace_binary("chainfire-server"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run chainfire-server");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn addrs() -> (String, String) {
    let ip = loopback_ip();
    let a = free_port(ip);
    let mut r = free_port(ip);
    while r == a {
        r = free_port(ip);
    }
    (format!("{ip}:{a}"), format!("{ip}:{r}"))
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            let content = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), content)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn bad_configuration_is_refused_with_exit_code_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("d");
    let ds = d.display().to_string();
    let (api, raft) = addrs();

    let (code, out) = run(&["--id", "1", "--api-addr", &api, "--raft-addr", &raft]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--data-dir is required"), "{out}");

    let (code, out) = run(&[
        "--id",
        "1",
        "--data-dir",
        &ds,
        "--api-addr",
        "nonsense",
        "--raft-addr",
        &raft,
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--api-addr \"nonsense\" must be ip:port"),
        "{out}"
    );

    let (code, out) = run(&[
        "--id",
        "1",
        "--data-dir",
        &ds,
        "--api-addr",
        &api,
        "--raft-addr",
        &api,
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("give them different ports"), "{out}");

    let (code, out) = run(&[
        "--id",
        "1",
        "--data-dir",
        &ds,
        "--api-addr",
        "0.0.0.0:2379",
        "--raft-addr",
        &raft,
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("concrete IP"), "{out}");

    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "id = 1\ndata_dirr = \"/x\"\n").expect("write");
    let (code, out) = run(&["--config", &cfg.display().to_string()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("data_dirr") && out.contains("bad.toml"),
        "{out}"
    );

    let (code, out) = run(&["--data-dir", &ds, "--api-addr", &api, "--raft-addr", &raft]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("pass --id"), "{out}");

    let (code, out) = run(&[
        "--id",
        "1",
        "--data-dir",
        &ds,
        "--api-addr",
        &api,
        "--raft-addr",
        &raft,
        "--tls-cert",
        "/nonexistent.pem",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--tls-cert and --tls-key go together"),
        "{out}"
    );

    // a good file passes --check, which binds and creates nothing
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        format!("id = 1\ndata_dir = \"{ds}\"\napi_addr = \"{api}\"\nraft_addr = \"{raft}\"\n"),
    )
    .expect("write");
    let (code, out) = run(&["--config", &good.display().to_string(), "--check"]);
    assert_eq!(code, 0, "{out}");
    assert!(!d.exists(), "--check must not create the data directory");
}

#[test]
fn port_in_use_is_a_clear_error_and_creates_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("d");
    let ip = loopback_ip();
    let busy = std::net::TcpListener::bind((ip, 0)).expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let raft = format!("{ip}:{}", free_port(ip));
    let (code, out) = run(&[
        "--id",
        "1",
        "--data-dir",
        &d.display().to_string(),
        "--api-addr",
        &busy_addr,
        "--raft-addr",
        &raft,
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("cannot listen on api address") && out.contains(&busy_addr),
        "{out}"
    );
    assert!(!d.exists(), "nothing may be created when a port is busy");
}

#[test]
fn foreign_corrupt_and_mismatched_data_dirs_are_refused_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (api, raft) = addrs();
    let start = |dir: &Path, id: &str| {
        run(&[
            "--id",
            id,
            "--data-dir",
            &dir.display().to_string(),
            "--api-addr",
            &api,
            "--raft-addr",
            &raft,
        ])
    };

    // not empty, no marker (say, another program's files)
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("member.db"), b"etcd things").expect("write");
    let before = listing(&foreign);
    let (code, out) = start(&foreign, "1");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("has no PLASMACLOUD-STORE.json"), "{out}");
    assert_eq!(listing(&foreign), before);

    // another service's directory
    let flare = tmp.path().join("flare");
    std::fs::create_dir_all(flare.join("db")).expect("mkdir");
    std::fs::write(flare.join("db").join("CURRENT"), b"MANIFEST-000001\n").expect("write");
    std::fs::write(
        flare.join("PLASMACLOUD-STORE.json"),
        br#"{"service":"flaredb","format":1,"incarnation":"00"}"#,
    )
    .expect("write");
    let before = listing(&flare);
    let (code, out) = start(&flare, "1");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("belongs to \"flaredb\""), "{out}");
    assert_eq!(listing(&flare), before);

    // corrupt marker
    let corrupt = tmp.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).expect("mkdir");
    std::fs::write(corrupt.join("PLASMACLOUD-STORE.json"), b"{\"service\":").expect("write");
    let before = listing(&corrupt);
    let (code, out) = start(&corrupt, "1");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("corrupt marker"), "{out}");
    assert_eq!(listing(&corrupt), before);

    // marker without database
    let nodb = tmp.path().join("nodb");
    std::fs::create_dir_all(&nodb).expect("mkdir");
    std::fs::write(
        nodb.join("PLASMACLOUD-STORE.json"),
        br#"{"service":"chainfire","format":1,"incarnation":"00"}"#,
    )
    .expect("write");
    let (code, out) = start(&nodb, "1");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("database (db/CURRENT) is missing"), "{out}");
    assert!(!nodb.join("db").exists());

    // a node_id that disagrees with --id
    let ided = tmp.path().join("ided");
    std::fs::create_dir_all(&ided).expect("mkdir");
    std::fs::write(ided.join("node_id"), b"7\n").expect("write");
    let (code, out) = start(&ided, "8");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("says this node is id 7") && out.contains("--id 8"),
        "{out}"
    );
    assert_eq!(std::fs::read(ided.join("node_id")).expect("read"), b"7\n");
}
