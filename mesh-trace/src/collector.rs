//! An OTLP/HTTP trace receiver: `POST /v1/traces` with an `ExportTraceServiceRequest` in
//! protobuf (`application/x-protobuf`) or JSON (`application/json`), the two encodings of the
//! OTLP/HTTP specification. It keeps every span in memory, flattened to [`RecordedSpan`], for
//! the lab's report and the tests; it is a receiver for one run, not a trace store.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde::Serialize;

/// Spans kept at most; later ones are counted and dropped.
pub const MAX_SPANS: usize = 2_000_000;

/// One received span, with its process's `service.name` and `service.instance.id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedSpan {
    /// Lower-case hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    pub service: String,
    pub instance: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Every attribute, its value as text.
    pub attributes: BTreeMap<String, String>,
    /// The span's status is `Error`.
    pub error: bool,
}

impl RecordedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

#[derive(Default)]
struct Inner {
    spans: Vec<RecordedSpan>,
    requests: u64,
    rejected: u64,
    overflow: u64,
}

/// The received spans; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Collector {
    inner: Arc<Mutex<Inner>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn kind(k: i32) -> &'static str {
    match SpanKind::try_from(k) {
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    }
}

/// Flattens one export request.
pub fn flatten(req: &ExportTraceServiceRequest) -> Vec<RecordedSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let res = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        let service = res.get("service.name").cloned().unwrap_or_default();
        let instance = res.get("service.instance.id").cloned().unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(RecordedSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: kind(s.kind),
                    service: service.clone(),
                    instance: instance.clone(),
                    start_unix_nano: s.start_time_unix_nano,
                    end_unix_nano: s.end_time_unix_nano,
                    attributes: attrs(&s.attributes),
                    // opentelemetry.proto.trace.v1.Status.StatusCode: 2 = ERROR.
                    error: s.status.as_ref().is_some_and(|st| st.code == 2),
                });
            }
        }
    }
    out
}

impl Collector {
    pub fn new() -> Collector {
        Collector::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the spans of one decoded request.
    pub fn record(&self, req: &ExportTraceServiceRequest) {
        let spans = flatten(req);
        let mut g = self.lock();
        g.requests += 1;
        let room = MAX_SPANS.saturating_sub(g.spans.len());
        if spans.len() > room {
            g.overflow += (spans.len() - room) as u64;
        }
        g.spans.extend(spans.into_iter().take(room));
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<RecordedSpan> {
        self.lock().spans.clone()
    }

    pub fn span_count(&self) -> usize {
        self.lock().spans.len()
    }

    /// Export requests accepted, and requests rejected as undecodable.
    pub fn requests(&self) -> (u64, u64) {
        let g = self.lock();
        (g.requests, g.rejected)
    }

    /// The spans of each trace, by trace id.
    pub fn traces(&self) -> BTreeMap<String, Vec<RecordedSpan>> {
        let mut by: BTreeMap<String, Vec<RecordedSpan>> = BTreeMap::new();
        for s in self.lock().spans.iter() {
            by.entry(s.trace_id.clone()).or_default().push(s.clone());
        }
        by
    }

    /// The router: `POST /v1/traces`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/traces", post(receive))
            .with_state(self.clone())
    }

    /// Serves the receiver on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn receive(State(c): State<Collector>, headers: HeaderMap, body: Bytes) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let decoded = if json {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body).map_err(|e| e.to_string())
    } else {
        ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())
    };
    let req = match decoded {
        Ok(r) => r,
        Err(e) => {
            c.lock().rejected += 1;
            let msg = format!("not an ExportTraceServiceRequest: {e}");
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    c.record(&req);
    let resp = ExportTraceServiceResponse::default();
    if json {
        let body = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec());
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn request() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "b"), kv("service.instance.id", "b-0")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![1; 8],
                        parent_span_id: vec![2; 8],
                        name: "GET".into(),
                        kind: SpanKind::Server as i32,
                        start_time_unix_nano: 10,
                        end_time_unix_nano: 25,
                        attributes: vec![
                            kv("mesh.direction", "inbound"),
                            KeyValue {
                                key: "http.response.status_code".into(),
                                value: Some(AnyValue {
                                    value: Some(any_value::Value::IntValue(503)),
                                }),
                                ..Default::default()
                            },
                        ],
                        status: Some(Status {
                            code: 2,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_request_flattens_to_spans_with_their_service() {
        let spans = flatten(&request());
        assert_eq!(spans.len(), 1, "one span");
        let s = &spans[0];
        assert_eq!(s.trace_id, "ab".repeat(16), "hex trace id");
        assert_eq!(s.parent_span_id, "0202020202020202", "hex parent");
        assert_eq!((s.service.as_str(), s.instance.as_str()), ("b", "b-0"));
        assert_eq!(s.kind, "server");
        assert_eq!(
            s.attr("http.response.status_code"),
            Some("503"),
            "ints as text"
        );
        assert_eq!(s.duration_ns(), 15);
        assert!(s.error, "status code 2 is an error");
    }

    #[tokio::test]
    async fn protobuf_and_json_bodies_are_received_and_garbage_is_refused() {
        let c = Collector::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = c.clone();
        tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
        let client = reqwest_like::Client::new(addr);
        let proto = request().encode_to_vec();
        assert_eq!(
            client.post("application/x-protobuf", &proto).await,
            200,
            "protobuf"
        );
        let json = serde_json::to_vec(&request()).unwrap();
        assert_eq!(client.post("application/json", &json).await, 200, "JSON");
        assert_eq!(
            client.post("application/x-protobuf", b"\xff\xff\xff").await,
            400,
            "garbage"
        );
        assert_eq!(c.span_count(), 2, "one span from each good request");
        assert_eq!(c.requests(), (2, 1), "two accepted, one rejected");
        let spans = c.spans();
        assert_eq!(spans[0], spans[1], "both encodings decode to the same span");
    }

    /// A minimal HTTP/1.1 POST over a tokio socket (this crate has no HTTP client).
    mod reqwest_like {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        pub struct Client(std::net::SocketAddr);

        impl Client {
            pub fn new(addr: std::net::SocketAddr) -> Client {
                Client(addr)
            }

            pub async fn post(&self, content_type: &str, body: &[u8]) -> u16 {
                let mut s = tokio::net::TcpStream::connect(self.0).await.unwrap();
                let head = format!(
                    "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(body).await.unwrap();
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.unwrap();
                let text = String::from_utf8_lossy(&out);
                text.split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0)
            }
        }
    }
}
