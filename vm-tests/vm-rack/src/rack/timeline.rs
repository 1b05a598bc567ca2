//! Each node's boot timeline: what happened when (server events, phase reports, console
//! marks, in rack-relative seconds), its last state for the live view, and when it became
//! ready; and at the end the timeline printed per node with the mean share of each boot phase.

use std::collections::BTreeMap;

use super::events::Event;

/// Per-node progress.
#[derive(Debug, Default, Clone)]
pub struct NodeProgress {
    /// (seconds since rack start, what).
    pub timeline: Vec<(f64, String)>,
    /// The latest state, for the live view.
    pub last: String,
    /// When it reported cluster-ready.
    pub ready_at: Option<f64>,
}

impl NodeProgress {
    /// Records event `e`, which happened at `t`.
    pub fn record_event(&mut self, t: f64, e: &Event) {
        let what = if e.source == "node" {
            format!("{} {}", e.phase, e.status)
        } else {
            format!("server: {}", e.phase)
        };
        self.timeline.push((t, what.clone()));
        self.last = if e.status == "failed" {
            format!("{what}: {}", e.detail.chars().take(60).collect::<String>())
        } else {
            what
        };
        if e.source == "node" && e.phase == "cluster-ready" && e.status == "ok" {
            self.ready_at = Some(t);
        }
    }

    /// Records the console marks of the boot that powered on at `powered_on` that are not
    /// in the timeline yet.
    pub fn record_marks(&mut self, marks: &BTreeMap<&'static str, f64>, powered_on: f64) {
        for (label, at) in marks {
            if !self
                .timeline
                .iter()
                .any(|(x, w)| w == label && *x >= powered_on)
            {
                self.timeline.push((*at, label.to_string()));
                if self.ready_at.is_none() {
                    self.last = label.to_string();
                }
            }
        }
    }
}

/// The boot phases, each ending at a console mark, a server event or a node report (the
/// last one at cluster-ready).
const PHASES: &[(&str, &str)] = &[
    ("firmware, DHCP, iPXE script", "server: kernel"),
    (
        "kernel + initrds over the net, kernel decompress",
        "kernel: started",
    ),
    ("kernel boot + initramfs unpack", "initramfs: /init"),
    ("systemd start-up to udev coldplug", "udev: coldplug done"),
    (
        "udev to data disk ready (mkfs, mount)",
        "unit: firstboot-disk",
    ),
    (
        "network online + enrollment (key, CSR, certificate)",
        "enroll ok",
    ),
    ("configure", "configure ok"),
    ("chainfire + join", "chainfire-join ok"),
    ("flaredb + join", "flaredb-join ok"),
    ("iam + setup", "iam-setup ok"),
    ("health check", "cluster-ready ok"),
];

/// Prints the boot timeline of each node in `names` (stderr) and returns the mean phase
/// shares: (phase, mean seconds, share of power-on to cluster-ready).
pub fn report(nodes: &BTreeMap<String, NodeProgress>, names: &[String]) -> Vec<(String, f64, f64)> {
    print_timelines(nodes, names);
    phase_shares(nodes, names)
}

/// The boot timeline per node.
fn print_timelines(nodes: &BTreeMap<String, NodeProgress>, names: &[String]) {
    let mut out = String::new();
    for name in names {
        let Some(p) = nodes.get(name) else {
            continue;
        };
        out.push_str(&format!("timeline {name}:\n"));
        let mut tl = p.timeline.clone();
        tl.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut prev = 0.0;
        for (t, w) in &tl {
            out.push_str(&format!("  {t:7.2} s  (+{:5.2})  {w}\n", t - prev));
            prev = *t;
        }
    }
    eprint!("{out}");
}

/// The mean phase shares over the ready nodes. A bound that is missing (dnsmasq runs have no
/// server events; a lost report) merges its phase into the next one.
fn phase_shares(
    nodes: &BTreeMap<String, NodeProgress>,
    names: &[String],
) -> Vec<(String, f64, f64)> {
    let mut sums = vec![0.0; PHASES.len()];
    let mut total = 0.0;
    let mut count = 0;
    for name in names {
        let Some(p) = nodes.get(name) else {
            continue;
        };
        let Some(ready) = p.ready_at else { continue };
        let at = |w: &str| p.timeline.iter().find(|(_, x)| x == w).map(|(t, _)| *t);
        let mut prev = 0.0;
        for (i, (_, b)) in PHASES.iter().enumerate() {
            let t = if i + 1 == PHASES.len() {
                Some(ready)
            } else {
                at(b)
            };
            if let Some(t) = t {
                sums[i] += (t - prev).max(0.0);
                prev = f64::max(prev, t);
            }
        }
        total += ready;
        count += 1;
    }
    if count == 0 {
        return Vec::new();
    }
    let mean_total = total / count as f64;
    PHASES
        .iter()
        .zip(sums)
        .map(|((label, _), s)| {
            let m = s / count as f64;
            (
                label.to_string(),
                m,
                if mean_total > 0.0 {
                    m / mean_total
                } else {
                    0.0
                },
            )
        })
        .collect()
}
