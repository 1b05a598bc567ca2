//! Configuration: flags (each also an env var `PLASMACLOUD_PXE_…`) over a TOML file
//! (`--config`, `deny_unknown_fields`, keys spelled like the flags), validated into [`Config`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use plasmacloud_contract::Contract;
use serde::Deserialize;

use crate::bundle::Bundle;
use crate::cluster_ca::{check_pin, CaStatus};
use crate::subnets::{parse_subnet, Cidr, Subnet, SubnetFile, Subnets};
use crate::ServerError;

/// Default directory of iPXE binaries (Debian's `ipxe` package).
pub const DEFAULT_IPXE_DIR: &str = "/usr/lib/ipxe";
/// Default lease time, seconds.
pub const DEFAULT_LEASE_SECS: u32 = 3600;
/// Default cap on concurrent TFTP transfers.
pub const DEFAULT_TFTP_MAX_TRANSFERS: usize = 128;
/// Default cap on concurrent TFTP transfers from one client address.
pub const DEFAULT_TFTP_MAX_PER_CLIENT: usize = 8;
/// Default largest TFTP window (RFC 7440) granted.
pub const DEFAULT_TFTP_MAX_WINDOW: u16 = 64;
/// Default DHCP server port.
pub const DEFAULT_DHCP_PORT: u16 = 67;
/// Default TFTP port.
pub const DEFAULT_TFTP_PORT: u16 = 69;
/// Default lifetime of an enrollment token (and of the per-boot URL that carries it), seconds:
/// a node must enroll within this long after fetching its script.
pub const DEFAULT_ENROLL_TOKEN_TTL_SECS: u64 = 3600;
/// The shortest enrollment token lifetime accepted, seconds.
pub const MIN_ENROLL_TOKEN_TTL_SECS: u64 = 60;

/// DHCP mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// We are the segment's DHCP server: a lease pool plus the contract's fixed addresses.
    Full,
    /// Another server assigns addresses; we answer PXE clients with boot information only
    /// (UDP 67 and 4011).
    Proxy,
}

impl Mode {
    /// `full` or `proxy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Proxy => "proxy",
        }
    }
}

/// What to do with machines whose MAC is not in the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownMac {
    /// Do not answer them (logged as a boot event).
    Ignore,
    /// Boot the bundle's `default` entry (no node's overlay, no enrollment).
    Default,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The flags of `serve` and `check` (every one also an env var and a TOML key).
