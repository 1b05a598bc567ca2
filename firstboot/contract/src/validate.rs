//! From [`ClusterConfig`] (as written) to [`Contract`] (checked): every rule, every problem at once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ContractError, Problem};
use crate::wire::{ClusterConfig, DiskLayout, IamAdmin, NodeConfig, Ports, Role, CONTRACT_VERSION};

/// A MAC address (EUI-48).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    /// Six hex pairs separated by `:` or `-` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let bad = || {
            format!("{s:?} is not a MAC address (expected six hex pairs, e.g. 52:54:00:00:00:01)")
        };
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// A checked node: typed address and MAC, ports resolved (cluster defaults + overrides).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// Node name and hostname.
    pub name: String,
    /// Boot interface MAC.
    pub mac: MacAddr,
    /// Address on the cluster network.
    pub ipv4: Ipv4Addr,
    /// Roles, sorted, no duplicates.
    pub roles: Vec<Role>,
    /// The Raft data disk, if the contract describes one.
    pub disk: Option<DiskLayout>,
    /// Effective ports of this node.
    pub ports: Ports,
    /// Labels as written.
    pub labels: BTreeMap<String, String>,
    /// Is this node one of the initial Raft voters?
    pub voter: bool,
}

impl NodeSpec {
    /// Has this node the given role?
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
    /// `ip:port` of Chainfire's API on this node.
    pub fn chainfire_api(&self) -> String {
        format!("{}:{}", self.ipv4, self.ports.chainfire_api)
    }
    /// `ip:port` of Chainfire's Raft RPC on this node.
    pub fn chainfire_raft(&self) -> String {
        format!("{}:{}", self.ipv4, self.ports.chainfire_raft)
    }
    /// `ip:port` of FlareDB's API on this node.
    pub fn flaredb_api(&self) -> String {
        format!("{}:{}", self.ipv4, self.ports.flaredb_api)
    }
    /// `ip:port` of FlareDB's Raft RPC on this node.
    pub fn flaredb_raft(&self) -> String {
        format!("{}:{}", self.ipv4, self.ports.flaredb_raft)
    }
    /// `ip:port` of IAM's API on this node.
    pub fn iam_api(&self) -> String {
        format!("{}:{}", self.ipv4, self.ports.iam_api)
    }
}

/// A validated contract. Build it with [`Contract::parse`] or [`Contract::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    /// The document as written (for re-serialising into images).
    pub config: ClusterConfig,
    /// Checked nodes, in contract order.
    pub nodes: Vec<NodeSpec>,
    /// Boot server address.
    pub boot_server: Ipv4Addr,
}

/// How many initial voters a rack of `nodes` nodes gets: 1 below 3 nodes, 3 below 5, else 5.
pub fn voter_count_for_rack(nodes: usize) -> usize {
    match nodes {
        0..=2 => 1,
        3..=4 => 3,
        _ => 5,
    }
}

