//! A bad command line still ends with the harness's last line (`cluster-ready: 0/0 nodes in
//! 0.0 s`), after clap's message and with clap's usage exit code; `--help` does not print it;
//! an unknown scenario ends with it too. Needs nothing but the binary (no root, no QEMU).

use std::time::Duration;

use plasmacloud_testkit::{
    assert_harness_command_line, run_to_end, workspace_binary, NO_RACK_LAST_LINE,
};

#[test]
fn a_bad_command_line_ends_with_the_last_line() {
    assert_harness_command_line(
        "vm-rack",
        &[
            &["cold-3", "--no-such-flag"],
            &[],
            &["cold-3", "--memory-mib", "lots"],
        ],
    );
}

#[test]
fn an_unknown_scenario_ends_with_the_last_line() {
    let r = run_to_end(
        &workspace_binary("vm-rack"),
        &["cold-4"],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("unknown scenario"), "{r:?}");
    assert_eq!(r.last_line(), Some(NO_RACK_LAST_LINE), "{r:?}");
}
