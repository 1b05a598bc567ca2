//! Table tests on real packets: UDP payloads captured from iPXE (BIOS), OVMF's native UEFI PXE,
//! udhcpc and dhclient (see `/work/shared/captures/README.md`; extracted with tshark into
//! `tests/data/captures.txt`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use pxe_protocol::dhcp::{
    build_reply, choose_first_stage, choose_first_stage_for, decode_message, parse_request,
    BootFile, ClientArch, FirstStage, ReplyKind, ReplyParams, RequestKind, UefiChain, SHIM_FILE,
};
use pxe_protocol::tftp::{negotiate, Limits, Packet};

fn captures() -> BTreeMap<String, Vec<u8>> {
    include_str!("data/captures.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), hex::decode(f[3]).expect("hex"))
        })
        .collect()
}

struct DhcpCase {
    name: &'static str,
    kind: RequestKind,
    mac: &'static str,
    arch: Option<ClientArch>,
    pxe: bool,
    ipxe: bool,
    stage: FirstStage,
}

#[test]
fn dhcp_requests_classify() {
    let caps = captures();
    let cases = [
        DhcpCase {
            name: "bios_ipxe_discover",
            kind: RequestKind::Discover,
            mac: "52:54:00:00:01:01",
            arch: Some(ClientArch::Bios),
            pxe: true,
            ipxe: true,
            stage: FirstStage::IpxeScript,
        },
        DhcpCase {
            name: "bios_ipxe_request",
            kind: RequestKind::Request,
            mac: "52:54:00:00:01:01",
            arch: Some(ClientArch::Bios),
            pxe: true,
            ipxe: true,
            stage: FirstStage::IpxeScript,
        },
        DhcpCase {
            name: "ovmf_discover",
            kind: RequestKind::Discover,
            mac: "52:54:00:00:01:02",
            arch: Some(ClientArch::EfiX64),
            pxe: true,
            ipxe: false,
            stage: FirstStage::TftpIpxe("snponly.efi"),
        },
        DhcpCase {
            name: "ovmf_request",
            kind: RequestKind::Request,
            mac: "52:54:00:00:01:02",
            arch: Some(ClientArch::EfiX64),
            pxe: true,
            ipxe: false,
            stage: FirstStage::TftpIpxe("snponly.efi"),
        },
        DhcpCase {
            name: "ovmf_snponly_discover",
            kind: RequestKind::Discover,
            mac: "52:54:00:00:01:02",
            arch: Some(ClientArch::EfiX64),
            pxe: true,
            ipxe: true,
            stage: FirstStage::IpxeScript,
        },
        DhcpCase {
            name: "ovmf_snponly_request",
            kind: RequestKind::Request,
            mac: "52:54:00:00:01:02",
            arch: Some(ClientArch::EfiX64),
            pxe: true,
            ipxe: true,
            stage: FirstStage::IpxeScript,
        },
        DhcpCase {
            name: "udhcpc_discover",
            kind: RequestKind::Discover,
            mac: "52:54:00:00:01:03",
            arch: None,
            pxe: true,
            ipxe: false,
            stage: FirstStage::TftpIpxe("undionly.kpxe"),
        },
        DhcpCase {
            name: "dhclient_discover",
            kind: RequestKind::Discover,
            mac: "52:54:00:00:01:03",
            arch: None,
            pxe: false,
            ipxe: false,
            stage: FirstStage::NotBootClient,
        },
        DhcpCase {
            name: "dhclient_request",
            kind: RequestKind::Request,
            mac: "52:54:00:00:01:03",
            arch: None,
            pxe: false,
            ipxe: false,
            stage: FirstStage::NotBootClient,
        },
    ];
    for c in cases {
        let bytes = &caps[c.name];
        let r = parse_request(bytes).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(r.kind, c.kind, "{}", c.name);
        assert_eq!(r.mac_string(), c.mac, "{}", c.name);
        assert_eq!(r.arch, c.arch, "{}", c.name);
        assert_eq!(r.pxe_client, c.pxe, "{}", c.name);
        assert_eq!(r.ipxe, c.ipxe, "{}", c.name);
        assert_eq!(choose_first_stage(&r), c.stage, "{}", c.name);
        // With the Secure Boot chain on, only x86-64 UEFI PXE ROMs change: shim, not iPXE.
        let shim = match &c.stage {
            FirstStage::TftpIpxe("snponly.efi") => FirstStage::TftpShim(SHIM_FILE),
            other => other.clone(),
        };
        assert_eq!(
            choose_first_stage_for(&r, UefiChain::Shim),
            shim,
            "{}",
            c.name
        );
    }
    // The requests carry option 50 (the address the client wants).
    let r = parse_request(&caps["bios_ipxe_request"]).expect("request");
    assert_eq!(r.requested_ip, Some(Ipv4Addr::new(10, 97, 0, 105)));
    assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 97, 0, 1)));
    // OVMF sends option 97 (UUID, 17 bytes).
    let r = parse_request(&caps["ovmf_discover"]).expect("ovmf");
    assert_eq!(r.uuid.as_ref().map(Vec::len), Some(17));
}