impl Contract {
    /// Reads and validates a contract file.
    pub fn load(path: &Path) -> Result<Self, ContractError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContractError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_named(&text, &path.display().to_string())
    }

    /// Parses and validates contract text (`<input>` in messages).
    pub fn parse(text: &str) -> Result<Self, ContractError> {
        Self::parse_named(text, "<input>")
    }

    /// Parses and validates contract text; `origin` names it in messages.
    pub fn parse_named(text: &str, origin: &str) -> Result<Self, ContractError> {
        // An older version is told what changed before its fields trip the strict parse.
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
            if let Some(problems) = crate::migrate::problems_of_old_version(&value) {
                return Err(ContractError::Invalid {
                    origin: origin.to_string(),
                    problems,
                });
            }
        }
        let config = parse_json::<ClusterConfig>(text, origin)?;
        Self::from_config(config, origin)
    }

    /// Validates an already parsed document.
    pub fn from_config(config: ClusterConfig, origin: &str) -> Result<Self, ContractError> {
        let mut problems = Vec::new();
        let contract = check(config, &mut problems);
        let mut seen = std::collections::HashSet::new();
        problems.retain(|p| seen.insert(p.clone()));
        match contract {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ContractError::Invalid {
                origin: origin.to_string(),
                problems,
            }),
        }
    }

    /// Cluster name.
    pub fn name(&self) -> &str {
        &self.config.cluster.name
    }

    /// Cluster id.
    pub fn id(&self) -> &str {
        &self.config.cluster.id
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Result<&NodeSpec, ContractError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ContractError::UnknownNode {
                name: name.to_string(),
                cluster: self.name().to_string(),
                known: self.node_names().join(", "),
            })
    }

    /// The node with this MAC.
    pub fn node_by_mac(&self, mac: MacAddr) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.mac == mac)
    }

    /// Node names in contract order.
    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// The initial voters, in the order `initial_voters` lists them.
    pub fn voters(&self) -> Vec<&NodeSpec> {
        self.config
            .initial_voters
            .iter()
            .filter_map(|v| self.nodes.iter().find(|n| &n.name == v))
            .collect()
    }

    /// The seed: the first initial voter in contract order (`initial_voters[0]`). It alone
    /// bootstraps Chainfire and FlareDB (as Raft id 1) and seeds IAM.
    pub fn seed(&self) -> &NodeSpec {
        // Validation guarantees a non-empty voter list naming existing nodes.
        self.voters()[0]
    }

    /// Is `name` the seed node?
    pub fn is_seed(&self, name: &str) -> bool {
        self.config.initial_voters.first().map(String::as_str) == Some(name)
    }

    /// The first IAM administrator (name and password hash), if the contract names one.
    pub fn iam_admin(&self) -> Option<&IamAdmin> {
        self.config.iam.admin.as_ref()
    }

    /// The cluster CA fingerprint the contract pins (SHA-256 of the DER, lowercase hex).
    pub fn ca_sha256(&self) -> Option<&str> {
        self.config.pki.ca_sha256.as_deref()
    }

    /// `https://ADDRESS:PORT` of pxe-server's enrollment endpoint.
    pub fn enrollment_url(&self) -> String {
        format!(
            "https://{}:{}",
            self.boot_server, self.config.boot_server.enrollment_port
        )
    }

    /// `https://ADDRESS:PORT` of pxe-server's management listener (phase reports).
    pub fn management_url(&self) -> String {
        format!(
            "https://{}:{}",
            self.boot_server, self.config.boot_server.management_port
        )
    }

    /// The contract as pretty JSON (what images carry).
    pub fn to_json(&self) -> String {
        // Serialising plain data types cannot fail.
        serde_json::to_string_pretty(&self.config).unwrap_or_default() + "\n"
    }
}

/// Parses JSON into `T`, turning serde errors into [`ContractError::Syntax`] (broken JSON, with
/// line and column) or [`ContractError::Shape`] (wrong shape, with the JSON path).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ContractError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|err| {
        let path = err.path().to_string();
        classify_serde_error(origin, path, err.into_inner())
    })?;
    // Trailing characters after the document are a syntax error too.
    de.end()
        .map_err(|e| classify_serde_error(origin, String::new(), e))?;
    Ok(value)
}

fn classify_serde_error(origin: &str, path: String, inner: serde_json::Error) -> ContractError {
    let message = strip_position(&inner.to_string());
    match inner.classify() {
        serde_json::error::Category::Data => ContractError::Shape {
            origin: origin.to_string(),
            path: if path.is_empty() { ".".into() } else { path },
            message,
            line: inner.line(),
            column: inner.column(),
        },
        _ => ContractError::Syntax {
            origin: origin.to_string(),
            line: inner.line(),
            column: inner.column(),
            message,
        },
    }
}

/// serde_json appends " at line L column C"; we print position ourselves.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn check_label(path: &str, what: &str, value: &str, problems: &mut Vec<Problem>) {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !ok {
        problems.push(Problem::new(
            path,
            format!("{value:?} is not a valid {what} (expected 1-63 lowercase letters, digits or '-', not starting or ending with '-')"),
        ));
    }
}

fn check_port(path: String, value: u64, problems: &mut Vec<Problem>) {
    if !(1..=65535).contains(&value) {
        problems.push(Problem::new(
            path,
            format!("{value} is out of range (expected a port from 1 to 65535)"),
        ));
    }
}

/// The IAM admin: a valid user name and an argon2id PHC hash, never a password.
fn check_admin(admin: &IamAdmin, problems: &mut Vec<Problem>) {
    let u = &admin.username;
    let name_ok = !u.is_empty()
        && u.len() <= 64
        && u.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && u.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !name_ok {
        problems.push(Problem::new(
            "iam.admin.username",
            format!("{u:?} is not a valid user name (expected 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit)"),
        ));
    }
    let fix = "make one with `iam-server hash-password` (it reads the password from stdin) and paste its output";
    match argon2::PasswordHash::new(&admin.password_hash) {
        Ok(h) if h.algorithm.as_str() == "argon2id" && h.hash.is_some() && h.salt.is_some() => {}
        Ok(h) => problems.push(Problem::new(
            "iam.admin.password_hash",
            format!(
                "a {} hash; expected an argon2id PHC string with salt and hash ({fix})",
                h.algorithm
            ),
        )),
        Err(_) => problems.push(Problem::new(
            "iam.admin.password_hash",
            format!("not a PHC password hash (expected $argon2id$v=19$m=…,t=…,p=…$salt$hash; never the password itself): {fix}"),
        )),
    }
}

