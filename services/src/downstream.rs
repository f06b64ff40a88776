//! Downstream calls, made through the sidecar's outbound listener used as a plain HTTP proxy.
//!
//! For a request `METHOD /path?query` and `calls = [c, d]` the service sends, concurrently,
//! `METHOD http://c/path?query` and `METHOD http://d/path?query` to the sidecar (absolute-form
//! request lines, as any `HTTP_PROXY` client does). The incoming method is reused; the incoming
//! body is not forwarded (downstream requests have an empty body). The trace and deadline headers
//! in [`FORWARDED_HEADERS`] are copied over when present. Each call has a 10 s timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, Method};
use mesh_proto::headers::{self, X_MESH_DEADLINE_MS};
use serde::Serialize;

use crate::metrics::CallResult;

/// Timeout of one downstream call, connect included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Incoming headers copied onto every downstream call when present.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Incoming headers copied onto every downstream call when present (with tracing on, the
/// call's own `traceparent` replaces the incoming one).
pub const FORWARDED_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("x-request-id"),
    X_MESH_DEADLINE_MS,
];

/// Builds the HTTP client that sends every request to `http://{sidecar}` as a proxy.
///
/// System proxy settings (`HTTP_PROXY`, `NO_PROXY`, …) are ignored and the proxy has no
/// exceptions: even `localhost` goes through the sidecar.
pub fn client(sidecar: &str) -> reqwest::Result<reqwest::Client> {
    let proxy = reqwest::Proxy::http(format!("http://{sidecar}"))?.no_proxy(None);
    reqwest::Client::builder()
        .no_proxy() // drop system proxies first; `.proxy` below adds ours.
        .proxy(proxy)
        .timeout(CALL_TIMEOUT)
        .build()
}

/// The subset of `incoming` that is forwarded downstream. The caller's deadline
/// (`x-mesh-deadline-ms`, the time it will still wait) is reduced by `elapsed`, the time this
/// service has already spent on the request, so the next hop sees what is really left.
pub fn forwarded_headers(incoming: &HeaderMap, elapsed: Duration) -> HeaderMap {
    let mut out = HeaderMap::new(); // does not allocate until the first insert
    for name in &FORWARDED_HEADERS {
        if *name == X_MESH_DEADLINE_MS {
            let left = incoming
                .get(name)
                .and_then(|v| headers::parse_deadline(v.as_bytes()));
            if let Some(left) = left {
                out.insert(
                    name.clone(),
                    headers::deadline_value(left.saturating_sub(elapsed)),
                );
            }
            continue;
        }
        for value in incoming.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The outcome of one downstream call, as shown in the `calls` array of the answer.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord<'a> {
    pub service: &'a str,
    /// The status the sidecar answered with; `null` when there was no answer.
    pub status: Option<u16>,
    /// Wall time of the call in milliseconds (microsecond resolution).
    pub ms: f64,
    /// Why there was no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CallRecord<'_> {
    /// How the call ended, for metrics.
    pub fn result(&self) -> CallResult {
        match self.status {
            Some(s) if (200..300).contains(&s) => CallResult::Ok,
            Some(_) => CallResult::BadStatus,
            None => CallResult::Failed,
        }
    }

    /// A one-line description of the failure, or `None` for a 2xx answer.
    pub fn failure(&self) -> Option<String> {
        match (self.status, &self.error) {
            (Some(s), _) if (200..300).contains(&s) => None,
            (Some(s), _) => Some(format!("downstream {} answered {s}", self.service)),
            (None, Some(e)) => Some(format!("downstream {} failed: {e}", self.service)),
            (None, None) => Some(format!("downstream {} failed", self.service)),
        }
    }
}

/// Calls every service in `services` concurrently with `method` and `path_and_query`; the records
/// come back in the order of `services`.
pub async fn call_all<'a>(
    client: &reqwest::Client,
    services: &'a [String],
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    traced: Traced<'_>,
) -> Vec<CallRecord<'a>> {
    join_all(
        services
            .iter()
            .map(|service| call_one(client, service, method, path_and_query, headers, traced)),
    )
    .await
}

/// The process's tracing and the request's server span, when tracing is on.
pub type Traced<'a> = Option<(&'a mesh_trace::Tracing, &'a opentelemetry::Context)>;

