//! The metrics text exposition: the one writer of OpenMetrics and of the
//! Prometheus 0.0.4 text format, for the daemon's metrics and the tree's
//! (`nsgroup tree -O openmetrics`, [`super::metrics`]). Each family's
//! metadata comes first (help, type, then its unit in OpenMetrics), then its
//! samples; label values are escaped like every user-controlled string, then
//! quoted.

use std::fmt::{self, Display, Write as _};

use crate::core::escape::Escaped;

/// Text format: OpenMetrics (`# EOF`, `# UNIT`, counters' family names
/// without `_total`) or Prometheus 0.0.4 (for node_exporter's textfile
/// collector and scrapers that do not ask for OpenMetrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Prometheus,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// What a metric family is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// An exposition being written.
pub struct Exposition {
    text: String,
    format: Format,
}

/// One family of an exposition, taking its samples.
pub struct Family<'w> {
    out: &'w mut Exposition,
    name: &'w str,
    kind: Kind,
}

impl Exposition {
    /// An empty exposition with room for `bytes`.
    pub fn with_capacity(format: Format, bytes: usize) -> Exposition {
        Exposition { text: String::with_capacity(bytes), format }
    }

    /// Starts family `name`: its help, type and (OpenMetrics only, when not
    /// empty) unit. In the Prometheus format a counter's family is named
    /// like its samples, with `_total`.
    pub fn family<'w>(&'w mut self, name: &'w str, kind: Kind, unit: &str, help: &str) -> Family<'w> {
        let total = if kind == Kind::Counter && self.format == Format::Prometheus { "_total" } else { "" };
        let _ = writeln!(self.text, "# HELP {name}{total} {help}");
        let _ = writeln!(self.text, "# TYPE {name}{total} {}", kind.name());
        if !unit.is_empty() && self.format == Format::OpenMetrics {
            let _ = writeln!(self.text, "# UNIT {name} {unit}");
        }
        Family { out: self, name, kind }
    }

    /// The text, ended by `# EOF` in OpenMetrics.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.text.push_str("# EOF\n");
        }
        self.text
    }
}

impl Family<'_> {
    /// One sample; a counter's series end in `_total`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) -> &mut Self {
        let suffix = if self.kind == Kind::Counter { "_total" } else { "" };
        self.part(suffix, labels, value)
    }

    /// One sample of the series `suffix` names (a histogram's `_bucket`,
    /// `_sum` and `_count`).
    pub fn part(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl Display) -> &mut Self {
        let text = &mut self.out.text;
        text.push_str(self.name);
        text.push_str(suffix);
        if !labels.is_empty() {
            text.push('{');
            for (i, (key, v)) in labels.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(key);
                text.push_str("=\"");
                let _ = write!(Quoted(text), "{}", Escaped(v));
                text.push('"');
            }
            text.push('}');
        }
        let _ = writeln!(text, " {value}");
        self
    }
}

/// Writes into a label value: `\` and `"` escaped.
struct Quoted<'a>(&'a mut String);

impl fmt::Write for Quoted<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(write: impl Fn(&mut Exposition)) -> (String, String) {
        let [om, prom] = [Format::OpenMetrics, Format::Prometheus].map(|f| {
            let mut x = Exposition::with_capacity(f, 0);
            write(&mut x);
            x.finish()
        });
        (om, prom)
    }

    #[test]
    fn counters_are_named_per_format_and_openmetrics_ends_with_eof() {
        let (om, prom) = both(|x| {
            x.family("a_events", Kind::Counter, "", "Events.").sample(&[], 7);
        });
        assert_eq!(om, "# HELP a_events Events.\n# TYPE a_events counter\na_events_total 7\n# EOF\n");
        assert_eq!(prom, "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total 7\n");
    }

    #[test]
    fn units_only_in_openmetrics() {
        let (om, prom) = both(|x| {
            x.family("a_cpu_seconds", Kind::Counter, "seconds", "CPU.").sample(&[("id", "1")], 1.5);
        });
        assert!(om.contains("# TYPE a_cpu_seconds counter\n# UNIT a_cpu_seconds seconds\na_cpu_seconds_total{id=\"1\"} 1.5\n"), "{om}");
        assert!(!prom.contains("# UNIT"), "{prom}");
    }

    #[test]
    fn label_values_are_escaped_then_quoted() {
        let (om, _) = both(|x| {
            x.family("a_tasks", Kind::Gauge, "", "Tasks.").sample(&[("id", "7"), ("name", "n_\"1\"\n\\")], 3);
        });
        assert!(om.contains("a_tasks{id=\"7\",name=\"n_\\\"1\\\"\\\\n\\\\\\\\\"} 3\n"), "{om}");
    }

    #[test]
    fn histogram_parts_carry_their_suffixes() {
        let (om, _) = both(|x| {
            x.family("a_latency_seconds", Kind::Histogram, "", "Latency.")
                .part("_bucket", &[("le", "+Inf")], 2)
                .part("_sum", &[], 0.5)
                .part("_count", &[], 2);
        });
        assert!(om.contains("# TYPE a_latency_seconds histogram\na_latency_seconds_bucket{le=\"+Inf\"} 2\na_latency_seconds_sum 0.5\na_latency_seconds_count 2\n"), "{om}");
    }
}
