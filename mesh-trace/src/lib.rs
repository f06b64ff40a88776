//! meshlab's traces, shared by the sidecar, mesh-service and the lab.
//!
//! Configuration is the standard OpenTelemetry variables only, read once at start-up:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` (tracing is off when
//! neither is set), `OTEL_SERVICE_NAME` (and `OTEL_RESOURCE_ATTRIBUTES`),
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_TRACES_EXPORTER` (`otlp` or `none`)
//! and `OTEL_SDK_DISABLED`. A bad value is an error naming the variable, not a silent default.
//!
//! Layout:
//! - [`context`]: W3C `traceparent`, parsed and written without allocating;
//! - [`sampler`]: the head-sampling decision, once per trace;
//! - [`export`]: the bounded export queue and its thread (drops counted, never blocking);
//! - [`collector`]: an OTLP/HTTP receiver (`POST /v1/traces`, protobuf or JSON) that keeps the
//!   spans in memory, for the lab and the tests;
//! - [`waterfall`]: one trace as a text waterfall.

pub mod collector;
pub mod context;
pub mod export;
pub mod sampler;
pub mod waterfall;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

pub use context::TraceParent;
pub use export::ExportMetrics;
pub use sampler::Sampler;

/// A standard variable with a value this process cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{var}={value:?} is not valid: expected {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

impl ConfigError {
    pub fn new(var: &'static str, value: &str, expected: &str) -> ConfigError {
        ConfigError {
            var,
            value: value.to_owned(),
            expected: expected.to_owned(),
        }
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("building the OTLP exporter: {0}")]
    Exporter(String),
    #[error("registering the trace metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting the export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The trace settings from the environment; `None` when tracing is off.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Which variable named the collector, and its value.
    pub endpoint: (&'static str, String),
    pub sampler: Sampler,
}

/// Reads the settings through `var` (`std::env::var` in a process; a map in tests).
pub fn settings(var: impl Fn(&str) -> Option<String>) -> Result<Option<Settings>, ConfigError> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if let Some(v) = set("OTEL_SDK_DISABLED") {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" => return Ok(None),
            "false" => {}
            _ => return Err(ConfigError::new("OTEL_SDK_DISABLED", &v, "true or false")),
        }
    }
    if let Some(v) = set("OTEL_TRACES_EXPORTER") {
        match v.trim() {
            "none" => return Ok(None),
            "otlp" => {}
            _ => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_EXPORTER",
                    &v,
                    "otlp or none (this build exports OTLP over HTTP/protobuf only)",
                ))
            }
        }
    }
    let endpoint = match (
        set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        set("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(e), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e),
        (None, Some(e)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
        (None, None) => return Ok(None),
    };
    if !endpoint.1.starts_with("http://") {
        return Err(ConfigError::new(
            endpoint.0,
            &endpoint.1,
            "an http:// URL of an OTLP/HTTP collector (this build has no TLS), e.g. \
             http://127.0.0.1:4318",
        ));
    }
    if let Some(p) =
        set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
    {
        if p.trim() != "http/protobuf" {
            return Err(ConfigError::new(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                &p,
                "http/protobuf (the only protocol this build sends)",
            ));
        }
    }
    let sampler = Sampler::from_vars(
        set("OTEL_TRACES_SAMPLER").as_deref(),
        set("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    )?;
    Ok(Some(Settings { endpoint, sampler }))
}

/// A process's tracing: the provider (resource, export queue) and its tracer.
pub struct Tracing {
    pub settings: Settings,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    pub metrics: ExportMetrics,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Tracing {
    /// Starts tracing from the environment, or `Ok(None)` when no collector is configured.
    /// `default_service` names the process when `OTEL_SERVICE_NAME` is unset; `scope` is the
    /// instrumentation scope (`meshlab-sidecar`, `mesh-service`). The export counters are
    /// registered in `registry` either way, so `/metrics` always shows them.
    pub fn from_env(
        default_service: &str,
        scope: &'static str,
        registry: &prometheus::Registry,
    ) -> Result<Option<Tracing>, InitError> {
        let metrics = ExportMetrics::register(registry)?;
        let Some(settings) = settings(|k| std::env::var(k).ok())? else {
            return Ok(None);
        };
        // The exporter reads the endpoint variables itself (the traces one as is, the general
        // one with `/v1/traces` appended).
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| InitError::Exporter(e.to_string()))?;
        let processor = export::QueueProcessor::start(metrics.clone(), exporter)?;
        let mut resource = Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(default_service.to_owned());
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampler.to_sdk())
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer(scope);
        Ok(Some(Tracing {
            settings,
            provider,
            tracer,
            metrics,
        }))
    }

    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    pub fn sampler(&self) -> &Sampler {
        &self.settings.sampler
    }

    /// Exports every span ended so far, then stops the export thread (at most `timeout`).
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "flushing the last spans failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Option<Settings>, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        settings(|k| m.get(k).cloned())
    }

    #[test]
    fn no_endpoint_means_no_tracing() {
        assert_eq!(from(&[]).unwrap(), None, "nothing set");
        assert_eq!(
            from(&[
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", " ")
            ])
            .unwrap(),
            None,
            "a blank endpoint is unset"
        );
        assert_eq!(
            from(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .unwrap(),
            None,
            "OTEL_SDK_DISABLED wins"
        );
    }

    #[test]
    fn the_traces_endpoint_wins_and_the_sampler_is_read() {
        let s = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:2/v1/traces",
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ])
        .unwrap()
        .expect("on");
        assert_eq!(s.endpoint.0, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        assert_eq!(s.sampler.root, sampler::Root::Ratio(0.01));
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        let cases = [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://x:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![("OTEL_TRACES_EXPORTER", "jaeger")],
                "OTEL_TRACES_EXPORTER",
            ),
        ];
        for (vars, var) in cases {
            let e = from(&vars).expect_err(var);
            assert_eq!(e.var, var, "{e}");
        }
    }
}
