//! The systemd unit graph, from one source of truth.
//!
//! [`graph`] describes every unit of the design's service graph as data; [`render`] turns it
//! into unit files. `firstboot units --out DIR --bindir DIR` writes them; the Nix package and
//! the VM appliance install these very files, and the NixOS module enables them.
//!
//! Only `cluster-ready.target` carries an `[Install]` section: enabling it pulls in the whole
//! chain through `Requires=`/`Wants=`, in the order the `After=` lines give.

use std::fmt::Write as _;
use std::path::Path;

/// Where the services' data lives on a node (the data disk's mount point by default).
pub const STATE_DIR: &str = "/var/lib/plasmacloud";
/// Where `firstboot configure` writes the services' TOML files.
pub const ETC_DIR: &str = "/etc/plasmacloud";
/// The cluster-ready marker.
pub const READY_FILE: &str = "/run/plasmacloud/cluster-ready";
/// Every unit of the graph runs only where this file exists: a machine the contract does not
/// know (booted from the bundle's `default` entry, which carries no contract) runs none of the
/// chain, instead of failing it.
pub const CONTRACT_CONDITION: &str = plasmacloud_contract::DEFAULT_CONTRACT_PATH;

/// How a unit runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Type=oneshot`, `RemainAfterExit=yes`, sends `STATUS=` (so `NotifyAccess=main`).
    Oneshot,
    /// `Type=notify`: `READY=1` once the API serves.
    Notify,
    /// `Type=simple`.
    Simple,
    /// A `.target`.
    Target,
}

/// One unit of the graph.
#[derive(Debug, Clone)]
pub struct Unit {
    /// File name, e.g. `chainfire.service`.
    pub name: &'static str,
    /// `Description=`.
    pub description: &'static str,
    /// How it runs.
    pub kind: Kind,
    /// Program (relative to the bindir) and arguments; empty for targets.
    pub exec: &'static [&'static str],
    /// `After=` (ordering only).
    pub after: &'static [&'static str],
    /// `Requires=` (and implied ordering where also listed in `after`).
    pub requires: &'static [&'static str],
    /// `Wants=` (pull in, no failure propagation).
    pub wants: &'static [&'static str],
    /// `Before=`.
    pub before: &'static [&'static str],
    /// `StateDirectory=` (relative to /var/lib), if the unit owns one.
    pub state_directory: Option<&'static str>,
    /// Paths the unit may write besides its state directory.
    pub writes: &'static [&'static str],
}

