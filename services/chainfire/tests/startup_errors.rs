//! Bad configuration (TLS missing, partial or unusable included), ports in use, and foreign,
//! corrupt or mismatched data directories: a clear error, a non-zero exit, and nothing created
//! or overwritten.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use plasmacloud_pki::ca::CertSpec;
use plasmacloud_pki::{Identity, TlsFiles};
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

/// A node certificate's files in `dir`.
fn node_files(dir: &Path) -> TlsFiles {
    let spec = CertSpec::node(
        Identity::node("node1").expect("name"),
        IpAddr::from([127, 0, 0, 1]),
    );
    common::issue(&spec, Some(dir)).1.expect("files")
}

/// `--tls-cert C --tls-key K --tls-ca A`.
fn tls_flags(f: &TlsFiles) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        f.cert.display().to_string(),
        "--tls-key".into(),
        f.key.display().to_string(),
        "--tls-ca".into(),
        f.ca.display().to_string(),
    ]
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
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
    let files = node_files(&tmp.path().join("pki"));
    let tls = tls_flags(&files);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    // An operator's certificate, a key others may read, a certificate of another CA.
    let op = common::issue(
        &CertSpec::operator(Identity::operator("alice").expect("name")),
        Some(&tmp.path().join("op")),
    )
    .1
    .expect("files");
    let op_flags = tls_flags(&op);
    let loose = node_files(&tmp.path().join("loose"));
    std::fs::set_permissions(
        &loose.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    let loose_flags = tls_flags(&loose);
    let other_ca = tmp.path().join("other-ca.crt");
    std::fs::write(
        &other_ca,
        plasmacloud_pki::ClusterCa::generate("other")
            .expect("ca")
            .cert_pem(),
    )
    .expect("write");
    let other_ca = other_ca.display().to_string();

    let plain = [
        "--id",
        "1",
        "--data-dir",
        &ds,
        "--api-addr",
        &api,
        "--raft-addr",
        &raft,
    ];
    let good = [&plain[..], &tls[..]].concat();
    let good = &good[..];
    // (the command line, what the error must say)
    let cases: [(Vec<&str>, &[&str]); 14] = [
        (with(good, "--data-dir", None), &["--data-dir is required"]),
        (
            with(good, "--api-addr", Some("nonsense")),
            &["--api-addr \"nonsense\" must be ip:port"],
        ),
        (
            with(good, "--raft-addr", Some(&api)),
            &["give them different ports"],
        ),
        (
            with(good, "--api-addr", Some("0.0.0.0:2379")),
            &["concrete IP"],
        ),
        (vec!["--config", &bad_toml], &["data_dirr", "bad.toml"]),
        (with(good, "--id", None), &["pass --id"]),
        (
            plain.to_vec(),
            &[
                "TLS is mandatory",
                "tls_cert, tls_key and tls_ca",
                "pxe-server pki issue --node NAME",
            ],
        ),
        (
            [&plain[..], &["--tls-cert", "/nonexistent.pem"]].concat(),
            &[
                "missing `tls_key` (--tls-key, PLASMACLOUD_CHAINFIRE_TLS_KEY), `tls_ca`",
                "pxe-server pki issue",
            ],
        ),
        (
            with(good, "--tls-cert", Some("/nonexistent.pem")),
            &["/nonexistent.pem", "pxe-server pki issue"],
        ),
        (
            [&plain[..], &as_strs(&op_flags)[..]].concat(),
            &["names operator alice, not a node"],
        ),
        (
            [&plain[..], &as_strs(&loose_flags)[..]].concat(),
            &["chmod 600"],
        ),
        (
            with(good, "--tls-ca", Some(&other_ca)),
            &["not a valid certificate of this cluster's CA"],
        ),
        (
            [
                &with(&plain, "--api-addr", Some("10.9.8.7:2379"))[..],
                &["--dev-plaintext"],
            ]
            .concat(),
            &[
                "--dev-plaintext is for development on loopback only",
                "10.9.8.7:2379",
            ],
        ),
        (
            [good, &["--dev-plaintext"]].concat(),
            &["give one or the other"],
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
        format!(
            "id = 1\ndata_dir = \"{ds}\"\napi_addr = \"{api}\"\nraft_addr = \"{raft}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n",
            files.cert.display(),
            files.key.display(),
            files.ca.display()
        ),
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
    let tls = tls_flags(&node_files(&tmp.path().join("pki")));
    let ds = d.display().to_string();
    let mut args = vec![
        "--id",
        "1",
        "--data-dir",
        &ds,
        "--api-addr",
        &busy_addr,
        "--raft-addr",
        &raft,
    ];
    args.extend(tls.iter().map(String::as_str));
    let (code, out) = run(&args);
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
    let tls = tls_flags(&node_files(&tmp.path().join("pki")));
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
        let ds = dir.display().to_string();
        let mut args = vec![
            "--id",
            c.id,
            "--data-dir",
            &ds,
            "--api-addr",
            &api,
            "--raft-addr",
            &raft,
        ];
        args.extend(tls.iter().map(String::as_str));
        let (code, out) = run(&args);
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
