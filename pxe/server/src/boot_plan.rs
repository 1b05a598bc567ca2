//! What a machine asking for its boot gets, whatever dialect it asks in: iPXE fetching its
//! script over HTTP ([`crate::http`]) or the signed GRUB fetching its configuration over TFTP
//! ([`crate::secure_boot`]). Both go through [`plan_boot`], so the rules are the same: a
//! known node's boot only to the node ([`crate::boot_access`]), a new single-use enrollment
//! token for each boot, its architecture matched against its entry, a stranger the default
//! entry or nothing; and [`enrollment_for`] gives a boot's enrollment initrd only to the node
//! its token was made for.

use std::net::SocketAddr;
use std::sync::Arc;

use plasmacloud_contract::manifest::{Arch, BootEntry};
use plasmacloud_contract::{MacAddr, NodeSpec};
use rand::RngCore;
use tracing::{info, warn};

use crate::boot_access::{may_boot, Requester};
use crate::bundle::Bundle;
use crate::config::{Mode, UnknownMac};
use crate::enroll_initrd::{enrollment_initrd, ENROLL_INITRD_NAME};
use crate::leases::now_unix;
use crate::state::{lock, peer_v4, BootToken, NewEvent, State};

/// A boot to hand out.
#[derive(Debug, Clone)]
pub struct PlannedBoot {
    /// Shown by the loader: the node's name, or the default entry's.
    pub title: String,
    /// The bundle the boot comes from (its files are named under `/b/<version>/`).
    pub bundle: Arc<Bundle>,
    /// The manifest entry.
    pub entry: BootEntry,
    /// For a node's boot, the token in the URL (or TFTP path) of its enrollment initrd.
    pub url_token: Option<String>,
}

/// The answer to a machine asking for its boot.
#[derive(Debug)]
pub enum BootPlan {
    /// Boot this.
    Boot(PlannedBoot),
    /// Tell the machine why it is not booted (a refusal script or configuration).
    Refuse(String),
    /// A stranger under `--unknown-mac ignore`: told it is not booted, and no error.
    Ignored(String),
    /// Not for this requester: a known node's boot goes only to the node.
    Forbidden,
    /// No manifest entry for the node.
    NotFound(String),
    /// The enrollment token could not be recorded (the state directory failed).
    Unavailable,
}

/// The loader asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// iPXE, for its script.
    Ipxe,
    /// The signed GRUB of the Secure Boot chain, for its configuration.
    Grub,
}

impl Loader {
    /// The boot event's phase.
    pub fn phase(self) -> &'static str {
        match self {
            Loader::Ipxe => "ipxe-script",
            Loader::Grub => "grub-config",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Loader::Ipxe => "iPXE",
            Loader::Grub => "GRUB",
        }
    }
}

