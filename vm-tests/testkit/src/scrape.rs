//! A service's `/metrics` answer, read the way Prometheus would: parsed against the OpenMetrics
//! text grammar (the `openmetrics-parser` crate, strict: a line out of the format is an error),
//! and its series looked up by name and labels.
//!
//! Names are the families' (the `# HELP` names); a counter may also be named by its sample,
//! `x_total`, as Prometheus shows it.

use openmetrics_parser::{
    MetricFamily, MetricsExposition, OpenMetricsType, OpenMetricsValue, Sample,
};

type Family = MetricFamily<OpenMetricsType, OpenMetricsValue>;

/// One parsed `/metrics` answer.
#[derive(Debug)]
pub struct Scrape {
    parsed: MetricsExposition<OpenMetricsType, OpenMetricsValue>,
}

impl Scrape {
    /// Parses `text` (OpenMetrics 1.0, ending in `# EOF`); the error is the parser's, naming
    /// the line and column.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let parsed = openmetrics_parser::openmetrics::parse_openmetrics(text)
            .map_err(|e| format!("not the OpenMetrics text format: {e:?}"))?;
        Ok(Scrape { parsed })
    }

    fn family(&self, name: &str) -> Option<&Family> {
        self.parsed.families.get(name).or_else(|| {
            name.strip_suffix("_total")
                .and_then(|base| self.parsed.families.get(base))
        })
    }

    fn matching<'a>(
        &'a self,
        name: &str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample<OpenMetricsValue>> + 'a {
        self.family(name)
            .into_iter()
            .flat_map(|f| f.iter_samples())
            .filter(move |s| {
                s.get_labelset().is_ok_and(|set| {
                    labels
                        .iter()
                        .all(|(k, v)| set.get_label_value(k) == Some(*v))
                })
            })
    }

    fn scalar(v: &OpenMetricsValue) -> Option<f64> {
        match v {
            OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => Some(n.as_f64()),
            OpenMetricsValue::Counter(c) => Some(c.value.as_f64()),
            _ => None,
        }
    }

    /// The value of the counter or gauge `name` whose labels include `labels` (the first such;
    /// `None` when there is none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels)
            .find_map(|s| Self::scalar(&s.value))
    }

    /// The sum over every counter or gauge sample of `name` whose labels include `labels` (0
    /// when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .filter_map(|s| Self::scalar(&s.value))
            .sum()
    }

    /// The observation count of histogram `name` over its series whose labels include
    /// `labels`; `None` when there is no such series.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.matching(name, labels) {
            if let OpenMetricsValue::Histogram(h) = &s.value {
                let n = h.count.map_or_else(
                    || {
                        h.buckets
                            .iter()
                            .find(|b| b.upper_bound.is_infinite())
                            .map_or(0.0, |b| b.count.as_f64())
                    },
                    |c| c as f64,
                );
                found = Some(found.unwrap_or(0.0) + n);
            }
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
chainfire_disk_wal_fsync_duration_seconds_sum 0.5
chainfire_disk_wal_fsync_duration_seconds_count 7
chainfire_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 5
chainfire_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 7
# EOF
";

    #[test]
    fn series_are_found_by_name_and_labels() {
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
        assert!(Scrape::parse("# TYPE x gauge\nx 1\n{oops} 2\n# EOF\n").is_err());
        assert!(Scrape::parse("# TYPE x gauge\nx 1\n").is_err(), "no # EOF");
    }
}
