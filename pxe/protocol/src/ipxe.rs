//! iPXE scripts: the per-node boot script (kernel, initrds, command line) and the error script
//! shown to machines the server will not boot.

/// One initrd in a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptInitrd {
    /// The name iPXE registers the image under (`initrd --name`), which the kernel command line
    /// names with `initrd=NAME`.
    pub name: String,
    /// Where iPXE fetches it.
    pub url: String,
}

/// A boot script's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootScript {
    /// Shown with `echo` (node name or `default`).
    pub title: String,
    /// Kernel URL.
    pub kernel_url: String,
    /// Initrds in load order: base first, then the node's overlay.
    pub initrds: Vec<ScriptInitrd>,
    /// The manifest's command line (without `initrd=`).
    pub cmdline: String,
}

/// Makes a name safe for iPXE's `--name` and the kernel command line: the last path
/// component, with anything but `[A-Za-z0-9._-]` replaced by `_`.
pub fn initrd_name(path: &str, index: usize) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        format!("initrd{index}")
    } else {
        clean
    }
}

/// Renders the script. Each initrd gets `initrd=NAME` on the kernel line, once, in load order
/// (the kernel's EFI stub loads exactly those; under BIOS the names are harmless).
pub fn render_boot_script(s: &BootScript) -> String {
    let mut names: Vec<String> = Vec::new();
    for (i, initrd) in s.initrds.iter().enumerate() {
        let mut name = initrd.name.clone();
        if names.contains(&name) {
            name = format!("{i}-{name}");
        }
        names.push(name);
    }
    let mut out = String::from("#!ipxe\n");
    out.push_str(&format!(
        "echo PlasmaCloud netboot: {}\n",
        one_line(&s.title)
    ));
    let mut kernel = format!("kernel {}", s.kernel_url);
    for n in &names {
        kernel.push_str(&format!(" initrd={n}"));
    }
    let cmdline = one_line(&s.cmdline);
    if !cmdline.trim().is_empty() {
        kernel.push(' ');
        kernel.push_str(cmdline.trim());
    }
    out.push_str(&kernel);
    out.push_str(" || goto failed\n");
    for (n, initrd) in names.iter().zip(&s.initrds) {
        out.push_str(&format!(
            "initrd --name {n} {} || goto failed\n",
            initrd.url
        ));
    }
    out.push_str("boot || goto failed\n");
    out.push_str(
        ":failed\necho PlasmaCloud netboot: boot failed, retrying in 5 s\nsleep 5\nreboot\n",
    );
    out
}

/// A script that tells the operator why this machine is not booted, then powers off after a
/// pause (so an unknown machine does not loop on the network).
pub fn render_refusal_script(reason: &str) -> String {
    format!(
        "#!ipxe\necho PlasmaCloud netboot: {}\nsleep 30\npoweroff || exit\n",
        one_line(reason)
    )
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_every_initrd_once() {
        let s = BootScript {
            title: "node01".into(),
            kernel_url: "http://10.0.0.1:8081/files/vmlinuz".into(),
            initrds: vec![
                ScriptInitrd {
                    name: initrd_name("base/initrd.zst", 0),
                    url: "http://x/a".into(),
                },
                ScriptInitrd {
                    name: initrd_name("nodes/node01.cpio", 1),
                    url: "http://x/b".into(),
                },
            ],
            cmdline: "console=ttyS0 plasmacloud.node=node01".into(),
        };
        let text = render_boot_script(&s);
        assert!(text.starts_with("#!ipxe\n"));
        assert!(text.contains(
            "kernel http://10.0.0.1:8081/files/vmlinuz initrd=initrd.zst initrd=node01.cpio console=ttyS0 plasmacloud.node=node01 || goto failed"
        ));
        assert!(text.contains("initrd --name initrd.zst http://x/a"));
        assert!(text.contains("initrd --name node01.cpio http://x/b"));
        assert_eq!(text.matches("initrd=initrd.zst").count(), 1);
    }

    #[test]
    fn duplicate_names_are_made_distinct() {
        let s = BootScript {
            title: "t".into(),
            kernel_url: "k".into(),
            initrds: vec![
                ScriptInitrd {
                    name: "initrd".into(),
                    url: "a".into(),
                },
                ScriptInitrd {
                    name: "initrd".into(),
                    url: "b".into(),
                },
            ],
            cmdline: String::new(),
        };
        let text = render_boot_script(&s);
        assert!(text.contains("initrd=initrd initrd=1-initrd"));
    }
}
