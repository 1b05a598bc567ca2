//! The `iam-server` binary's command line: `--check` validates the configuration and the TLS
//! files and binds and writes nothing, a bad value exits 2 naming the key, the example config
//! is accepted, and `hash-password` turns a password on stdin into an argon2id PHC string.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use plasmacloud_pki::ca::{CertSpec, ClusterCa};
use plasmacloud_pki::{Credentials, Identity};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn iam_server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iam-server"))
}

/// A CA and a holder's files (`node.{crt,key}` + `ca.crt`, or `operator.…`) under `dir`.
fn credentials(dir: &Path, ca: &ClusterCa, spec: &CertSpec) -> Credentials {
    let creds = if spec.identity.is_node() {
        Credentials::node(dir)
    } else {
        Credentials::operator(dir)
    };
    let (issued, key) = ca.issue_with_new_key(spec).expect("issue");
    creds
        .write_all(&key, &issued.cert_pem, ca.cert_pem())
        .expect("write credentials");
    creds
}

fn tls_args(c: &Credentials) -> Vec<String> {
    [
        ("--tls-cert", c.cert_path()),
        ("--tls-key", c.key_path()),
        ("--tls-ca", c.ca_path()),
    ]
    .into_iter()
    .flat_map(|(f, p)| [f.to_string(), p.display().to_string()])
    .collect()
}

fn node_spec() -> CertSpec {
    CertSpec::node(
        Identity::node("node01").expect("id"),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )
}

#[test]
fn check_accepts_the_example_config_with_real_tls_files_and_creates_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("cli").unwrap();
    let node = credentials(&dir.path().join("pki"), &ca, &node_spec());
    let key = dir.path().join("signing-key.pem");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("iam.example.toml");
    let out = iam_server()
        .args(["--check", "--config"])
        .arg(&example)
        .arg("--signing-key")
        .arg(&key)
        .args(tls_args(&node))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("configuration ok"), "{stdout}");
    assert!(stdout.contains("node node01"), "{stdout}");
    assert!(stdout.contains("will be created"), "{stdout}");
    assert!(!key.exists());
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("cli").unwrap();
    let node = credentials(&dir.path().join("pki"), &ca, &node_spec());
    let required: Vec<String> = [
        "--flaredb",
        "https://127.0.0.1:2479",
        "--chainfire",
        "https://127.0.0.1:2379",
    ]
    .into_iter()
    .map(String::from)
    .chain(tls_args(&node))
    .collect();
    let cases: [(&[&str], &str); 4] = [
        (&["--token-ttl", "1s"], "token_ttl"),
        (&["--flaredb", "10.0.0.1:2479"], "flaredb"),
        (&["--flaredb", "http://10.0.0.1:2479"], "https://"),
        (&["--listen-addr", "localhost"], "listen_addr"),
    ];
    for (args, needle) in cases {
        let out = iam_server()
            .args(&required)
            .args(args)
            .arg("--check")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }

    // No TLS at all: the message names the keys and how to get a certificate.
    let out = iam_server()
        .args(&required[..4])
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tls_cert, tls_key, tls_ca missing"),
        "{stderr}"
    );
    assert!(stderr.contains("pxe-server pki issue --node"), "{stderr}");

    // TLS files that are not usable: a key others may read, an operator's certificate.
    let loose = dir.path().join("loose");
    let loose_creds = credentials(&loose, &ca, &node_spec());
    std::fs::set_permissions(
        loose_creds.key_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let op = credentials(
        &dir.path().join("op"),
        &ca,
        &CertSpec::operator(Identity::operator("alice").unwrap()),
    );
    for (creds, needle) in [(&loose_creds, "chmod 600"), (&op, "node's certificate")] {
        let out = iam_server()
            .args(&required[..4])
            .args(tls_args(creds))
            .arg("--check")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }

    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "listen = \"0.0.0.0:1\"\n").unwrap();
    let out = iam_server()
        .arg("--config")
        .arg(&bad_toml)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown field"), "{stderr}");

    let bad_key = dir.path().join("bad.pem");
    std::fs::write(&bad_key, "not a key").unwrap();
    let out = iam_server()
        .args(&required)
        .args(["--check", "--signing-key"])
        .arg(&bad_key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.pem"), "{stderr}");
}

/// Runs `iam-server hash-password ARGS` with `stdin`.
fn hash_password(args: &[&str], stdin: &str) -> Output {
    let mut child = iam_server()
        .arg("hash-password")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iam-server hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[test]
fn hash_password_prints_an_argon2id_phc_string_that_verifies() {
    // No configuration is needed (and none is read).
    let out = hash_password(&[], "Example-Admin-Passphrase-2026\n");
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "{stdout:?}"
    );
    let phc = stdout.trim_end();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    let parsed = PasswordHash::new(phc).unwrap();
    argon2::Argon2::default()
        .verify_password(b"Example-Admin-Passphrase-2026", &parsed)
        .expect("the hash verifies the password");
    assert!(argon2::Argon2::default()
        .verify_password(b"Example-Admin-Passphrase-2025", &parsed)
        .is_err());

    // CRLF and a missing newline are fine too.
    for input in ["correct horse battery\r\n", "correct horse battery"] {
        let out = hash_password(&[], input);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let phc = String::from_utf8(out.stdout).unwrap();
        let parsed = PasswordHash::new(phc.trim_end()).unwrap();
        argon2::Argon2::default()
            .verify_password(b"correct horse battery", &parsed)
            .expect("verifies");
    }
}

#[test]
fn hash_password_refuses_weak_or_missing_passwords_with_exit_2() {
    for (args, stdin, needle) in [
        (&[][..], "short\n", "too weak"),
        (&[][..], "aaaaaaaaaaaaaaaa\n", "too weak"),
        (
            &["--username", "admin"][..],
            "admin-of-the-cluster\n",
            "username",
        ),
        (&[][..], "", "no password"),
        (&[][..], "\n", "no password"),
    ] {
        let out = hash_password(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stdin:?}: {stderr}");
        assert!(stderr.contains(needle), "{stdin:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{stdin:?}");
    }
}
