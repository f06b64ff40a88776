//! The responses the sidecar makes itself, and why.
//!
//! Each carries `x-mesh-error: <reason>` (one token from [`Reason`]), an RFC 9209
//! `Proxy-Status` header and a one-line text body saying the same in words.

use std::future::Future;
use std::pin::Pin;

use crate::h1::server::{Out, Server};
use bytes::Bytes;
use pingora_error::ErrorType;
use pingora_http::ResponseHeader;

use crate::http::PROXY_STATUS;
use mesh_proto::headers::names;

/// Why the sidecar answered instead of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UnknownService,
    NoTable,
    NoHealthyEndpoint,
    ConnectFailure,
    PerTryTimeout,
    RequestTimeout,
    UpstreamReset,
    BadRequest,
    DeadlineExceeded,
    Overflow,
    BreakerOpen,
    /// A fault of the table answered (its own status: see [`answer_fault`]).
    InjectedFault,
}

impl Reason {
    /// The `x-mesh-error` token.
    pub fn token(self) -> &'static str {
        match self {
            Reason::UnknownService => "unknown-service",
            Reason::NoTable => "no-table",
            Reason::NoHealthyEndpoint => "no-healthy-endpoint",
            Reason::ConnectFailure => "connect-failure",
            Reason::PerTryTimeout => "per-try-timeout",
            Reason::RequestTimeout => "request-timeout",
            Reason::UpstreamReset => "upstream-reset",
            Reason::BadRequest => "bad-request",
            Reason::DeadlineExceeded => "deadline-exceeded",
            Reason::Overflow => "overflow",
            Reason::BreakerOpen => "breaker-open",
            Reason::InjectedFault => "injected-fault",
        }
    }

    /// The status the sidecar answers with.
    pub fn status(self) -> u16 {
        match self {
            Reason::UnknownService => 404,
            Reason::BadRequest => 400,
            Reason::NoTable
            | Reason::NoHealthyEndpoint
            | Reason::Overflow
            | Reason::BreakerOpen
            | Reason::InjectedFault => 503,
            Reason::DeadlineExceeded => 504,
            Reason::ConnectFailure | Reason::UpstreamReset => 502,
            Reason::PerTryTimeout | Reason::RequestTimeout => 504,
        }
    }

    /// RFC 9209 error type for `Proxy-Status`.
    pub fn proxy_status(self) -> &'static str {
        match self {
            Reason::UnknownService => "destination_not_found",
            Reason::NoTable | Reason::NoHealthyEndpoint => "destination_unavailable",
            Reason::ConnectFailure => "connection_refused",
            Reason::PerTryTimeout | Reason::RequestTimeout => "http_response_timeout",
            Reason::UpstreamReset => "http_response_incomplete",
            Reason::BadRequest => "http_request_error",
            Reason::DeadlineExceeded => "http_response_timeout",
            Reason::Overflow => "connection_limit_reached",
            Reason::BreakerOpen | Reason::InjectedFault => "destination_unavailable",
        }
    }
}

impl Reason {
    /// The reason of a failed try, from Pingora's error type: the one place this mapping lives.
    pub fn of_error(e: &ErrorType) -> Reason {
        match e {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError => Reason::ConnectFailure,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Reason::PerTryTimeout,
            _ => Reason::UpstreamReset,
        }
    }
}

/// `x-mesh-attempts` values without formatting for the usual counts (the encoding is
/// `mesh_proto`'s; re-exported for the request paths that take it from here).
pub use mesh_proto::headers::attempts_value;

/// Writes one of the sidecar's own answers on a client connection.
///
/// Boxed on purpose: the write future is large, and awaited inline it would make
/// every request's future larger, answered or not (measured on the old path: ~17k
/// instructions of memcpy per request).
pub fn answer<'a>(
    s: &'a mut Server,
    reason: Reason,
    hop: &'a str,
    service: &'a str,
    detail: &'a str,
    attempts: u32,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        let (header, body) = response(reason, hop, service, detail, attempts);
        send(s, header.status.as_u16(), &body, |o| {
            for (name, value) in &header.headers {
                crate::h1::server::put_field(o, name.as_str().as_bytes(), value.as_bytes());
            }
        })
        .await;
    })
}

/// Writes one of the sidecar's own responses: `status`, the fields `fields` puts (its
/// `content-length` among them), and `body` unless the request was a HEAD.
async fn send(s: &mut Server, status: u16, body: &[u8], fields: impl FnOnce(&mut bytes::BytesMut)) {
    let head = s
        .req_header_if_read()
        .is_some_and(|r| r.method == http::Method::HEAD);
    let out = if head {
        Out::Empty
    } else {
        Out::Length(body.len() as u64)
    };
    let phrase = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    s.begin_response(status, phrase.as_bytes(), out, |o| {
        fields(o);
        false
    });
    let res = async {
        s.write_body(body).await?;
        s.finish().await
    }
    .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "could not send the sidecar's own answer downstream");
    }
}

/// A complete error response: header and body.
pub fn response(
    reason: Reason,
    hop: &str,
    service: &str,
    detail: &str,
    attempts: u32,
) -> (ResponseHeader, Bytes) {
    let body = Bytes::from(format!(
        "meshlab sidecar ({service} {hop}): {}: {detail}\n",
        reason.token()
    ));
    let mut h = ResponseHeader::build(reason.status(), Some(6)).expect("valid status");
    // Building a header from static names and ASCII values cannot fail.
    let _ = h.insert_header("content-type", "text/plain; charset=utf-8");
    let _ = h.insert_header("content-length", body.len().to_string());
    let _ = h.insert_header(names::ERROR, reason.token());
    let _ = h.insert_header(
        PROXY_STATUS.clone(),
        format!(
            "meshlab-{service}-{hop}; error={}; details=\"{}\"",
            reason.proxy_status(),
            reason.token()
        ),
    );
    if attempts > 0 {
        let _ = h.insert_header(names::ATTEMPTS, attempts_value(attempts));
    }
    (h, body)
}

/// Answers with an abort fault of the table: its status and body (else a line naming the
/// fault), `x-mesh-error: injected-fault`, `x-mesh-fault: <name>`, and `grpc-status` when the
/// fault sets one. No `Proxy-Status`: no proxy error happened.
#[allow(clippy::too_many_arguments)]
pub fn answer_fault<'a>(
    s: &'a mut Server,
    abort: &'a mesh_table::faults::Abort,
    fault: &'a str,
    hop: &'a str,
    service: &'a str,
    attempts: u32,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        let body = abort.body.clone().unwrap_or_else(|| {
            format!("meshlab sidecar ({service} {hop}): injected-fault: {fault}\n")
        });
        send(s, abort.status, body.as_bytes(), |o| {
            use crate::h1::server::put_field;
            put_field(o, b"content-type", b"text/plain; charset=utf-8");
            put_field(
                o,
                b"content-length",
                itoa::Buffer::new().format(body.len()).as_bytes(),
            );
            put_field(
                o,
                names::ERROR.as_bytes(),
                Reason::InjectedFault.token().as_bytes(),
            );
            put_field(o, b"x-mesh-fault", fault.as_bytes());
            if let Some(g) = abort.grpc_status {
                put_field(o, b"grpc-status", itoa::Buffer::new().format(g).as_bytes());
            }
            if attempts > 0 {
                put_field(
                    o,
                    names::ATTEMPTS.as_bytes(),
                    attempts_value(attempts).as_bytes(),
                );
            }
        })
        .await;
    })
}