#[derive(Debug, Clone, Default, Args)]
pub struct Flags {
    /// TOML file with any of the keys below (flags and env vars override it).
    #[arg(long, env = "PLASMACLOUD_PXE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The boot network interface (DHCP, TFTP and RA are bound to it).
    #[arg(long, env = "PLASMACLOUD_PXE_INTERFACE", value_name = "IF")]
    pub interface: Option<String>,
    /// DHCP mode [default: full].
    #[arg(long, env = "PLASMACLOUD_PXE_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// The cluster contract (cluster-config.json).
    #[arg(long, env = "PLASMACLOUD_PXE_CLUSTER", value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// The bundle directory (kernel, initrds, manifest.json); reloaded on SIGHUP and when its manifest.json changes.
    #[arg(long, env = "PLASMACLOUD_PXE_BUNDLE", value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Pool for machines not in the contract, full mode only: FIRST-LAST.
    #[arg(long, env = "PLASMACLOUD_PXE_DHCP_RANGE", value_name = "FIRST-LAST")]
    pub dhcp_range: Option<String>,
    /// Where undionly.kpxe, ipxe.efi and snponly.efi are (also the TFTP root) [default: /usr/lib/ipxe].
    #[arg(long, env = "PLASMACLOUD_PXE_IPXE_DIR", value_name = "DIR")]
    pub ipxe_dir: Option<PathBuf>,
    /// Boot x86-64 UEFI PXE machines through the Secure Boot chain instead of iPXE: DIR holds
    /// shimx64.efi (Microsoft-signed shim) and grubx64.efi (a signed GRUB netboot image), e.g.
    /// Debian's shimx64.efi.signed and grubnetx64.efi.signed; GRUB then loads each node's
    /// configuration, kernel and initrds over TFTP. Works with Secure Boot on or off; the
    /// bundle's kernel must be signed (Debian's are) for machines with it on.
    #[arg(long, env = "PLASMACLOUD_PXE_SECURE_BOOT_DIR", value_name = "DIR")]
    pub secure_boot_dir: Option<PathBuf>,
    /// Where leases, the cluster CA (pki/) and the enrollment tokens (enroll/) are kept
    /// (made 0700; protect it: it holds the CA key).
    #[arg(long, env = "PLASMACLOUD_PXE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Boot-plane HTTP listener [default: <interface IPv4>:<contract boot_server.http_port>].
    #[arg(long, env = "PLASMACLOUD_PXE_HTTP_ADDR", value_name = "ADDR:PORT")]
    pub http_addr: Option<SocketAddr>,
    /// Management listener (HTTPS: status, events, metrics for loopback and operator certificates; nodes' phase reports) [default: <interface IPv4>:<contract boot_server.management_port>].
    #[arg(
        long,
        env = "PLASMACLOUD_PXE_MANAGEMENT_ADDR",
        value_name = "ADDR:PORT"
    )]
    pub management_addr: Option<SocketAddr>,
    /// Enrollment listener (HTTPS: nodes trade their boot token and a CSR for a certificate) [default: <interface IPv4>:<contract boot_server.enrollment_port>].
    #[arg(
        long,
        env = "PLASMACLOUD_PXE_ENROLLMENT_ADDR",
        value_name = "ADDR:PORT"
    )]
    pub enrollment_addr: Option<SocketAddr>,
    /// Lifetime of a boot's enrollment token, seconds (at least 60) [default: 3600].
    #[arg(long, env = "PLASMACLOUD_PXE_ENROLL_TOKEN_TTL", value_name = "SECS")]
    pub enroll_token_ttl: Option<u64>,
    /// Machines not in the contract: ignore, or boot the default entry [default: default].
    #[arg(long, env = "PLASMACLOUD_PXE_UNKNOWN_MAC", value_enum)]
    pub unknown_mac: Option<UnknownMac>,
    /// Answer IPv6 router solicitations with a lifetime-0 RA (full mode) [default: on].
    #[arg(long = "ipv6-ra", env = "PLASMACLOUD_PXE_IPV6_RA", value_enum)]
    pub ipv6_ra: Option<Switch>,
    /// Lease time in seconds [default: 3600].
    #[arg(long, env = "PLASMACLOUD_PXE_LEASE_SECS", value_name = "SECS")]
    pub lease_secs: Option<u32>,
    /// Router (option 3) handed out in full mode [default: none].
    #[arg(long, env = "PLASMACLOUD_PXE_ROUTER", value_name = "IP")]
    pub router: Option<Ipv4Addr>,
    /// A rack subnet behind a DHCP relay (repeatable; the env var takes them space-separated):
    /// requests relayed from it (giaddr inside CIDR) get an address from its range (full mode)
    /// and its router [default router: the relay's giaddr].
    #[arg(
        long = "subnet",
        env = "PLASMACLOUD_PXE_SUBNETS",
        value_name = "CIDR[,range=FIRST-LAST][,router=IP]",
        value_delimiter = ' '
    )]
    pub subnet: Vec<String>,
    /// DHCP server port [default: 67].
    #[arg(long, env = "PLASMACLOUD_PXE_DHCP_PORT", value_name = "PORT")]
    pub dhcp_port: Option<u16>,
    /// TFTP port [default: 69].
    #[arg(long, env = "PLASMACLOUD_PXE_TFTP_PORT", value_name = "PORT")]
    pub tftp_port: Option<u16>,
    /// Most concurrent TFTP transfers [default: 128].
    #[arg(long, env = "PLASMACLOUD_PXE_TFTP_MAX_TRANSFERS", value_name = "N")]
    pub tftp_max_transfers: Option<usize>,
    /// Most concurrent TFTP transfers from one client address [default: 8].
    #[arg(long, env = "PLASMACLOUD_PXE_TFTP_MAX_PER_CLIENT", value_name = "N")]
    pub tftp_max_per_client: Option<usize>,
    /// Largest TFTP windowsize granted [default: 64].
    #[arg(long, env = "PLASMACLOUD_PXE_TFTP_MAX_WINDOW", value_name = "N")]
    pub tftp_max_window: Option<u16>,
    /// Log format [default: pretty].
    #[arg(long, env = "PLASMACLOUD_PXE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The TOML file, keys as the flags (`dhcp-range = "…"`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    interface: Option<String>,
    mode: Option<Mode>,
    cluster: Option<PathBuf>,
    bundle: Option<PathBuf>,
    dhcp_range: Option<String>,
    ipxe_dir: Option<PathBuf>,
    secure_boot_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    management_addr: Option<SocketAddr>,
    enrollment_addr: Option<SocketAddr>,
    enroll_token_ttl: Option<u64>,
    unknown_mac: Option<UnknownMac>,
    ipv6_ra: Option<Switch>,
    lease_secs: Option<u32>,
    router: Option<Ipv4Addr>,
    subnet: Option<Vec<SubnetFile>>,
    dhcp_port: Option<u16>,
    tftp_port: Option<u16>,
    tftp_max_transfers: Option<usize>,
    tftp_max_per_client: Option<usize>,
    tftp_max_window: Option<u16>,
    log_format: Option<LogFormat>,
}

