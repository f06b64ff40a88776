//! One try of an outbound request, and how it ended.
//!
//! Every try, first, retried or hedged, goes through here: [`Try::start`] takes the endpoint
//! the balancer chose (counting it as loaded) and opens the try's span; [`exchange`] connects,
//! sends the request and reads the response header; [`Ended`] is the one classification of how
//! it went, and [`Try::finish`] hands it to every consumer at once: the endpoint's breaker, its
//! latency estimate, the attempt and timeout counters and the try's span. The retry decision
//! reads the same value ([`Ended::outcome`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::h1::request::Request;
use opentelemetry_sdk::trace::Span as SdkSpan;

use crate::h1::client::Client;
use crate::http::TryFields;

use crate::endpoints::balancer::Chosen;
use crate::endpoints::balancer::InFlightGuard;
use crate::forward::{BodyError, ReqBody};
use crate::h1::server::Server;
use crate::reason::Reason;
use crate::state::ServiceRoute;
use crate::telemetry::metrics;
use crate::telemetry::trace::{self, ReqTrace};
use crate::upstream::{Conn, ConnectError, Upstreams};
use mesh_policy::retry::Outcome;

/// How a try ended: classified once, read by everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The endpoint answered with this status (its response header was read).
    Answered(u16),
    /// No connection could be made: nothing reached the endpoint.
    ConnectFailed { timed_out: bool },
    /// The connection broke before the response header arrived.
    Reset,
    /// No response header within the try's timeout; `deadline`: that timeout was what was left
    /// of the request's own deadline.
    TimedOut { deadline: bool },
    /// A fault of the table answered the try with this status before it was sent: nothing
    /// reached an endpoint.
    Injected(u16),
}

impl Ended {
    /// The retry policy's view.
    pub fn outcome(self) -> Outcome {
        match self {
            Ended::Answered(s) | Ended::Injected(s) => Outcome::of_status(s),
            Ended::ConnectFailed { .. } => Outcome::ConnectFailure,
            Ended::Reset => Outcome::Reset,
            Ended::TimedOut { .. } => Outcome::Timeout,
        }
    }

    /// A failure of the endpoint for its breaker: a 5xx, or no answer at all.
    pub fn is_failure(self) -> bool {
        match self {
            Ended::Answered(s) => s >= 500,
            // Not the endpoint's: it was never asked.
            Ended::Injected(_) => false,
            _ => true,
        }
    }

    /// Why the sidecar answers itself when this was the last try.
    pub fn reason(self) -> Reason {
        match self {
            Ended::Answered(_) | Ended::Reset => Reason::UpstreamReset,
            Ended::Injected(_) => Reason::InjectedFault,
            Ended::ConnectFailed { .. } => Reason::ConnectFailure,
            Ended::TimedOut { deadline: true } => Reason::RequestTimeout,
            Ended::TimedOut { deadline: false } => Reason::PerTryTimeout,
        }
    }

    /// Whether any of the request may have reached the app.
    pub fn reached_app(self) -> bool {
        !matches!(self, Ended::ConnectFailed { .. } | Ended::Injected(_))
    }

    /// The retry counter a retry after this try counts under.
    pub fn retry_label(self) -> metrics::RetryReason {
        use metrics::RetryReason;
        match self {
            Ended::Answered(_) | Ended::Injected(_) => RetryReason::Status,
            Ended::ConnectFailed { .. } => RetryReason::ConnectFailure,
            Ended::Reset => RetryReason::Reset,
            Ended::TimedOut { .. } => RetryReason::Timeout,
        }
    }
}

/// A try in flight at one endpoint. The endpoint counts it as loaded until the try is dropped
/// (for the try that answered, once the response has been forwarded).
pub struct Try {
    route: Arc<ServiceRoute>,
    guard: InFlightGuard,
    probe: bool,
    started: Instant,
    /// The breaker has heard how this try went.
    reported: bool,
    /// The try's span, when the request is sampled.
    span: Option<SdkSpan>,
}