fn parse_ipv4(path: &str, value: &str, problems: &mut Vec<Problem>) -> Option<Ipv4Addr> {
    match value.parse::<Ipv4Addr>() {
        Ok(ip) if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() => {
            problems.push(Problem::new(
                path,
                format!("{value} cannot be a host address (expected a unicast IPv4 address such as 10.99.0.11)"),
            ));
            None
        }
        Ok(ip) => Some(ip),
        Err(_) => {
            problems.push(Problem::new(
                path,
                format!("{value:?} is not an IPv4 address (expected four decimal octets, e.g. 10.99.0.11)"),
            ));
            None
        }
    }
}

fn check_disk(path: &str, disk: &DiskLayout, problems: &mut Vec<Problem>) {
    if !disk.device.starts_with("/dev/") || disk.device.len() <= "/dev/".len() {
        problems.push(Problem::new(
            format!("{path}.device"),
            format!(
                "{:?} is not a block device path (expected /dev/…, e.g. /dev/vdb)",
                disk.device
            ),
        ));
    }
    let label_ok = !disk.label.is_empty()
        && disk.label.len() <= 16
        && disk
            .label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !label_ok {
        problems.push(Problem::new(
            format!("{path}.label"),
            format!(
                "{:?} is not a usable filesystem label (expected 1-16 letters, digits, '-' or '_')",
                disk.label
            ),
        ));
    }
    let mp = Path::new(&disk.mount_point);
    let under_var_lib = mp.starts_with("/var/lib") && mp != Path::new("/var/lib");
    let no_dots = mp
        .components()
        .all(|c| !matches!(c, std::path::Component::ParentDir));
    if !under_var_lib || !no_dots {
        problems.push(Problem::new(
            format!("{path}.mount_point"),
            format!(
                "{:?} must be a directory under /var/lib (e.g. /var/lib/plasmacloud)",
                disk.mount_point
            ),
        ));
    }
}

