//! Prometheus metrics of the service. They are registered into a [`Registry`] that the caller
//! owns (made once in `main`) and rendered by `GET /metrics`.
//!
//! Only application requests are counted; the reserved paths (`/behaviour`, `/healthz`,
//! `/metrics`) are not.

use std::time::Duration;

use axum::http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// How a downstream call ended; the `result` label of `mesh_service_downstream_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// A 2xx answer.
    Ok,
    /// An answer with any other status.
    BadStatus,
    /// No answer: connect error, timeout, reset, …
    Failed,
}

impl CallResult {
    fn label(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::BadStatus => "bad_status",
            CallResult::Failed => "failed",
        }
    }
}

/// Handles to the service's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// `mesh_service_requests_total{status_class}` for 1xx..5xx, resolved once so the hot path
    /// does no label hashing.
    requests_by_class: [IntCounter; 5],
    injected_errors: IntCounter,
    downstream_calls: IntCounterVec,
    request_duration: Histogram,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    /// Creates the metrics and registers them in `registry`. Fails if they are already
    /// registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "mesh_service_requests_total",
                "Application requests answered, by status class.",
            ),
            &["status_class"],
        )?;
        let injected_errors = IntCounter::new(
            "mesh_service_injected_errors_total",
            "Requests answered with an injected error.",
        )?;
        let downstream_calls = IntCounterVec::new(
            Opts::new(
                "mesh_service_downstream_calls_total",
                "Downstream calls made through the sidecar, by service and result (ok, bad_status, failed).",
            ),
            &["service", "result"],
        )?;
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "mesh_service_request_duration_seconds",
                "Time to answer an application request, injected latency included.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(injected_errors.clone()))?;
        registry.register(Box::new(downstream_calls.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        let requests_by_class = STATUS_CLASSES.map(|class| requests.with_label_values(&[class]));
        Ok(Self {
            requests_by_class,
            injected_errors,
            downstream_calls,
            request_duration,
        })
    }

    /// Counts one answered application request and observes its duration.
    pub fn observe_request(&self, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests_by_class[class].inc();
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one injected error.
    pub fn injected_error(&self) {
        self.injected_errors.inc();
    }

    /// Counts one downstream call.
    pub fn downstream_call(&self, service: &str, result: CallResult) {
        self.downstream_calls
            .with_label_values(&[service, result.label()])
            .inc();
    }
}

/// Renders every metric in `registry` in the Prometheus text format; returns the content type
/// and the body.
pub fn render(registry: &Registry) -> (&'static str, Vec<u8>) {
    let encoder = TextEncoder::new();
    let mut body = Vec::with_capacity(4096);
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    (prometheus::TEXT_FORMAT, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_once_and_renders_all_families() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).expect("first registration");
        assert!(
            Metrics::register(&registry).is_err(),
            "registering twice in one registry must fail"
        );
        m.observe_request(StatusCode::OK, Duration::from_millis(3));
        m.observe_request(StatusCode::SERVICE_UNAVAILABLE, Duration::from_millis(3));
        m.injected_error();
        m.downstream_call("c", CallResult::BadStatus);
        let (content_type, body) = render(&registry);
        let text = String::from_utf8(body).expect("text format is UTF-8");
        assert!(
            content_type.starts_with("text/plain"),
            "content type {content_type}"
        );
        for want in [
            r#"mesh_service_requests_total{status_class="2xx"} 1"#,
            r#"mesh_service_requests_total{status_class="5xx"} 1"#,
            "mesh_service_injected_errors_total 1",
            r#"mesh_service_downstream_calls_total{result="bad_status",service="c"} 1"#,
            "mesh_service_request_duration_seconds_count 2",
        ] {
            assert!(text.contains(want), "metrics lack {want:?}:\n{text}");
        }
    }
}
