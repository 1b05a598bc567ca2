//! `firstboot validate` as an operator runs it: exit codes and printed messages.

#![allow(clippy::unwrap_used)] // a test that cannot set up its fixture should panic

use std::path::{Path, PathBuf};
use std::process::Command;

fn firstboot() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_firstboot"))
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn run(file: &Path) -> (i32, String) {
    let out = Command::new(firstboot())
        .arg("validate")
        .arg(file)
        .output()
        .expect("run firstboot");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn examples_validate_ok() {
    for (f, line) in [
        ("cluster-3.json", "ok: demo-3 (3 nodes)"),
        ("cluster-5.json", "ok: demo-5 (5 nodes)"),
    ] {
        let (code, out) = run(&examples().join(f));
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.trim(), line);
    }
}

#[test]
fn invalid_contract_prints_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(examples().join("cluster-3.json"))
        .unwrap()
        .replace("52:54:00:00:00:03", "52:54:00:zz:00:03")
        .replace("\"iam_api\": 8080", "\"iam_api\": 70000");
    let file = dir.path().join("bad.json");
    std::fs::write(&file, text).unwrap();
    let (code, out) = run(&file);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("2 problem(s)"), "{out}");
    assert!(
        out.contains(
            r#"nodes[2].mac: "52:54:00:zz:00:03" is not a MAC address (expected six hex pairs"#
        ),
        "{out}"
    );
    assert!(
        out.contains("ports.iam_api: 70000 is out of range"),
        "{out}"
    );
}

#[test]
fn broken_json_and_missing_file_exit_2_with_position_or_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.json");
    std::fs::write(&file, "{\n  \"version\": 1,\n  oops\n}").unwrap();
    let (code, out) = run(&file);
    assert_eq!(code, 2);
    assert!(out.contains("line 3, column 3"), "{out}");
    let (code, out) = run(&dir.path().join("absent.json"));
    assert_eq!(code, 2);
    assert!(out.contains("absent.json: cannot read"), "{out}");
}
