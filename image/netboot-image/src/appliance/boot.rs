//! The `appliance` layer, last, which makes the tree boot as a node: `/init` (systemd),
//! `/dev/console`, an empty `/etc/machine-id` (each boot gets its own), systemd-networkd with
//! DHCP on every ethernet, the hostname unit (the contract's node name: `plasmacloud.node=` on
//! the kernel command line, else the overlay's identity file), a console marker once
//! `multi-user.target` is reached ([`READY_MARKER`]), `multi-user.target` as the default target,
//! and the masks of `omit`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::omit::{MASKED_GENERATORS, MASKED_UNITS};
use super::tree::{in_tree, layer_from, with_parents};
use crate::error::ImageError;
use crate::layers::Layer;
use crate::newc::{Entry, Kind};

/// Printed on the console by `plasmacloud-appliance-ready.service` once `multi-user.target`
/// is reached and the network is online; the line goes on with
/// `hostname=NAME ipv4: IFACE=ADDR/PREFIX …` (every global IPv4 address).
pub const READY_MARKER: &str = "plasmacloud-appliance: multi-user.target reached";

const NETWORK_FILE: &str = "\
# netboot-image appliance: DHCP on every ethernet (the design's \"Small ones\").
[Match]
Type=ether
Name=en* eth*

[Network]
DHCP=ipv4
IPv6AcceptRA=no
LinkLocalAddressing=no

[DHCPv4]
# The hostname comes from the contract (plasmacloud-hostname.service), not from DHCP.
UseHostname=no
ClientIdentifier=mac
";

const HOSTNAME_SCRIPT: &str = r#"#!/bin/sh
# netboot-image appliance: the hostname is the contract's node name, found like
# plasmacloud_contract::identity does: plasmacloud.node= on the kernel command line, then the
# overlay's identity file /etc/plasmacloud/node.
name=
for arg in $(cat /proc/cmdline); do
  case "$arg" in plasmacloud.node=*) name="${arg#plasmacloud.node=}" ;; esac
done
if [ -z "$name" ] && [ -r /etc/plasmacloud/node ]; then
  read -r name < /etc/plasmacloud/node
fi
[ -n "$name" ] || exit 0
echo "$name" > /proc/sys/kernel/hostname
echo "$name" > /etc/hostname
"#;

const HOSTNAME_UNIT: &str = "\
[Unit]
Description=Hostname from the PlasmaCloud contract (netboot-image appliance)
DefaultDependencies=no
Before=sysinit.target systemd-networkd.service network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /usr/local/lib/plasmacloud/appliance-hostname

[Install]
WantedBy=sysinit.target
";

fn ready_script() -> String {
    format!(
        r#"#!/bin/sh
# netboot-image appliance: one console line once multi-user.target is reached and the network
# is online (or systemd-networkd-wait-online gave up): the hostname and every global IPv4
# address, for test harnesses reading the serial console.
addrs=$(ip -4 -o addr show scope global | while read -r _ dev _ addr _; do printf ' %s=%s' "$dev" "$addr"; done)
echo "{READY_MARKER} hostname=$(cat /proc/sys/kernel/hostname) ipv4:$addrs" > /dev/console
"#
    )
}

const READY_UNIT: &str = "\
[Unit]
Description=Console marker: multi-user.target reached (netboot-image appliance)
After=multi-user.target network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/lib/plasmacloud/appliance-ready

[Install]
WantedBy=multi-user.target
";

/// The `appliance` layer for the tree at `root` (which must have systemd).
pub(super) fn appliance_layer(root: &Path) -> Result<Layer, ImageError> {
    let systemd = in_tree(root, Path::new("/lib/systemd/systemd"));
    if !root.join(&systemd).is_file() {
        return Err(ImageError::bad(
            root,
            "no /lib/systemd/systemd in the root filesystem (include the systemd and systemd-sysv packages)",
        ));
    }
    let sys = PathBuf::from("etc/systemd/system");
    let lib_units = "/lib/systemd/system";
    let mut entries = vec![
        Entry::symlink("init", "/lib/systemd/systemd"),
        Entry {
            path: "dev/console".into(),
            perm: 0o600,
            uid: 0,
            gid: 0,
            kind: Kind::CharDev { major: 5, minor: 1 },
        },
        Entry {
            path: "dev/null".into(),
            perm: 0o666,
            uid: 0,
            gid: 0,
            kind: Kind::CharDev { major: 1, minor: 3 },
        },
        Entry::bytes("etc/machine-id", 0o444, Vec::new()),
        Entry::bytes("etc/hostname", 0o644, b"plasmacloud-appliance\n".to_vec()),
        Entry::bytes(
            "etc/systemd/network/80-plasmacloud-dhcp.network",
            0o644,
            NETWORK_FILE,
        ),
        Entry::bytes(
            "usr/local/lib/plasmacloud/appliance-hostname",
            0o755,
            HOSTNAME_SCRIPT,
        ),
        Entry::bytes(
            sys.join("plasmacloud-hostname.service"),
            0o644,
            HOSTNAME_UNIT,
        ),
        Entry::bytes(
            "usr/local/lib/plasmacloud/appliance-ready",
            0o755,
            ready_script(),
        ),
        Entry::bytes(
            sys.join("plasmacloud-appliance-ready.service"),
            0o644,
            READY_UNIT,
        ),
        Entry::symlink(
            sys.join("sysinit.target.wants/plasmacloud-hostname.service"),
            "/etc/systemd/system/plasmacloud-hostname.service",
        ),
        Entry::symlink(
            sys.join("multi-user.target.wants/plasmacloud-appliance-ready.service"),
            "/etc/systemd/system/plasmacloud-appliance-ready.service",
        ),
        Entry::symlink(
            sys.join("multi-user.target.wants/systemd-networkd.service"),
            format!("{lib_units}/systemd-networkd.service"),
        ),
        Entry::symlink(
            sys.join("sockets.target.wants/systemd-networkd.socket"),
            format!("{lib_units}/systemd-networkd.socket"),
        ),
        Entry::symlink(
            sys.join("network-online.target.wants/systemd-networkd-wait-online.service"),
            format!("{lib_units}/systemd-networkd-wait-online.service"),
        ),
        Entry::symlink(
            sys.join("dbus-org.freedesktop.network1.service"),
            format!("{lib_units}/systemd-networkd.service"),
        ),
    ];
    entries.push(Entry::symlink(
        sys.join("default.target"),
        format!("{lib_units}/multi-user.target"),
    ));
    for unit in MASKED_UNITS {
        entries.push(Entry::symlink(sys.join(unit), "/dev/null"));
    }
    for g in MASKED_GENERATORS {
        entries.push(Entry::symlink(
            Path::new("etc/systemd/system-generators").join(g),
            "/dev/null",
        ));
    }
    // The tree's own /dev contents are skipped; keep the directory itself.
    entries.push(Entry::dir("dev", 0o755));
    let mut l = layer_from("appliance".into(), root, Vec::new());
    let mut all: BTreeMap<PathBuf, Entry> = BTreeMap::new();
    for e in entries.drain(..) {
        with_parents(root, &e.path, &mut all);
        all.insert(e.path.clone(), e);
    }
    l.entries = all.into_values().collect();
    Ok(l)
}
