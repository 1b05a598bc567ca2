//! Checks that a rack booted the way its scenario says, not merely that it became ready:
//! `uefi-http-3` must have used the firmware's own UEFI HTTP boot (DHCP `HTTPClient` answered
//! with a URL, `snponly.efi` fetched over HTTP, no TFTP), and `secureboot-1` the signed chain
//! with Secure Boot on (shim and GRUB over TFTP, GRUB's configuration, no iPXE, and the
//! guest's kernel saying Secure Boot is enabled), seen both in pxe-server's events and on each
//! node's console.

use anyhow::bail;

use super::console::strip_ansi;
use super::events::Event;
use super::run::Rack;

/// What OVMF's boot manager prints when it starts its HTTPv4 boot option.
pub const OVMF_HTTP_BOOT_LINE: &str = ">>Start HTTP Boot over IPv4";
/// What it prints when it starts PXE (must not show in an HTTP boot).
pub const OVMF_PXE_BOOT_LINE: &str = ">>Start PXE over IPv4";

impl Rack {
    /// The boot events pxe-server recorded for `name`.
    fn events_of(&self, name: &str) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.node.as_deref() == Some(name))
            .cloned()
            .collect()
    }

    /// `name`'s console of its current boot, without terminal escapes.
    pub(super) fn console_text(&mut self, name: &str) -> anyhow::Result<String> {
        let raw = std::fs::read_to_string(&self.vm(name)?.console.path).unwrap_or_default();
        Ok(raw.lines().map(|l| strip_ansi(l) + "\n").collect())
    }

    /// Every node in `names` was booted by UEFI HTTP boot: a DHCP event answering its
    /// `http-x64` (arch 16) request with the HTTP URL of `snponly.efi`, an `http-boot` event for
    /// that file, no `tftp` event, and OVMF's HTTP boot line (and no PXE line) on its console.
    pub fn check_http_boot(&mut self, names: &[String]) -> anyhow::Result<()> {
        let mut seen = Vec::new();
        for name in names {
            let mine = self.events_of(name);
            let dhcp = mine
                .iter()
                .find(|e| e.phase == "dhcp" && e.detail.contains("http-x64"))
                .map(|e| e.detail.clone());
            let Some(dhcp) = dhcp else {
                bail!(
                    "{name}: no DHCP answer to an HTTPClient (arch 16) request in pxe-server's events: {:?}",
                    mine.iter().map(|e| format!("{} {}", e.phase, e.detail)).collect::<Vec<_>>()
                );
            };
            if !dhcp.contains("http snponly.efi") {
                bail!(
                    "{name}: its HTTP boot DHCP answer did not name snponly.efi over HTTP: {dhcp}"
                );
            }
            if !mine.iter().any(|e| e.phase == "http-boot") {
                bail!(
                    "{name}: the firmware never fetched snponly.efi over HTTP (no http-boot event)"
                );
            }
            if let Some(t) = mine.iter().find(|e| e.phase == "tftp") {
                bail!("{name}: fetched {} over TFTP: not an HTTP boot", t.detail);
            }
            let console = self.console_text(name)?;
            if !console.contains(OVMF_HTTP_BOOT_LINE) {
                bail!("{name}: OVMF's console does not show {OVMF_HTTP_BOOT_LINE:?}");
            }
            if console.contains(OVMF_PXE_BOOT_LINE) {
                bail!("{name}: OVMF tried PXE ({OVMF_PXE_BOOT_LINE:?} on its console)");
            }
            seen.push(format!("{name}: {dhcp}"));
        }
        self.say(&format!(
            "check: UEFI HTTP boot on every node (OVMF's HTTPv4 entry, no TFTP, snponly.efi over HTTP): {}",
            seen.join("; ")
        ));
        Ok(())
    }
}

/// What Debian's kernel prints when the firmware's `SecureBoot` variable says it is on.
pub const KERNEL_SECURE_BOOT_LINE: &str = "Secure boot enabled";
/// What it prints when it locks itself down because of it.
pub const KERNEL_LOCKDOWN_LINE: &str = "Kernel is locked down from EFI Secure Boot";
/// What the signed GRUB prints when it starts.
pub const GRUB_BANNER: &str = "Welcome to GRUB!";

impl Rack {
    /// Every node in `names` came up through the Secure Boot chain with Secure Boot on: its
    /// DHCP answer named shim, it fetched `shimx64.efi` and `grubx64.efi` over TFTP and its
    /// GRUB configuration (`grub-config`), no iPXE script, and its console shows GRUB and the
    /// kernel reading Secure Boot as enabled from the firmware (and locking itself down).
    pub fn check_secure_boot(&mut self, names: &[String]) -> anyhow::Result<()> {
        let mut seen = Vec::new();
        for name in names {
            let mine = self.events_of(name);
            let all = || {
                mine.iter()
                    .map(|e| format!("{} {} {}", e.phase, e.status, e.detail))
                    .collect::<Vec<_>>()
            };
            if !mine
                .iter()
                .any(|e| e.phase == "dhcp" && e.detail.contains("shimx64.efi (Secure Boot chain)"))
            {
                bail!(
                    "{name}: no DHCP answer naming shim in pxe-server's events: {:?}",
                    all()
                );
            }
            for f in ["shimx64.efi", "grubx64.efi"] {
                if !mine
                    .iter()
                    .any(|e| e.phase == "tftp" && e.detail.starts_with(f))
                {
                    bail!("{name}: {f} was never fetched over TFTP: {:?}", all());
                }
            }
            if !mine
                .iter()
                .any(|e| e.phase == "grub-config" && e.status == "ok")
            {
                bail!("{name}: GRUB never got its configuration: {:?}", all());
            }
            if let Some(e) = mine.iter().find(|e| e.phase == "ipxe-script") {
                bail!("{name}: iPXE ran ({}): not the signed chain", e.detail);
            }
            let console = self.console_text(name)?;
            for line in [GRUB_BANNER, KERNEL_SECURE_BOOT_LINE, KERNEL_LOCKDOWN_LINE] {
                if !console.contains(line) {
                    bail!("{name}: its console does not show {line:?}");
                }
            }
            seen.push(name.clone());
        }
        self.say(&format!(
            "check: Secure Boot on and the signed chain (OVMF PXE → shim → GRUB over TFTP → signed kernel; the guest kernel: {KERNEL_SECURE_BOOT_LINE:?}) on {}",
            seen.join(", ")
        ));
        Ok(())
    }
}
