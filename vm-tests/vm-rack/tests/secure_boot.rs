//! CI: the `secureboot-1` scenario — one OVMF VM with Secure Boot on (the Secure Boot build,
//! Microsoft's keys enrolled, no NIC option ROM) boots through the signed chain pxe-server
//! serves (OVMF PXE → shim → Debian's signed GRUB, which reads its per-node configuration,
//! kernel and initrds over TFTP → Debian's signed kernel) to cluster-ready on a one-voter
//! contract, and the rack checks it: shim named in the DHCP answer, shim and GRUB fetched over
//! TFTP, a `grub-config` event and no iPXE script, and the guest kernel's own console lines
//! saying Secure Boot is enabled and it locked itself down. A test binary of its own, so it
//! never shares the CPUs with another rack.

mod common;

#[test]
fn secure_boot_node_becomes_cluster_ready_through_the_signed_chain() {
    if !common::can_run("secure_boot_node_becomes_cluster_ready_through_the_signed_chain") {
        return;
    }
    let last = common::run_scenario("secureboot-1").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        last.starts_with("cluster-ready: 1/1 nodes in "),
        "last line: {last:?}"
    );
}
