//! Prometheus metrics for `/metrics`.

use crate::runtimes::Language;
use crate::sandbox::Report;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    executions: IntCounterVec,
    duration: HistogramVec,
    fuel: IntCounterVec,
    rejections: IntCounterVec,
    running: IntGauge,
    waiting: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let executions = IntCounterVec::new(
            Opts::new(
                "sandbox_executions_total",
                "Executions by language and outcome",
            ),
            &["language", "outcome"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("sandbox_execution_duration_seconds", "Guest run time").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ],
            ),
            &["language"],
        )
        .expect("valid metric");
        let fuel = IntCounterVec::new(
            Opts::new("sandbox_fuel_consumed_total", "Fuel consumed by guests"),
            &["language"],
        )
        .expect("valid metric");
        let rejections = IntCounterVec::new(
            Opts::new(
                "sandbox_rejections_total",
                "Requests refused before running, by error code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let running = IntGauge::new("sandbox_executions_running", "Executions running now")
            .expect("valid metric");
        let waiting = IntGauge::new("sandbox_executions_queued", "Executions waiting for a slot")
            .expect("valid metric");
        for collector in [
            Box::new(executions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(fuel.clone()),
            Box::new(rejections.clone()),
            Box::new(running.clone()),
            Box::new(waiting.clone()),
        ] {
            registry.register(collector).expect("unique metric");
        }
        Self {
            registry,
            executions,
            duration,
            fuel,
            rejections,
            running,
            waiting,
        }
    }

    /// Records a finished execution.
    pub fn record(&self, language: Language, report: &Report) {
        self.executions
            .with_label_values(&[language.as_str(), report.outcome.as_str()])
            .inc();
        self.duration
            .with_label_values(&[language.as_str()])
            .observe(report.duration_ms / 1000.0);
        self.fuel
            .with_label_values(&[language.as_str()])
            .inc_by(report.fuel_used);
    }

    /// Records a request refused with `code`.
    pub fn reject(&self, code: &str) {
        self.rejections.with_label_values(&[code]).inc();
    }

    /// The Prometheus text format, with the queue gauges as of now.
    pub fn render(&self, running: usize, waiting: usize) -> String {
        self.running.set(running as i64);
        self.waiting.set(waiting as i64);
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
