//! The minimal IPv6 router advertisement (RFC 4861 §4.2) that pxe-server sends in full mode.
//!
//! iPXE's autoboot configures IPv4 and IPv6 together and, on a segment with no router, waits
//! for IPv6 autoconfiguration to time out (~13 s). An RA with the M and O flags clear tells iPXE
//! that no DHCPv6 is needed, which completes its IPv6 configuration at once; router lifetime 0
//! says "I am not a default router", so no host routes traffic through us.

/// ICMPv6 type of a router solicitation.
pub const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a router advertisement.
pub const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;

/// Is this ICMPv6 message (starting at the ICMPv6 header) a router solicitation?
pub fn is_router_solicitation(icmp: &[u8]) -> bool {
    icmp.len() >= 8 && icmp[0] == ICMPV6_ROUTER_SOLICITATION && icmp[1] == 0
}

/// The RA body: type 134, code 0, checksum 0 (the kernel fills it in for raw ICMPv6 sockets),
/// hop limit 64, flags M=0 O=0, router lifetime 0, reachable and retrans timers 0, and a
/// source link-layer address option.
pub fn router_advertisement(mac: [u8; 6]) -> Vec<u8> {
    let mut ra = vec![
        ICMPV6_ROUTER_ADVERTISEMENT,
        0,
        0,
        0,  // checksum
        64, // cur hop limit
        0,  // M, O flags clear
        0,
        0, // router lifetime 0
        0,
        0,
        0,
        0, // reachable time
        0,
        0,
        0,
        0, // retrans timer
    ];
    ra.extend_from_slice(&[1, 1]); // source link-layer address, length 1 (8 bytes)
    ra.extend_from_slice(&mac);
    ra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ra_has_lifetime_zero_and_no_flags() {
        let ra = router_advertisement([0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(ra.len(), 24);
        assert_eq!(ra[0], 134);
        assert_eq!(ra[5], 0);
        assert_eq!(&ra[6..8], &[0, 0]);
        assert!(is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&ra));
    }
}
