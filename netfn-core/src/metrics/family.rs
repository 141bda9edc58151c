//! Building metric families by hand, for values read at scrape time (a custom collector).
//!
//! The prometheus crate's typed metrics (`IntCounterVec`, …) hold their own values; values that
//! live in BPF maps are read when Prometheus scrapes, so netfn builds the `MetricFamily` of each
//! scrape directly. [`Family`] does that with the conventions netfn keeps everywhere: label pairs
//! sorted by name, a HELP text, and names checked once ([`valid_metric_name`]).

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

/// The prefix of every metric netfn exports.
pub const PREFIX: &str = "netfn_";

/// One metric family being filled for one scrape.
#[derive(Debug, Clone)]
pub struct Family {
    family: MetricFamily,
    kind: MetricType,
    /// Labels added to every sample (e.g. `chain`, `function`, `kind` for a function's metrics).
    base: Vec<(String, String)>,
}

impl Family {
    /// A counter family: `name` must end in `_total` (checked by [`valid_metric_name`] in tests
    /// and by the collector for kinds' families).
    pub fn counter(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::COUNTER)
    }

    /// A gauge family.
    pub fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        Family {
            family,
            kind,
            base: Vec::new(),
        }
    }

    /// Adds `labels` to every sample added after this call.
    pub fn with_base_labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.base = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// Adds one sample with the base labels plus `labels`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let mut pairs: Vec<LabelPair> = self
            .base
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(labels.iter().copied())
            .map(|(k, v)| {
                let mut pair = LabelPair::default();
                pair.set_name(k.to_string());
                pair.set_value(v.to_string());
                pair
            })
            .collect();
        pairs.sort_by(|a, b| a.name().cmp(b.name()));
        let mut metric = Metric::default();
        metric.set_label(pairs);
        match self.kind {
            MetricType::GAUGE => {
                let mut g = Gauge::default();
                g.set_value(value);
                metric.set_gauge(g);
            }
            _ => {
                let mut c = Counter::default();
                c.set_value(value);
                metric.set_counter(c);
            }
        }
        self.family.mut_metric().push(metric);
        self
    }

    /// A sample from a kernel counter (u64; exact up to 2^53, which is ~9·10^15 packets).
    pub fn sample_u64(&mut self, labels: &[(&str, &str)], value: u64) -> &mut Self {
        self.sample(labels, value as f64)
    }

    pub fn is_empty(&self) -> bool {
        self.family.get_metric().is_empty()
    }

    pub fn name(&self) -> &str {
        self.family.name()
    }

    /// The finished family (an empty family is dropped by the registry, so nothing is exported).
    pub fn build(self) -> MetricFamily {
        self.family
    }
}

/// Whether `name` follows netfn's naming rules: the `netfn_` prefix, `[a-z0-9_]`, and `_total`
/// exactly on counters. Returns why not.
pub fn valid_metric_name(name: &str, kind: MetricType) -> Result<(), String> {
    if !name.starts_with(PREFIX) {
        return Err(format!("`{name}` does not start with `{PREFIX}`"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!("`{name}` contains {c:?}; use [a-z0-9_]"));
    }
    let total = name.ends_with("_total");
    match kind {
        MetricType::COUNTER if !total => Err(format!("counter `{name}` must end in `_total`")),
        MetricType::COUNTER => Ok(()),
        _ if total => Err(format!("`{name}` ends in `_total` but is not a counter")),
        _ => Ok(()),
    }
}

/// Whether every sample of `family` carries each of `labels`.
pub fn has_labels(family: &MetricFamily, labels: &[&str]) -> bool {
    family.get_metric().iter().all(|m| {
        labels
            .iter()
            .all(|l| m.get_label().iter().any(|p| p.name() == *l))
    })
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    #[test]
    fn samples_carry_base_labels_sorted_and_encode() {
        let mut f = Family::counter("netfn_x_packets_total", "Packets.")
            .with_base_labels(&[("function", "fw"), ("chain", "edge")]);
        f.sample_u64(&[("direction", "forward")], 7);
        let mf = f.build();
        assert!(has_labels(&mf, &["chain", "function", "direction"]));
        let mut out = Vec::new();
        TextEncoder::new().encode(&[mf], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "netfn_x_packets_total{chain=\"edge\",direction=\"forward\",function=\"fw\"} 7"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE netfn_x_packets_total counter"),
            "{text}"
        );
    }

    #[test]
    fn naming_rules() {
        assert!(valid_metric_name("netfn_a_total", MetricType::COUNTER).is_ok());
        assert!(valid_metric_name("netfn_a", MetricType::COUNTER).is_err());
        assert!(valid_metric_name("netfn_a_total", MetricType::GAUGE).is_err());
        assert!(valid_metric_name("other_a", MetricType::GAUGE).is_err());
        assert!(valid_metric_name("netfn_A", MetricType::GAUGE).is_err());
        assert!(valid_metric_name("netfn_up", MetricType::GAUGE).is_ok());
    }
}
