//! The service's own spans: a SERVER span per request, continuing the caller's trace (its
//! `traceparent`, as the inbound sidecar sent it), and a CLIENT span per downstream call, whose
//! context goes downstream in the call's `traceparent`. So a request through a -> b -> c is one
//! trace whatever hop started it. Tracing is off unless an `OTEL_EXPORTER_OTLP_*ENDPOINT`
//! variable is set (see the `mesh-trace` crate); then the SDK's sampler, built from
//! `OTEL_TRACES_SAMPLER(_ARG)`, follows the caller's `sampled` flag.

use axum::http::{HeaderMap, HeaderValue, Method};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};

use mesh_trace::context::{TraceParent, TRACEPARENT, TRACESTATE};
use mesh_trace::Tracing;

fn span_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "HTTP",
    }
}

/// The caller's context from its `traceparent` and `tracestate`, if any.
fn caller(headers: &HeaderMap) -> Context {
    let Some(tp) = headers
        .get(TRACEPARENT)
        .and_then(|v| TraceParent::parse(v.as_bytes()))
    else {
        return Context::new();
    };
    let state = headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok()?.parse::<TraceState>().ok())
        .unwrap_or_default();
    let flags = if tp.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let sc = SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        flags,
        true,
        state,
    );
    Context::new().with_remote_span_context(sc)
}

/// Starts the request's SERVER span.
pub fn server_span(
    tracing: &Tracing,
    service: &str,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Context {
    let tracer = tracing.tracer();
    let span = tracer
        .span_builder(span_name(method))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", span_name(method)),
            KeyValue::new("url.path", path.to_owned()),
            KeyValue::new("mesh.service", service.to_owned()),
        ])
        .start_with_context(tracer, &caller(headers));
    Context::new().with_span(span)
}

/// Starts the CLIENT span of a downstream call to `service`, a child of `parent`.
pub fn client_span(tracing: &Tracing, parent: &Context, method: &Method, service: &str) -> Context {
    let tracer = tracing.tracer();
    let span = tracer
        .span_builder(span_name(method))
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("http.request.method", span_name(method)),
            KeyValue::new("server.address", service.to_owned()),
            KeyValue::new("mesh.upstream", service.to_owned()),
        ])
        .start_with_context(tracer, parent);
    Context::new().with_span(span)
}

/// The `traceparent` naming `cx`'s span as the parent (sampled or not, so the next hops agree).
pub fn traceparent(cx: &Context) -> HeaderValue {
    let span = cx.span();
    let sc = span.span_context();
    TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    }
    .header_value()
}

/// Ends `cx`'s span with the status answered (`None`: no answer, `error` says why).
pub fn end(cx: &Context, status: Option<u16>, error: Option<&str>) {
    let span = cx.span();
    if let Some(s) = status {
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    let error_type = match (status, error) {
        (Some(s), _) if s >= 500 => Some(s.to_string()),
        (None, _) => Some(error.map_or("_OTHER", |_| "transport").to_owned()),
        _ => None,
    };
    if let Some(e) = error_type {
        span.set_attribute(KeyValue::new("error.type", e.clone()));
        span.set_status(Status::error(error.map_or(e, str::to_owned)));
    }
    span.end();
}
