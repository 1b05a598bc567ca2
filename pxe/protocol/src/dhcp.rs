//! DHCPv4 for PXE: classify what a client asks (RFC 2131, RFC 2132, PXE 2.1, RFC 4578) and
//! build the OFFER / ACK / NAK that answers it, in full mode (we assign the address) or proxy
//! mode (another server assigns it; we add only the boot information).
//!
//! The first stage a client gets depends on who is asking:
//!
//! | who | how we know | first stage |
//! |---|---|---|
//! | iPXE (any arch) | option 77 user class `iPXE` | the HTTP URL of its node's iPXE script |
//! | BIOS PXE ROM | option 93 = 0 | TFTP `undionly.kpxe` |
//! | x86-64 UEFI PXE | option 93 = 7 or 9 | TFTP `snponly.efi`, or `shimx64.efi` with the Secure Boot chain on ([`UefiChain`]) |
//! | ARM64 UEFI PXE | option 93 = 11 | TFTP `arm64/snponly.efi` |
//! | UEFI HTTP boot | option 93 = 16 (x64) or 19 (arm64), vendor class `HTTPClient` | HTTP URL of `snponly.efi` (`arm64/snponly.efi`), reply with vendor class `HTTPClient` |
//! | anything else | | nothing, and a log line saying which arch code it was |
//!
//! iPXE gets the script URL, never iPXE again, so there is no chain-load loop.

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use crate::ProtocolError;

/// The PXE client architecture (RFC 4578 §2.1, IANA "Processor Architecture Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientArch {
    /// 0: Intel x86 PC (legacy BIOS PXE ROM).
    Bios,
    /// 7 or 9: x86-64 UEFI (EDK2 reports 7; some firmware 9, "EFI BC").
    EfiX64,
    /// 11: ARM64 UEFI.
    EfiArm64,
    /// 16: x86-64 UEFI HTTP boot.
    HttpX64,
    /// 19: ARM64 UEFI HTTP boot.
    HttpArm64,
    /// Any other code: logged, not answered with a boot file.
    Other(u16),
}

impl ClientArch {
    /// Maps an option 93 code.
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Self::Bios,
            7 | 9 => Self::EfiX64,
            11 => Self::EfiArm64,
            16 => Self::HttpX64,
            19 => Self::HttpArm64,
            other => Self::Other(other),
        }
    }

    /// The CPU architecture of the kernel such a client runs, as a bundle manifest names it
    /// (`x86_64`, `aarch64`); for a code we do not know, `arch-N` (which no entry matches).
    pub fn cpu(&self) -> String {
        match self {
            Self::Bios | Self::EfiX64 | Self::HttpX64 => "x86_64".into(),
            Self::EfiArm64 | Self::HttpArm64 => "aarch64".into(),
            Self::Other(c) => format!("arch-{c}"),
        }
    }

    /// A short name for logs and metrics.
    pub fn label(&self) -> String {
        match self {
            Self::Bios => "bios".into(),
            Self::EfiX64 => "efi-x64".into(),
            Self::EfiArm64 => "efi-arm64".into(),
            Self::HttpX64 => "http-x64".into(),
            Self::HttpArm64 => "http-arm64".into(),
            Self::Other(c) => format!("arch-{c}"),
        }
    }
}

/// The DHCP message types this server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// DHCPDISCOVER.
    Discover,
    /// DHCPREQUEST.
    Request,
    /// DHCPINFORM.
    Inform,
    /// DHCPRELEASE.
    Release,
    /// DHCPDECLINE.
    Decline,
}

