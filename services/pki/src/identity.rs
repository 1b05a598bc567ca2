//! Who a certificate names.
//!
//! The rule: an identity is exactly one URI SAN of the form `urn:plasmacloud:<role>:<name>`,
//! where role is `node` (a machine of the contract) or `operator` (a person or a tool acting
//! for one, such as pxe-server itself). A certificate of the cluster CA without such a SAN,
//! or with two, names nobody and is refused by the services. Names follow the contract's node
//! name rule for nodes and allow `.`, `_` and `@` for operators.

use std::fmt;

use crate::{invalid, Result};

/// The URI SAN prefix of every PlasmaCloud identity.
pub const URI_PREFIX: &str = "urn:plasmacloud:";

/// What a certificate holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A cluster node (made at enrollment or by `pxe-server pki issue --node`).
    Node,
    /// A person or a tool (`pxe-server pki issue --operator`).
    Operator,
}

impl Role {
    /// `node` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Operator => "operator",
        }
    }
}

/// A role and a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Identity {
    /// Node or operator.
    pub role: Role,
    /// The node's contract name, or the operator's name.
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role.as_str(), self.name)
    }
}

fn valid_name(role: Role, name: &str) -> bool {
    let extra: &[u8] = match role {
        Role::Node => b"-",
        Role::Operator => b"-._@",
    };
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
        && !name.starts_with('-')
}

impl Identity {
    /// A node identity; the name must be a valid contract node name.
    pub fn node(name: &str) -> Result<Self> {
        Self::new(Role::Node, name)
    }

    /// An operator identity (lowercase letters, digits, `-._@`, at most 63 characters).
    pub fn operator(name: &str) -> Result<Self> {
        Self::new(Role::Operator, name)
    }

    fn new(role: Role, name: &str) -> Result<Self> {
        if !valid_name(role, name) {
            return Err(invalid(
                format!("{} name {name:?}", role.as_str()),
                "expected 1-63 lowercase letters, digits or '-' (operators also '.', '_', '@')",
            ));
        }
        Ok(Self {
            role,
            name: name.to_string(),
        })
    }

    /// `urn:plasmacloud:<role>:<name>`.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}:{}", self.role.as_str(), self.name)
    }

    /// Parses `urn:plasmacloud:<role>:<name>`; `None` for anything else.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let (role, name) = rest.split_once(':')?;
        let role = match role {
            "node" => Role::Node,
            "operator" => Role::Operator,
            _ => return None,
        };
        Self::new(role, name).ok()
    }

    /// Is this a node?
    pub fn is_node(&self) -> bool {
        self.role == Role::Node
    }
}

/// What the services need to know of a verified peer certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerCert {
    /// Who it names.
    pub identity: Identity,
    /// The serial number, lowercase hex without leading zero bytes (the form revocation uses).
    pub serial: String,
    /// Not valid before (Unix seconds).
    pub not_before: i64,
    /// Not valid after (Unix seconds).
    pub not_after: i64,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
}

/// The canonical serial form: lowercase hex of the big-endian bytes, leading zeros dropped.
pub fn serial_hex(bytes: &[u8]) -> String {
    let trimmed: &[u8] = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &[0],
    };
    hex::encode(trimmed)
}

/// A Unix time as RFC 3339 UTC (`2027-12-01T18:34:00Z`), for messages.
pub fn utc(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Reads identity, serial and validity from a DER certificate. It does not verify anything:
/// call it on certificates rustls has already verified, or after [`crate::credentials`]'
/// checks.
pub fn inspect(der: &[u8]) -> Result<PeerCert> {
    use sha2::Digest;
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid("certificate", format!("not a DER X.509 certificate: {e}")))?;
    let mut ids = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if uri.starts_with(URI_PREFIX) {
                    ids.push(Identity::from_uri(uri).ok_or_else(|| {
                        invalid(
                            "certificate",
                            format!("{uri:?} is not urn:plasmacloud:node:NAME or urn:plasmacloud:operator:NAME"),
                        )
                    })?);
                }
            }
        }
    }
    let identity = match ids.len() {
        1 => ids.remove(0),
        0 => {
            return Err(invalid(
                "certificate",
                format!(
                    "{} names no PlasmaCloud identity (no urn:plasmacloud: URI SAN); issue it with `pxe-server pki issue`",
                    cert.subject()
                ),
            ))
        }
        _ => {
            return Err(invalid(
                "certificate",
                "names more than one PlasmaCloud identity",
            ))
        }
    };
    Ok(PeerCert {
        identity,
        serial: serial_hex(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        sha256: hex::encode(sha2::Sha256::digest(der)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_foreign_ones_are_refused() {
        let n = Identity::node("node02").expect("node");
        assert_eq!(n.uri(), "urn:plasmacloud:node:node02");
        assert_eq!(Identity::from_uri(&n.uri()), Some(n));
        let o = Identity::operator("alice@ops").expect("operator");
        assert_eq!(
            Identity::from_uri("urn:plasmacloud:operator:alice@ops"),
            Some(o)
        );
        for bad in [
            "urn:plasmacloud:admin:x",
            "urn:plasmacloud:node:Node02",
            "urn:plasmacloud:node:",
            "urn:plasmacloud:node:a@b",
            "spiffe://x/node/a",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
        assert!(Identity::node("-x").is_err());
    }

    #[test]
    fn serials_drop_leading_zeros() {
        assert_eq!(serial_hex(&[0, 0, 0x1a, 0x02]), "1a02");
        assert_eq!(serial_hex(&[0]), "00");
    }
}