/// Decides what the machine with `mac`, asking from `peer` through `loader`, boots; `claimed`
/// is the architecture its loader runs on, when it says. Records the outcome as a boot event
/// of the loader's phase, failed for every refusal.
pub async fn plan_boot(
    state: &Arc<State>,
    peer: SocketAddr,
    mac: MacAddr,
    claimed: Option<Arch>,
    loader: Loader,
) -> BootPlan {
    let phase = loader.phase();
    let peer_ip = peer_v4(peer);
    let mac_text = mac.to_string();
    let bundle = state.bundles.current();
    let spec = bundle.contract.node_by_mac(mac).cloned();
    let node = spec.as_ref().map(|n| n.name.clone());
    let failed = |why: &str| record_not_served(state, peer, mac, loader, "failed", why);
    let refuse = |why: String| {
        warn!(node = node.as_deref().unwrap_or("-"), mac = %mac_text, %why, "not booting");
        failed(&why);
        BootPlan::Refuse(why)
    };
    let plan = match &spec {
        Some(spec) => {
            let name = &spec.name;
            let who = match may_boot(state, spec, peer) {
                Ok(w) => w,
                Err(why) => {
                    warn!(%peer, node = %name, %why, "boot refused");
                    failed(&format!("refused to {peer}: {why}"));
                    return BootPlan::Forbidden;
                }
            };
            let Some(entry) = bundle.manifest.entries.get(name).cloned() else {
                return BootPlan::NotFound("no manifest entry for this node".into());
            };
            if let Some(a) = claimed.filter(|a| *a != entry.arch) {
                return refuse(format!("{name} booted {a} {}, but its bundle entry has an {} kernel; rebuild the bundle with a {a} kernel for it (or check the machine)", loader.name(), entry.arch));
            }
            let url_token = match mint_boot_tokens(state, name, &who).await {
                Ok(t) => t,
                Err(e) => {
                    warn!(node = %name, error = %e, "cannot mint an enrollment token");
                    return BootPlan::Unavailable;
                }
            };
            if state.config.mode == Mode::Proxy {
                // Verified by its neighbour entry: what status shows as the node's address.
                state.saw(&mac_text, who.ip);
            }
            PlannedBoot {
                title: name.clone(),
                bundle: bundle.clone(),
                entry,
                url_token: Some(url_token),
            }
        }
        None => match state.config.unknown_mac {
            UnknownMac::Default => {
                let Some((title, entry)) = bundle.manifest.default_entry_for(claimed) else {
                    let a = claimed.unwrap_or_default();
                    return refuse(format!("{mac_text} is not in the cluster contract and the bundle has no {a} kernel for it (no {} entry)", a.default_entry()));
                };
                PlannedBoot {
                    title: title.to_string(),
                    bundle: bundle.clone(),
                    entry: entry.clone(),
                    url_token: None,
                }
            }
            UnknownMac::Ignore => {
                let why = format!(
                    "{mac_text} is not in the cluster contract; not booting it (--unknown-mac ignore)"
                );
                info!(%peer, mac = %mac_text, phase, "ignored a stranger");
                record_not_served(state, peer, mac, loader, "ignored", &why);
                return BootPlan::Ignored(why);
            }
        },
    };
    state.event(NewEvent {
        node: node.clone(),
        mac: Some(mac_text),
        ip: peer_ip,
        phase: phase.into(),
        status: "ok".into(),
        detail: format!("served to {peer} (bundle {})", bundle.short()),
        bundle: Some(bundle.version.clone()),
        ..Default::default()
    });
    info!(%peer, node = node.as_deref().unwrap_or("default"), bundle = bundle.short(), phase, "served a boot");
    BootPlan::Boot(plan)
}

/// Records a boot not served to `mac`, asking from `peer` through `loader`, as a boot event of
/// the loader's phase: `failed` for a refusal, `ignored` for a stranger under
/// `--unknown-mac ignore`. The callers count it in their own listener's metrics.
pub fn record_not_served(
    state: &State,
    peer: SocketAddr,
    mac: MacAddr,
    loader: Loader,
    status: &str,
    why: &str,
) {
    state.event(NewEvent {
        node: state
            .bundles
            .current()
            .contract
            .node_by_mac(mac)
            .map(|n| n.name.clone()),
        mac: Some(mac.to_string()),
        ip: peer_v4(peer),
        phase: loader.phase().into(),
        status: status.into(),
        detail: why.to_string(),
        ..Default::default()
    });
}

fn new_token() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Mints this boot's enrollment token (its hash synced to disk) and the URL token that
/// fetches it in the enrollment initrd; returns the URL token.
async fn mint_boot_tokens(
    state: &Arc<State>,
    node: &str,
    who: &Requester,
) -> Result<String, crate::ServerError> {
    let ttl = state.config.enroll_token_ttl;
    let (n, ip, mac) = (node.to_string(), who.ip.to_string(), who.mac_text());
    let now = now_unix();
    let enroll_token = state
        .with_enroll_tokens(move |t| t.mint(&n, &ip, &mac, now, ttl))
        .await??;
    let url_token = new_token();
    let mut tokens = lock(&state.tokens);
    tokens.retain(|_, t| now.saturating_sub(t.issued) < ttl);
    tokens.insert(
        url_token.clone(),
        BootToken {
            node: node.to_string(),
            ip: who.ip,
            issued: now,
            enroll_token,
        },
    );
    Ok(url_token)
}