async fn call_one<'a>(
    client: &reqwest::Client,
    service: &'a str,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    traced: Traced<'_>,
) -> CallRecord<'a> {
    let started = Instant::now();
    let url = format!("http://{service}{path_and_query}");
    let mut headers = headers.clone();
    // The call's own span is the parent of the next hop (its sidecar's outbound span).
    let span = traced.map(|(t, parent)| crate::trace::client_span(t, parent, method, service));
    if let Some(cx) = &span {
        headers.insert(TRACEPARENT, crate::trace::traceparent(cx));
    }
    let sent = client
        .request(method.clone(), url)
        .headers(headers)
        .send()
        .await;
    let (status, error) = match sent {
        Ok(mut response) => {
            let status = response.status().as_u16();
            // Drain the body so the connection to the sidecar can be reused.
            loop {
                match response.chunk().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break (Some(status), None),
                    Err(e) => break (None, Some(error_chain(&e))),
                }
            }
        }
        Err(e) => (None, Some(error_chain(&e))),
    };
    if let Some(cx) = &span {
        crate::trace::end(cx, status, error.as_deref());
    }
    CallRecord {
        service,
        status,
        ms: started.elapsed().as_micros() as f64 / 1000.0,
        error,
    }
}

/// `reqwest`'s top-level message ("error sending request for url …") hides the cause; this joins
/// the whole source chain ("…: client error (Connect): tcp connect error: Connection refused").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        source = s.source();
    }
    msg
}

/// Polls all futures concurrently on the current task and returns their outputs in order.
/// (A tiny stand-in for `futures::future::join_all`, to avoid a dependency.)
pub async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[tokio::test]
    async fn join_all_runs_concurrently_and_keeps_order() {
        // The first future can only finish after the second has run: a sequential join would
        // hang (and hit the timeout).
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let first = Box::pin(async move { rx.await.expect("second future sends") + 1 })
            as Pin<Box<dyn Future<Output = u32> + Send>>;
        let second = Box::pin(async move {
            tx.send(41).expect("first future listens");
            7u32
        }) as Pin<Box<dyn Future<Output = u32> + Send>>;
        let out = tokio::time::timeout(Duration::from_secs(5), join_all([first, second]))
            .await
            .expect("join_all must poll the futures concurrently");
        assert_eq!(out, vec![42, 7], "outputs keep the input order");
        let none: Vec<u8> = join_all(Vec::<std::future::Ready<u8>>::new()).await;
        assert!(none.is_empty(), "no futures, no outputs");
    }

    #[test]
    fn forwards_only_the_listed_headers() {
        let mut incoming = HeaderMap::new();
        incoming.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        incoming.insert("x-request-id", HeaderValue::from_static("r1"));
        incoming.insert("authorization", HeaderValue::from_static("secret"));
        incoming.insert("host", HeaderValue::from_static("b"));
        let out = forwarded_headers(&incoming, Duration::ZERO);
        assert_eq!(out.len(), 2, "only traceparent and x-request-id: {out:?}");
        assert_eq!(out["traceparent"], "00-abc-def-01", "traceparent copied");
        assert_eq!(out["x-request-id"], "r1", "x-request-id copied");
    }

    #[test]
    fn the_deadline_shrinks_by_the_time_already_spent() {
        let mut incoming = HeaderMap::new();
        incoming.insert("x-mesh-deadline-ms", HeaderValue::from_static("300"));
        let out = forwarded_headers(&incoming, Duration::from_millis(120));
        assert_eq!(
            out["x-mesh-deadline-ms"], "180",
            "300 ms left minus 120 ms spent"
        );
        let out = forwarded_headers(&incoming, Duration::from_millis(500));
        assert_eq!(
            out["x-mesh-deadline-ms"], "0",
            "a passed deadline is sent as 0, not negative"
        );
        incoming.insert("x-mesh-deadline-ms", HeaderValue::from_static("soon"));
        let out = forwarded_headers(&incoming, Duration::ZERO);
        assert!(
            out.get("x-mesh-deadline-ms").is_none(),
            "garbage is not forwarded"
        );
    }

    #[test]
    fn failures_are_named() {
        let ok = CallRecord {
            service: "c",
            status: Some(204),
            ms: 1.0,
            error: None,
        };
        assert_eq!(ok.failure(), None, "2xx is not a failure");
        assert_eq!(ok.result(), CallResult::Ok, "2xx is ok");
        let bad = CallRecord {
            status: Some(503),
            ..ok.clone()
        };
        assert_eq!(
            bad.failure().as_deref(),
            Some("downstream c answered 503"),
            "non-2xx names the status"
        );
        assert_eq!(bad.result(), CallResult::BadStatus, "503 is bad_status");
        let failed = CallRecord {
            status: None,
            error: Some("connection refused".into()),
            ..ok
        };
        assert_eq!(
            failed.failure().as_deref(),
            Some("downstream c failed: connection refused"),
            "transport errors name the cause"
        );
        assert_eq!(failed.result(), CallResult::Failed, "no answer is failed");
    }
}
