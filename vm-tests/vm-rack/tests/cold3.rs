//! CI: the `cold-3` scenario end to end — three TCG VMs PXE-boot from pxe-server in their own
//! namespace and become a ready cluster (root; skips by hand without it, fails under CI=true).
//! Uses the release binaries next to this test (the workspace build) and the cached Debian
//! root of the appliance (debootstrapped on first use).

mod common;

#[test]
fn cold_3_rack_becomes_cluster_ready() {
    if !common::can_run("cold_3_rack_becomes_cluster_ready") {
        return;
    }
    let last = common::run_scenario("cold-3").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        last.starts_with("cluster-ready: 3/3 nodes in "),
        "last line: {last:?}"
    );
}
