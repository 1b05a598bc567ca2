//! The scenarios `vm-tests/rack` takes, by name.

use std::fmt;

/// How a VM's firmware boots it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Firmware {
    /// SeaBIOS + the iPXE option ROM of the NIC (machine `pc`).
    Bios,
    /// OVMF (machine `q35`, pflash code + a copy of the vars).
    Uefi,
    /// OVMF's own UEFI HTTP boot: the NIC has no option ROM (`romfile=`, so no iPXE in the
    /// firmware) and OVMF's PXE is switched off (`opt/org.tianocore/IPv4PXESupport=no`, IPv6
    /// too), so its boot manager's network entry is "UEFI HTTPv4": DHCP with vendor class
    /// `HTTPClient` (arch 16), then the URL it is given, over HTTP.
    UefiHttp,
    /// OVMF's Secure Boot build (`OVMF_CODE_4M.secboot.fd`, SMM) with Microsoft's keys
    /// enrolled and Secure Boot on (`OVMF_VARS_4M.ms.fd`); no option ROM, so OVMF's own PXE
    /// boots the signed chain pxe-server serves: shim → GRUB → Debian's kernel.
    SecureBoot,
}

/// One scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scenario {
    /// `cold-3`: three nodes cold boot to cluster-ready.
    Cold3,
    /// `cold-5`: five nodes cold boot to cluster-ready.
    Cold5,
    /// `uefi-3`: `cold-3` booted by OVMF.
    Uefi3,
    /// `reboot`: `cold-3`, then one node power-cycles, PXE-boots again, and comes back as the
    /// same member with its data.
    Reboot,
    /// `leader-loss`: `cold-3`, then the Raft leader powers off; the other two keep serving
    /// writes; it comes back and rejoins.
    LeaderLoss,
    /// `unknown-mac`: a VM whose MAC is not in the contract boots the default entry and gets
    /// none of the cluster's secrets.
    UnknownMac,
    /// `uefi-http-3`: `cold-3` booted by OVMF's own UEFI HTTP boot (no TFTP, no iPXE ROM):
    /// DHCP `HTTPClient` → `snponly.efi` over HTTP → the node's script.
    UefiHttp3,
    /// `secureboot-1`: one node (a one-voter contract) booted with Secure Boot on through
    /// the signed chain (shim → GRUB → Debian's signed kernel) to cluster-ready.
    SecureBoot1,
    /// `grow`: `cold-3`, then two machines join as voters (3 → 5) while a client writes:
    /// `rackctl grow` edits the contract, re-bundles, and promotes one at a time.
    Grow,
    /// `replace`: `cold-3`, then node02 dies for good (powered off, its disk gone) and a new
    /// machine with another MAC takes its name (`rackctl replace`) while a client writes.
    Replace,
    /// `rolling-reimage`: `cold-3`, then bundle v2 rolls across the rack (`rackctl rollout`),
    /// each node rebooting itself into it when it holds the lock's slot, while a client writes.
    RollingReimage,
    /// `retire`: four nodes (three voters, a worker); the Chainfire leader is retired with the
    /// worker promoted in its place (`rackctl retire --promote`) while a client writes.
    Retire,
}

/// Every scenario, in priority order.
pub const ALL: &[Scenario] = &[
    Scenario::Cold3,
    Scenario::Reboot,
    Scenario::LeaderLoss,
    Scenario::UnknownMac,
    Scenario::Cold5,
    Scenario::Uefi3,
    Scenario::UefiHttp3,
    Scenario::SecureBoot1,
    Scenario::Grow,
    Scenario::Replace,
    Scenario::RollingReimage,
    Scenario::Retire,
];

impl Scenario {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Cold3 => "cold-3",
            Scenario::Cold5 => "cold-5",
            Scenario::Uefi3 => "uefi-3",
            Scenario::Reboot => "reboot",
            Scenario::LeaderLoss => "leader-loss",
            Scenario::UnknownMac => "unknown-mac",
            Scenario::UefiHttp3 => "uefi-http-3",
            Scenario::SecureBoot1 => "secureboot-1",
            Scenario::Grow => "grow",
            Scenario::Replace => "replace",
            Scenario::RollingReimage => "rolling-reimage",
            Scenario::Retire => "retire",
        }
    }

    /// Parses a scenario name.
    pub fn parse(s: &str) -> Option<Self> {
        ALL.iter().copied().find(|x| x.name() == s)
    }

    /// Nodes in the contract (every one boots as a VM, except in `unknown-mac`).
    pub fn nodes(self) -> usize {
        match self {
            Scenario::Cold5 => 5,
            Scenario::SecureBoot1 => 1,
            Scenario::Retire => 4,
            _ => 3,
        }
    }

    /// Machines powered on later, beyond the contract's (new machines of a day-2 scenario),
    /// each on a tap of its own.
    pub fn spares(self) -> usize {
        match self {
            Scenario::Grow => 2,
            Scenario::Replace => 1,
            _ => 0,
        }
    }

    /// A day-2 scenario: the rack changes under `rackctl` after its cold boot.
    pub fn is_day2(self) -> bool {
        matches!(
            self,
            Scenario::Grow | Scenario::Replace | Scenario::RollingReimage | Scenario::Retire
        )
    }

    /// The firmware.
    pub fn firmware(self) -> Firmware {
        match self {
            Scenario::Uefi3 => Firmware::Uefi,
            Scenario::UefiHttp3 => Firmware::UefiHttp,
            Scenario::SecureBoot1 => Firmware::SecureBoot,
            _ => Firmware::Bios,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in ALL {
            assert_eq!(Scenario::parse(s.name()), Some(*s));
        }
        assert_eq!(Scenario::parse("cold-4"), None);
    }
}
