//! Metrics that filters define (`proxy_define_metric`), kept process-wide and rendered in the
//! Prometheus text format for the proxy's `/metrics` endpoint.

use crate::abi::{MetricType, Status};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Upper bounds of histogram buckets (the unit is whatever the filter records, often ms).
pub const HISTOGRAM_BOUNDS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

struct Metric {
    plugin: String,
    name: String,
    kind: MetricType,
    value: AtomicI64,
    buckets: [AtomicU64; HISTOGRAM_BOUNDS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

/// Every filter-defined metric of the process. Ids are shared: the same plugin defining the same
/// name (for example once per worker VM) gets the same id and the same series.
#[derive(Default)]
pub struct MetricsRegistry {
    metrics: RwLock<Vec<Arc<Metric>>>,
    ids: RwLock<HashMap<(String, String), u32>>,
    /// Metrics each plugin defined, held to [`MAX_METRICS_PER_PLUGIN`].
    per_plugin: RwLock<HashMap<String, usize>>,
}

/// Most metrics one plugin defines. Names a filter builds from request values (series per
/// identity and model) would otherwise grow the process's memory and `/metrics` for good: past
/// the bound `define` fails and the filter's increments of that name are dropped.
pub const MAX_METRICS_PER_PLUGIN: usize = 10_000;

impl MetricsRegistry {
    /// Defines (or finds) a metric; ids start at 1.
    pub fn define(&self, plugin: &str, kind: MetricType, name: &str) -> Result<u32, Status> {
        let key = (plugin.to_string(), name.to_string());
        if let Some(&id) = self.ids.read().expect("metrics lock").get(&key) {
            let existing = self.metric(id)?;
            return if existing.kind == kind {
                Ok(id)
            } else {
                Err(Status::BadArgument)
            };
        }
        let mut ids = self.ids.write().expect("metrics lock");
        let mut metrics = self.metrics.write().expect("metrics lock");
        if let Some(&id) = ids.get(&key) {
            return Ok(id);
        }
        let mut per_plugin = self.per_plugin.write().expect("metrics lock");
        let defined = per_plugin.entry(key.0.clone()).or_default();
        if *defined >= MAX_METRICS_PER_PLUGIN {
            return Err(Status::BadArgument);
        }
        *defined += 1;
        metrics.push(Arc::new(Metric {
            plugin: key.0.clone(),
            name: key.1.clone(),
            kind,
            value: AtomicI64::new(0),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }));
        let id = metrics.len() as u32;
        ids.insert(key, id);
        Ok(id)
    }

    /// The value of `plugin`'s counter or gauge `name`; 0 while nothing defined it.
    pub fn value(&self, plugin: &str, name: &str) -> i64 {
        let key = (plugin.to_string(), name.to_string());
        let id = self.ids.read().expect("metrics lock").get(&key).copied();
        id.and_then(|id| self.metric(id).ok())
            .map_or(0, |metric| metric.value.load(Ordering::Relaxed))
    }

    fn metric(&self, id: u32) -> Result<Arc<Metric>, Status> {
        let metrics = self.metrics.read().expect("metrics lock");
        id.checked_sub(1)
            .and_then(|index| metrics.get(index as usize))
            .cloned()
            .ok_or(Status::NotFound)
    }

    /// Adds `delta` to a counter (which only grows) or a gauge.
    pub fn increment(&self, id: u32, delta: i64) -> Status {
        match self.metric(id) {
            Err(status) => status,
            Ok(m) if m.kind == MetricType::Histogram => Status::BadArgument,
            Ok(m) if m.kind == MetricType::Counter && delta < 0 => Status::BadArgument,
            Ok(m) => {
                m.value.fetch_add(delta, Ordering::Relaxed);
                Status::Ok
            }
        }
    }

    /// Sets a gauge, adds to a counter, or records a histogram sample (Envoy's semantics).
    pub fn record(&self, id: u32, value: u64) -> Status {
        let Ok(m) = self.metric(id) else {
            return Status::NotFound;
        };
        match m.kind {
            MetricType::Gauge => m.value.store(value as i64, Ordering::Relaxed),
            MetricType::Counter => {
                m.value.fetch_add(value as i64, Ordering::Relaxed);
            }
            MetricType::Histogram => {
                if let Some(bucket) = HISTOGRAM_BOUNDS.iter().position(|&bound| value <= bound) {
                    m.buckets[bucket].fetch_add(1, Ordering::Relaxed);
                }
                m.count.fetch_add(1, Ordering::Relaxed);
                m.sum.fetch_add(value, Ordering::Relaxed);
            }
        }
        Status::Ok
    }

    /// The current value of a counter or gauge; histograms have none (`BAD_ARGUMENT`).
    pub fn get(&self, id: u32) -> Result<u64, Status> {
        let m = self.metric(id)?;
        if m.kind == MetricType::Histogram {
            return Err(Status::BadArgument);
        }
        Ok(m.value.load(Ordering::Relaxed) as u64)
    }

    /// All metrics in the Prometheus text exposition format, labelled with the plugin name and
    /// the labels their names carry ([`split_labels`]).
    pub fn render_prometheus(&self) -> String {
        let metrics = self.metrics.read().expect("metrics lock");
        let mut series: Vec<(String, String, &Arc<Metric>)> = metrics
            .iter()
            .map(|m| {
                let (base, labels) = split_labels(&m.name);
                let mut rendered = format!("plugin=\"{}\"", escape(&m.plugin));
                for (label, value) in labels {
                    let _ = write!(rendered, ",{label}=\"{}\"", escape(value));
                }
                (prometheus_name(base), rendered, m)
            })
            .collect();
        series.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut out = String::new();
        let mut last_name = None;
        for (name, labels, m) in series {
            if last_name.as_ref() != Some(&name) {
                let kind = match m.kind {
                    MetricType::Counter => "counter",
                    MetricType::Gauge => "gauge",
                    MetricType::Histogram => "histogram",
                };
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last_name = Some(name.clone());
            }
            if m.kind != MetricType::Histogram {
                let _ = writeln!(
                    out,
                    "{name}{{{labels}}} {}",
                    m.value.load(Ordering::Relaxed)
                );
                continue;
            }
            let mut cumulative = 0;
            for (bucket, bound) in m.buckets.iter().zip(HISTOGRAM_BOUNDS) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let count = m.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {}",
                m.sum.load(Ordering::Relaxed)
            );
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
        out
    }
}

/// A metric name's base and labels: `base;label=value;label=value` (the convention a filter uses
/// for series, which Envoy's `stats_tags` extract the same way). A name whose parts after the first
/// `;` are not all `label=value` with distinct Prometheus label names (not reserved `__…`, nor the
/// host's own `plugin` and `le`) has no labels and is rendered whole.
fn split_labels(name: &str) -> (&str, Vec<(&str, &str)>) {
    let mut parts = name.split(';');
    let base = parts.next().unwrap_or_default();
    let labels: Option<Vec<(&str, &str)>> = parts
        .map(|part| {
            let (label, value) = part.split_once('=')?;
            let valid = label.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !label.starts_with("__")
                && !matches!(label, "plugin" | "le");
            valid.then_some((label, value))
        })
        .collect();
    // A label named twice would make the whole scrape invalid.
    let distinct = |labels: &Vec<(&str, &str)>| {
        labels
            .iter()
            .enumerate()
            .all(|(i, (label, _))| labels[..i].iter().all(|(other, _)| other != label))
    };
    match labels {
        Some(labels) if distinct(&labels) => (base, labels),
        _ => (name, Vec::new()),
    }
}

/// A label value with Prometheus' escapes.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Maps a filter's metric name (Envoy allows dots and more) to a valid Prometheus name.
fn prometheus_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    format!("wasm_{out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn define_is_idempotent_per_plugin() {
        let r = MetricsRegistry::default();
        let a = r.define("p", MetricType::Counter, "requests").unwrap();
        assert_eq!(r.define("p", MetricType::Counter, "requests"), Ok(a));
        assert_ne!(r.define("q", MetricType::Counter, "requests"), Ok(a));
        assert_eq!(
            r.define("p", MetricType::Gauge, "requests"),
            Err(Status::BadArgument)
        );
    }

    #[test]
    fn labels_in_a_name_become_labels_of_one_metric() {
        let r = MetricsRegistry::default();
        let alice = r
            .define("p", MetricType::Counter, "tokens;identity=alice;model=m")
            .unwrap();
        let bob = r
            .define("p", MetricType::Counter, "tokens;identity=b\"o\\b;model=m")
            .unwrap();
        r.increment(alice, 3);
        r.increment(bob, 1);
        for odd in ["x;plugin=q", "y;no-label", "z;1a=b", "w;a=1;a=2", "v;__a=1"] {
            r.define("p", MetricType::Counter, odd).unwrap();
        }
        let text = r.render_prometheus();
        assert_eq!(
            text.matches("# TYPE wasm_tokens counter").count(),
            1,
            "{text}"
        );
        assert!(text.contains("wasm_tokens{plugin=\"p\",identity=\"alice\",model=\"m\"} 3\n"));
        assert!(text.contains("wasm_tokens{plugin=\"p\",identity=\"b\\\"o\\\\b\",model=\"m\"} 1\n"));
        // Names that do not follow the convention are rendered whole, as before.
        for whole in [
            "wasm_x_plugin_q{",
            "wasm_y_no_label{",
            "wasm_z_1a_b{",
            "wasm_w_a_1_a_2{",
            "wasm_v___a_1{",
        ] {
            assert!(text.contains(whole), "{text}");
        }
    }

    #[test]
    fn a_plugin_defines_a_bounded_number_of_metrics() {
        let r = MetricsRegistry::default();
        for n in 0..MAX_METRICS_PER_PLUGIN {
            r.define("p", MetricType::Counter, &format!("c;n={n}"))
                .unwrap();
        }
        assert_eq!(
            r.define("p", MetricType::Counter, "one-more"),
            Err(Status::BadArgument)
        );
        assert!(
            r.define("p", MetricType::Counter, "c;n=0").is_ok(),
            "defined already"
        );
        assert!(
            r.define("q", MetricType::Counter, "one-more").is_ok(),
            "per plugin"
        );
    }

    #[test]
    fn counter_gauge_histogram_semantics() {
        let r = MetricsRegistry::default();
        let c = r.define("p", MetricType::Counter, "c").unwrap();
        let g = r.define("p", MetricType::Gauge, "g").unwrap();
        let h = r.define("p", MetricType::Histogram, "h.ms").unwrap();
        assert_eq!(r.increment(c, 2), Status::Ok);
        assert_eq!(r.increment(c, -1), Status::BadArgument);
        assert_eq!(r.get(c), Ok(2));
        r.record(g, 7);
        r.increment(g, -2);
        assert_eq!(r.get(g), Ok(5));
        r.record(h, 3);
        r.record(h, 30000);
        assert_eq!(r.get(h), Err(Status::BadArgument));
        assert_eq!(r.increment(h, 1), Status::BadArgument);
        assert_eq!(r.get(99), Err(Status::NotFound));
        assert_eq!(r.record(99, 1), Status::NotFound);
        let text = r.render_prometheus();
        assert!(
            text.contains("# TYPE wasm_c counter\nwasm_c{plugin=\"p\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("wasm_h_ms_bucket{plugin=\"p\",le=\"5\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("wasm_h_ms_bucket{plugin=\"p\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("wasm_h_ms_sum{plugin=\"p\"} 30003\n"),
            "{text}"
        );
    }
}