/// The whole graph, in start order.
pub fn graph() -> Vec<Unit> {
    vec![
        Unit {
            name: "firstboot-disk.service",
            description: "PlasmaCloud first boot: prepare the Raft data disk",
            kind: Kind::Oneshot,
            exec: &["firstboot", "disk"],
            after: &["local-fs.target", "systemd-udevd.service"],
            requires: &[],
            wants: &[],
            before: &["firstboot-enroll.service"],
            state_directory: None,
            writes: &[],
        },
        Unit {
            name: "firstboot-enroll.service",
            description: "PlasmaCloud first boot: make this node's key and obtain its certificate",
            kind: Kind::Oneshot,
            exec: &["firstboot", "enroll"],
            after: &["firstboot-disk.service", "network-online.target"],
            requires: &["firstboot-disk.service"],
            wants: &["network-online.target"],
            before: &["firstboot-configure.service"],
            state_directory: None,
            writes: &[STATE_DIR, "/run/plasmacloud"],
        },
        Unit {
            name: "firstboot-configure.service",
            description:
                "PlasmaCloud first boot: write the services' configuration from the contract",
            kind: Kind::Oneshot,
            exec: &["firstboot", "configure"],
            after: &["firstboot-enroll.service", "network-online.target"],
            requires: &["firstboot-enroll.service"],
            wants: &["network-online.target"],
            before: &["chainfire.service"],
            state_directory: None,
            writes: &[STATE_DIR, ETC_DIR, "/run/plasmacloud"],
        },
        Unit {
            name: "chainfire.service",
            description: "Chainfire: Raft-replicated configuration store",
            kind: Kind::Notify,
            exec: &[
                "chainfire-server",
                "--config",
                "/etc/plasmacloud/chainfire.toml",
            ],
            after: &["network-online.target", "firstboot-configure.service"],
            requires: &["firstboot-configure.service"],
            wants: &["network-online.target"],
            before: &[],
            state_directory: Some("plasmacloud/chainfire"),
            writes: &[],
        },
        Unit {
            name: "chainfire-cluster-join.service",
            description: "PlasmaCloud first boot: form or join the Chainfire cluster",
            kind: Kind::Oneshot,
            exec: &["firstboot", "chainfire-join"],
            after: &["chainfire.service"],
            requires: &["chainfire.service"],
            wants: &[],
            before: &[],
            state_directory: None,
            writes: &[STATE_DIR, "/run/plasmacloud"],
        },
        Unit {
            name: "flaredb.service",
            description: "FlareDB: Raft-replicated KV and time-series store",
            kind: Kind::Notify,
            exec: &[
                "flaredb-server",
                "--config",
                "/etc/plasmacloud/flaredb.toml",
            ],
            after: &["chainfire.service", "chainfire-cluster-join.service"],
            requires: &["chainfire.service"],
            wants: &["chainfire-cluster-join.service"],
            before: &[],
            state_directory: Some("plasmacloud/flaredb"),
            writes: &[],
        },
        Unit {
            name: "flaredb-cluster-join.service",
            description: "PlasmaCloud first boot: form or join the FlareDB cluster",
            kind: Kind::Oneshot,
            exec: &["firstboot", "flaredb-join"],
            after: &["flaredb.service"],
            requires: &["flaredb.service"],
            wants: &[],
            before: &[],
            state_directory: None,
            writes: &[STATE_DIR, "/run/plasmacloud"],
        },
        Unit {
            name: "iam.service",
            description: "PlasmaCloud IAM: identity service on FlareDB",
            kind: Kind::Simple,
            exec: &["iam-server", "--config", "/etc/plasmacloud/iam.toml"],
            after: &["flaredb.service", "flaredb-cluster-join.service"],
            requires: &["flaredb.service"],
            wants: &["flaredb-cluster-join.service"],
            before: &[],
            state_directory: Some("plasmacloud/iam"),
            writes: &[],
        },
        Unit {
            name: "iam-initial-setup.service",
            description: "PlasmaCloud first boot: bootstrap the IAM admin (seed) or check IAM",
            kind: Kind::Oneshot,
            exec: &["firstboot", "iam-setup"],
            after: &["iam.service"],
            requires: &["iam.service"],
            wants: &[],
            before: &[],
            state_directory: None,
            writes: &[STATE_DIR, "/run/plasmacloud"],
        },
        Unit {
            name: "cluster-health-check.service",
            description:
                "PlasmaCloud first boot: check the node and the cluster, mark cluster-ready",
            kind: Kind::Oneshot,
            exec: &["firstboot", "health-check"],
            after: &["iam-initial-setup.service"],
            requires: &["iam-initial-setup.service"],
            wants: &[],
            before: &["cluster-ready.target"],
            state_directory: None,
            writes: &[STATE_DIR, "/run/plasmacloud"],
        },
        Unit {
            name: "cluster-ready.target",
            description: "PlasmaCloud cluster ready: application services may start",
            kind: Kind::Target,
            exec: &[],
            after: &["cluster-health-check.service"],
            requires: &["cluster-health-check.service"],
            wants: &["reboot-agent.service"],
            before: &[],
            state_directory: None,
            writes: &[],
        },
        Unit {
            name: "reboot-agent.service",
            description:
                "PlasmaCloud reboot agent: reboots this node when a rollout asks and a slot is free",
            kind: Kind::Simple,
            exec: &["firstboot", "reboot-agent"],
            // It runs once this boot's health check passed: seeing it back is seeing it
            // healthy (`firstboot::reboots`).
            after: &["cluster-ready.target"],
            requires: &["cluster-ready.target"],
            wants: &[],
            before: &[],
            state_directory: None,
            writes: &[STATE_DIR, "/run/plasmacloud"],
        },
    ]
}

/// Renders one unit file; `bindir` is where the binaries are installed.
pub fn render(unit: &Unit, bindir: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Generated by `firstboot units`; do not edit.");
    let _ = writeln!(s, "[Unit]");
    let _ = writeln!(s, "Description={}", unit.description);
    let line = |s: &mut String, key: &str, list: &[&str]| {
        if !list.is_empty() {
            let _ = writeln!(s, "{key}={}", list.join(" "));
        }
    };
    line(&mut s, "After", unit.after);
    line(&mut s, "Requires", unit.requires);
    line(&mut s, "Wants", unit.wants);
    line(&mut s, "Before", unit.before);
    // Not in the contract, not part of the cluster: skipped (systemd reports the unit as not
    // started, "condition failed"), never failed.
    let _ = writeln!(s, "ConditionPathExists={CONTRACT_CONDITION}");
    if unit.kind == Kind::Target {
        let _ = writeln!(s, "RefuseManualStart=no");
        let _ = writeln!(s, "\n[Install]\nWantedBy=multi-user.target");
        return s;
    }
    if unit.kind == Kind::Oneshot {
        // Oneshots may be retried by systemd when they exit 75 (retry later); a oneshot that
        // failed for a bad configuration (2) is not.
        let _ = writeln!(s, "StartLimitIntervalSec=0");
    }

    let _ = writeln!(s, "\n[Service]");
    match unit.kind {
        Kind::Oneshot => {
            let _ = writeln!(s, "Type=oneshot\nRemainAfterExit=yes\nNotifyAccess=main");
        }
        Kind::Notify => {
            let _ = writeln!(s, "Type=notify\nNotifyAccess=main");
        }
        Kind::Simple => {
            let _ = writeln!(s, "Type=simple");
        }
        Kind::Target => {}
    }
    let mut exec = unit.exec.iter();
    if let Some(program) = exec.next() {
        let args: Vec<&str> = exec.copied().collect();
        let _ = writeln!(
            s,
            "ExecStart={}{}{}",
            bindir.join(program).display(),
            if args.is_empty() { "" } else { " " },
            args.join(" ")
        );
    }
    let _ = writeln!(
        s,
        "Restart=on-failure\nRestartSec=2\nRestartPreventExitStatus=2"
    );
    if unit.kind == Kind::Oneshot {
        // A step that must wait (for a peer, a disk) reports and starts over itself rather
        // than exiting 75: a failed oneshot would fail every unit that requires it, and
        // systemd would not start those again once a restart succeeded. So it may take as
        // long as its peers do; its STATUS= line and phase reports say what it waits for.
        let _ = writeln!(s, "TimeoutStartSec=infinity");
        let _ = writeln!(s, "Environment=PLASMACLOUD_RETRY_FOREVER=true");
    }
    let _ = writeln!(s, "Environment=RUST_LOG=info");
    if unit.name == "firstboot-disk.service" {
        // Partitioning and mounting must happen in the host's mount namespace, which every
        // sandboxing option below would replace with a private one: this unit runs unsandboxed.
        return s;
    }
    // The seed's hardening.
    let _ = writeln!(
        s,
        "ProtectSystem=strict\nPrivateTmp=yes\nNoNewPrivileges=yes\nProtectHome=yes\nProtectKernelTunables=yes\nProtectControlGroups=yes\nRestrictSUIDSGID=yes\nLockPersonality=yes"
    );
    if let Some(dir) = unit.state_directory {
        let _ = writeln!(s, "StateDirectory={dir}\nStateDirectoryMode=0700");
    }
    if !unit.writes.is_empty() {
        // `-`: a path that does not exist (yet) is not an error.
        let paths: Vec<String> = unit.writes.iter().map(|p| format!("-{p}")).collect();
        let _ = writeln!(s, "ReadWritePaths={}", paths.join(" "));
    }
    s
}

