//! One VM's lifecycle: power on (a TCG QEMU that network-boots on its tap, with its data disk,
//! BIOS or OVMF), power off, notice that QEMU exited, and watch its serial console. Each boot
//! gets a console and a QEMU log of its own in the work directory.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

use super::console::Console;
use super::plan::Plan;
use crate::scenario::Firmware;

/// OVMF's Secure Boot build.
pub const SECBOOT_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// OVMF's variables with Microsoft's keys (PK, KEK, db) enrolled and Secure Boot on.
pub const SECBOOT_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// One VM.
#[derive(Debug)]
pub struct Vm {
    /// The node's name (or `stranger`).
    pub name: String,
    label: String,
    /// Its NIC's MAC.
    pub mac: String,
    tap: String,
    /// Its raw data disk; none for a VM that is not a contract node.
    pub disk: Option<PathBuf>,
    firmware: Firmware,
    memory_mib: u32,
    work: PathBuf,
    /// QEMU, while powered on.
    pub child: Option<Child>,
    boots: u32,
    /// This boot's serial console.
    pub console: Console,
    /// Rack-relative seconds of this boot's power-on.
    pub powered_on: f64,
}

impl Vm {
    /// A VM of `plan` (powered off): `name` with `mac` on `tap`, booting `plan`'s firmware.
    pub fn new(plan: &Plan, name: &str, mac: &str, tap: &str, disk: Option<PathBuf>) -> Self {
        Vm {
            name: name.to_string(),
            label: plan.label.clone(),
            mac: mac.to_string(),
            tap: tap.to_string(),
            disk,
            firmware: plan.scenario.firmware(),
            memory_mib: plan.memory_mib,
            work: plan.work.clone(),
            child: None,
            boots: 0,
            console: Console::default(),
            powered_on: 0.0,
        }
    }

    /// Powers on (at `t`, rack-relative): a fresh console, a new QEMU.
    pub fn start(&mut self, t: f64) -> anyhow::Result<()> {
        self.boots += 1;
        self.console = Console::new(self.work.join(format!(
            "{}-{}.serial-boot{}.log",
            self.name, self.label, self.boots
        )));
        self.powered_on = t;
        let mut c = Command::new("qemu-system-x86_64");
        // `-cpu qemu64,+rdrand`: TCG implements RDRAND and Debian's kernel trusts it
        // (RANDOM_TRUST_CPU), so the kernel's random pool is ready at boot instead of tens of
        // seconds later (util-linux's UUIDs for the data disk and others wait on it).
        // `-nodefaults`: no IDE CD-ROM, floppy or default NIC to probe at boot.
        c.args(["-accel", "tcg", "-cpu", "qemu64,+rdrand", "-nodefaults"])
            .args(["-smp", "1", "-m"])
            .arg(self.memory_mib.to_string())
            .args([
                "-display",
                "none",
                "-vga",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
                "-boot",
                "n",
            ])
            .arg("-name")
            .arg(&self.name)
            .arg("-serial")
            .arg(format!("file:{}", self.console.path.display()))
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                self.tap
            ))
            .arg("-device")
            .arg(match self.firmware {
                // No option ROM: OVMF's own network stack (VirtioNetDxe) boots it.
                // No option ROM: OVMF's own network stack (VirtioNetDxe) boots it (an iPXE ROM
                // is unsigned: Secure Boot would refuse it anyway).
                Firmware::UefiHttp | Firmware::SecureBoot => {
                    format!("virtio-net-pci,netdev=n0,mac={},romfile=", self.mac)
                }
                _ => format!("virtio-net-pci,netdev=n0,mac={}", self.mac),
            });
        if let Some(disk) = &self.disk {
            c.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,cache=writeback",
                disk.display()
            ));
        }
        match self.firmware {
            Firmware::Bios => {
                c.args(["-machine", "pc"]);
            }
            Firmware::Uefi | Firmware::UefiHttp => {
                if self.firmware == Firmware::UefiHttp {
                    // PXE off: the boot manager's only network entries are HTTP boot's.
                    for v in ["IPv4PXESupport", "IPv6PXESupport"] {
                        c.arg("-fw_cfg")
                            .arg(format!("name=opt/org.tianocore/{v},string=no"));
                    }
                }
                let vars = self.work.join(format!("{}-vars.fd", self.name));
                if !vars.exists() {
                    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                        .context("while copying the OVMF vars (is ovmf installed?)")?;
                }
                c.args(["-machine", "q35", "-drive"])
                    .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", vars.display()));
            }
            Firmware::SecureBoot => {
                // Microsoft's keys enrolled, Secure Boot on; the Secure Boot build needs SMM
                // and a flash only SMM may write.
                let vars = self.work.join(format!("{}-vars.fd", self.name));
                if !vars.exists() {
                    std::fs::copy(SECBOOT_VARS, &vars).with_context(|| {
                        format!("while copying {SECBOOT_VARS} (is ovmf installed?)")
                    })?;
                }
                c.args(["-machine", "q35,smm=on"])
                    .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={SECBOOT_CODE}"
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ));
            }
        }
        let log = std::fs::File::create(self.work.join(format!(
            "{}-{}.qemu-boot{}.log",
            self.name, self.label, self.boots
        )))?;
        c.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(c.spawn().context("while starting qemu-system-x86_64")?);
        Ok(())
    }

    /// How many times it was powered on.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// Pulls the plug (kills QEMU).
    pub async fn power_off(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// `Some(status)` when QEMU has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => Some(st.to_string()),
            _ => None,
        }
    }
}
