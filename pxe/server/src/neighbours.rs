//! Who is really at an address on the boot network: the kernel's neighbour (ARP) table.
//!
//! The rule (shared/DESIGN.md, "Boot network"): a node's script, its enrollment initrd and its
//! certificate go only to an address whose neighbour entry shows that node's MAC. A TCP
//! connection from an address on the boot interface's subnet cannot be established without the
//! kernel resolving that address, so an entry exists for every such requester; a host that
//! claims another node's address with its own MAC shows up with its own MAC here and is
//! refused. (A host that forges both the MAC and the address is indistinguishable on L2; that
//! case is caught afterwards, when the real node finds its single-use token spent.)
//!
//! Requesters off the boot subnet (routed racks) are not on our L2 and have no entry of their
//! own; for them the check does not apply, and the caller says so. "On our L2" is decided by
//! the table first and the subnet second: an address outside the boot subnet that still has an
//! entry on the boot interface (an on-link route) is checked like any neighbour, so a host on
//! the segment cannot dodge the check by using a foreign address.
//!
//! Reading `/proc/net/arp` is a read of kernel memory (procfs), not disk I/O, so callers do it
//! on the runtime.

use std::net::Ipv4Addr;

use plasmacloud_contract::MacAddr;

/// The kernel's IPv4 neighbour table of this network namespace.
pub const ARP_TABLE: &str = "/proc/net/arp";

/// `ATF_COM`: the entry is complete (it holds a hardware address).
const ATF_COM: u32 = 0x2;

/// One complete entry of `/proc/net/arp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its hardware address.
    pub mac: MacAddr,
    /// The interface it was learned on.
    pub device: String,
}

/// Parses `/proc/net/arp` text; incomplete entries and malformed lines are skipped.
pub fn parse_arp(text: &str) -> Vec<Neighbour> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
            if flags & ATF_COM == 0 {
                return None;
            }
            let mac: MacAddr = f[3].parse().ok()?;
            if mac.0 == [0; 6] {
                return None;
            }
            Some(Neighbour {
                ip: f[0].parse().ok()?,
                mac,
                device: f[5].to_string(),
            })
        })
        .collect()
}

/// What the neighbour table says of a requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// On the boot interface's subnet, with this hardware address.
    OnLink(MacAddr),
    /// On the boot subnet but with no complete entry (it never completed a handshake with us).
    OnLinkUnknown,
    /// Not on the boot subnet (behind a router or relay): not our L2.
    Routed,
}

/// Looks a requester up: `ip` on `iface` whose subnet is `subnet`/`netmask`.
pub fn look_up(ip: Ipv4Addr, iface: &str, subnet: Ipv4Addr, netmask: Ipv4Addr) -> Seen {
    let text = std::fs::read_to_string(ARP_TABLE).unwrap_or_default();
    classify(&parse_arp(&text), ip, iface, subnet, netmask)
}

/// [`look_up`] over a parsed table.
pub fn classify(
    table: &[Neighbour],
    ip: Ipv4Addr,
    iface: &str,
    subnet: Ipv4Addr,
    netmask: Ipv4Addr,
) -> Seen {
    if let Some(n) = table.iter().find(|n| n.ip == ip && n.device == iface) {
        return Seen::OnLink(n.mac);
    }
    let on_link = u32::from(ip) & u32::from(netmask) == u32::from(subnet) & u32::from(netmask);
    if on_link {
        Seen::OnLinkUnknown
    } else {
        Seen::Routed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "IP address       HW type     Flags       HW address            Mask     Device
10.99.0.11       0x1         0x2         52:54:00:00:00:01     *        br0
10.99.0.12       0x1         0x0         00:00:00:00:00:00     *        br0
10.99.0.13       0x1         0x2         52:54:00:00:00:03     *        veth1
garbage
";

    #[test]
    fn only_complete_entries_count() {
        let n = parse_arp(TABLE);
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].ip, Ipv4Addr::new(10, 99, 0, 11));
        assert_eq!(n[0].mac.to_string(), "52:54:00:00:00:01");
        assert_eq!(n[1].device, "veth1");
    }

    #[test]
    fn the_table_decides_before_the_subnet() {
        let mask = Ipv4Addr::new(255, 255, 255, 0);
        let server = Ipv4Addr::new(10, 99, 0, 1);
        let mut table = parse_arp(TABLE);
        let at =
            |t: &[Neighbour], ip: [u8; 4]| classify(t, Ipv4Addr::from(ip), "br0", server, mask);
        assert_eq!(
            at(&table, [10, 99, 0, 11]),
            Seen::OnLink("52:54:00:00:00:01".parse().expect("mac"))
        );
        // Incomplete, or learned on another interface: on the subnet but unknown.
        assert_eq!(at(&table, [10, 99, 0, 12]), Seen::OnLinkUnknown);
        assert_eq!(at(&table, [10, 99, 0, 13]), Seen::OnLinkUnknown);
        assert_eq!(at(&table, [10, 98, 0, 5]), Seen::Routed);
        // A foreign address that is nevertheless a neighbour on the boot interface.
        table.push(Neighbour {
            ip: Ipv4Addr::new(10, 98, 0, 5),
            mac: "52:54:00:00:00:99".parse().expect("mac"),
            device: "br0".into(),
        });
        assert_eq!(
            at(&table, [10, 98, 0, 5]),
            Seen::OnLink("52:54:00:00:00:99".parse().expect("mac"))
        );
    }
}
