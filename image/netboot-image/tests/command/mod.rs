//! Running a command from a test: its output, or a panic that shows everything it printed.
//! Shared by the integration tests of this crate (`mod command;`).

use std::process::{Command, Output};

/// Panics unless `o` is a success, naming `what` and showing the command's stdout and stderr.
pub fn assert_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `cmd` to completion and returns its output; panics (see [`assert_success`]) unless it
/// started and succeeded.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    assert_success(&o, what);
    o
}
