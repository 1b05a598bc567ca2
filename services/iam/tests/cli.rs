//! The `iam-server` binary's configuration handling: `--check` binds and writes nothing, a bad
//! value exits 2 naming the key, and the example config is accepted.

use std::path::Path;
use std::process::Command;

fn iam_server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iam-server"))
}

#[test]
fn check_accepts_the_example_config_and_creates_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing-key.pem");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("iam.example.toml");
    let out = iam_server()
        .args(["--check", "--config"])
        .arg(&example)
        .arg("--signing-key")
        .arg(&key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("configuration ok"), "{stdout}");
    assert!(stdout.contains("will be created"), "{stdout}");
    assert!(!key.exists());
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["--token-ttl", "1s"], "token_ttl"),
        (&["--flaredb", "10.0.0.1:2479"], "flaredb"),
        (&["--listen-addr", "localhost"], "listen_addr"),
    ];
    for (args, needle) in cases {
        let out = iam_server().args(args).arg("--check").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
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
        .args(["--check", "--signing-key"])
        .arg(&bad_key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.pem"), "{stderr}");
}
