//! Request tracing shared by the gateway and sandbox-host: each request continues its caller's
//! W3C `traceparent` (or starts a trace), and with an OTLP endpoint configured
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) it is recorded as one
//! OpenTelemetry server span, exported over OTLP/HTTP from the SDK's batch thread. Without an
//! endpoint no SDK is built and a request costs what parsing its header costs.

mod export;
mod trace_context;

pub use export::{RequestTrace, TraceExport};
pub use opentelemetry::KeyValue;
pub use trace_context::TraceContext;
