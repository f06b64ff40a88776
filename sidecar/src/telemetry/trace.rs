//! Spans of the sidecar's two hops, and the `traceparent` each hop sends on.
//!
//! - Outbound: one CLIENT span per request (name: the method) with one child CLIENT span per
//!   attempt (name `attempt`), hedges included; the next hop's parent is the attempt's span.
//! - Inbound: one SERVER span per request; the app's parent is that span.
//!
//! Cost: with tracing off (no `OTEL_EXPORTER_OTLP_*ENDPOINT`) a request carries `None` and each
//! phase checks that `Option` and nothing else. With tracing on, the sampling decision is taken
//! once per request: a caller's `traceparent` is parsed on the stack and its `sampled` flag
//! decides (parent-based samplers); a request without one asks the SDK, which draws the trace
//! id and decides by ratio without allocating. An unsampled request creates no span; it
//! forwards the caller's `traceparent` untouched, or, when it is the root of its trace, one
//! `traceparent` with flags `00` made once (one small allocation) so the next hops agree.
//! Only sampled requests allocate span data (attributes, names, the parent context).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::h1::request::Request;
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span as SdkSpan;

use mesh_trace::context::{TraceParent, TRACESTATE};
use mesh_trace::Tracing;

pub use mesh_trace::context::trace_id_hex;

/// The span name of a method: the method itself for the standard ones (OpenTelemetry's HTTP
/// conventions), `HTTP` for any other.
pub fn method_name(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::TRACE => "TRACE",
        http::Method::CONNECT => "CONNECT",
        _ => "HTTP",
    }
}

fn incoming(req: &Request) -> Option<TraceParent> {
    TraceParent::parse(req.get(crate::http::TRACEPARENT.as_str())?)
}

/// The trace of one request through one hop.
pub struct ReqTrace {
    pub trace_id: [u8; 16],
    /// The request's span, when sampled (as a context, the parent of attempt spans).
    span: Option<Context>,
    /// The `traceparent` an unsampled root sends on (flags `00`).
    unsampled_root: Option<http::HeaderValue>,
    /// The attempt in progress (outbound, sampled only).
    attempt: Option<SdkSpan>,
}