impl Try {
    /// Starts try number `n` at the chosen endpoint.
    pub fn start(
        route: &Arc<ServiceRoute>,
        chosen: Chosen,
        n: u32,
        now: Instant,
        traced: Option<(&mesh_trace::Tracing, &mut ReqTrace)>,
        method: &http::Method,
    ) -> Try {
        let span = traced.and_then(|(tracing, t)| {
            t.start_attempt(
                tracing,
                trace::method_name(method),
                n,
                chosen.endpoint.addr,
                chosen.probe,
            );
            t.take_attempt()
        });
        Try {
            route: route.clone(),
            guard: chosen.endpoint.start(),
            probe: chosen.probe,
            started: now,
            reported: false,
            span,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.guard.endpoint().addr
    }

    /// `x-mesh-upstream` for a response this try answered.
    pub fn upstream_header(&self) -> http::HeaderValue {
        self.guard.endpoint().header.clone()
    }

    /// The `traceparent` of this try's own span (sampled requests only): the next hop's
    /// parent. `None`: the try sends the request's (set once on the prepared request).
    pub fn own_traceparent(&self) -> Option<http::HeaderValue> {
        self.span.as_ref().map(trace::traceparent_of)
    }

    /// Reports how the try ended to every consumer. `stale`: the failure was a pooled
    /// connection the endpoint had closed, which is not the endpoint's fault.
    pub fn finish(&mut self, ended: Ended, now: Instant) {
        let route = &self.route;
        let addr = self.addr();
        let m = &route.metrics;
        if !self.reported {
            route.breaker_result(addr, now, ended.is_failure(), self.probe);
            self.reported = true;
        }
        match ended {
            Ended::Answered(s) => {
                self.guard
                    .endpoint()
                    .observe_latency(now.saturating_duration_since(self.started), now);
                m.attempt(if s >= 500 {
                    metrics::AttemptResult::FailureStatus
                } else {
                    metrics::AttemptResult::Success
                });
            }
            Ended::ConnectFailed { timed_out } => {
                m.attempt(metrics::AttemptResult::ConnectFailure);
                if timed_out {
                    m.timeout(metrics::TimeoutKind::Connect);
                }
            }
            Ended::Reset => m.attempt(metrics::AttemptResult::Reset),
            // No try was sent: counted as a fault (`meshlab_faults_injected_total`).
            Ended::Injected(_) => {}
            Ended::TimedOut { deadline } => {
                m.attempt(metrics::AttemptResult::Timeout);
                m.timeout(if deadline {
                    metrics::TimeoutKind::Request
                } else {
                    metrics::TimeoutKind::PerTry
                });
            }
        }
    }

    /// Ends the try's span: `status` when the endpoint answered, `why` when the try failed or
    /// was given up (`status-503` for a retried status, `hedge-lost`, a reason token).
    pub fn end_span(&mut self, status: Option<u16>, why: Option<std::borrow::Cow<'static, str>>) {
        if let Some(span) = self.span.take() {
            trace::end_span(span, status, why);
        }
    }
}

impl Drop for Try {
    fn drop(&mut self) {
        // A probe whose outcome never arrived (given up, lost a hedge, the client left) must
        // not wedge its endpoint's breaker half-open.
        if self.probe && !self.reported {
            self.route.probe_cancelled(self.addr(), Instant::now());
        }
        if let Some(span) = self.span.take() {
            trace::end_span(span, None, Some("cancelled".into()));
        }
    }
}

/// Where a try's request comes from: the client's session (the request has a body to read
/// from it) or a prepared header (hedged tries, which have no body).
pub enum Source<'a> {
    Client(&'a mut Server),
    Header(&'a Request),
}

impl Source<'_> {
    fn header(&self) -> &Request {
        match self {
            Source::Client(s) => s.req_header(),
            Source::Header(h) => h,
        }
    }

    fn client(&mut self) -> Option<&mut Server> {
        match self {
            Source::Client(s) => Some(&mut **s),
            Source::Header(_) => None,
        }
    }
}

/// The time limits of one try.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    /// Until the response header: the per-try timeout, or what is left of the deadline.
    pub response: Duration,
    /// `response` is what is left of the request's deadline.
    pub response_is_deadline: bool,
}

