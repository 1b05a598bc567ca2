//! A bad command line still ends with the harness's last line (`cluster-ready: 0/0 nodes in
//! 0.0 s`), after clap's message and with clap's usage exit code; `--help` does not print it.

#[test]
fn a_bad_command_line_ends_with_the_last_line() {
    plasmacloud_testkit::assert_harness_command_line(
        "local-rack",
        &[
            &["3", "--no-such-flag"],
            &[],
            &["three"],
            &["3", "--timeout", "soon"],
        ],
    );
}
