//! `/metrics` in the OpenMetrics 1.0 text format, encoded by `prometheus-client` (the official
//! Rust client, as Chainfire, FlareDB and IAM use). pxe-server's counters stay plain atomics
//! on the hot paths ([`crate::state::Metrics`], the listeners' slots, the event log); at each
//! scrape the parts describe their families into an [`Exposition`], which the crate's encoder
//! writes through the [`Collector`] trait, so no line of the format is written here.
//!
//! Names are given as served: a counter's with its `_total` (the encoder adds it back to the
//! family name it is stripped from).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// The content type of the answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A whole number.
    Int(u64),
    /// A fraction (seconds).
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as u64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One family and its series.
#[derive(Debug, Clone)]
pub struct Family {
    name: String,
    help: String,
    kind: Kind,
    series: Vec<(Vec<(String, String)>, Value)>,
}

impl Family {
    /// Adds a series: its labels (in order) and value.
    pub fn row(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), escape(v)))
            .collect();
        self.series.push((labels, value.into()));
        self
    }

    /// Adds the one unlabelled series.
    pub fn value(&mut self, value: impl Into<Value>) -> &mut Self {
        self.row(&[], value)
    }
}

/// A label value as the text format writes it: `prometheus-client` writes label values as
/// given, so the format's three escapes (backslash, double quote, newline) are made here.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// What one scrape serves.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// A new counter family; `name` ends in `_total`.
    pub fn counter(&mut self, name: &str, help: &str) -> &mut Family {
        let base = name.strip_suffix("_total").unwrap_or(name);
        self.family(base, help, Kind::Counter)
    }

    /// A new gauge family.
    pub fn gauge(&mut self, name: &str, help: &str) -> &mut Family {
        self.family(name, help, Kind::Gauge)
    }

    fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Family {
        self.families.push(Family {
            name: name.into(),
            help: help.into(),
            kind,
            series: Vec::new(),
        });
        let last = self.families.len() - 1;
        &mut self.families[last]
    }

    /// The OpenMetrics text of it all (ending in `# EOF`).
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a String cannot fail; a family the encoder refuses is a bug here.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding /metrics failed");
        }
        out
    }
}

/// A sample's value as the encoder's metric type.
fn encode_value(
    kind: Kind,
    v: Value,
    enc: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match (kind, v) {
        (Kind::Counter, Value::Int(n)) => ConstCounter::new(n).encode(enc),
        (Kind::Counter, Value::Float(x)) => ConstCounter::new(x).encode(enc),
        (Kind::Gauge, Value::Int(n)) => ConstGauge::new(n).encode(enc),
        (Kind::Gauge, Value::Float(x)) => ConstGauge::new(x).encode(enc),
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let ty: MetricType = match f.kind {
                Kind::Counter => ConstCounter::<u64>::TYPE,
                Kind::Gauge => ConstGauge::<u64>::TYPE,
            };
            let mut family = encoder.encode_descriptor(&f.name, &f.help, None, ty)?;
            for (labels, v) in &f.series {
                if labels.is_empty() {
                    // An unlabelled family has its one series only.
                    encode_value(f.kind, *v, family)?;
                    break;
                }
                let series = family.encode_family(labels)?;
                encode_value(f.kind, *v, series)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_as_openmetrics() {
        let mut x = Exposition::default();
        x.counter("pxe_dhcp_acks_total", "DHCP ACKs sent.")
            .row(&[("mode", "full")], 3u64)
            .row(&[("mode", "proxy")], 0u64);
        x.gauge("pxe_tftp_active_transfers", "TFTP transfers running now.")
            .value(2u64);
        x.gauge("pxe_node_boot_seconds", "Seconds to cluster-ready.")
            .row(&[("node", "node01")], 12.5);
        x.counter("pxe_events_total", "Boot events.");
        let out = x.render();
        for line in [
            "# HELP pxe_dhcp_acks DHCP ACKs sent.",
            "# TYPE pxe_dhcp_acks counter",
            "pxe_dhcp_acks_total{mode=\"full\"} 3",
            "pxe_dhcp_acks_total{mode=\"proxy\"} 0",
            "# TYPE pxe_tftp_active_transfers gauge",
            "pxe_tftp_active_transfers 2",
            "pxe_node_boot_seconds{node=\"node01\"} 12.5",
            "# TYPE pxe_events counter",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line:?} missing from\n{out}"
            );
        }
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut x = Exposition::default();
        x.gauge("pxe_bundle_info", "The bundle.")
            .row(&[("version", "a\"b\\c\nd")], 1u64);
        let out = x.render();
        assert!(
            out.contains(r#"pxe_bundle_info{version="a\"b\\c\nd"} 1"#),
            "{out}"
        );
    }
}
