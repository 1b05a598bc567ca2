//! The serial consoles: the marks the harness looks for on them (one per boot stage and
//! first-boot unit), and a reader that scans a console file as it grows and records when each
//! mark first shows up.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// Console markers: (label in the timeline, text on a serial console line once its ANSI
/// colour codes are stripped). The unit lines match because the kernel command line carries
/// `systemd.status_unit_format=name` ([`crate::prepare::CMDLINE`]): by default systemd 252 prints
/// `Finished firstboot-disk.se… boot: prepare the Raft data disk.` (name and description
/// ellipsized to the console's width, unit name in bold), which no fixed needle matches.
/// systemd's own `systemd[1]: Finished UNIT - …` kernel-log lines (before journald takes the
/// log over) match too.
const SERIAL_MARKS: &[(&str, &str)] = &[
    ("kernel: started", "Linux version"),
    ("initramfs: /init", "Run /init"),
    ("systemd: started", "systemd 252"),
    (
        "udev: coldplug done",
        "Finished systemd-udev-trigger.service",
    ),
    ("network: online", "Reached target network-online.target"),
    ("unit: firstboot-disk", "Finished firstboot-disk.service"),
    (
        "unit: firstboot-enroll",
        "Finished firstboot-enroll.service",
    ),
    (
        "unit: firstboot-configure",
        "Finished firstboot-configure.service",
    ),
    ("unit: chainfire", "Started chainfire.service"),
    (
        "unit: chainfire-cluster-join",
        "Finished chainfire-cluster-join.service",
    ),
    ("unit: flaredb", "Started flaredb.service"),
    (
        "unit: flaredb-cluster-join",
        "Finished flaredb-cluster-join.service",
    ),
    ("unit: iam", "Started iam.service"),
    (
        "unit: iam-initial-setup",
        "Finished iam-initial-setup.service",
    ),
    (
        "unit: cluster-health-check",
        "Finished cluster-health-check.service",
    ),
    (CONSOLE_READY, "Reached target cluster-ready.target"),
    (
        "multi-user.target",
        "plasmacloud-appliance: multi-user.target reached",
    ),
    (
        "unit: firstboot-disk FAILED",
        "Failed to start firstboot-disk.service",
    ),
];

/// A console line without its ANSI escape sequences (`ESC [ … letter`) and carriage returns.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters and intermediates, then one final byte in @..~.
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The console mark that says the node reached cluster-ready.target (a fallback for a lost
/// phase report, and the only ready signal a node without a reachable boot server gives).
const CONSOLE_READY: &str = "console: cluster-ready.target";

/// A console being watched: the file QEMU writes, how far it has been read, and the marks seen.
#[derive(Debug, Default)]
pub struct Console {
    /// The file QEMU writes the serial console to.
    pub path: PathBuf,
    /// Bytes of `path` already scanned, and the unfinished last line.
    read: u64,
    tail: Vec<u8>,
    /// When each mark first showed up (rack-relative seconds).
    pub marks: BTreeMap<&'static str, f64>,
}

impl Console {
    /// Watches `path` from its start; a file left there by an earlier run is removed, so it
    /// cannot feed this boot's marks.
    pub fn new(path: PathBuf) -> Self {
        let _ = std::fs::remove_file(&path);
        Console {
            path,
            ..Console::default()
        }
    }

    /// Reads what the console gained since the last scan and records the first time each
    /// marker's line shows up (at `t`, rack-relative).
    pub fn scan(&mut self, t: f64) {
        if self.marks.len() == SERIAL_MARKS.len() {
            return;
        }
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        self.read += n as u64;
        self.tail.extend_from_slice(&buf);
        let Some(end) = self.tail.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let done: Vec<u8> = self.tail.drain(..=end).collect();
        for line in String::from_utf8_lossy(&done).lines() {
            let line = strip_ansi(line);
            for (label, needle) in SERIAL_MARKS {
                if !self.marks.contains_key(label) && line.contains(needle) {
                    self.marks.insert(label, t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_their_colour_codes() {
        let line =
            "[\x1b[0;32m  OK  \x1b[0m] Finished \x1b[0;1;39mfirstboot-disk.service\x1b[0m.\r";
        assert_eq!(
            strip_ansi(line),
            "[  OK  ] Finished firstboot-disk.service."
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn every_first_boot_unit_has_a_console_mark() {
        for unit in [
            "firstboot-disk",
            "firstboot-enroll",
            "firstboot-configure",
            "chainfire",
            "chainfire-cluster-join",
            "flaredb",
            "flaredb-cluster-join",
            "iam",
            "iam-initial-setup",
            "cluster-health-check",
        ] {
            let label = format!("unit: {unit}");
            assert!(
                SERIAL_MARKS.iter().any(|(l, _)| *l == label),
                "no console mark for {unit}"
            );
        }
    }
}