/// One try under its time limit: one exchange, and once more on a new connection when a
/// pooled one turned out closed. `fields` are the try's own request fields (deadline, trace
/// context), made for each exchange.
pub async fn run(
    upstreams: &Upstreams,
    addr: SocketAddr,
    limits: Limits,
    mut src: Source<'_>,
    fields: impl Fn() -> TryFields,
    idempotent: bool,
    body: &mut ReqBody,
) -> Result<Conn, Failed> {
    let tries = async {
        let mut fresh = false;
        loop {
            match exchange(
                upstreams,
                addr,
                limits.connect,
                &mut src,
                &fields(),
                idempotent,
                fresh,
                body,
            )
            .await
            {
                Err(Failed::Stale) if !fresh => fresh = true,
                Err(Failed::Stale) => return Err(Failed::Try(Ended::Reset)),
                r => return r,
            }
        }
    };
    tokio::time::timeout(limits.response, tries)
        .await
        .unwrap_or(Err(Failed::Try(Ended::TimedOut {
            deadline: limits.response_is_deadline,
        })))
}

/// How an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// The try failed: report it and maybe retry.
    Try(Ended),
    /// A pooled connection turned out closed by the endpoint before any answer, and the
    /// request can be sent again: send it once more on a new connection (`fresh`). Not the
    /// endpoint's failure, and not a retry.
    Stale,
    /// The client went away or sent a broken body: nothing to answer.
    Client,
}

/// One exchange with `addr`: a connection (pooled, or new when `fresh`), the request header,
/// the body, and the response header. The caller bounds the whole exchange by the try's
/// timeout, and on [`Failed::Stale`] sends the request again with `fresh` set.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    upstreams: &Upstreams,
    addr: SocketAddr,
    connect_timeout: Duration,
    src: &mut Source<'_>,
    fields: &TryFields,
    idempotent: bool,
    fresh: bool,
    body: &mut ReqBody,
) -> Result<Conn, Failed> {
    let mut conn = if fresh {
        upstreams.fresh(addr, connect_timeout).await
    } else {
        upstreams.get(addr, connect_timeout, !idempotent).await
    }
    .map_err(|e| {
        Failed::Try(Ended::ConnectFailed {
            timed_out: e == ConnectError::TimedOut,
        })
    })?;
    let req = src.header();
    let head = req.method == http::Method::HEAD;
    conn.client.begin(head, |out| {
        crate::http::write_upstream_head(req, fields, out)
    });
    match send(&mut conn.client, src.client(), body).await {
        Ok(()) => Ok(conn),
        // Nothing reached an app through a connection whose first write failed; a request
        // written to a connection that then turned out closed may be sent again when it is
        // idempotent (RFC 9110 9.2.2).
        Err((Failed::Try(Ended::Reset), wrote))
            if conn.reused && body.replayable() && (idempotent || !wrote) =>
        {
            tracing::debug!(%addr, "pooled connection was closed; sending again on a new one");
            Err(Failed::Stale)
        }
        Err((e, _)) => Err(e),
    }
}

/// Sends the request (its header is in the connection's buffer) and reads the response
/// header; on failure, says whether any of the request had been written.
async fn send(
    up: &mut Client,
    down: Option<&mut Server>,
    body: &mut ReqBody,
) -> Result<(), (Failed, bool)> {
    const RESET: Failed = Failed::Try(Ended::Reset);
    let sent = match down {
        Some(down) => body.send(down, up).await.map_err(|e| match e {
            BodyError::Client => Failed::Client,
            BodyError::Upstream => RESET,
        }),
        None => up.finish_body().await.map_err(|_| RESET),
    };
    if let Err(e) = sent {
        return Err((e, up.wrote()));
    }
    match up.read_response().await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "reading the response header");
            Err((RESET, true))
        }
    }
}