impl ReqTrace {
    /// Starts the trace of a request: decides sampling and, when sampled, starts its span with
    /// the request's attributes.
    pub fn start(
        tracing: &Tracing,
        req: &Request,
        kind: SpanKind,
        attrs: impl FnOnce() -> Vec<KeyValue>,
    ) -> ReqTrace {
        let tracer = tracing.tracer();
        let name = method_name(&req.method);
        let Some(parent) = incoming(req) else {
            // A root: the SDK draws the ids and decides (no allocation when it drops).
            let span = tracer
                .span_builder(name)
                .with_kind(kind.clone())
                .start_with_context(tracer, &Context::new());
            let sc = opentelemetry::trace::Span::span_context(&span).clone();
            let trace_id = sc.trace_id().to_bytes();
            if sc.is_sampled() {
                let cx = Context::new().with_span(span);
                cx.span().set_attributes(attrs());
                return ReqTrace {
                    trace_id,
                    span: Some(cx),
                    unsampled_root: None,
                    attempt: None,
                };
            }
            let root = TraceParent {
                trace_id,
                span_id: sc.span_id().to_bytes(),
                sampled: false,
            };
            return ReqTrace {
                trace_id,
                span: None,
                unsampled_root: Some(root.header_value()),
                attempt: None,
            };
        };
        if !tracing.sampler().sample(Some(&parent), &parent.trace_id) {
            return ReqTrace {
                trace_id: parent.trace_id,
                span: None,
                unsampled_root: None,
                attempt: None,
            };
        }
        let state = req
            .get(TRACESTATE)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<TraceState>().ok())
            .unwrap_or_default();
        let remote = SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(parent.trace_id),
            opentelemetry::trace::SpanId::from_bytes(parent.span_id),
            if parent.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            state,
        );
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attrs())
            .start_with_context(tracer, &Context::new().with_remote_span_context(remote));
        let sampled = opentelemetry::trace::Span::span_context(&span).is_sampled();
        ReqTrace {
            trace_id: parent.trace_id,
            span: sampled.then(|| Context::new().with_span(span)),
            unsampled_root: None,
            attempt: None,
        }
    }

    pub fn sampled(&self) -> bool {
        self.span.is_some()
    }

    /// Starts the span of attempt `n` at `endpoint` (sampled requests only).
    pub fn start_attempt(
        &mut self,
        tracing: &Tracing,
        method: &'static str,
        n: u32,
        endpoint: SocketAddr,
        probe: bool,
    ) {
        // A previous attempt still open has been superseded (a hedge loser is ended by its
        // caller); end it so it is not lost.
        self.end_attempt(None, None);
        let Some(cx) = &self.span else { return };
        let tracer = tracing.tracer();
        let mut attrs = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("mesh.attempt", i64::from(n)),
            KeyValue::new("mesh.endpoint", endpoint.to_string()),
            KeyValue::new("server.address", endpoint.ip().to_string()),
            KeyValue::new("server.port", i64::from(endpoint.port())),
            KeyValue::new("network.peer.address", endpoint.ip().to_string()),
            KeyValue::new("network.peer.port", i64::from(endpoint.port())),
            // The breaker state the endpoint was picked in: ejected endpoints are never picked,
            // a half-open one only for its single probe.
            KeyValue::new(
                "mesh.breaker_state",
                if probe { "half-open" } else { "closed" },
            ),
        ];
        if n > 1 {
            attrs.push(KeyValue::new("http.request.resend_count", i64::from(n - 1)));
        }
        self.attempt = Some(
            tracer
                .span_builder("attempt")
                .with_kind(SpanKind::Client)
                .with_attributes(attrs)
                .start_with_context(tracer, cx),
        );
    }

    /// The `traceparent` the next hop gets: the attempt's (outbound) or the request span's
    /// (inbound) when sampled, the unsampled root's, or `None` to forward the caller's as is.
    pub fn outgoing(&self) -> Option<http::HeaderValue> {
        let sc = match (&self.attempt, &self.span) {
            (Some(a), _) => opentelemetry::trace::Span::span_context(a).clone(),
            (None, Some(cx)) => cx.span().span_context().clone(),
            (None, None) => return self.unsampled_root.clone(),
        };
        Some(
            TraceParent {
                trace_id: sc.trace_id().to_bytes(),
                span_id: sc.span_id().to_bytes(),
                sampled: true,
            }
            .header_value(),
        )
    }

    /// Takes the attempt span in progress (hedging keeps one per try).
    pub fn take_attempt(&mut self) -> Option<SdkSpan> {
        self.attempt.take()
    }

    /// Ends the attempt in progress: `status` when the endpoint answered, `reason` when the
    /// attempt failed (an `x-mesh-error` token, or `status-<code>` for a retried status).
    pub fn end_attempt(&mut self, status: Option<u16>, reason: Option<Cow<'static, str>>) {
        if let Some(span) = self.attempt.take() {
            end_span(span, status, reason);
        }
    }

    /// Ends the attempt in progress after the endpoint answered a status that is retried.
    pub fn end_attempt_retried(&mut self, status: u16) {
        if let Some(span) = self.attempt.take() {
            end_span(span, Some(status), Some(format!("status-{status}").into()));
        }
    }

    /// Ends the request's span (and an attempt still open) with the response's status and,
    /// when the sidecar answered itself, its reason; `extra` attributes are made only when
    /// the request is sampled.
    pub fn end(
        &mut self,
        status: Option<u16>,
        reason: Option<&'static str>,
        extra: impl FnOnce() -> Vec<KeyValue>,
    ) {
        self.end_attempt(status, None);
        if let Some(cx) = self.span.take() {
            let span = cx.span();
            let (mut attrs, error) = outcome(status, reason.map(Cow::Borrowed));
            attrs.extend(extra());
            span.set_attributes(attrs);
            if let Some(e) = error {
                span.set_status(Status::error(e));
            }
            span.end();
        }
    }
}

/// The `traceparent` that makes `span` the next hop's parent.
pub fn traceparent_of(span: &SdkSpan) -> http::HeaderValue {
    let sc = opentelemetry::trace::Span::span_context(span);
    TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: true,
    }
    .header_value()
}

/// Ends a span of its own (an attempt) with its outcome.
pub fn end_span(mut span: SdkSpan, status: Option<u16>, reason: Option<Cow<'static, str>>) {
    use opentelemetry::trace::Span as _;
    let (attrs, error) = outcome(status, reason);
    span.set_attributes(attrs);
    if let Some(e) = error {
        span.set_status(Status::error(e));
    }
    span.end();
}

/// The outcome attributes of a span, and its error description when it failed.
fn outcome(
    status: Option<u16>,
    reason: Option<Cow<'static, str>>,
) -> (Vec<KeyValue>, Option<String>) {
    let mut attrs = Vec::with_capacity(3);
    if let Some(s) = status {
        attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
    }
    // `error.type` (OpenTelemetry HTTP conventions): the sidecar's reason when it has one,
    // else the status code of a 5xx answer, else `_OTHER` when there was no answer at all.
    let error = match (&reason, status) {
        (Some(r), _) => Some(r.to_string()),
        (None, Some(s)) if s >= 500 => Some(s.to_string()),
        (None, None) => Some("_OTHER".to_owned()),
        _ => None,
    };
    if let Some(r) = reason {
        attrs.push(KeyValue::new("mesh.reason", r));
    }
    if let Some(e) = &error {
        attrs.push(KeyValue::new("error.type", e.clone()));
    }
    (attrs, error)
}

/// The request attributes shared by both directions.
pub fn request_attrs(req: &Request, service: &str, direction: &'static str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("http.request.method", method_name(&req.method)),
        KeyValue::new("url.path", String::from_utf8_lossy(req.path()).into_owned()),
        KeyValue::new("mesh.service", service.to_owned()),
        KeyValue::new("mesh.direction", direction),
    ]
}

/// Tracing of the process, shared by both proxies; `None` when off.
pub type Shared = Option<Arc<Tracing>>;
