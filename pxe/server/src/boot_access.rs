//! Who may receive a known node's boot script, its enrollment initrd and its certificate.
//!
//! The rule (shared/DESIGN.md, "Trust", boot network), for a request from address A naming
//! the node with MAC M:
//! - full mode: A must be the address of M's bound, unexpired lease (what our own DHCP
//!   acknowledged to M);
//! - both modes: when A is on our L2 (it has a neighbour entry on the boot interface, or lies
//!   on its subnet), that entry must show M;
//! - proxy mode: the address comes only from the requester itself and its neighbour entry,
//!   never from a DHCP field (ciaddr, requested-IP, the source of a 4011 packet) that a third
//!   host can fill with anything; so a requester that is not on our L2 has nothing to vouch
//!   for it and is refused.
//!
//! The enrollment endpoint applies the neighbour part only ([`neighbour_check`]): a token is
//! its own proof, and routed nodes enroll too.
//!
//! What this cannot tell apart: a host that forges both M and A on the segment. The single-use
//! token catches that afterwards (the real node is refused and says who used its token).

use std::net::{Ipv4Addr, SocketAddr};

use plasmacloud_contract::{MacAddr, NodeSpec};

use crate::config::Mode;
use crate::leases::{now_unix, LeaseState};
use crate::neighbours::{look_up, Seen};
use crate::state::{lock, peer_v4, State};

/// A requester that passed: its address and, when it is on our L2, its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The address.
    pub ip: Ipv4Addr,
    /// The MAC its neighbour entry shows (`None`: not on our L2).
    pub mac: Option<MacAddr>,
}

impl Requester {
    /// The MAC for logs and token records (`-` when not on our L2).
    pub fn mac_text(&self) -> String {
        self.mac
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into())
    }
}

fn peer_ip(peer: SocketAddr) -> Result<Ipv4Addr, String> {
    peer_v4(peer).ok_or_else(|| format!("{peer} is not an IPv4 requester"))
}

/// The neighbour part of the rule: an on-link requester must show `mac`.
pub fn neighbour_check(state: &State, mac: MacAddr, peer: SocketAddr) -> Result<Requester, String> {
    let ip = peer_ip(peer)?;
    let iface = &state.config.interface;
    match look_up(ip, &iface.name, iface.ip, iface.netmask) {
        Seen::OnLink(m) if m == mac => Ok(Requester { ip, mac: Some(m) }),
        Seen::OnLink(m) => Err(format!(
            "{ip} is at {m} on {} (its neighbour entry), not at {mac}",
            iface.name
        )),
        Seen::OnLinkUnknown => Err(format!(
            "{ip} is on {}'s subnet but has no neighbour entry there",
            iface.name
        )),
        Seen::Routed => Ok(Requester { ip, mac: None }),
    }
}

/// The whole rule for a node's script and enrollment initrd.
pub fn may_boot(state: &State, node: &NodeSpec, peer: SocketAddr) -> Result<Requester, String> {
    let ip = peer_ip(peer)?;
    if state.config.mode == Mode::Full {
        let mac = node.mac.to_string();
        let leases = lock(&state.leases);
        let bound = leases
            .get(&mac)
            .filter(|l| l.state == LeaseState::Bound && l.expires > now_unix());
        match bound {
            Some(l) if l.ip == ip => {}
            Some(l) => return Err(format!("{ip} is not {mac}'s leased address ({} is)", l.ip)),
            None => return Err(format!("{mac} holds no bound lease")),
        }
    }
    let who = neighbour_check(state, node.mac, peer)?;
    if state.config.mode == Mode::Proxy && who.mac.is_none() {
        return Err(format!(
            "{ip} is not on {}'s L2; in proxy mode nothing but its neighbour entry can tie an address to {}",
            state.config.interface.name, node.mac
        ));
    }
    Ok(who)
}
