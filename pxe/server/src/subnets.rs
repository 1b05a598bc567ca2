//! Which subnet a DHCP request is for, and what that subnet hands out: the boot interface's
//! own subnet (`--dhcp-range`, `--router`) and the rack subnets behind DHCP relays
//! (`--subnet CIDR[,range=FIRST-LAST][,router=IP]`, repeatable).
//!
//! The rule (RFC 2131 §4.3.1, RFC 3046): a request whose `giaddr` is 0.0.0.0 came from the
//! boot interface's own segment; a request with a `giaddr` was relayed, and is for the subnet
//! that holds `giaddr` (the relay's address on the client's segment; a `giaddr` on the boot
//! interface's own subnet names that subnet). A relayed request for a
//! subnet that no `--subnet` declares is not answered: we cannot know its mask or router, and
//! an address from another subnet would not route.
//!
//! Why here and not in the contract: the contract says who the nodes are and their addresses
//! (every node's own first boot reads it, and it is baked into every bundle); which relay
//! serves which subnet, the pools for machines the contract does not know and each subnet's
//! router are the provisioning network's plumbing, which only pxe-server reads and which an
//! operator changes without rebuilding a bundle. Each contract node's subnet follows from its
//! address: in full mode every node must lie on the boot interface's subnet or on one
//! declared here (`check` and every bundle reload say which node does not).

use std::net::Ipv4Addr;

use serde::Deserialize;

/// An IPv4 network `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Cidr {
    /// The netmask of the prefix.
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// Whether `ip` is in this network.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix) == u32::from(self.network)
    }

    /// The network of `ip` under `netmask`.
    pub fn of(ip: Ipv4Addr, netmask: Ipv4Addr) -> Self {
        let m = u32::from(netmask);
        Cidr {
            network: Ipv4Addr::from(u32::from(ip) & m),
            prefix: u8::try_from(m.count_ones()).unwrap_or(32),
        }
    }

    /// Parses `10.98.1.0/24` (host bits must be zero).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (e.g. 10.98.1.0/24)"))?;
        let ip: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{p:?} is not a prefix length 0-32"))?;
        let network = Ipv4Addr::from(u32::from(ip) & mask_bits(prefix));
        if network != ip {
            return Err(format!(
                "{s} has host bits set; the network is {network}/{prefix}"
            ));
        }
        Ok(Cidr { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask_bits(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// One subnet pxe-server hands addresses and boot information out on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// The network.
    pub cidr: Cidr,
    /// The pool for machines not in the contract (full mode).
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Option 3. For a relayed subnet without one, the relay's `giaddr` (the usual router).
    pub router: Option<Ipv4Addr>,
    /// Reached through a DHCP relay (not the boot interface's own segment).
    pub relayed: bool,
}

/// A `[[subnet]]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetFile {
    /// `10.98.1.0/24`.
    pub cidr: String,
    /// `FIRST-LAST`.
    pub range: Option<String>,
    /// The router handed out.
    pub router: Option<Ipv4Addr>,
}

impl SubnetFile {
    /// The same as a `--subnet` value.
    pub fn to_flag(&self) -> String {
        let mut s = self.cidr.clone();
        if let Some(r) = &self.range {
            s.push_str(&format!(",range={r}"));
        }
        if let Some(r) = self.router {
            s.push_str(&format!(",router={r}"));
        }
        s
    }
}

/// Parses `FIRST-LAST`.
pub fn parse_range(r: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let bad = || format!("{r:?} is not FIRST-LAST (e.g. 10.99.0.100-10.99.0.200)");
    let (a, b) = r.split_once('-').ok_or_else(bad)?;
    let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
    let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
    if u32::from(a) > u32::from(b) {
        return Err(format!("{a} comes after {b}; write FIRST-LAST"));
    }
    Ok((a, b))
}

/// Parses one `--subnet` value: `CIDR[,range=FIRST-LAST][,router=IP]`, checking that the
/// range and the router lie inside the network.
pub fn parse_subnet(s: &str) -> Result<Subnet, String> {
    let mut parts = s.split(',');
    let cidr = Cidr::parse(parts.next().unwrap_or(""))?;
    let mut subnet = Subnet {
        cidr,
        range: None,
        router: None,
        relayed: true,
    };
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("{p:?} is not range=FIRST-LAST or router=IP"))?;
        match k.trim() {
            "range" => {
                let (a, b) = parse_range(v)?;
                for ip in [a, b] {
                    if !cidr.contains(ip) {
                        return Err(format!("range address {ip} is outside {cidr}"));
                    }
                }
                subnet.range = Some((a, b));
            }
            "router" => {
                let ip: Ipv4Addr = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("router {v:?} is not an IPv4 address"))?;
                if !cidr.contains(ip) {
                    return Err(format!("router {ip} is outside {cidr}"));
                }
                subnet.router = Some(ip);
            }
            other => {
                return Err(format!(
                    "unknown key {other:?} (write CIDR,range=FIRST-LAST,router=IP)"
                ))
            }
        }
    }
    Ok(subnet)
}

