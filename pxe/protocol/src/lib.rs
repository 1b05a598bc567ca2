//! PXE wire formats, with no sockets: everything `pxe-server` decodes or encodes on the boot
//! network lives here, so it can be table-tested on captured bytes and fuzzed.
//!
//! - [`dhcp`]: classify a DHCPv4 request (RFC 2131/2132) from a PXE firmware, iPXE, or an
//!   ordinary client (client architecture from option 93, RFC 4578; vendor class `PXEClient`,
//!   option 60; user class `iPXE`, option 77) and build OFFER/ACK replies for full and proxy
//!   mode (options 43, 54, 60, 66, 67, 97) on top of `dhcproto`;
//! - [`tftp`]: the TFTP packet codec (RFC 1350) and option negotiation (RFC 2347 OACK, 2348
//!   blksize, 2349 tsize and timeout, 7440 windowsize); block numbers wrap to 0 after 65535;
//! - [`ipxe`]: rendering the per-node iPXE script (kernel, initrds with `initrd=NAME` on the
//!   command line, which the kernel needs under UEFI);
//! - [`grub`]: the GRUB configurations of the Secure Boot chain (shim → signed GRUB → signed
//!   kernel, all over TFTP), the iPXE script's twin;
//! - [`ra`]: the minimal IPv6 router advertisement (router lifetime 0) that ends iPXE's wait
//!   for IPv6 autoconfiguration.
//!
//! Parsers never panic on arbitrary bytes (a property test runs them on random input); they
//! return [`ProtocolError`], which the server counts.

pub mod dhcp;
pub mod grub;
pub mod ipxe;
pub mod ra;
pub mod tftp;

/// Everything that can be wrong with a packet on the boot network.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A DHCP packet did not decode; the sender is not speaking DHCPv4 (or sent garbage). The
    /// server drops it and counts it.
    #[error("malformed DHCP packet: {0}")]
    DhcpDecode(String),
    /// A DHCP packet decoded but is not a request we can answer (no message type, not
    /// BOOTREQUEST, or a hardware address that is not Ethernet).
    #[error("DHCP packet not answerable: {0}")]
    DhcpUnanswerable(&'static str),
    /// Encoding a DHCP reply failed (an option too long); a bug in reply building.
    #[error("cannot encode DHCP reply: {0}")]
    DhcpEncode(String),
    /// A TFTP packet is shorter than its opcode or fields need, or a string is not
    /// NUL-terminated.
    #[error("malformed TFTP packet: {0}")]
    TftpMalformed(&'static str),
    /// A TFTP opcode outside RFC 1350/2347 (1..=6).
    #[error("unknown TFTP opcode {0}")]
    TftpOpcode(u16),
}
