//! CI: three more rack scenarios, one after another (a test binary of its own, so they never
//! share the two CPUs with `cold-3`): a stranger's MAC gets the default entry and none of the
//! cluster's secrets (`unknown-mac`), the Raft leader's VM is powered off and the other two keep
//! taking writes, then it rejoins (`leader-loss`), and the rack booted by OVMF (`uefi-3`). Each
//! scenario's own checks decide; every failure is reported, not only the first.

mod common;

#[test]
fn unknown_mac_leader_loss_and_uefi_racks_pass() {
    if !common::can_run("unknown_mac_leader_loss_and_uefi_racks_pass") {
        return;
    }
    let expected = [
        ("unknown-mac", "cluster-ready: 0/0 nodes in "),
        ("leader-loss", "cluster-ready: 3/3 nodes in "),
        ("uefi-3", "cluster-ready: 3/3 nodes in "),
    ];
    let failures = common::run_scenarios(&expected);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
