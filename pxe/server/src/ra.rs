//! The IPv6 router-advertisement responder (full mode, `--ipv6-ra on`): answers router
//! solicitations on the boot interface with the minimal RA from [`pxe_protocol::ra`] (router
//! lifetime 0, M and O clear), which ends iPXE's ~13 s wait for IPv6 autoconfiguration. Runs on
//! its own OS thread (a raw ICMPv6 socket; the kernel fills in the checksum).

use std::io::Read;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

use pxe_protocol::ra::{is_router_solicitation, router_advertisement};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};

use crate::state::{Metrics, State};
use crate::ServerError;

const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Opens the raw ICMPv6 socket.
pub fn bind(state: &State) -> Result<Socket, ServerError> {
    let iface = &state.config.interface;
    let err = |e: std::io::Error| ServerError::Bind {
        what: "IPv6 RA (raw ICMPv6)".into(),
        addr: iface.name.clone(),
        message: format!(
            "{e} (needs CAP_NET_RAW and IPv6 on the interface; or pass --ipv6-ra off)"
        ),
    };
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(err)?;
    s.bind_device(Some(iface.name.as_bytes())).map_err(err)?;
    s.join_multicast_v6(&ALL_ROUTERS, iface.index)
        .map_err(err)?;
    s.set_multicast_if_v6(iface.index).map_err(err)?;
    s.set_multicast_hops_v6(255).map_err(err)?;
    s.set_unicast_hops_v6(255).map_err(err)?;
    Ok(s)
}

/// Serves forever on the calling thread.
pub fn run(state: Arc<State>, sock: Socket) {
    let iface = state.config.interface.clone();
    let ra = router_advertisement(iface.mac);
    let dest = SocketAddrV6::new(ALL_NODES, 0, 0, iface.index);
    // One unsolicited RA at start, then one per solicitation.
    let send = |why: &str| match sock.send_to(&ra, &dest.into()) {
        Ok(_) => {
            Metrics::inc(&state.metrics.ra_sent);
            debug!(why, "sent IPv6 RA (router lifetime 0)");
        }
        Err(e) => warn!(error = %e, "cannot send IPv6 RA"),
    };
    send("startup");
    let mut buf = [0u8; 1500];
    loop {
        match (&sock).read(&mut buf) {
            Ok(n) if is_router_solicitation(&buf[..n]) => send("router solicitation"),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "ICMPv6 receive failed");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
