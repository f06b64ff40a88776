//! The lab's traces: an OTLP/HTTP receiver of its own (`mesh_trace::collector`) on a loopback
//! port, the `OTEL_*` variables every child gets, and the report of a run (span and trace
//! counts, the slowest trace as a waterfall).

use std::net::SocketAddr;

use serde::Serialize;

use mesh_trace::collector::Collector;
use mesh_trace::waterfall::{self, Waterfall};

/// The running receiver; stops when dropped.
pub struct Receiver {
    pub collector: Collector,
    pub addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Receiver {
    /// Binds 127.0.0.1:0 and serves `POST /v1/traces` in the background.
    pub async fn start() -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let collector = Collector::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = collector.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = served.serve(listener, shutdown).await {
                tracing::warn!(error = %e, "the trace receiver stopped");
            }
        });
        Ok(Receiver {
            collector,
            addr,
            _stop: stop,
        })
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT`'s value for the children.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The `OTEL_*` variables of one child: the lab's receiver, `OTEL_SERVICE_NAME`, the instance
/// as `service.instance.id`, and the sampler: roots (the load's requests) sampled at `sample`,
/// every later hop following its caller.
pub fn child_env(
    endpoint: &str,
    service_name: &str,
    instance: &str,
    sample: f64,
) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_SERVICE_NAME", service_name.to_owned()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("service.instance.id={instance}"),
        ),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
        ("OTEL_TRACES_SAMPLER_ARG", sample.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// What the run's traces say, in the summary (`"traces"` of `--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceReport {
    /// The receiver's URL (`OTEL_EXPORTER_OTLP_ENDPOINT` of every child).
    pub collector: String,
    pub spans: usize,
    pub traces: usize,
    /// OTLP export requests received, and requests that did not decode.
    pub export_requests: u64,
    pub rejected_requests: u64,
    /// The slowest trace, laid out.
    pub slowest: Option<Waterfall>,
}

impl TraceReport {
    pub fn of(r: &Receiver) -> TraceReport {
        let traces = r.collector.traces();
        let (export_requests, rejected_requests) = r.collector.requests();
        TraceReport {
            collector: r.endpoint(),
            spans: traces.values().map(Vec::len).sum(),
            traces: traces.len(),
            export_requests,
            rejected_requests,
            slowest: waterfall::slowest(&traces),
        }
    }

    /// The text form: a count line and the waterfall.
    pub fn text(&self) -> String {
        let mut s = format!(
            "traces: {} spans in {} traces ({} OTLP requests to {})\n",
            self.spans, self.traces, self.export_requests, self.collector
        );
        match &self.slowest {
            Some(w) => {
                s.push_str("slowest ");
                s.push_str(&w.render());
            }
            None => s.push_str("no trace received\n"),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_get_the_standard_variables() {
        let env = child_env("http://127.0.0.1:4318", "b-sidecar", "b-0", 0.01);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(get("OTEL_SERVICE_NAME"), Some("b-sidecar"));
        assert_eq!(
            get("OTEL_RESOURCE_ATTRIBUTES"),
            Some("service.instance.id=b-0")
        );
        assert_eq!(get("OTEL_TRACES_SAMPLER"), Some("parentbased_traceidratio"));
        assert_eq!(get("OTEL_TRACES_SAMPLER_ARG"), Some("0.01"));
    }
}
