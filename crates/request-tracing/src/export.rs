//! The OpenTelemetry side: one server span per request, exported over OTLP/HTTP (protobuf).

use crate::trace_context::{TraceContext, TraceParent};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;
use std::borrow::Cow;

/// Environment variables that name an OTLP endpoint; either turns export on.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Whether and where a service exports its requests' spans.
pub struct TraceExport {
    exporter: Option<Exporter>,
}

struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl TraceExport {
    /// No export: requests still continue or start a trace for their logs and the next hop.
    pub fn off() -> Self {
        Self { exporter: None }
    }

    /// Export when the standard OpenTelemetry environment names an OTLP endpoint (and neither
    /// `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` says otherwise). The SDK reads
    /// the rest of it too: `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `OTEL_BSP_*`,
    /// `OTEL_RESOURCE_ATTRIBUTES`, and `OTEL_SERVICE_NAME`, which wins over `service_name`.
    ///
    /// Build it outside an async runtime: the exporter's HTTP client is a blocking one with a
    /// runtime of its own.
    pub fn from_env(service_name: &'static str) -> Result<Self, String> {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true")
            || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
        if disabled || !ENDPOINT_VARIABLES.iter().any(|name| set(name)) {
            return Ok(Self::off());
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| format!("cannot build the OTLP trace exporter: {e}"))?;
        let mut resource = Resource::builder();
        if !set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name(service_name);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer(service_name);
        Ok(Self {
            exporter: Some(Exporter { provider, tracer }),
        })
    }

    /// True when spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.exporter.is_some()
    }

    /// The trace of a request that arrived with `traceparent`: the caller's trace continued (a
    /// malformed value starts a new one), with a server span when exporting.
    pub fn start(&self, traceparent: Option<&[u8]>) -> RequestTrace {
        let Some(exporter) = &self.exporter else {
            return RequestTrace {
                context: TraceContext::continue_or_start(traceparent),
                span: None,
            };
        };
        let parent = traceparent
            .and_then(TraceParent::parse)
            .and_then(remote_parent)
            .map_or_else(Context::new, |parent| {
                Context::new().with_remote_span_context(parent)
            });
        let span = exporter
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .start_with_context(&exporter.tracer, &parent);
        let ids = span.span_context();
        let context = TraceContext {
            trace_id: ids.trace_id().to_string(),
            span_id: ids.span_id().to_string(),
            flags: if ids.is_sampled() { "01" } else { "00" }.into(),
        };
        RequestTrace {
            context,
            span: Some(span),
        }
    }

    /// Exports what is queued and stops the export thread; spans ended afterwards are dropped.
    pub fn shutdown(&self) {
        if let Some(exporter) = &self.exporter {
            if let Err(error) = exporter.provider.shutdown() {
                eprintln!("trace export did not finish: {error}");
            }
        }
    }
}

fn remote_parent(caller: TraceParent<'_>) -> Option<SpanContext> {
    let flags = u8::from_str_radix(caller.flags, 16).ok()?;
    Some(SpanContext::new(
        TraceId::from_hex(caller.trace_id).ok()?,
        SpanId::from_hex(caller.parent_id).ok()?,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// One request's place in its trace, and its span while it is recorded.
pub struct RequestTrace {
    /// The ids this service logs and sends to the next hop.
    pub context: TraceContext,
    span: Option<Span>,
}

impl RequestTrace {
    /// The trace id, as logged: 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        &self.context.trace_id
    }

    /// True when the span is recorded, so describing it is worth the work.
    pub fn is_recording(&self) -> bool {
        self.span.as_ref().is_some_and(|span| span.is_recording())
    }

    /// Ends the span (when recorded) with its final name and attributes; `failed` marks it an
    /// error, as a 5xx answer or a request that got none is.
    pub fn finish(
        self,
        name: impl Into<Cow<'static, str>>,
        attributes: Vec<KeyValue>,
        failed: bool,
    ) {
        let Some(mut span) = self.span else {
            return;
        };
        span.update_name(name);
        span.set_attributes(attributes);
        if failed {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_endpoint_nothing_is_recorded_and_the_trace_continues() {
        let trace_export = TraceExport::off();
        let trace = trace_export.start(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert!(!trace_export.is_exporting());
        assert!(!trace.is_recording());
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn remote_parent_keeps_the_callers_ids_and_sampled_flag() {
        let value = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let parent = remote_parent(TraceParent::parse(value).unwrap()).unwrap();
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(!parent.is_sampled() && parent.is_remote());
    }
}