#[test]
fn replies_to_captured_requests_decode_with_boot_info() {
    let caps = captures();
    let server = Ipv4Addr::new(10, 97, 0, 1);
    // Proxy offer to OVMF: no address, PXEClient, option 43, the UUID echoed, TFTP snponly.efi.
    let r = parse_request(&caps["ovmf_discover"]).expect("ovmf");
    let bytes = build_reply(
        &r,
        &ReplyParams {
            kind: ReplyKind::Offer,
            server_ip: server,
            yiaddr: None,
            subnet_mask: None,
            router: None,
            lease_secs: None,
            boot: BootFile::Tftp("snponly.efi".into()),
            pxe_options: true,
            ipxe_no_proxydhcp: true,
        },
    )
    .expect("encode");
    let m = decode_message(&bytes).expect("decode our own reply");
    assert_eq!(m.xid(), r.xid);
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.siaddr(), server);
    assert_eq!(
        m.fname_str()
            .and_then(Result::ok)
            .map(|s| s.trim_end_matches('\0')),
        Some("snponly.efi")
    );
    use dhcproto::v4::{DhcpOption, OptionCode};
    assert!(
        matches!(m.opts().get(OptionCode::ClassIdentifier), Some(DhcpOption::ClassIdentifier(v)) if v == b"PXEClient")
    );
    assert!(
        matches!(m.opts().get(OptionCode::VendorExtensions), Some(DhcpOption::VendorExtensions(v)) if v == &[6, 1, 8, 255])
    );
    assert!(m.opts().get(OptionCode::ClientMachineIdentifier).is_some());

    // Full-mode ACK to iPXE: address, lease, script URL in option 67.
    let r = parse_request(&caps["bios_ipxe_request"]).expect("ipxe");
    let url = "http://10.97.0.1:8081/boot/52-54-00-00-01-01.ipxe";
    let bytes = build_reply(
        &r,
        &ReplyParams {
            kind: ReplyKind::Ack,
            server_ip: server,
            yiaddr: Some(Ipv4Addr::new(10, 97, 0, 11)),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            router: None,
            lease_secs: Some(3600),
            boot: BootFile::Url(url.into()),
            pxe_options: true,
            ipxe_no_proxydhcp: true,
        },
    )
    .expect("encode");
    let m = decode_message(&bytes).expect("decode");
    assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 97, 0, 11));
    assert!(
        matches!(m.opts().get(OptionCode::BootfileName), Some(DhcpOption::BootfileName(v)) if v == url.as_bytes())
    );
    assert!(matches!(
        m.opts().get(OptionCode::AddressLeaseTime),
        Some(DhcpOption::AddressLeaseTime(3600))
    ));
}

#[test]
fn dnsmasq_offer_is_not_a_request() {
    let caps = captures();
    assert!(parse_request(&caps["bios_ipxe_dnsmasq_offer"]).is_err());
    assert!(decode_message(&caps["bios_ipxe_dnsmasq_offer"]).is_ok());
}

#[test]
fn tftp_read_requests_from_firmware_negotiate() {
    let caps = captures();
    let limits = Limits::for_mtu(1500, 16);
    // iPXE: blksize 1432, tsize 0, no windowsize.
    let Packet::Rrq(req) = Packet::parse(&caps["bios_ipxe_rrq_boot"]).expect("rrq") else {
        panic!("not an RRQ")
    };
    assert_eq!(req.filename, "boot.ipxe");
    assert_eq!(req.mode, "octet");
    let n = negotiate(&req.options, 4242, limits);
    assert_eq!(n.blksize, 1432);
    assert_eq!(n.windowsize, 1);
    assert_eq!(
        n.oack,
        vec![
            ("blksize".into(), "1432".into()),
            ("tsize".into(), "4242".into())
        ]
    );
    // EDK2: tsize 0, blksize 1468, windowsize 4 — all granted on a 1500-byte MTU.
    let Packet::Rrq(req) = Packet::parse(&caps["ovmf_rrq_tsize"]).expect("rrq") else {
        panic!("not an RRQ")
    };
    assert_eq!(req.filename, "snponly.efi");
    let n = negotiate(&req.options, 100, limits);
    assert_eq!((n.blksize, n.windowsize), (1468, 4));
    // The same request on a smaller MTU is clamped.
    let n = negotiate(&req.options, 100, Limits::for_mtu(1400, 16));
    assert_eq!(n.blksize, 1368);
    let Packet::Rrq(req) = Packet::parse(&caps["ovmf_rrq"]).expect("rrq") else {
        panic!("not an RRQ")
    };
    assert!(!req.options.iter().any(|(k, _)| k == "tsize"));
}