/// The boot interface as found on this machine.
#[derive(Debug, Clone)]
pub struct InterfaceInfo {
    /// Name.
    pub name: String,
    /// Its first IPv4 address (our server identifier).
    pub ip: Ipv4Addr,
    /// Its netmask.
    pub netmask: Ipv4Addr,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its MTU.
    pub mtu: u32,
    /// Its ifindex.
    pub index: u32,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The boot interface.
    pub interface: InterfaceInfo,
    /// DHCP mode.
    pub mode: Mode,
    /// The contract file (read again with the bundle on a reload).
    pub cluster_path: PathBuf,
    /// The bundle directory as configured (the contract and the manifest live in the served
    /// [`Bundle`], which a reload replaces).
    pub bundle_dir: PathBuf,
    /// Pool (full mode).
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// iPXE binaries / TFTP root.
    pub ipxe_dir: PathBuf,
    /// The Secure Boot chain's shim and GRUB, when x86-64 UEFI PXE machines boot through it.
    pub secure_boot_dir: Option<PathBuf>,
    /// Leases, the CA, the enrollment tokens.
    pub state_dir: PathBuf,
    /// Boot plane.
    pub http_addr: SocketAddr,
    /// Management plane.
    pub management_addr: SocketAddr,
    /// Enrollment listener.
    pub enrollment_addr: SocketAddr,
    /// Enrollment token lifetime, seconds.
    pub enroll_token_ttl: u64,
    /// The CA the state directory holds (checked against the contract's pin).
    pub ca: CaStatus,
    /// Unknown MAC policy.
    pub unknown_mac: UnknownMac,
    /// IPv6 RA responder.
    pub ipv6_ra: bool,
    /// Lease seconds.
    pub lease_secs: u32,
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// The subnets served: the boot interface's own (`dhcp_range`, `router`) and those behind
    /// relays (`--subnet`).
    pub subnets: Subnets,
    /// DHCP port.
    pub dhcp_port: u16,
    /// TFTP port.
    pub tftp_port: u16,
    /// TFTP concurrency.
    pub tftp_max_transfers: usize,
    /// TFTP concurrency per client address.
    pub tftp_max_per_client: usize,
    /// TFTP window cap.
    pub tftp_max_window: u16,
    /// Log format.
    pub log_format: LogFormat,
}

impl Config {
    /// The base URL of the boot plane as clients see it.
    pub fn http_base(&self) -> String {
        let ip = match self.http_addr.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_unspecified() => v4,
            _ => self.interface.ip,
        };
        format!("http://{ip}:{}", self.http_addr.port())
    }

    /// What x86-64 UEFI PXE machines boot with.
    pub fn uefi_chain(&self) -> pxe_protocol::dhcp::UefiChain {
        match self.secure_boot_dir {
            Some(_) => pxe_protocol::dhcp::UefiChain::Shim,
            None => pxe_protocol::dhcp::UefiChain::Ipxe,
        }
    }
}

