//! What the appliance leaves out, to boot faster from RAM: files of the tree that are not
//! packed ([`PACK_OMIT`]) and the systemd units and generators it masks ([`MASKED_UNITS`],
//! [`MASKED_GENERATORS`]).

use std::path::Path;

/// Version of what the rootfs layers leave out ([`PACK_OMIT`]); bump it when that changes.
pub(super) const PACK_VERSION: u32 = 1;

/// Paths of the root filesystem tree (and everything under them) that are not packed: an
/// appliance that boots into RAM never reads them, and every byte costs its transfer and
/// unpacking on every boot. udev's compiled hardware database (vendor and model names only),
/// Perl (maintainer scripts), dpkg's and apt's state and libraries, time zones (without them
/// the clock is UTC), shell completions and licence texts.
pub const PACK_OMIT: &[&str] = &[
    "usr/lib/udev/hwdb.bin",
    "usr/bin/perl",
    "usr/bin/perl5.36.0",
    "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/share/perl5",
    "var/lib/dpkg",
    "var/lib/apt",
    "usr/lib/apt",
    "usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0",
    "usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0.0",
    "usr/lib/x86_64-linux-gnu/libapt-private.so.0.0",
    "usr/lib/x86_64-linux-gnu/libapt-private.so.0.0.0",
    "usr/share/zoneinfo",
    "usr/share/bash-completion",
    "usr/share/lintian",
    "usr/share/common-licenses",
];

/// Whether `path` (relative to the tree) is, or is under, a [`PACK_OMIT`] entry.
pub(super) fn omitted(path: &Path) -> bool {
    PACK_OMIT.iter().any(|o| path.starts_with(o))
}

/// Units the appliance masks: under TCG every unit started costs a fork and exec at boot, and
/// none of these serves a node that runs from RAM with no console login (timers for apt, dpkg
/// and filesystem maintenance, kernel filesystems nobody mounts, module loads for hardware a
/// node does not have, utmp, the random seed and pstore of a disk it does not have, journal
/// flushing to a /var that is RAM anyway, logins).
pub const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "getty@tty1.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "modprobe@dm_mod.service",
    "modprobe@configfs.service",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "kmod-static-nodes.service",
    "systemd-pstore.service",
    "systemd-random-seed.service",
    "systemd-journal-flush.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-remount-fs.service",
    "systemd-logind.service",
    // Every user and group Debian's sysusers.d declares is already in the tree's passwd and
    // group, and the static device permissions it sets are for devices (sound, kvm, fuse, tun)
    // a node does not have; both run before udevd starts, so they delay every device.
    "systemd-sysusers.service",
    "systemd-tmpfiles-setup-dev.service",
    // Nothing on a node talks D-Bus (systemctl uses systemd's private socket; networkd runs
    // without a bus), and starting the bus costs seconds of CPU under TCG.
    "dbus.service",
    "dbus.socket",
];

/// systemd generators the appliance masks (each runs at every boot and daemon-reload, before
/// any unit starts): no fstab, no crypt/verity/integrity devices, no SysV scripts that lack a
/// unit, no gettys, no rc.local, no hibernation, no `systemd.run=` or debug shell.
pub const MASKED_GENERATORS: &[&str] = &[
    "systemd-cryptsetup-generator",
    "systemd-debug-generator",
    "systemd-fstab-generator",
    "systemd-getty-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
    "systemd-veritysetup-generator",
];