/// Writes every unit into `out`, returning the file names written.
pub fn write_all(out: &Path, bindir: &Path) -> std::io::Result<Vec<&'static str>> {
    std::fs::create_dir_all(out)?;
    let mut names = Vec::new();
    for unit in graph() {
        std::fs::write(out.join(unit.name), render(&unit, bindir))?;
        names.push(unit.name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_has_exactly_the_designs_units() {
        let names: Vec<&str> = graph().iter().map(|u| u.name).collect();
        assert_eq!(
            names,
            [
                "firstboot-disk.service",
                "firstboot-enroll.service",
                "firstboot-configure.service",
                "chainfire.service",
                "chainfire-cluster-join.service",
                "flaredb.service",
                "flaredb-cluster-join.service",
                "iam.service",
                "iam-initial-setup.service",
                "cluster-health-check.service",
                "cluster-ready.target",
                "reboot-agent.service",
            ]
        );
    }

    #[test]
    fn every_dependency_names_a_unit_of_the_graph_or_systemd() {
        let g = graph();
        let ours: Vec<&str> = g.iter().map(|u| u.name).collect();
        for u in &g {
            for dep in u
                .after
                .iter()
                .chain(u.requires)
                .chain(u.wants)
                .chain(u.before)
            {
                assert!(
                    ours.contains(dep) || dep.ends_with(".target") || dep.starts_with("systemd-"),
                    "{} depends on unknown {dep}",
                    u.name
                );
            }
        }
    }

    #[test]
    fn ordering_follows_the_service_graph() {
        let g = graph();
        let unit = |n: &str| g.iter().find(|u| u.name == n).expect(n).clone();
        assert!(unit("flaredb.service")
            .after
            .contains(&"chainfire-cluster-join.service"));
        assert!(unit("flaredb.service")
            .requires
            .contains(&"chainfire.service"));
        assert!(unit("iam.service")
            .after
            .contains(&"flaredb-cluster-join.service"));
        assert!(unit("cluster-health-check.service")
            .after
            .contains(&"iam-initial-setup.service"));
        let text = render(
            &unit("chainfire-cluster-join.service"),
            Path::new("/usr/bin"),
        );
        assert!(text.contains("Type=oneshot\nRemainAfterExit=yes\nNotifyAccess=main"));
        assert!(text.contains("RestartPreventExitStatus=2"));
        assert!(text.contains("ExecStart=/usr/bin/firstboot chainfire-join"));
        assert!(
            text.contains("TimeoutStartSec=infinity\nEnvironment=PLASMACLOUD_RETRY_FOREVER=true")
        );
        let text = render(&unit("chainfire.service"), Path::new("/opt/pc/bin"));
        assert!(text.contains("Type=notify"));
        assert!(text.contains("StateDirectory=plasmacloud/chainfire"));
        assert!(text.contains("ProtectSystem=strict"));
    }

    #[test]
    fn a_machine_without_a_contract_runs_no_unit_of_the_chain() {
        for u in graph() {
            let text = render(&u, Path::new("/usr/bin"));
            assert!(
                text.contains("ConditionPathExists=/etc/plasmacloud/cluster-config.json\n"),
                "{} must be skipped where there is no contract:\n{text}",
                u.name
            );
        }
    }
}