/// Why a boot's enrollment initrd was not given.
#[derive(Debug)]
pub enum EnrollRefusal {
    /// No such token, or it expired.
    UnknownToken,
    /// Not the node the token was made for (recorded as a failed `enroll-initrd` event).
    NotTheNode,
    /// The node left the contract, or the file is not the enrollment initrd.
    NotFound(String),
    /// Making it failed.
    Internal,
}

/// The enrollment initrd behind `token` (a URL or TFTP path component) and `file`, for the
/// node it was made for, asking from `peer`.
pub fn enrollment_for(
    state: &State,
    peer: SocketAddr,
    token: &str,
    file: &str,
) -> Result<(NodeSpec, Vec<u8>), EnrollRefusal> {
    let ttl = state.config.enroll_token_ttl;
    let tok = lock(&state.tokens).get(token).cloned();
    let Some(tok) = tok.filter(|t| now_unix().saturating_sub(t.issued) < ttl) else {
        return Err(EnrollRefusal::UnknownToken);
    };
    let refuse = |why: String| {
        warn!(%peer, node = %tok.node, %why, "enrollment initrd refused");
        state.event(NewEvent {
            node: Some(tok.node.clone()),
            ip: peer_v4(peer),
            phase: "enroll-initrd".into(),
            status: "failed".into(),
            detail: format!("refused to {peer}: {why}"),
            ..Default::default()
        });
        EnrollRefusal::NotTheNode
    };
    if peer_v4(peer) != Some(tok.ip) {
        return Err(refuse(format!("the URL was issued to {}", tok.ip)));
    }
    let node = match state.bundles.current().contract.node(&tok.node) {
        Ok(n) => n.clone(),
        Err(_) => return Err(EnrollRefusal::NotFound("no such node".into())),
    };
    if let Err(why) = may_boot(state, &node, peer) {
        return Err(refuse(why));
    }
    if file != ENROLL_INITRD_NAME {
        return Err(EnrollRefusal::NotFound(file.to_string()));
    }
    match enrollment_initrd(&tok.enroll_token, state.ca.cert_pem()) {
        Ok(b) => Ok((node, b)),
        Err(e) => {
            warn!(error = %e, "cannot make the enrollment initrd");
            Err(EnrollRefusal::Internal)
        }
    }
}

/// Records the start of an enrollment initrd's transfer.
pub fn note_enrollment_sent(state: &State, node: &NodeSpec, peer: SocketAddr, len: usize) {
    state.event(NewEvent {
        node: Some(node.name.clone()),
        mac: Some(node.mac.to_string()),
        ip: peer_v4(peer),
        phase: "enroll-initrd".into(),
        status: "started".into(),
        detail: format!("{len} bytes to {peer}"),
        ..Default::default()
    });
}

/// Records a fetch of a bundle file (`path`) as a boot event of its phase (kernel, initrd,
/// overlay); a node's kernel fetch also records the bundle version it booted.
pub fn note_artifact(state: &State, bundle: &Bundle, peer: SocketAddr, path: &str) {
    let mac = state.mac_for_ip(peer);
    let node = mac
        .as_deref()
        .and_then(|m| state.node_of_mac(m))
        .map(|n| n.name.clone());
    let phase = bundle.phase_of(path);
    if let (Some(n), "kernel") = (&node, phase) {
        state.note_boot(n, &bundle.version);
    }
    state.event(NewEvent {
        node,
        mac,
        ip: peer_v4(peer),
        phase: phase.into(),
        status: "started".into(),
        detail: format!("{path} (bundle {})", bundle.short()),
        bundle: Some(bundle.version.clone()),
        ..Default::default()
    });
}
