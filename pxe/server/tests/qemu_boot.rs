//! QEMU end-to-end (root, TCG): VMs PXE-boot a Debian kernel and a tiny busybox initramfs
//! from pxe-server and reach `/init`, which prints a marker, the node name it found in its
//! overlay and whether this boot's enrollment token arrived (iPXE loaded the uncompressed
//! enrollment initrd after the overlay) on the serial console. BIOS (SeaBIOS + QEMU's iPXE ROM) and UEFI (OVMF, q35) in
//! full mode; BIOS in proxy mode beside dnsmasq (dnsmasq gives the address, we the boot file).
//! The VMs run one after another (TCG is slow enough alone).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use plasmacloud_testkit::{require, Need};

const BOOT_DEADLINE: Duration = Duration::from_secs(150);

fn fixture() -> Option<Fixture> {
    let kernel = std::fs::read(debian_kernel()?).unwrap();
    Some(Fixture::new(
        &kernel,
        &test_initrd(),
        "console=ttyS0 panic=-1",
        &test_overlay,
    ))
}

fn needs(test: &str) -> bool {
    require(
        test,
        &[
            Need::Root,
            Need::Tool("qemu-system-x86_64"),
            Need::Tool("dnsmasq"),
        ],
    ) && {
        let ok = debian_kernel().is_some()
            && std::path::Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists();
        if !ok {
            assert!(
                !plasmacloud_testkit::in_ci(),
                "{test}: needs linux-image-amd64 (a /boot/vmlinuz-*) and ovmf"
            );
            eprintln!("SKIP {test}: needs linux-image-amd64 and ovmf");
        }
        ok
    }
}

fn boot_full(fx: &Fixture, fw: Firmware, node: usize) -> f64 {
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    rack.tap("tap0").unwrap();
    let state = fx.d.join(format!("state-{fw:?}"));
    let args = fx.server_args("full", &state, &["--dhcp-range", "10.77.0.100-10.77.0.150"]);
    let server = start_server(&srv, &args, &fx.d.join(format!("server-{fw:?}.log")));
    let op = issue_operator(&state, "tests", &fx.d.join(format!("op-{fw:?}")));
    let serial = fx.d.join(format!("serial-{fw:?}.log"));
    let (name, mac, _) = NODES[node];
    let t0 = Instant::now();
    let mut vm = start_vm(&rack, "tap0", mac, fw, &fx.d, &serial);
    let want = format!("{INIT_MARKER} node={name} enroll=yes");
    let secs = wait_serial(&serial, &want, t0, BOOT_DEADLINE)
        .unwrap_or_else(|e| panic!("{fw:?}: {e}\n--- server log ---\n{}", server.proc.output()));
    eprintln!("{fw:?}: power-on to /init with node={name} in {secs:.1} s");
    // The server saw the whole path.
    let (_, status) = curl_as(&srv, &op, &[&mgmt_url("/v1/events")]);
    for phase in [
        "\"dhcp\"",
        "\"ipxe-script\"",
        "\"kernel\"",
        "\"overlay\"",
        "\"enroll-initrd\"",
    ] {
        assert!(status.contains(phase), "{fw:?}: no {phase} event: {status}");
    }
    if fw == Firmware::Uefi {
        // OVMF's native PXE took snponly.efi over TFTP (its windowsize 4 request granted).
        assert!(
            status.contains("snponly.efi") && status.contains("\"tftp\""),
            "UEFI: no TFTP of snponly.efi: {status}"
        );
        assert!(
            status.contains("efi-x64"),
            "UEFI: arch 7 not seen: {status}"
        );
    }
    vm.kill();
    drop(server);
    secs
}

#[test]
fn vms_pxe_boot_to_init() {
    if !needs("vms_pxe_boot_to_init") {
        return;
    }
    let fx = fixture().unwrap();

    eprintln!("phase: BIOS VM, full mode");
    let bios = boot_full(&fx, Firmware::Bios, 0);

    eprintln!("phase: UEFI VM (OVMF), full mode");
    let uefi = boot_full(&fx, Firmware::Uefi, 1);

    eprintln!("phase: BIOS VM, proxy mode beside dnsmasq");
    let mut rack = rack();
    let srv = attach_server(&mut rack, "10.77.0.1/24");
    let dns = rack
        .attach("dns", "dns0", "52:54:00:ff:00:02", Some("10.77.0.2/24"))
        .unwrap();
    rack.tap("tap0").unwrap();
    let leases = format!("--dhcp-leasefile={}", fx.d.join("dnsmasq.leases").display());
    let pid = format!("--pid-file={}", fx.d.join("dnsmasq.pid").display());
    let mut dnsmasq = spawn_dnsmasq(
        &dns,
        "dns0",
        &[
            "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
            "--log-dhcp",
            &leases,
            &pid,
        ],
        &fx.d.join("dnsmasq.log"),
    );
    dnsmasq
        .wait_for_output("DHCP, IP range", Duration::from_secs(10))
        .unwrap();
    let args = fx.server_args("proxy", &fx.d.join("state-proxy"), &[]);
    let server = start_server(&srv, &args, &fx.d.join("server-proxy.log"));
    let op = issue_operator(&fx.d.join("state-proxy"), "tests", &fx.d.join("op-proxy"));
    let serial = fx.d.join("serial-proxy.log");
    let t0 = Instant::now();
    let _vm = start_vm(&rack, "tap0", NODES[2].1, Firmware::Bios, &fx.d, &serial);
    let want = format!("{INIT_MARKER} node={} enroll=yes", NODES[2].0);
    let proxy = wait_serial(&serial, &want, t0, BOOT_DEADLINE).unwrap_or_else(|e| {
        panic!(
            "proxy: {e}\n--- server ---\n{}\n--- dnsmasq ---\n{}",
            server.proc.output(),
            dnsmasq.output()
        )
    });
    let dlog = dnsmasq.output();
    assert!(
        dlog.contains("DHCPACK") && dlog.contains(NODES[2].1),
        "dnsmasq gave the address:\n{dlog}"
    );
    let (_, m) = curl_as(&srv, &op, &[&mgmt_url("/metrics")]);
    assert!(m.contains("pxe_dhcp_offers_total{mode=\"proxy\"}"), "{m}");
    assert!(
        !m.contains("pxe_dhcp_offers_total{mode=\"proxy\"} 0\n"),
        "{m}"
    );
    eprintln!("proxy (BIOS beside dnsmasq): power-on to /init in {proxy:.1} s");
    eprintln!("boot times: bios {bios:.1} s, uefi {uefi:.1} s, proxy {proxy:.1} s");
}
