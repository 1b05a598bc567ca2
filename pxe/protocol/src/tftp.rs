//! TFTP packets (RFC 1350 §5) and option negotiation (RFC 2347 OACK; RFC 2348 blksize; RFC 2349
//! timeout and tsize; RFC 7440 windowsize).
//!
//! Block numbers are 16 bits on the wire; a transfer longer than 65535 blocks wraps to block 0
//! after 65535 (the de-facto rule that tftp-hpa, iPXE and EDK2 follow), see [`wire_block`].

use crate::ProtocolError;

/// RRQ opcode.
pub const OP_RRQ: u16 = 1;
/// WRQ opcode.
pub const OP_WRQ: u16 = 2;
/// DATA opcode.
pub const OP_DATA: u16 = 3;
/// ACK opcode.
pub const OP_ACK: u16 = 4;
/// ERROR opcode.
pub const OP_ERROR: u16 = 5;
/// OACK opcode (RFC 2347).
pub const OP_OACK: u16 = 6;

/// RFC 1350 default block size.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348 smallest block size.
pub const MIN_BLKSIZE: u16 = 8;
/// RFC 2348 largest block size.
pub const MAX_BLKSIZE: u16 = 65464;

/// RFC 1350 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// 0: not defined, see message.
    NotDefined = 0,
    /// 1: file not found.
    FileNotFound = 1,
    /// 2: access violation.
    AccessViolation = 2,
    /// 4: illegal TFTP operation.
    IllegalOperation = 4,
    /// 5: unknown transfer id.
    UnknownTid = 5,
    /// 8: option negotiation refused (RFC 2347).
    OptionRefused = 8,
}

/// A decoded TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Read request.
    Rrq(Request),
    /// Write request (always refused by this server).
    Wrq(Request),
    /// A data block.
    Data {
        /// Wire block number.
        block: u16,
        /// Payload (up to blksize bytes).
        data: Vec<u8>,
    },
    /// Acknowledgement of a wire block number (0 acknowledges an OACK).
    Ack(u16),
    /// Error.
    Error {
        /// Error code.
        code: u16,
        /// Message.
        message: String,
    },
    /// Option acknowledgement.
    Oack(Vec<(String, String)>),
}

/// RRQ / WRQ body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// File name as sent.
    pub filename: String,
    /// Transfer mode, lowercased (`octet` or `netascii`).
    pub mode: String,
    /// Options in the order sent; names lowercased.
    pub options: Vec<(String, String)>,
}

fn read_cstr(buf: &[u8]) -> Result<(String, &[u8]), ProtocolError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::TftpMalformed("string not NUL-terminated"))?;
    let s = String::from_utf8_lossy(&buf[..nul]).into_owned();
    Ok((s, &buf[nul + 1..]))
}

fn read_options(mut rest: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut options = Vec::new();
    while !rest.is_empty() {
        let (name, r) = read_cstr(rest)?;
        let (value, r) = read_cstr(r)?;
        options.push((name.to_ascii_lowercase(), value));
        rest = r;
    }
    Ok(options)
}

impl Packet {
    /// Decodes one datagram. Never panics on arbitrary bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() < 2 {
            return Err(ProtocolError::TftpMalformed("shorter than an opcode"));
        }
        let op = u16::from_be_bytes([bytes[0], bytes[1]]);
        let body = &bytes[2..];
        let u16_at = |b: &[u8]| -> Result<u16, ProtocolError> {
            match b {
                [a, c, ..] => Ok(u16::from_be_bytes([*a, *c])),
                _ => Err(ProtocolError::TftpMalformed("missing block number or code")),
            }
        };
        match op {
            OP_RRQ | OP_WRQ => {
                let (filename, r) = read_cstr(body)?;
                let (mode, r) = read_cstr(r)?;
                let req = Request {
                    filename,
                    mode: mode.to_ascii_lowercase(),
                    options: read_options(r)?,
                };
                Ok(if op == OP_RRQ {
                    Packet::Rrq(req)
                } else {
                    Packet::Wrq(req)
                })
            }
            OP_DATA => Ok(Packet::Data {
                block: u16_at(body)?,
                data: body[2..].to_vec(),
            }),
            OP_ACK => Ok(Packet::Ack(u16_at(body)?)),
            OP_ERROR => {
                let code = u16_at(body)?;
                let message = match read_cstr(&body[2..]) {
                    Ok((m, _)) => m,
                    // Some stacks omit the final NUL; take what is there.
                    Err(_) => String::from_utf8_lossy(&body[2..]).into_owned(),
                };
                Ok(Packet::Error { code, message })
            }
            OP_OACK => Ok(Packet::Oack(read_options(body)?)),
            other => Err(ProtocolError::TftpOpcode(other)),
        }
    }

    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                let op = if matches!(self, Packet::Rrq(_)) {
                    OP_RRQ
                } else {
                    OP_WRQ
                };
                out.extend_from_slice(&op.to_be_bytes());
                push_cstr(&mut out, &r.filename);
                push_cstr(&mut out, &r.mode);
                for (k, v) in &r.options {
                    push_cstr(&mut out, k);
                    push_cstr(&mut out, v);
                }
            }
            Packet::Data { block, data } => {
                encode_data_into(&mut out, *block, data);
            }
            Packet::Ack(b) => {
                out.extend_from_slice(&OP_ACK.to_be_bytes());
                out.extend_from_slice(&b.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&OP_ERROR.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
                push_cstr(&mut out, message);
            }
            Packet::Oack(opts) => {
                out.extend_from_slice(&OP_OACK.to_be_bytes());
                for (k, v) in opts {
                    push_cstr(&mut out, k);
                    push_cstr(&mut out, v);
                }
            }
        }
        out
    }

    /// An ERROR packet.
    pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
        Packet::Error {
            code: code as u16,
            message: message.to_string(),
        }
        .encode()
    }
}