/// A decoded, classified client request.
#[derive(Debug, Clone)]
pub struct DhcpRequest {
    /// Transaction id.
    pub xid: u32,
    /// Client hardware address (Ethernet).
    pub mac: [u8; 6],
    /// What the client asks.
    pub kind: RequestKind,
    /// Option 93, when sent.
    pub arch: Option<ClientArch>,
    /// Option 60 starts with `PXEClient`.
    pub pxe_client: bool,
    /// Option 60 starts with `HTTPClient` (UEFI HTTP boot).
    pub http_client: bool,
    /// Option 77 is `iPXE` (raw, as iPXE sends it, or RFC 3004 length-prefixed).
    pub ipxe: bool,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54 (which server the client chose).
    pub server_id: Option<Ipv4Addr>,
    /// `ciaddr`.
    pub ciaddr: Ipv4Addr,
    /// Option 97 (client machine UUID), echoed in PXE replies.
    pub uuid: Option<Vec<u8>>,
    /// `giaddr`: the relay agent's address on the client's segment (RFC 2131 §4.1); 0.0.0.0
    /// when the client is on our own segment.
    pub giaddr: Ipv4Addr,
    /// Option 82 (RFC 3046), which a relay agent added; echoed in every reply.
    pub relay_agent: Option<RelayAgent>,
    /// The decoded message, for building the reply.
    pub message: Message,
}

impl DhcpRequest {
    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }

    /// Is this a network-boot client at all (PXE firmware, HTTP boot firmware, or iPXE)?
    pub fn is_boot_client(&self) -> bool {
        self.pxe_client || self.http_client || self.ipxe
    }

    /// Did a relay agent forward it (`giaddr` set)?
    pub fn relayed(&self) -> bool {
        !self.giaddr.is_unspecified()
    }

    /// The address that names the client's subnet: option 82's link-selection sub-option
    /// (RFC 3527) when the relay sent one, else `giaddr` (0.0.0.0: our own segment).
    pub fn link_address(&self) -> Ipv4Addr {
        self.relay_agent
            .as_ref()
            .and_then(|r| r.link_selection)
            .filter(|_| self.relayed())
            .unwrap_or(self.giaddr)
    }
}

/// Option 82, the relay agent information (RFC 3046 §2.0): the sub-options pxe-server reads,
/// and the option's bytes as the relay sent them (echoed unchanged, §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAgent {
    /// The option's data (its sub-options), exactly as received.
    pub raw: Vec<u8>,
    /// Sub-option 1, Agent Circuit ID (the relay's name for the client's port or VLAN).
    pub circuit_id: Option<Vec<u8>>,
    /// Sub-option 2, Agent Remote ID.
    pub remote_id: Option<Vec<u8>>,
    /// Sub-option 5, Link Selection (RFC 3527): the client's subnet when it is not `giaddr`'s.
    pub link_selection: Option<Ipv4Addr>,
}