/// Every subnet served: the boot interface's own, then the relayed ones.
#[derive(Debug, Clone)]
pub struct Subnets {
    /// The boot interface's segment (giaddr 0.0.0.0).
    pub local: Subnet,
    /// Behind relays, in the order given.
    pub relayed: Vec<Subnet>,
}

impl Subnets {
    /// Builds and checks the set: relayed subnets may not overlap each other or the local one.
    pub fn new(local: Subnet, relayed: Vec<Subnet>) -> Result<Self, String> {
        let all: Vec<&Subnet> = std::iter::once(&local).chain(relayed.iter()).collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.cidr.contains(b.cidr.network) || b.cidr.contains(a.cidr.network) {
                    return Err(format!(
                        "{} overlaps {}{}",
                        b.cidr,
                        a.cidr,
                        if a.relayed {
                            ""
                        } else {
                            " (the boot interface's subnet)"
                        }
                    ));
                }
            }
        }
        Ok(Subnets { local, relayed })
    }

    /// The subnet a request with this `giaddr` is for (`None`: relayed from a subnet nobody
    /// declared).
    pub fn for_giaddr(&self, giaddr: Ipv4Addr) -> Option<&Subnet> {
        // A relay on our own segment (or a load generator acting as one) names our subnet.
        if giaddr.is_unspecified() || self.local.cidr.contains(giaddr) {
            return Some(&self.local);
        }
        self.relayed.iter().find(|s| s.cidr.contains(giaddr))
    }

    /// The subnet holding `ip`, if any is served.
    pub fn holding(&self, ip: Ipv4Addr) -> Option<&Subnet> {
        std::iter::once(&self.local)
            .chain(self.relayed.iter())
            .find(|s| s.cidr.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.98.1.0/24").expect("cidr");
        assert_eq!(c.netmask(), ip("255.255.255.0"));
        assert!(c.contains(ip("10.98.1.200")));
        assert!(!c.contains(ip("10.98.2.1")));
        assert!(Cidr::parse("10.98.1.1/24")
            .expect_err("host bits")
            .contains("10.98.1.0/24"));
        assert!(Cidr::parse("10.98.1.0").is_err());
        assert!(Cidr::parse("10.98.1.0/33").is_err());
        assert_eq!(
            Cidr::parse("0.0.0.0/0").expect("all").netmask(),
            ip("0.0.0.0")
        );
        assert_eq!(
            Cidr::of(ip("10.99.0.1"), ip("255.255.255.0")),
            Cidr::parse("10.99.0.0/24").expect("cidr")
        );
    }

    #[test]
    fn subnet_flags() {
        let s = parse_subnet("10.98.1.0/24,range=10.98.1.100-10.98.1.199,router=10.98.1.1")
            .expect("subnet");
        assert_eq!(s.range, Some((ip("10.98.1.100"), ip("10.98.1.199"))));
        assert_eq!(s.router, Some(ip("10.98.1.1")));
        assert!(s.relayed);
        assert!(parse_subnet("10.98.1.0/24,range=10.98.2.1-10.98.2.9")
            .expect_err("outside")
            .contains("outside 10.98.1.0/24"));
        assert!(parse_subnet("10.98.1.0/24,router=10.98.3.1").is_err());
        assert!(parse_subnet("10.98.1.0/24,pool=x").is_err());
        assert!(parse_subnet("10.98.1.0/24").expect("bare").range.is_none());
    }

    #[test]
    fn giaddr_picks_the_subnet() {
        let local = Subnet {
            cidr: Cidr::parse("10.99.0.0/24").expect("cidr"),
            range: None,
            router: None,
            relayed: false,
        };
        let a = parse_subnet("10.98.1.0/24").expect("a");
        let b = parse_subnet("10.98.2.0/24").expect("b");
        let set = Subnets::new(local, vec![a.clone(), b.clone()]).expect("set");
        assert!(
            !set.for_giaddr(Ipv4Addr::UNSPECIFIED)
                .expect("local")
                .relayed
        );
        assert_eq!(set.for_giaddr(ip("10.98.2.1")), Some(&b));
        assert_eq!(set.for_giaddr(ip("10.97.0.1")), None);
        assert!(
            !set.for_giaddr(ip("10.99.0.7"))
                .expect("on our segment")
                .relayed
        );
        assert_eq!(set.holding(ip("10.98.1.12")), Some(&a));
        let overlapping = parse_subnet("10.98.0.0/16").expect("wide");
        assert!(Subnets::new(set.local.clone(), vec![a, overlapping])
            .expect_err("overlap")
            .contains("overlaps"));
    }
}