fn push_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Writes a DATA packet header and payload into `out` (cleared first), without an extra copy
/// of the payload beyond this one.
pub fn encode_data_into(out: &mut Vec<u8>, block: u16, data: &[u8]) {
    out.clear();
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

/// The wire block number of the `n`th block of a transfer (`n` counts from 1): `n mod 65536`,
/// so block 65535 is followed by block 0.
pub fn wire_block(n: u64) -> u16 {
    (n % 65536) as u16
}

/// What the server allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size: the path MTU minus IP (20), UDP (8) and TFTP (4) headers.
    pub max_blksize: u16,
    /// Largest window.
    pub max_windowsize: u16,
}

impl Limits {
    /// Limits for a link MTU (IPv4).
    pub fn for_mtu(mtu: u32, max_windowsize: u16) -> Self {
        let b = mtu
            .saturating_sub(32)
            .clamp(u32::from(MIN_BLKSIZE), u32::from(MAX_BLKSIZE));
        Self {
            max_blksize: u16::try_from(b).unwrap_or(MAX_BLKSIZE),
            max_windowsize: max_windowsize.max(1),
        }
    }
}

/// The outcome of option negotiation for one read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Block size for DATA payloads.
    pub blksize: u16,
    /// Blocks in flight before an ACK is awaited.
    pub windowsize: u16,
    /// Retransmission timeout the client asked for, seconds (1..=255).
    pub timeout_secs: Option<u8>,
    /// The options to acknowledge in an OACK, in request order; empty = no OACK (start with
    /// DATA 1 directly, RFC 2347).
    pub oack: Vec<(String, String)>,
}

/// Negotiates the options of a read request for a file of `file_size` bytes. Unknown or
/// malformed options are left out of the OACK (RFC 2347: the server ignores them).
pub fn negotiate(options: &[(String, String)], file_size: u64, limits: Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout_secs: None,
        oack: Vec::new(),
    };
    for (name, value) in options {
        match name.as_str() {
            "blksize" => {
                if let Ok(v) = value.trim().parse::<u32>() {
                    if v >= u32::from(MIN_BLKSIZE) {
                        let b = v
                            .min(u32::from(limits.max_blksize))
                            .min(u32::from(MAX_BLKSIZE));
                        n.blksize = u16::try_from(b).unwrap_or(DEFAULT_BLKSIZE);
                        n.oack.push((name.clone(), n.blksize.to_string()));
                    }
                }
            }
            // In an RRQ the client sends 0; the server answers with the size.
            "tsize" if value.trim().parse::<u64>().is_ok() => {
                n.oack.push((name.clone(), file_size.to_string()));
            }
            "timeout" => {
                if let Ok(v) = value.trim().parse::<u16>() {
                    if (1..=255).contains(&v) {
                        n.timeout_secs = Some(v as u8);
                        n.oack.push((name.clone(), v.to_string()));
                    }
                }
            }
            "windowsize" => {
                if let Ok(v) = value.trim().parse::<u32>() {
                    if (1..=65535).contains(&v) {
                        let w = v.min(u32::from(limits.max_windowsize));
                        n.windowsize = u16::try_from(w).unwrap_or(1);
                        n.oack.push((name.clone(), n.windowsize.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_numbers_wrap_to_zero() {
        assert_eq!(wire_block(1), 1);
        assert_eq!(wire_block(65535), 65535);
        assert_eq!(wire_block(65536), 0);
        assert_eq!(wire_block(65537), 1);
    }

    #[test]
    fn negotiation_clamps_to_limits() {
        let opts = vec![
            ("blksize".to_string(), "65464".to_string()),
            ("tsize".to_string(), "0".to_string()),
            ("windowsize".to_string(), "64".to_string()),
            ("timeout".to_string(), "0".to_string()),
            ("frobnicate".to_string(), "1".to_string()),
        ];
        let n = negotiate(&opts, 1234, Limits::for_mtu(1500, 16));
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 16);
        assert_eq!(n.timeout_secs, None);
        assert_eq!(
            n.oack,
            vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), "1234".into()),
                ("windowsize".into(), "16".into()),
            ]
        );
    }

    #[test]
    fn no_options_no_oack() {
        let n = negotiate(&[], 10, Limits::for_mtu(1500, 16));
        assert!(n.oack.is_empty());
        assert_eq!(n.blksize, 512);
    }

    #[test]
    fn packets_round_trip() {
        for p in [
            Packet::Ack(7),
            Packet::Data {
                block: 0,
                data: vec![1, 2, 3],
            },
            Packet::Oack(vec![("blksize".into(), "1432".into())]),
            Packet::Error {
                code: 2,
                message: "no".into(),
            },
        ] {
            assert_eq!(Packet::parse(&p.encode()), Ok(p));
        }
    }
}