impl RelayAgent {
    /// Parses option 82's data; `None` when a sub-option runs past the end.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let mut out = RelayAgent {
            raw: raw.to_vec(),
            circuit_id: None,
            remote_id: None,
            link_selection: None,
        };
        let mut rest = raw;
        while let [code, len, tail @ ..] = rest {
            let len = usize::from(*len);
            if tail.len() < len {
                return None;
            }
            let (data, next) = tail.split_at(len);
            match code {
                1 => out.circuit_id = Some(data.to_vec()),
                2 => out.remote_id = Some(data.to_vec()),
                5 if len == 4 => {
                    out.link_selection = Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]))
                }
                _ => {}
            }
            rest = next;
        }
        if !rest.is_empty() {
            return None;
        }
        Some(out)
    }

    /// `circuit-id=…, remote-id=…` for logs (printable bytes as text, others as hex).
    pub fn describe(&self) -> String {
        let show = |v: &[u8]| {
            if v.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                String::from_utf8_lossy(v).into_owned()
            } else {
                v.iter().map(|b| format!("{b:02x}")).collect()
            }
        };
        let mut parts = Vec::new();
        if let Some(c) = &self.circuit_id {
            parts.push(format!("circuit-id={}", show(c)));
        }
        if let Some(r) = &self.remote_id {
            parts.push(format!("remote-id={}", show(r)));
        }
        if let Some(l) = self.link_selection {
            parts.push(format!("link-selection={l}"));
        }
        if parts.is_empty() {
            "no sub-options read".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The raw data of option `code` in a DHCP packet's options field (after the magic cookie),
/// the first occurrence; `None` when absent or the options are malformed. Used for option
/// 82, which must be echoed byte for byte.
pub fn raw_option(bytes: &[u8], code: u8) -> Option<&[u8]> {
    let mut rest = bytes.get(240..)?;
    loop {
        match rest {
            [] | [255, ..] => return None,
            [0, tail @ ..] => rest = tail,
            [c, len, tail @ ..] => {
                let len = usize::from(*len);
                if tail.len() < len {
                    return None;
                }
                if *c == code {
                    return Some(&tail[..len]);
                }
                rest = &tail[len..];
            }
            [_] => return None,
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let m = mac;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Decodes and classifies a BOOTREQUEST. Never panics on arbitrary bytes.
pub fn parse_request(bytes: &[u8]) -> Result<DhcpRequest, ProtocolError> {
    // dhcproto reads the fixed header before checking lengths everywhere; guard the minimum
    // (236-byte BOOTP header + 4-byte magic cookie) ourselves.
    if bytes.len() < 240 {
        return Err(ProtocolError::DhcpDecode(format!(
            "{} bytes, shorter than the 240-byte BOOTP header",
            bytes.len()
        )));
    }
    let message = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes)))
        .map_err(|_| ProtocolError::DhcpDecode("decoder panicked".into()))?
        .map_err(|e| ProtocolError::DhcpDecode(e.to_string()))?;
    if message.opcode() != Opcode::BootRequest {
        return Err(ProtocolError::DhcpUnanswerable("not a BOOTREQUEST"));
    }
    if message.htype() != v4::HType::Eth || message.hlen() != 6 || message.chaddr().len() < 6 {
        return Err(ProtocolError::DhcpUnanswerable(
            "hardware type is not Ethernet",
        ));
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&message.chaddr()[..6]);
    let opts = message.opts();
    let kind = match opts.msg_type() {
        Some(MessageType::Discover) => RequestKind::Discover,
        Some(MessageType::Request) => RequestKind::Request,
        Some(MessageType::Inform) => RequestKind::Inform,
        Some(MessageType::Release) => RequestKind::Release,
        Some(MessageType::Decline) => RequestKind::Decline,
        Some(_) => {
            return Err(ProtocolError::DhcpUnanswerable(
                "message type is not a client request",
            ))
        }
        None => {
            return Err(ProtocolError::DhcpUnanswerable(
                "no DHCP message type (plain BOOTP)",
            ))
        }
    };
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(ClientArch::from_code(a.0)),
        _ => None,
    };
    let vendor = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => v.as_slice(),
        _ => &[],
    };
    let ipxe = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(v)) => user_class_is_ipxe(v),
        _ => false,
    };
    let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
        Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
        _ => None,
    };
    let relay_agent = raw_option(bytes, 82).and_then(RelayAgent::parse);
    Ok(DhcpRequest {
        giaddr: message.giaddr(),
        relay_agent,
        xid: message.xid(),
        mac,
        kind,
        arch,
        pxe_client: vendor.starts_with(b"PXEClient"),
        http_client: vendor.starts_with(b"HTTPClient"),
        ipxe,
        requested_ip,
        server_id,
        ciaddr: message.ciaddr(),
        uuid,
        message,
    })
}

