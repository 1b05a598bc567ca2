//! CI: the `uefi-http-3` scenario — three OVMF VMs boot by the firmware's own UEFI HTTP boot (no
//! NIC option ROM, OVMF's PXE off: DHCP `HTTPClient` → `snponly.efi` over HTTP → the node's
//! script) to cluster-ready, and the rack checks it really was HTTP boot (pxe-server's events:
//! an `http-x64` DHCP answer, an `http-boot` fetch, no TFTP; OVMF's console line). A test
//! binary of its own, so it never shares the CPUs with another rack.

mod common;

#[test]
fn uefi_http_boot_rack_becomes_cluster_ready() {
    if !common::can_run("uefi_http_boot_rack_becomes_cluster_ready") {
        return;
    }
    let last = common::run_scenario("uefi-http-3").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        last.starts_with("cluster-ready: 3/3 nodes in "),
        "last line: {last:?}"
    );
}
