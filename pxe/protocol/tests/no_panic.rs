//! Property tests: the parsers never panic on arbitrary bytes, and what they accept
//! re-encodes and decodes to the same thing.

use proptest::prelude::*;
use pxe_protocol::dhcp::{decode_message, parse_request};
use pxe_protocol::tftp::Packet;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn dhcp_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = parse_request(&bytes);
        let _ = decode_message(&bytes);
    }

    #[test]
    fn dhcp_parser_survives_mutated_real_headers(
        opts in proptest::collection::vec(any::<u8>(), 0..400),
        op in 1u8..=2,
    ) {
        // A valid BOOTP header + magic cookie, then random option bytes: reaches the option
        // decoders, which random bytes from 0 rarely do.
        let mut bytes = vec![0u8; 236];
        bytes[0] = op;
        bytes[1] = 1;
        bytes[2] = 6;
        bytes.extend_from_slice(&[99, 130, 83, 99]);
        bytes.extend_from_slice(&opts);
        let _ = parse_request(&bytes);
    }

    #[test]
    fn tftp_parser_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(p) = Packet::parse(&bytes) {
            let again = Packet::parse(&p.encode());
            prop_assert_eq!(again, Ok(p));
        }
    }

    #[test]
    fn tftp_rrq_like_packets(name in "[ -~]{0,40}", opts in proptest::collection::vec(("[a-z]{1,10}", "[0-9a-z]{0,6}"), 0..6)) {
        let mut bytes = vec![0, 1];
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(b"octet\0");
        for (k, v) in &opts {
            bytes.extend_from_slice(k.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(v.as_bytes());
            bytes.push(0);
        }
        let p = Packet::parse(&bytes);
        prop_assert!(p.is_ok());
        if let Ok(Packet::Rrq(r)) = p {
            let _ = pxe_protocol::tftp::negotiate(&r.options, 1 << 40, pxe_protocol::tftp::Limits::for_mtu(9000, 64));
        }
    }
}