/// iPXE sends option 77 as the raw string `iPXE`; RFC 3004 clients prefix each class with its
/// length. Accept both.
fn user_class_is_ipxe(v: &[u8]) -> bool {
    if v == b"iPXE" {
        return true;
    }
    let mut rest = v;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if tail.len() < len {
            return false;
        }
        if &tail[..len] == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// Which first stage a request gets (before the server turns it into a file name or URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstStage {
    /// iPXE is asking: give it the HTTP URL of its script.
    IpxeScript,
    /// A PXE ROM: this iPXE binary over TFTP (a path under the iPXE directory).
    TftpIpxe(&'static str),
    /// A UEFI PXE ROM with the Secure Boot chain on: shim over TFTP ([`UefiChain::Shim`]).
    TftpShim(&'static str),
    /// UEFI HTTP boot: this iPXE binary over HTTP.
    HttpIpxe(&'static str),
    /// A PXE client with an architecture we have no iPXE build for.
    UnsupportedArch(u16),
    /// Not a network-boot client (no PXEClient / HTTPClient / iPXE marker).
    NotBootClient,
}

/// What an x86-64 UEFI PXE client (architecture 7 or 9, not yet iPXE) is booted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UefiChain {
    /// iPXE (`snponly.efi`), then the node's iPXE script over HTTP.
    #[default]
    Ipxe,
    /// The Secure Boot chain: shim (`shimx64.efi`, Microsoft-signed), which loads the signed
    /// GRUB (`grubx64.efi`) beside it, which reads its configuration and the node's kernel and
    /// initrds over TFTP ([`crate::grub`]). It boots with Secure Boot on or off.
    Shim,
}

/// The file shim is served as over TFTP; shim loads `grubx64.efi` from the same directory.
pub const SHIM_FILE: &str = "shimx64.efi";
/// The signed GRUB, as shim asks for it.
pub const GRUB_FILE: &str = "grubx64.efi";

/// Chooses the first stage for a request (see the module table), with iPXE for UEFI PXE.
pub fn choose_first_stage(req: &DhcpRequest) -> FirstStage {
    choose_first_stage_for(req, UefiChain::Ipxe)
}

/// Chooses the first stage for a request, x86-64 UEFI PXE clients getting `chain`.
pub fn choose_first_stage_for(req: &DhcpRequest, chain: UefiChain) -> FirstStage {
    if req.ipxe {
        return FirstStage::IpxeScript;
    }
    if !req.is_boot_client() {
        return FirstStage::NotBootClient;
    }
    match req.arch.unwrap_or(ClientArch::Bios) {
        ClientArch::Bios => FirstStage::TftpIpxe("undionly.kpxe"),
        ClientArch::EfiX64 if chain == UefiChain::Shim => FirstStage::TftpShim(SHIM_FILE),
        ClientArch::EfiX64 => FirstStage::TftpIpxe("snponly.efi"),
        ClientArch::EfiArm64 => FirstStage::TftpIpxe("arm64/snponly.efi"),
        // snponly.efi, as for UEFI PXE: it drives the NIC through the firmware's own SNP (the
        // driver that just did the HTTP boot), and Debian's `ipxe` ships it as a regular file
        // (its ipxe.efi is a symlink out of /usr/lib/ipxe, which the boot plane refuses).
        ClientArch::HttpX64 => FirstStage::HttpIpxe("snponly.efi"),
        ClientArch::HttpArm64 => FirstStage::HttpIpxe("arm64/snponly.efi"),
        ClientArch::Other(c) => FirstStage::UnsupportedArch(c),
    }
}

/// Where the boot file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFile {
    /// No boot information (a plain DHCP client in full mode).
    None,
    /// A TFTP path on `siaddr` (file field and option 67; option 66 names the server).
    Tftp(String),
    /// A full URL (iPXE scripts, UEFI HTTP boot); option 67.
    Url(String),
}

/// What kind of reply to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// DHCPOFFER.
    Offer,
    /// DHCPACK.
    Ack,
    /// DHCPNAK.
    Nak,
}

