//! GRUB configurations for the Secure Boot chain: shim (Microsoft-signed) → GRUB (the
//! distribution's signed netboot image) → the signed kernel, all over TFTP.
//!
//! A signed GRUB refuses `insmod` under Secure Boot, and Debian's signed netboot image has no
//! HTTP module built in, so everything it loads comes over TFTP from the server it booted from
//! (its `$root`, `(tftp,<server>)`): the paths below are root-relative TFTP paths.
//!
//! The image's built-in configuration sources `$prefix/grub.cfg`, with prefix `/grub` on the
//! boot server. That file, [`render_chain_config`], is the same for every machine: it sources
//! the machine's own configuration by the MAC GRUB booted with, which the server renders per
//! node ([`render_boot_config`], the iPXE script's twin) or as a refusal
//! ([`render_refusal_config`]).

/// The TFTP path of the configuration the signed GRUB reads first (its prefix is `/grub`).
pub const CHAIN_CONFIG_PATH: &str = "grub/grub.cfg";

/// A node's boot: what [`crate::ipxe::BootScript`] says, with TFTP paths instead of URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// Shown with `echo` (node name or `default`).
    pub title: String,
    /// The kernel's TFTP path (root-relative, no leading `/`).
    pub kernel_path: String,
    /// Initrd TFTP paths in load order (GRUB concatenates them, each 4-byte aligned).
    pub initrd_paths: Vec<String>,
    /// The manifest's command line.
    pub cmdline: String,
}

/// The TFTP path of a machine's own configuration: `grub/<mac>.cfg`, MAC lower-case with
/// colons (GRUB's `$net_default_mac`).
pub fn node_config_path(mac: &str) -> String {
    format!("grub/{}.cfg", mac.to_ascii_lowercase())
}

/// If `path` (a TFTP path, leading `/` allowed) names a machine's configuration, its MAC as
/// written there.
pub fn mac_of_config_path(path: &str) -> Option<&str> {
    let name = path.trim_start_matches('/').strip_prefix("grub/")?;
    let mac = name.strip_suffix(".cfg")?;
    (mac.len() == 17 && !mac.contains('/')).then_some(mac)
}

/// The shared first configuration: source the machine's own.
pub fn render_chain_config() -> String {
    "# PlasmaCloud netboot: every machine's own configuration is at /grub/<its MAC>.cfg\n\
     echo \"PlasmaCloud netboot: asking for /grub/${net_default_mac}.cfg\"\n\
     source \"/grub/${net_default_mac}.cfg\"\n\
     echo \"PlasmaCloud netboot: no configuration for ${net_default_mac}; rebooting in 30 s\"\n\
     sleep 30\n\
     reboot\n"
        .to_string()
}

/// A node's configuration: echo, `linux`, `initrd`, `boot`; on a failed load, a pause and a
/// reboot (a fresh DHCP, a fresh token), as the iPXE script does.
///
/// Every word is single-quoted, so nothing in a path or the command line is expanded by
/// GRUB's shell (`$`, `;`, `#`, spaces inside a quoted command-line value).
pub fn render_boot_config(c: &BootConfig) -> String {
    let mut out =
        String::from("# PlasmaCloud netboot: this machine's boot (made for this boot only)\n");
    out.push_str(&format!(
        "echo {}\n",
        quote(&format!("PlasmaCloud netboot: {}", one_line(&c.title)))
    ));
    let mut linux = format!("linux {}", quote(&format!("/{}", c.kernel_path)));
    for word in split_cmdline(&one_line(&c.cmdline)) {
        linux.push(' ');
        linux.push_str(&quote(&word));
    }
    let mut initrd = String::from("initrd");
    for p in &c.initrd_paths {
        initrd.push(' ');
        initrd.push_str(&quote(&format!("/{p}")));
    }
    out.push_str(&format!(
        "if {linux}; then\n  if {initrd}; then\n    boot\n  fi\nfi\n"
    ));
    out.push_str("echo 'PlasmaCloud netboot: boot failed, rebooting in 5 s'\nsleep 5\nreboot\n");
    out
}

/// A configuration that tells the operator why this machine is not booted, then halts after a
/// pause (so an unknown machine does not loop on the network).
pub fn render_refusal_config(reason: &str) -> String {
    format!(
        "echo {}\nsleep 30\nhalt\n",
        quote(&format!("PlasmaCloud netboot: {}", one_line(reason)))
    )
}

/// Splits a kernel command line into words as the kernel does: at spaces, except inside
/// double quotes (`key="a b"` stays one word, quotes kept).
fn split_cmdline(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    for ch in s.chars() {
        match ch {
            '"' => {
                in_quotes = !in_quotes;
                cur.push(ch);
            }
            c if c.is_whitespace() && !in_quotes => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// GRUB single quoting: everything literal; a `'` closes, is escaped, and reopens.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BootConfig {
        BootConfig {
            title: "node01".into(),
            kernel_path: "b/abc/vmlinuz".into(),
            initrd_paths: vec![
                "b/abc/initrd.zst".into(),
                "b/abc/nodes/node01.cpio".into(),
                "s/tok/enroll.cpio.zst".into(),
            ],
            cmdline: "console=ttyS0 plasmacloud.node=node01".into(),
        }
    }

    #[test]
    fn boot_config_loads_kernel_then_every_initrd_in_order() {
        let text = render_boot_config(&config());
        assert!(text
            .contains("if linux '/b/abc/vmlinuz' 'console=ttyS0' 'plasmacloud.node=node01'; then"));
        assert!(text.contains(
            "if initrd '/b/abc/initrd.zst' '/b/abc/nodes/node01.cpio' '/s/tok/enroll.cpio.zst'; then"
        ));
        assert!(text.contains("    boot\n"));
        // No iPXE-style initrd= names: GRUB loads the initrds itself.
        assert!(!text.contains("initrd="));
    }

    #[test]
    fn nothing_in_the_command_line_is_expanded_or_splits_a_command() {
        let mut c = config();
        c.cmdline = "a=$x; reboot b=\"two words\" it's\nnext".into();
        let text = render_boot_config(&c);
        assert!(text.contains("'a=$x;' 'reboot' 'b=\"two words\"' 'it'\\''s' 'next'"));
        // The newline became a space: one command per line, as written here.
        assert_eq!(text.lines().filter(|l| l.contains("linux")).count(), 1);
    }

    #[test]
    fn refusal_is_one_quoted_echo() {
        let text = render_refusal_config("52:54:00:00:00:99 is not in the contract; it's off\nnow");
        assert!(text.starts_with(
            "echo 'PlasmaCloud netboot: 52:54:00:00:00:99 is not in the contract; it'\\''s off now'\n"
        ));
        assert!(text.ends_with("halt\n"));
    }

    #[test]
    fn node_config_paths_round_trip() {
        let p = node_config_path("52:54:00:AB:00:01");
        assert_eq!(p, "grub/52:54:00:ab:00:01.cfg");
        assert_eq!(mac_of_config_path(&p), Some("52:54:00:ab:00:01"));
        assert_eq!(
            mac_of_config_path("/grub/52:54:00:ab:00:01.cfg"),
            Some("52:54:00:ab:00:01")
        );
        assert_eq!(mac_of_config_path(CHAIN_CONFIG_PATH), None);
        assert_eq!(mac_of_config_path("grub/x86_64-efi/grub.cfg"), None);
        assert_eq!(mac_of_config_path("grub/../../etc/passwd.cfg"), None);
    }

    #[test]
    fn chain_config_sources_the_mac_config() {
        let text = render_chain_config();
        assert!(text.contains("source \"/grub/${net_default_mac}.cfg\""));
    }
}