/// Checks every rule, pushing problems; returns the contract when the shape allowed building one.
fn check(config: ClusterConfig, problems: &mut Vec<Problem>) -> Option<Contract> {
    if config.version != CONTRACT_VERSION {
        problems.push(Problem::new(
            "version",
            format!(
                "{} is not a known contract version (this release reads version {CONTRACT_VERSION})",
                config.version
            ),
        ));
    }
    check_label(
        "cluster.name",
        "cluster name",
        &config.cluster.name,
        problems,
    );
    check_label("cluster.id", "cluster id", &config.cluster.id, problems);

    let boot_server = parse_ipv4("boot_server.address", &config.boot_server.address, problems);
    check_port(
        "boot_server.http_port".into(),
        config.boot_server.http_port,
        problems,
    );
    check_port(
        "boot_server.management_port".into(),
        config.boot_server.management_port,
        problems,
    );
    if config.boot_server.http_port == config.boot_server.management_port {
        problems.push(Problem::new(
            "boot_server.management_port",
            format!(
                "{} collides with boot_server.http_port (expected two different ports)",
                config.boot_server.management_port
            ),
        ));
    }
    let cluster_ports = config.ports.named();
    for (a, (field, value)) in cluster_ports.iter().enumerate() {
        check_port(format!("ports.{field}"), *value, problems);
        if let Some((other, _)) = cluster_ports[..a].iter().find(|(_, v)| v == value) {
            problems.push(Problem::new(
                format!("ports.{field}"),
                format!("{value} collides with {other} (expected a different port per service)"),
            ));
        }
    }

    check_port(
        "boot_server.enrollment_port".into(),
        config.boot_server.enrollment_port,
        problems,
    );
    if [
        config.boot_server.http_port,
        config.boot_server.management_port,
    ]
    .contains(&config.boot_server.enrollment_port)
    {
        problems.push(Problem::new(
            "boot_server.enrollment_port",
            format!(
                "{} collides with boot_server.http_port or management_port (expected a port of its own)",
                config.boot_server.enrollment_port
            ),
        ));
    }
    if let Some(fp) = &config.pki.ca_sha256 {
        if fp.len() != 64
            || !fp
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            problems.push(Problem::new(
                "pki.ca_sha256",
                format!("{fp:?} is not a SHA-256 fingerprint (expected 64 lowercase hex digits, as `pxe-server pki show` prints)"),
            ));
        }
    }
    if let Some(admin) = &config.iam.admin {
        check_admin(admin, problems);
    }

    if config.nodes.is_empty() {
        problems.push(Problem::new(
            "nodes",
            "the cluster has no nodes (expected at least one node entry)",
        ));
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut macs: HashMap<MacAddr, usize> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut nodes = Vec::new();
    for (i, n) in config.nodes.iter().enumerate() {
        let at = |f: &str| format!("nodes[{i}].{f}");
        nodes.push(check_node(i, n, &config, problems));
        check_label(&at("name"), "node name", &n.name, problems);
        if let Some(first) = names.insert(n.name.as_str(), i) {
            problems.push(Problem::new(
                at("name"),
                format!(
                    "duplicate node name {:?} (also nodes[{first}].name); names must be unique",
                    n.name
                ),
            ));
        }
        if let Ok(mac) = n.mac.parse::<MacAddr>() {
            if let Some(first) = macs.insert(mac, i) {
                problems.push(Problem::new(
                    at("mac"),
                    format!(
                        "duplicate MAC {mac} (also nodes[{first}].mac); every node needs its own"
                    ),
                ));
            }
        }
        if let Ok(ip) = n.ipv4.parse::<Ipv4Addr>() {
            if let Some(first) = ips.insert(ip, i) {
                problems.push(Problem::new(
                    at("ipv4"),
                    format!("duplicate address {ip} (also nodes[{first}].ipv4); every node needs its own"),
                ));
            }
            if Some(ip) == boot_server {
                problems.push(Problem::new(
                    at("ipv4"),
                    format!(
                        "{ip} is the boot server's address (expected a node address of its own)"
                    ),
                ));
            }
        }
    }

    // The initial voter set.
    let voters = &config.initial_voters;
    let count = voters.len();
    if ![1, 3, 5].contains(&count) {
        problems.push(Problem::new(
            "initial_voters",
            format!(
                "{count} voter(s) listed; expected 1, 3 or 5 control-plane nodes (an odd, small quorum — add more nodes as workers)"
            ),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, v) in voters.iter().enumerate() {
        let at = format!("initial_voters[{i}]");
        if let Some(first) = seen.insert(v.as_str(), i) {
            problems.push(Problem::new(
                at.clone(),
                format!("duplicate voter {v:?} (also initial_voters[{first}])"),
            ));
        }
        match config.nodes.iter().find(|n| &n.name == v) {
            None => problems.push(Problem::new(
                at,
                format!(
                    "{v:?} is not a node of this cluster (expected one of: {})",
                    config.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )),
            Some(n) if !n.roles.contains(&Role::ControlPlane) => problems.push(Problem::new(
                at,
                format!("{v:?} is not a control-plane node (give it the role \"control-plane\" or pick another voter)"),
            )),
            Some(_) => {}
        }
    }

    let nodes: Option<Vec<NodeSpec>> = nodes.into_iter().collect();
    let mut nodes = nodes?;
    for n in &mut nodes {
        n.voter = voters.contains(&n.name);
    }
    Some(Contract {
        boot_server: boot_server?,
        nodes,
        config,
    })
}

fn check_node(
    i: usize,
    n: &NodeConfig,
    config: &ClusterConfig,
    problems: &mut Vec<Problem>,
) -> Option<NodeSpec> {
    let at = |f: &str| format!("nodes[{i}].{f}");
    let mac = match n.mac.parse::<MacAddr>() {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(Problem::new(at("mac"), e));
            None
        }
    };
    let ipv4 = parse_ipv4(&at("ipv4"), &n.ipv4, problems);
    if n.roles.is_empty() {
        problems.push(Problem::new(
            at("roles"),
            "no roles (expected at least one of \"control-plane\", \"worker\")",
        ));
    }
    let mut roles = n.roles.clone();
    roles.sort();
    roles.dedup();
    if let Some(disk) = &n.disk {
        check_disk(&at("disk"), disk, problems);
    }
    let ports = n
        .ports
        .as_ref()
        .map(|o| o.apply(&config.ports))
        .unwrap_or_else(|| config.ports.clone());
    if n.ports.is_some() {
        for (field, value) in ports.named() {
            check_port(at(&format!("ports.{field}")), value, problems);
        }
    }
    // Ports must not collide on one node. A collision between two cluster-level values is
    // reported once, by the cluster-level check; here only those an override takes part in.
    let overridden = |field: &str| {
        n.ports
            .as_ref()
            .is_some_and(|o| o.fields_set().contains(&field))
    };
    let named = ports.named();
    for (a, (fa, va)) in named.iter().enumerate() {
        if let Some((fb, _)) = named[..a].iter().find(|(_, vb)| vb == va) {
            if overridden(fa) || overridden(fb) {
                problems.push(Problem::new(
                    at(&format!("ports.{fa}")),
                    format!("{va} collides with {fb} on node {:?} (expected a different port per service)", n.name),
                ));
            }
        }
    }
    Some(NodeSpec {
        name: n.name.clone(),
        mac: mac?,
        ipv4: ipv4?,
        roles,
        disk: n.disk.clone(),
        ports,
        labels: n.labels.clone(),
        voter: false,
    })
}
