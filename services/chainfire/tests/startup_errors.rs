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

/// `args` (flag, value, flag, value, …) with `flag`'s value replaced, or the pair dropped.
fn with<'a>(args: &[&'a str], flag: &str, value: Option<&'a str>) -> Vec<&'a str> {
    args.chunks(2)
        .filter_map(|pair| match (pair, value) {
            ([f, _], Some(v)) if *f == flag => Some(vec![*f, v]),
            ([f, _], None) if *f == flag => None,
            _ => Some(pair.to_vec()),
        })
        .flatten()
        .collect()
}

#[test]
fn bad_configuration_is_refused_with_exit_code_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("d");
    let ds = d.display().to_string();
    let (api, raft) = addrs();
    let bad_toml = tmp.path().join("bad.toml");
    std::fs::write(&bad_toml, "id = 1\ndata_dirr = \"/x\"\n").expect("write");
    let bad_toml = bad_toml.display().to_string();

    let good = [
        "--id",
        "1",
        "--data-dir",
        &ds,
        "--api-addr",
        &api,
        "--raft-addr",
        &raft,
    ];
    // (the command line, what the error must say)
    let cases: [(Vec<&str>, &[&str]); 7] = [
        (with(&good, "--data-dir", None), &["--data-dir is required"]),
        (
            with(&good, "--api-addr", Some("nonsense")),
            &["--api-addr \"nonsense\" must be ip:port"],
        ),
        (
            with(&good, "--raft-addr", Some(&api)),
            &["give them different ports"],
        ),
        (
            with(&good, "--api-addr", Some("0.0.0.0:2379")),
            &["concrete IP"],
        ),
        (vec!["--config", &bad_toml], &["data_dirr", "bad.toml"]),
        (with(&good, "--id", None), &["pass --id"]),
        (
            [&good[..], &["--tls-cert", "/nonexistent.pem"]].concat(),
            &["--tls-cert and --tls-key go together"],
        ),
    ];
    for (args, needles) in &cases {
        let (code, out) = run(args);
        assert_eq!(code, 2, "{args:?}: {out}");
        for needle in *needles {
            assert!(out.contains(needle), "{args:?}: {out}");
        }
    }

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

/// A data directory the server must refuse (exit 2) and leave as it was.
struct RefusedDir {
    case: &'static str,
    /// The files in it (path relative to the directory, content).
    files: Vec<(&'static str, String)>,
    id: &'static str,
    /// What the error must say.
    says: &'static [&'static str],
}

#[test]
fn foreign_corrupt_and_mismatched_data_dirs_are_refused_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (api, raft) = addrs();
    let marker =
        |service: &str| format!(r#"{{"service":"{service}","format":1,"incarnation":"00"}}"#);
    let cases = [
        RefusedDir {
            case: "not empty, no marker (say, another program's files)",
            files: vec![("member.db", "etcd things".into())],
            id: "1",
            says: &["has no PLASMACLOUD-STORE.json"],
        },
        RefusedDir {
            case: "another service's directory",
            files: vec![
                ("db/CURRENT", "MANIFEST-000001\n".into()),
                ("PLASMACLOUD-STORE.json", marker("flaredb")),
            ],
            id: "1",
            says: &["belongs to \"flaredb\""],
        },
        RefusedDir {
            case: "corrupt marker",
            files: vec![("PLASMACLOUD-STORE.json", "{\"service\":".into())],
            id: "1",
            says: &["corrupt marker"],
        },
        RefusedDir {
            case: "marker without database",
            files: vec![("PLASMACLOUD-STORE.json", marker("chainfire"))],
            id: "1",
            says: &["database (db/CURRENT) is missing"],
        },
        RefusedDir {
            case: "a node_id that disagrees with --id",
            files: vec![("node_id", "7\n".into())],
            id: "8",
            says: &["says this node is id 7", "--id 8"],
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("d{i}"));
        for (name, content) in &c.files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, content).expect("write");
        }
        let before = listing(&dir);
        let (code, out) = run(&[
            "--id",
            c.id,
            "--data-dir",
            &dir.display().to_string(),
            "--api-addr",
            &api,
            "--raft-addr",
            &raft,
        ]);
        assert_eq!(code, 2, "{}: {out}", c.case);
        for needle in c.says {
            assert!(out.contains(needle), "{}: {out}", c.case);
        }
        assert_eq!(
            listing(&dir),
            before,
            "{}: the directory was changed",
            c.case
        );
    }
}
