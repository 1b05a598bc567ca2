//! A service's `/metrics` answer, read the way Prometheus would: parsed by the OpenMetrics
//! parser of Prometheus's own Python client (Debian's `python3-prometheus-client`, run as
//! `/usr/bin/python3`): an implementation nobody here wrote, and strict — a line out of the
//! format, or a missing `# EOF`, is an error. Its series are then looked up by name and labels.
//!
//! Names are the families' (the `# HELP` names); a counter may also be named by its sample,
//! `x_total`, as Prometheus shows it.

use std::io::Write;
use std::process::{Command, Stdio};

/// The parser: OpenMetrics text on stdin, every family as JSON on stdout, exit 1 with the
/// parser's message on bad input.
const PARSE: &str = r#"
import json, math, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
try:
    fams = list(text_string_to_metric_families(sys.stdin.read()))
except Exception as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
def num(v):
    return None if math.isnan(v) else ("+Inf" if v == math.inf else v)
print(json.dumps([{"name": f.name, "type": f.type, "help": f.documentation,
    "samples": [{"name": s.name, "labels": s.labels, "value": num(s.value)} for s in f.samples]}
    for f in fams]))
"#;

/// The Python that has Debian's `prometheus_client` (not a pyenv shim).
pub const PYTHON: &str = "/usr/bin/python3";

/// One sample.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: Option<f64>,
}

/// One family.
#[derive(Debug, Clone)]
struct Family {
    name: String,
    kind: String,
    help: String,
    samples: Vec<Sample>,
}

/// One parsed `/metrics` answer.
#[derive(Debug)]
pub struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    /// Parses `text` (OpenMetrics 1.0, ending in `# EOF`); the error is the parser's.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut child = Command::new(PYTHON)
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!("{PYTHON}: {e} (install python3-prometheus-client: apt-get install python3-prometheus-client)")
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| format!("writing to the parser: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("the parser: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "not the OpenMetrics text format: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("the parser's answer: {e}"))?;
        let text_of = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let families = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| Family {
                name: text_of(&f["name"]),
                kind: text_of(&f["type"]),
                help: text_of(&f["help"]),
                samples: f["samples"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| Sample {
                        name: text_of(&s["name"]),
                        labels: s["labels"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), text_of(v)))
                            .collect(),
                        value: s["value"].as_f64().or_else(|| {
                            (s["value"].as_str() == Some("+Inf")).then_some(f64::INFINITY)
                        }),
                    })
                    .collect(),
            })
            .collect();
        Ok(Scrape { families })
    }

    fn family(&self, name: &str) -> Option<&Family> {
        let base = name.strip_suffix("_total");
        self.families
            .iter()
            .find(|f| f.name == name)
            .or_else(|| base.and_then(|b| self.families.iter().find(|f| f.name == b)))
    }

    /// The samples of `name` named `suffix`-ed (`""` the plain value, `_count`, …) whose labels
    /// include `labels`.
    fn matching<'a>(
        &'a self,
        name: &str,
        suffix: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.family(name).into_iter().flat_map(move |f| {
            let plain = match (f.kind.as_str(), suffix) {
                ("counter", "") => format!("{}_total", f.name),
                _ => format!("{}{suffix}", f.name),
            };
            f.samples.iter().filter(move |s| {
                s.name == plain
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
        })
    }

    /// The value of the counter or gauge `name` whose labels include `labels` (the first such;
    /// `None` when there is none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, "", labels).find_map(|s| s.value)
    }

    /// The sum over every counter or gauge sample of `name` whose labels include `labels` (0
    /// when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, "", labels)
            .filter_map(|s| s.value)
            .sum()
    }

    /// The observation count of histogram `name` over its series whose labels include
    /// `labels`; `None` when there is no such series.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.matching(name, "_count", labels) {
            found = Some(found.unwrap_or(0.0) + s.value.unwrap_or(0.0));
        }
        found
    }

    /// Whether `name` is a declared family (every series is, even before its first sample).
    pub fn documents(&self, name: &str) -> bool {
        self.family(name).is_some_and(|f| !f.help.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP chainfire_raft_term The current Raft term.
# TYPE chainfire_raft_term gauge
chainfire_raft_term 4
# HELP chainfire_http_requests API requests.
# TYPE chainfire_http_requests counter
chainfire_http_requests_total{route=\"/v1/kv/{*key}\",method=\"PUT\",code=\"200\"} 3
chainfire_http_requests_total{route=\"/v1/kv/{*key}\",method=\"GET\",code=\"200\"} 2
# HELP chainfire_disk_wal_fsync_duration_seconds Syncs.
# TYPE chainfire_disk_wal_fsync_duration_seconds histogram
chainfire_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 5
chainfire_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 7
chainfire_disk_wal_fsync_duration_seconds_sum 0.5
chainfire_disk_wal_fsync_duration_seconds_count 7
# EOF
";

    fn have_parser() -> bool {
        let ok = Command::new(PYTHON)
            .args(["-c", "import prometheus_client"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var("CI").is_err(),
                "CI=true: python3-prometheus-client is required"
            );
            eprintln!("skipped: {PYTHON} has no prometheus_client");
        }
        ok
    }

    #[test]
    fn series_are_found_by_name_and_labels() {
        if !have_parser() {
            return;
        }
        let s = Scrape::parse(TEXT).expect("parses");
        assert_eq!(s.value("chainfire_raft_term", &[]), Some(4.0));
        assert_eq!(
            s.value(
                "chainfire_http_requests_total",
                &[("route", "/v1/kv/{*key}"), ("method", "PUT")]
            ),
            Some(3.0)
        );
        assert_eq!(s.sum("chainfire_http_requests", &[("code", "200")]), 5.0);
        assert_eq!(
            s.histogram_count("chainfire_disk_wal_fsync_duration_seconds", &[]),
            Some(7.0)
        );
        assert!(s.documents("chainfire_http_requests"));
        assert_eq!(s.value("chainfire_raft_nothing", &[]), None);
    }

    #[test]
    fn text_out_of_the_format_is_an_error() {
        if !have_parser() {
            return;
        }
        assert!(Scrape::parse("# TYPE x gauge\nx 1\n{oops} 2\n# EOF\n").is_err());
        assert!(Scrape::parse("# TYPE x gauge\nx 1\n").is_err(), "no # EOF");
    }
}