/// Everything a reply says besides what is copied from the request.
#[derive(Debug, Clone)]
pub struct ReplyParams {
    /// OFFER, ACK or NAK.
    pub kind: ReplyKind,
    /// Our address: option 54, `siaddr`, option 66.
    pub server_ip: Ipv4Addr,
    /// The assigned address (full mode); `None` in proxy mode (yiaddr stays 0.0.0.0).
    pub yiaddr: Option<Ipv4Addr>,
    /// Option 1.
    pub subnet_mask: Option<Ipv4Addr>,
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 51 (and 58/59 derived from it).
    pub lease_secs: Option<u32>,
    /// The boot file.
    pub boot: BootFile,
    /// Add the PXE vendor options (60 `PXEClient`/`HTTPClient`, 43 discovery control, 97).
    pub pxe_options: bool,
    /// Tell iPXE not to wait for ProxyDHCP offers (option 175, encapsulated 176 = 1). Only
    /// when we are the segment's sole DHCP server (full mode).
    pub ipxe_no_proxydhcp: bool,
}

/// iPXE's encapsulated option space (175) with `no-pxedhcp` (176) = 1.
pub const IPXE_NO_PXEDHCP: [u8; 3] = [176, 1, 1];

/// PXE 2.1 vendor option 43 with sub-option 6 (PXE_DISCOVERY_CONTROL) = 8: "use the boot file
/// in this reply, do no boot server discovery".
pub const PXE_VENDOR_OPTIONS: [u8; 4] = [6, 1, 8, 255];

/// Builds the reply bytes for `req`.
pub fn build_reply(req: &DhcpRequest, p: &ReplyParams) -> Result<Vec<u8>, ProtocolError> {
    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootReply)
        .set_xid(req.xid)
        .set_flags(req.message.flags())
        .set_giaddr(req.message.giaddr())
        .set_chaddr(&req.mac)
        .set_htype(v4::HType::Eth);
    if p.kind != ReplyKind::Nak {
        msg.set_yiaddr(p.yiaddr.unwrap_or(Ipv4Addr::UNSPECIFIED));
        msg.set_siaddr(p.server_ip);
        if req.kind == RequestKind::Request || req.kind == RequestKind::Inform {
            msg.set_ciaddr(req.ciaddr);
        }
    }
    let opts = msg.opts_mut();
    // RFC 3046 §2.2: a reply to a relayed request carries the relay's option 82 unchanged.
    if let Some(r) = &req.relay_agent {
        opts.insert(DhcpOption::Unknown(v4::UnknownOption::new(
            OptionCode::from(82u8),
            r.raw.clone(),
        )));
    }
    opts.insert(DhcpOption::MessageType(match p.kind {
        ReplyKind::Offer => MessageType::Offer,
        ReplyKind::Ack => MessageType::Ack,
        ReplyKind::Nak => MessageType::Nak,
    }));
    opts.insert(DhcpOption::ServerIdentifier(p.server_ip));
    if p.kind != ReplyKind::Nak {
        if let Some(mask) = p.subnet_mask {
            opts.insert(DhcpOption::SubnetMask(mask));
        }
        if let Some(r) = p.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if let Some(secs) = p.lease_secs {
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
        }
        match &p.boot {
            BootFile::None => {}
            BootFile::Tftp(path) => {
                opts.insert(DhcpOption::TFTPServerName(
                    p.server_ip.to_string().into_bytes(),
                ));
                opts.insert(DhcpOption::BootfileName(path.clone().into_bytes()));
            }
            BootFile::Url(url) => {
                opts.insert(DhcpOption::BootfileName(url.clone().into_bytes()));
            }
        }
        if p.pxe_options {
            let class: &[u8] = if req.http_client {
                b"HTTPClient"
            } else {
                b"PXEClient"
            };
            opts.insert(DhcpOption::ClassIdentifier(class.to_vec()));
            if req.pxe_client && !req.ipxe {
                opts.insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTIONS.to_vec()));
            }
            if let Some(uuid) = &req.uuid {
                opts.insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
            }
        }
        if p.ipxe_no_proxydhcp && req.ipxe {
            opts.insert(DhcpOption::Unknown(v4::UnknownOption::new(
                OptionCode::from(175u8),
                IPXE_NO_PXEDHCP.to_vec(),
            )));
        }
        // The BOOTP file and sname fields too: older PXE ROMs read only those.
        let file = match &p.boot {
            BootFile::None => None,
            BootFile::Tftp(s) | BootFile::Url(s) => Some(s.as_bytes()),
        };
        if let Some(f) = file.filter(|f| f.len() < 128) {
            msg.set_fname(f);
        }
        let sname = p.server_ip.to_string();
        msg.set_sname(sname.as_bytes());
    }
    let mut out = Vec::with_capacity(576);
    msg.encode(&mut Encoder::new(&mut out))
        .map_err(|e| ProtocolError::DhcpEncode(e.to_string()))?;
    // RFC 2131 / BOOTP clients expect at least 300 bytes.
    if out.len() < 300 {
        out.resize(300, 0);
    }
    Ok(out)
}

