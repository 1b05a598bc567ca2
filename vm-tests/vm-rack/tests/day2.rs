//! CI: the rack's life after day one on real VMs, one scenario after another (a test binary of
//! its own, so they never share the two CPUs with another rack): `grow` (two machines join as
//! voters, 3 → 5), `replace` (node02's machine gone for good, a new MAC takes its name),
//! `rolling-reimage` (bundle v2 across the rack, each node rebooting itself) and `retire` (the
//! Chainfire leader leaves, a worker takes its vote), each while a client writes. Each
//! scenario's own checks decide (no acknowledged write lost, the contract's voters with one
//! leader, every node healthy on the bundle it should run); every failure is reported.

mod common;

#[test]
fn grow_replace_rolling_reimage_and_retire_racks_pass() {
    if !common::can_run("grow_replace_rolling_reimage_and_retire_racks_pass") {
        return;
    }
    let expected = [
        ("grow", "cluster-ready: 3/3 nodes in "),
        ("replace", "cluster-ready: 3/3 nodes in "),
        ("rolling-reimage", "cluster-ready: 3/3 nodes in "),
        ("retire", "cluster-ready: 4/4 nodes in "),
    ];
    let failures = common::run_scenarios(&expected);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