fn cfg_err(field: &str, message: impl Into<String>) -> ServerError {
    ServerError::Config {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Reads the log format alone (before logging is set up).
pub fn log_format(flags: &Flags) -> LogFormat {
    if let Some(f) = flags.log_format {
        return f;
    }
    flags
        .config
        .as_deref()
        .and_then(|p| read_file_config(p).ok())
        .and_then(|f| f.log_format)
        .unwrap_or(LogFormat::Pretty)
}

fn read_file_config(path: &Path) -> Result<FileConfig, ServerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| cfg_err("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| cfg_err("config", format!("{}: {e}", path.display())))
}

/// Merges flags over the file, loads the contract and the bundle (every file opened and
/// checked, [`Bundle::load`]), checks the interface. Binds nothing.
pub fn resolve(flags: &Flags) -> Result<(Config, Bundle), ServerError> {
    let file = match &flags.config {
        Some(p) => read_file_config(p)?,
        None => FileConfig::default(),
    };
    macro_rules! pick {
        ($f:ident) => {
            flags.$f.clone().or(file.$f.clone())
        };
    }
    let mode = pick!(mode).unwrap_or(Mode::Full);
    let if_name = pick!(interface).ok_or_else(|| {
        cfg_err(
            "interface",
            "missing: pass --interface IF (the boot network)",
        )
    })?;
    let interface = interface_info(&if_name)?;
    let cluster_path = pick!(cluster)
        .ok_or_else(|| cfg_err("cluster", "missing: pass --cluster cluster-config.json"))?;
    let bundle_dir = pick!(bundle).ok_or_else(|| {
        cfg_err(
            "bundle",
            "missing: pass --bundle DIR (netboot-image's output)",
        )
    })?;
    let bundle = Bundle::load(&bundle_dir, &cluster_path)?;
    let contract = &bundle.contract;
    let ipxe_dir = pick!(ipxe_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_IPXE_DIR));
    check_ipxe_dir(&ipxe_dir)?;
    let secure_boot_dir = pick!(secure_boot_dir);
    if let Some(d) = &secure_boot_dir {
        crate::secure_boot::check_dir(d)?;
    }
    let state_dir = pick!(state_dir).ok_or_else(|| {
        cfg_err(
            "state-dir",
            "missing: pass --state-dir DIR (leases and the cluster CA live there)",
        )
    })?;
    check_state_dir(&state_dir)?;
    let ca = crate::cluster_ca::status(&state_dir)?;
    check_pin(contract, &ca)?;
    let dhcp_range = match pick!(dhcp_range) {
        Some(r) => Some(parse_range(&r, &interface)?),
        None => None,
    };
    if mode == Mode::Proxy && dhcp_range.is_some() {
        return Err(cfg_err(
            "dhcp-range",
            "proxy mode assigns no addresses; drop --dhcp-range or use --mode full",
        ));
    }
    let router = pick!(router);
    let subnet_flags: Vec<String> = if flags.subnet.is_empty() {
        file.subnet
            .iter()
            .flatten()
            .map(SubnetFile::to_flag)
            .collect()
    } else {
        flags.subnet.clone()
    };
    let mut relayed = Vec::new();
    for f in subnet_flags.iter().filter(|f| !f.trim().is_empty()) {
        let s = parse_subnet(f.trim()).map_err(|e| cfg_err("subnet", format!("{f:?}: {e}")))?;
        if mode == Mode::Proxy && s.range.is_some() {
            return Err(cfg_err(
                "subnet",
                format!(
                    "{f:?}: proxy mode assigns no addresses; drop its range= or use --mode full"
                ),
            ));
        }
        relayed.push(s);
    }
    let local = Subnet {
        cidr: Cidr::of(interface.ip, interface.netmask),
        range: dhcp_range,
        router,
        relayed: false,
    };
    let subnets = Subnets::new(local, relayed).map_err(|e| cfg_err("subnet", e))?;
    check_nodes_on_subnet(mode, &subnets, contract)?;
    let bs = &contract.config.boot_server;
    let http_port = u16::try_from(bs.http_port).unwrap_or(8081);
    let mgmt_port = u16::try_from(bs.management_port).unwrap_or(8082);
    let enroll_port = u16::try_from(bs.enrollment_port).unwrap_or(8443);
    let http_addr = pick!(http_addr).unwrap_or(SocketAddr::from((interface.ip, http_port)));
    let management_addr =
        pick!(management_addr).unwrap_or(SocketAddr::from((interface.ip, mgmt_port)));
    let enrollment_addr =
        pick!(enrollment_addr).unwrap_or(SocketAddr::from((interface.ip, enroll_port)));
    if http_addr == management_addr {
        return Err(cfg_err(
            "management-addr",
            format!("{management_addr} is also the boot-plane address; the management API needs its own listener"),
        ));
    }
    if enrollment_addr == http_addr || enrollment_addr == management_addr {
        return Err(cfg_err(
            "enrollment-addr",
            format!("{enrollment_addr} is already the boot-plane or management address; enrollment needs its own listener"),
        ));
    }
    let enroll_token_ttl = pick!(enroll_token_ttl).unwrap_or(DEFAULT_ENROLL_TOKEN_TTL_SECS);
    if enroll_token_ttl < MIN_ENROLL_TOKEN_TTL_SECS {
        return Err(cfg_err(
            "enroll-token-ttl",
            format!("{enroll_token_ttl} s is too short for a node to boot and enroll; give at least {MIN_ENROLL_TOKEN_TTL_SECS}"),
        ));
    }
    let cfg = Config {
        interface,
        mode,
        cluster_path,
        bundle_dir,
        dhcp_range,
        ipxe_dir,
        secure_boot_dir,
        state_dir,
        http_addr,
        management_addr,
        enrollment_addr,
        enroll_token_ttl,
        ca,
        unknown_mac: pick!(unknown_mac).unwrap_or(UnknownMac::Default),
        ipv6_ra: pick!(ipv6_ra).unwrap_or(Switch::On) == Switch::On,
        lease_secs: pick!(lease_secs).unwrap_or(DEFAULT_LEASE_SECS).max(60),
        router,
        subnets,
        dhcp_port: pick!(dhcp_port).unwrap_or(DEFAULT_DHCP_PORT),
        tftp_port: pick!(tftp_port).unwrap_or(DEFAULT_TFTP_PORT),
        tftp_max_transfers: pick!(tftp_max_transfers)
            .unwrap_or(DEFAULT_TFTP_MAX_TRANSFERS)
            .max(1),
        tftp_max_per_client: pick!(tftp_max_per_client)
            .unwrap_or(DEFAULT_TFTP_MAX_PER_CLIENT)
            .max(1),
        tftp_max_window: pick!(tftp_max_window)
            .unwrap_or(DEFAULT_TFTP_MAX_WINDOW)
            .max(1),
        log_format: pick!(log_format).unwrap_or(LogFormat::Pretty),
    };
    Ok((cfg, bundle))
}

/// In full mode every contract address must be on a served subnet: the boot interface's, or
/// one behind a relay (`--subnet`).
fn check_nodes_on_subnet(
    mode: Mode,
    subnets: &Subnets,
    contract: &Contract,
) -> Result<(), ServerError> {
    if mode == Mode::Full {
        for n in &contract.nodes {
            if subnets.holding(n.ipv4).is_none() {
                let relayed: Vec<String> =
                    subnets.relayed.iter().map(|s| s.cidr.to_string()).collect();
                return Err(cfg_err(
                    "cluster",
                    format!(
                        "node {} has ipv4 {} outside the boot interface's subnet {}{}; full mode hands out only addresses on the subnets it serves (declare a relayed rack subnet with --subnet CIDR)",
                        n.name,
                        n.ipv4,
                        subnets.local.cidr,
                        if relayed.is_empty() {
                            String::new()
                        } else {
                            format!(" and the relayed {}", relayed.join(", "))
                        }
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether a newly loaded bundle (and its contract) may replace `old` under a running server
/// configured by `cfg`: the same cluster, the same boot server (its ports are bound), every
/// node on the boot subnet in full mode, and the contract's CA pin (if any) is `ca_sha256`.
pub fn check_replacement(
    cfg: &Config,
    old: &Bundle,
    new: &Bundle,
    ca_sha256: &str,
) -> Result<(), ServerError> {
    if new.contract.id() != old.contract.id() {
        return Err(cfg_err(
            "cluster",
            format!(
                "{} is now cluster {:?}; this pxe-server serves {:?} (a different cluster needs its own pxe-server and state directory)",
                cfg.cluster_path.display(),
                new.contract.id(),
                old.contract.id()
            ),
        ));
    }
    if new.contract.config.boot_server != old.contract.config.boot_server {
        return Err(cfg_err(
            "cluster",
            format!(
                "{}: boot_server changed; its listeners are bound, so restart pxe-server to move them",
                cfg.cluster_path.display()
            ),
        ));
    }
    check_nodes_on_subnet(cfg.mode, &cfg.subnets, &new.contract)?;
    if let Some(pin) = new.contract.ca_sha256() {
        if !pin.eq_ignore_ascii_case(ca_sha256) {
            return Err(ServerError::CaPin {
                pinned: pin.to_string(),
                message: format!(
                    "this pxe-server's CA is {ca_sha256}; fix the contract's pki.ca_sha256"
                ),
            });
        }
    }
    Ok(())
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, mask: Ipv4Addr) -> bool {
    u32::from(a) & u32::from(mask) == u32::from(b) & u32::from(mask)
}

/// Looks the interface up: it must exist and carry an IPv4 address.
pub fn interface_info(name: &str) -> Result<InterfaceInfo, ServerError> {
    let ifaces = if_addrs::get_if_addrs()
        .map_err(|e| cfg_err("interface", format!("cannot list interfaces: {e}")))?;
    let all: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
    let mine: Vec<_> = ifaces.iter().filter(|i| i.name == name).collect();
    let sys = Path::new("/sys/class/net").join(name);
    if mine.is_empty() && !sys.exists() {
        let mut names = all.clone();
        names.sort();
        names.dedup();
        return Err(cfg_err(
            "interface",
            format!(
                "no interface {name:?} on this machine (have: {})",
                names.join(", ")
            ),
        ));
    }
    let v4 = mine.iter().find_map(|i| match &i.addr {
        if_addrs::IfAddr::V4(a) => Some((a.ip, a.netmask, i.index)),
        _ => None,
    });
    let (ip, netmask, index) = v4.ok_or_else(|| {
        cfg_err(
            "interface",
            format!("{name} has no IPv4 address; give it the boot server's address (contract boot_server.address) first"),
        )
    })?;
    let read = |f: &str| std::fs::read_to_string(sys.join(f)).unwrap_or_default();
    let mtu = read("mtu").trim().parse().unwrap_or(1500);
    let mut mac = [0u8; 6];
    for (o, p) in mac.iter_mut().zip(read("address").trim().split(':')) {
        *o = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    let index = index
        .or_else(|| read("ifindex").trim().parse().ok())
        .unwrap_or(0);
    Ok(InterfaceInfo {
        name: name.to_string(),
        ip,
        netmask,
        mac,
        mtu,
        index,
    })
}

fn parse_range(r: &str, iface: &InterfaceInfo) -> Result<(Ipv4Addr, Ipv4Addr), ServerError> {
    let (a, b) = crate::subnets::parse_range(r).map_err(|e| cfg_err("dhcp-range", e))?;
    for ip in [a, b] {
        if !same_subnet(ip, iface.ip, iface.netmask) {
            return Err(cfg_err(
                "dhcp-range",
                format!(
                    "{ip} is outside {}'s subnet {}/{}",
                    iface.name, iface.ip, iface.netmask
                ),
            ));
        }
    }
    Ok((a, b))
}

fn check_ipxe_dir(dir: &Path) -> Result<(), ServerError> {
    for f in ["undionly.kpxe", "snponly.efi"] {
        let p = dir.join(f);
        if !p.is_file() {
            return Err(ServerError::MissingArtifact {
                path: p,
                message: "iPXE first stage not found; install Debian's `ipxe` package or point --ipxe-dir at nixpkgs' ipxe".into(),
            });
        }
    }
    Ok(())
}

fn check_state_dir(dir: &Path) -> Result<(), ServerError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| cfg_err("state-dir", format!("cannot create {}: {e}", dir.display())))?;
    // It holds the CA key: private to its owner.
    plasmacloud_pki::credentials::restrict_dir(dir)
        .map_err(|e| cfg_err("state-dir", e.to_string()))?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"").map_err(|e| {
        cfg_err(
            "state-dir",
            format!("{} is not writable: {e}", dir.display()),
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