/// Decodes any DHCP message (requests or replies) for tests and tools; never panics.
pub fn decode_message(bytes: &[u8]) -> Result<Message, ProtocolError> {
    if bytes.len() < 240 {
        return Err(ProtocolError::DhcpDecode(
            "shorter than the BOOTP header".into(),
        ));
    }
    std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes)))
        .map_err(|_| ProtocolError::DhcpDecode("decoder panicked".into()))?
        .map_err(|e| ProtocolError::DhcpDecode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_class_forms() {
        assert!(user_class_is_ipxe(b"iPXE"));
        assert!(user_class_is_ipxe(b"\x03abc\x04iPXE"));
        assert!(!user_class_is_ipxe(b"\x09iPXE"));
        assert!(!user_class_is_ipxe(b"gPXE"));
    }

    #[test]
    fn relay_agent_sub_options() {
        // circuit-id "eth1", remote-id 00:11:22, link-selection 10.98.2.0, an unknown one.
        let raw = [
            1, 4, b'e', b't', b'h', b'1', 2, 3, 0, 0x11, 0x22, 5, 4, 10, 98, 2, 0, 9, 1, 7,
        ];
        let r = RelayAgent::parse(&raw).expect("parses");
        assert_eq!(r.circuit_id.as_deref(), Some(&b"eth1"[..]));
        assert_eq!(r.remote_id.as_deref(), Some(&[0, 0x11, 0x22][..]));
        assert_eq!(r.link_selection, Some(Ipv4Addr::new(10, 98, 2, 0)));
        assert_eq!(r.raw, raw);
        assert_eq!(
            r.describe(),
            "circuit-id=eth1, remote-id=001122, link-selection=10.98.2.0"
        );
        assert_eq!(RelayAgent::parse(&[1, 9, 1]), None);
        assert_eq!(RelayAgent::parse(&[1]), None);
    }

    #[test]
    fn raw_options_are_found_past_padding() {
        let mut p = vec![0u8; 240];
        p.extend_from_slice(&[0, 53, 1, 1, 82, 2, 1, 0, 255]);
        assert_eq!(raw_option(&p, 82), Some(&[1, 0][..]));
        assert_eq!(raw_option(&p, 53), Some(&[1][..]));
        assert_eq!(raw_option(&p, 60), None);
        p.truncate(246);
        assert_eq!(raw_option(&p, 82), None);
    }

    #[test]
    fn arch_codes() {
        assert_eq!(ClientArch::from_code(0), ClientArch::Bios);
        assert_eq!(ClientArch::from_code(9), ClientArch::EfiX64);
        assert_eq!(ClientArch::from_code(6), ClientArch::Other(6));
        assert_eq!(ClientArch::Other(6).label(), "arch-6");
        assert_eq!(ClientArch::from_code(0).cpu(), "x86_64");
        assert_eq!(ClientArch::from_code(11).cpu(), "aarch64");
        assert_eq!(ClientArch::from_code(19).cpu(), "aarch64");
        assert_eq!(ClientArch::Other(25).cpu(), "arch-25");
    }
}
