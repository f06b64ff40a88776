//! The access log: one structured line per request (target `access`, `--access-log`), the same
//! fields on both listeners. Off by default; when on, it formats the endpoint and the trace id
//! on the stack or in one small string per request.

use std::net::SocketAddr;
use std::time::Duration;

use crate::h1::request::Request;

use crate::reason::Reason;
use crate::telemetry::trace::{self, ReqTrace};

/// What one request did, as the access log tells it.
pub struct Access<'a> {
    pub direction: &'static str,
    pub service: &'a str,
    pub upstream: &'a str,
    pub endpoint: Option<SocketAddr>,
    pub req: &'a Request,
    pub trace: Option<&'a ReqTrace>,
    pub status: Option<u16>,
    pub attempts: u32,
    pub answered: Option<Reason>,
    pub elapsed: Duration,
}

impl Access<'_> {
    /// Writes the line.
    pub fn log(&self) {
        let mut hex = [0u8; 32];
        tracing::info!(
            target: "access",
            trace_id = trace_id(self.trace, self.req, &mut hex),
            direction = self.direction,
            service = %self.service,
            upstream = %self.upstream,
            endpoint = %self.endpoint.map(|a| a.to_string()).unwrap_or_default(),
            method = %self.req.method,
            status = self.status.unwrap_or(0),
            attempts = self.attempts,
            reason = self.answered.map_or("", |r| r.token()),
            duration_ms = self.elapsed.as_secs_f64() * 1e3,
        );
    }
}

/// The trace id for the access log: the request's trace when tracing is on (a trace the hop
/// started itself included), else the caller's `traceparent`'s. `buf` holds the hex.
fn trace_id<'a>(trace: Option<&ReqTrace>, req: &'a Request, buf: &'a mut [u8; 32]) -> &'a str {
    match trace {
        Some(t) => {
            *buf = trace::trace_id_hex(&t.trace_id);
            std::str::from_utf8(buf).unwrap_or("")
        }
        None => crate::http::trace_id(req),
    }
}
