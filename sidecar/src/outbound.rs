//! The outbound proxy: the local app's calls to other services.
//!
//! Phases (Pingora's request phases, each one concern):
//! - `request_filter`: route by authority to a service of the active table; answer unknown
//!   services and a missing table at once; start the request's deadline;
//! - `upstream_peer`: pick an endpoint, avoiding those that already failed this request; set
//!   connect and read timeouts from the table, bounded by the time left;
//! - `fail_to_connect`: a connect failure sent nothing, so it is retried on another endpoint
//!   when the table's retry policy allows;
//! - `error_while_proxy`: a failure after sending is retried only for idempotent methods whose
//!   body is still buffered;
//! - `upstream_request_filter`: absolute-form targets (HTTP proxy clients) become origin-form;
//! - `response_filter`: the upstream's hop-by-hop response fields stay on its hop;
//! - `fail_to_proxy`: the one place that turns a failure into the sidecar's own 4xx/5xx answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header::{self, HeaderName};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use rand::Rng;

use crate::balancer::with_rng;
use crate::balancer::InFlightGuard;
use crate::hedge;
use crate::limits::Permit;
use crate::metrics::RouteMetrics;
use crate::reason::{self, Reason};
use crate::routes::{Mesh, ServiceRoute};
use crate::trace::{self, ReqTrace};
use mesh_policy::retry::{
    backoff, decide, is_idempotent, parse_retry_after, retry_delay, Attempt, Outcome, Refusal,
};

/// How long an idle upstream connection stays in the pool.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

pub struct Outbound {
    pub mesh: Arc<Mesh>,
    /// Connections of hedged requests, which are served outside Pingora's proxy loop.
    pub hedger: Connector,
    /// Metrics of requests that named no known service.
    unrouted: RouteMetrics,
    access_log: bool,
    /// Traces; `None` when off.
    tracing: trace::Shared,
}

impl Outbound {
    pub fn new(mesh: Arc<Mesh>, access_log: bool, tracing: trace::Shared) -> Self {
        let unrouted = mesh.metrics.route("outbound", &mesh.service, "_unknown");
        Outbound {
            mesh,
            hedger: Connector::new(None),
            unrouted,
            access_log,
            tracing,
        }
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
pub fn trace_id(req: &RequestHeader) -> &str {
    req.headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32)
        .unwrap_or("")
}

/// The trace id for the access log: the request's trace when tracing is on (a trace the hop
/// started itself included), else the caller's `traceparent`'s. `buf` holds the hex.
pub fn log_trace_id<'a>(
    trace: Option<&ReqTrace>,
    req: &'a RequestHeader,
    buf: &'a mut [u8; 32],
) -> &'a str {
    match trace {
        Some(t) => {
            *buf = trace::trace_id_hex(&t.trace_id);
            std::str::from_utf8(buf).unwrap_or("")
        }
        None => trace_id(req),
    }
}

/// The request's authority as a header value: the absolute-form target's, else the Host.
fn authority_value(req: &RequestHeader) -> Option<http::HeaderValue> {
    match raw_target_authority(req.raw_path()).authority() {
        Some(a) => http::HeaderValue::from_bytes(a).ok(),
        None => req.headers.get(header::HOST).cloned(),
    }
}

/// Per-request state, alive across every attempt of one downstream request.
pub struct OutboundCtx {
    route: Option<Arc<ServiceRoute>>,
    deadline: Instant,
    attempts: u32,
    /// The attempt in progress, or the one that answered (kept so its endpoint counts as
    /// loaded until the response is done).
    current: Option<Attempting>,
    /// Endpoints that failed this request. Allocated only when an attempt fails.
    failed: Vec<SocketAddr>,
    /// Why the sidecar is answering itself, when it is.
    reason: Option<Reason>,
    detail: Option<String>,
    /// The service's concurrency slot, released when the request ends.
    _permit: Option<Permit>,
    /// Whether the request body can be replayed on another endpoint.
    body_replayable: bool,
    /// The try timeout of the attempt in progress is the request deadline itself.
    try_is_deadline: bool,
    /// The endpoint's `Retry-After`, for the delay before the next try.
    retry_after: Option<Duration>,
    /// Why the last failed attempt was not retried.
    refusal: Option<Refusal>,
    /// When the request arrived.
    started: Instant,
    /// The reason of a response the sidecar made itself.
    answered: Option<Reason>,
    /// The request's trace; `None` when tracing is off.
    trace: Option<ReqTrace>,
}

struct Attempting {
    guard: InFlightGuard,
    started: Instant,
    probe: bool,
    /// The breaker has heard how this attempt went.
    reported: bool,
}

/// The error type `upstream_response_filter` raises to have Pingora retry a retriable status;
/// the retry decision is already taken when it is raised.
const RETRY_STATUS: &str = "mesh-retriable-status";

/// The peer of one try at `addr`: the route's connect and per-try timeouts, bounded by the
/// time `left` before the request's deadline (the hedging path uses it too).
pub fn peer_for(addr: SocketAddr, route: &ServiceRoute, left: Duration) -> HttpPeer {
    let t = &route.policy.timeouts;
    let try_timeout = t.per_try().map_or(left, |p| p.min(left));
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(t.connect().min(left));
    peer.options.read_timeout = Some(try_timeout);
    peer.options.write_timeout = Some(try_timeout);
    peer.options.idle_timeout = Some(UPSTREAM_IDLE);
    peer
}

/// The remaining time of the caller's deadline, in milliseconds, sent to the next hop.
pub const DEADLINE_HEADER: &str = "x-mesh-deadline-ms";

/// The `x-mesh-deadline-ms` value for `left`: formatted straight into the header value's own
/// buffer (one allocation, not a `String` and then a copy).
pub fn deadline_value(left: Duration) -> http::HeaderValue {
    http::HeaderValue::from(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
}

/// Parses `x-mesh-deadline-ms`.
pub fn caller_deadline(req: &RequestHeader) -> Option<Duration> {
    let v = req.headers.get(DEADLINE_HEADER)?;
    std::str::from_utf8(v.as_bytes())
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

/// The host part of the request's authority: the absolute-form target's, else the Host header's.
pub fn authority_host(req: &RequestHeader) -> Option<&str> {
    let raw: &[u8] = match req.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => match raw_target_authority(req.raw_path()).authority() {
            Some(a) => a,
            None => req.headers.get(http::header::HOST)?.as_bytes(),
        },
    };
    let raw = std::str::from_utf8(raw).ok()?;
    let host = if let Some(v6) = raw.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    (!host.is_empty()).then_some(host)
}

/// Hop-by-hop response fields a proxy removes whether or not `Connection` names them
/// (RFC 9110 7.6.1). `Transfer-Encoding` is Pingora's: it frames the body it writes.
static RESPONSE_HOP_BY_HOP: [HeaderName; 4] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::UPGRADE,
];

/// Removes the upstream's hop-by-hop fields from its response before it goes downstream: the
/// standard ones and those its `Connection` header nominates (RFC 9110 7.6.1). Pingora replaces
/// `Connection` itself and frames the body, but forwards every other field as is. A `101`
/// keeps its fields: the upgrade handshake needs them. Allocates only when the upstream
/// nominated a field it also sent.
pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    for name in &RESPONSE_HOP_BY_HOP {
        if resp.headers.contains_key(name) {
            resp.remove_header(name);
        }
    }
    // Looking a borrowed name up does not allocate: most responses end here.
    let sent = |t: &[u8]| std::str::from_utf8(t).is_ok_and(|t| resp.headers.contains_key(t));
    if !connection_nominations(resp).any(sent) {
        return;
    }
    let names: Vec<HeaderName> = connection_nominations(resp)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for name in &names {
        resp.remove_header(name);
    }
}

/// The field names a message's `Connection` header nominates, but the framing fields, which are
/// Pingora's to set.
fn connection_nominations(resp: &ResponseHeader) -> impl Iterator<Item = &[u8]> {
    resp.headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.eq_ignore_ascii_case(b"content-length")
                && !t.eq_ignore_ascii_case(b"transfer-encoding")
        })
}

impl Outbound {
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut OutboundCtx,
        reason: Reason,
        detail: &str,
        attempts: u32,
    ) {
        ctx.answered = Some(reason);
        let (h, body) = reason::response(reason, "outbound", &self.mesh.service, detail, attempts);
        reason::send(session, h, body).await;
    }
}

impl OutboundCtx {
    fn route(&self) -> &Arc<ServiceRoute> {
        self.route.as_ref().expect("request_filter sets the route")
    }

    /// Ends the attempt in progress as a failure: the breaker hears it, the endpoint is
    /// avoided by the next try.
    fn fail_attempt(&mut self, now: Instant, count_for_breaker: bool) {
        if let Some(a) = self.current.take() {
            let addr = a.guard.endpoint().addr;
            if !a.reported {
                let route = self.route.as_ref().expect("route set");
                if count_for_breaker {
                    route.breaker_result(addr, now, true, a.probe);
                } else if a.probe {
                    route.balancer.breakers.on_probe_cancelled(addr, now);
                }
            }
            self.failed.push(addr);
        }
    }

    /// Asks the retry policy whether a failed attempt may be retried.
    fn may_retry(
        &mut self,
        session: &Session,
        outcome: Outcome,
        reached_app: bool,
        now: Instant,
    ) -> bool {
        let route = self.route.clone().expect("route set");
        let attempt = Attempt {
            attempts_made: self.attempts,
            max_attempts: route.policy.retries.attempts,
            outcome,
            idempotent: is_idempotent(session.req_header().method.as_str()),
            request_reached_app: reached_app,
            body_replayable: !reached_app
                || (self.body_replayable && !session.as_ref().retry_buffer_truncated()),
            time_left: self.deadline.saturating_duration_since(now),
            retries: &route.policy.retries,
        };
        match decide(&attempt, &route.budget, now) {
            Ok(()) => {
                route.metrics.retry(match outcome {
                    Outcome::Status(_) | Outcome::Success => 0,
                    Outcome::ConnectFailure => 1,
                    Outcome::Reset => 2,
                    Outcome::Timeout => 3,
                });
                true
            }
            Err(r) => {
                self.refusal = Some(r);
                route.count_refusal(r);
                false
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Outbound {
    type CTX = OutboundCtx;

    fn new_ctx(&self) -> OutboundCtx {
        OutboundCtx {
            route: None,
            deadline: Instant::now(),
            attempts: 0,
            current: None,
            failed: Vec::new(),
            reason: None,
            detail: None,
            _permit: None,
            body_replayable: true,
            try_is_deadline: false,
            retry_after: None,
            refusal: None,
            started: Instant::now(),
            answered: None,
            trace: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut OutboundCtx) -> Result<bool> {
        if let Some(tracing) = &self.tracing {
            let req = session.req_header();
            ctx.trace = Some(ReqTrace::start(
                tracing,
                req,
                opentelemetry::trace::SpanKind::Client,
                || {
                    let mut a = trace::request_attrs(req, &self.mesh.service, "outbound");
                    if let Some(host) = authority_host(req) {
                        a.push(opentelemetry::KeyValue::new(
                            "server.address",
                            host.to_owned(),
                        ));
                    }
                    a
                },
            ));
        }
        let Some(routes) = self.mesh.routes() else {
            self.answer(
                session,
                ctx,
                Reason::NoTable,
                "no routing table loaded yet",
                0,
            )
            .await;
            return Ok(true);
        };
        let Some(host) = authority_host(session.req_header()) else {
            let detail = "the request names no service: send a Host header or an absolute URI";
            self.answer(session, ctx, Reason::BadRequest, detail, 0)
                .await;
            return Ok(true);
        };
        let Some(route) = routes.lookup(host) else {
            let detail = format!(
                "no service {host:?} in routing table version {} (known: {})",
                routes.table.version,
                routes.names()
            );
            self.answer(session, ctx, Reason::UnknownService, &detail, 0)
                .await;
            return Ok(true);
        };
        let route = route.clone();
        let policy = &route.policy;
        let now = Instant::now();
        // The whole request, every try and backoff included, fits in the route's timeout and
        // in what is left of the caller's own deadline.
        let mut budget = policy.timeouts.request();
        if let Some(left) = caller_deadline(session.req_header()) {
            if left.is_zero() {
                route.metrics.timeout(3);
                let detail = format!(
                    "the caller's deadline for service {} has already passed",
                    route.name
                );
                self.answer(session, ctx, Reason::DeadlineExceeded, &detail, 0)
                    .await;
                return Ok(true);
            }
            budget = budget.min(left);
        }
        ctx.deadline = now + budget;
        match route.limit.acquire(budget).await {
            Ok(permit) => ctx._permit = Some(permit),
            Err(overflow) => {
                route.metrics.overflows.inc();
                self.answer(session, ctx, Reason::Overflow, &overflow.to_string(), 0)
                    .await;
                return Ok(true);
            }
        }
        // A streamed (chunked) body, or one over the limit, cannot be replayed.
        let req = session.req_header();
        let chunked = req.headers.contains_key(header::TRANSFER_ENCODING);
        let too_big = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse::<u64>().ok())
            .is_some_and(|len| len > policy.retries.max_body_bytes);
        ctx.body_replayable = !chunked && !too_big;
        route.budget.on_request(now);
        if let Some(after) = hedge::wants_hedge(&route, session.req_header()) {
            let host =
                authority_value(session.req_header()).unwrap_or(http::HeaderValue::from_static(""));
            let traced = self.tracing.as_deref().zip(ctx.trace.as_mut());
            // Boxed: the hedging future is large and most requests are not hedged (see
            // reason::send for why that matters).
            let served = Box::pin(hedge::serve(
                &self.hedger,
                session,
                &route,
                &host,
                ctx.deadline,
                after,
                traced,
            ))
            .await;
            ctx.route = Some(route);
            match served {
                Ok(attempts) => ctx.attempts = attempts,
                Err(f) => {
                    ctx.attempts = f.attempts;
                    self.answer(session, ctx, f.reason, &f.detail, f.attempts)
                        .await;
                }
            }
            return Ok(true);
        }
        ctx.route = Some(route);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut OutboundCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx.route().clone();
        let policy = &route.policy;
        ctx.attempts += 1;
        if ctx.attempts > 1 {
            // Back off before a retry: exponential with full jitter, or the endpoint's
            // Retry-After, never past the deadline.
            let [base, cap] = policy.retries.backoff_ms;
            let jitter = with_rng(|r| r.random::<f64>());
            let cap = Duration::from_millis(cap);
            let jittered = backoff(ctx.attempts - 1, Duration::from_millis(base), cap, jitter);
            // A Retry-After past the cap was refused before the retry was granted.
            let delay = retry_delay(ctx.retry_after.take(), jittered, cap).unwrap_or(cap);
            let left = ctx.deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(delay.min(left)).await;
        }
        let now = Instant::now();
        let remaining = ctx.deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            ctx.reason = Some(Reason::RequestTimeout);
            return Err(Error::explain(
                ErrorType::HTTPStatus(504),
                "request timeout before an attempt",
            ));
        }
        let key = policy
            .hash_header
            .as_deref()
            .and_then(|h| session.req_header().headers.get(h))
            .map(|v| v.as_bytes());
        let Some(chosen) =
            route
                .balancer
                .pick(key, &ctx.failed, now, policy.panic_threshold_percent)
        else {
            let any = !route.balancer.set().is_empty();
            ctx.reason = Some(if any {
                Reason::BreakerOpen
            } else {
                Reason::NoHealthyEndpoint
            });
            ctx.detail = Some(if any {
                format!(
                    "every endpoint of service {} is ejected by its breaker",
                    route.name
                )
            } else {
                format!("service {} has no endpoints", route.name)
            });
            return Err(Error::explain(ErrorType::HTTPStatus(503), "no endpoint"));
        };
        let addr = chosen.endpoint.addr;
        if let (Some(tracing), Some(t)) = (&self.tracing, ctx.trace.as_mut()) {
            let method = trace::method_name(&session.req_header().method);
            t.start_attempt(tracing, method, ctx.attempts, addr, chosen.probe);
        }
        ctx.current = Some(Attempting {
            guard: chosen.endpoint.start(),
            started: now,
            probe: chosen.probe,
            reported: false,
        });
        // The try's timeout is the deadline itself when no shorter per-try timeout applies.
        ctx.try_is_deadline = policy.timeouts.per_try().is_none_or(|p| p >= remaining);
        Ok(Box::new(peer_for(addr, &route, remaining)))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut OutboundCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let now = Instant::now();
        let m = &ctx.route().metrics;
        m.attempt(2);
        if matches!(e.etype(), ErrorType::ConnectTimedout) {
            m.timeout(0);
        }
        ctx.fail_attempt(now, true);
        ctx.reason = Some(Reason::ConnectFailure);
        if let Some(t) = ctx.trace.as_mut() {
            t.end_attempt(None, Some(Reason::ConnectFailure.token().into()));
        }
        // Nothing was sent: any method may be retried.
        let retry = ctx.may_retry(session, Outcome::ConnectFailure, false, now);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut OutboundCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if matches!(e.etype(), ErrorType::Custom(RETRY_STATUS)) {
            let mut e = e;
            e.set_retry(true);
            return e;
        }
        let mut e = e.more_context(format!("endpoint {peer}"));
        let now = Instant::now();
        let timed_out = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        let reason = match (timed_out, ctx.try_is_deadline) {
            (true, true) => Reason::RequestTimeout,
            (true, false) => Reason::PerTryTimeout,
            (false, _) => Reason::UpstreamReset,
        };
        ctx.reason = Some(reason);
        if let Some(t) = ctx.trace.as_mut() {
            t.end_attempt(None, Some(reason.token().into()));
        }
        let m = &ctx.route().metrics;
        match reason {
            Reason::RequestTimeout => {
                m.attempt(4);
                m.timeout(2);
            }
            Reason::PerTryTimeout => {
                m.attempt(4);
                m.timeout(1);
            }
            _ => m.attempt(3),
        }
        // A pooled connection the endpoint had already closed is not the endpoint's failure.
        ctx.fail_attempt(now, !client_reused);
        if session.as_ref().response_written().is_some() {
            // Part of the response went downstream: nothing can be retried.
            e.set_retry(false);
            return e;
        }
        let outcome = if timed_out {
            Outcome::Timeout
        } else {
            Outcome::Reset
        };
        let retry = if client_reused {
            session.req_header().method.is_idempotent()
                && !session.as_ref().retry_buffer_truncated()
                && ctx.attempts < ctx.route().policy.retries.attempts
                && now < ctx.deadline
        } else {
            ctx.may_retry(session, outcome, true, now)
        };
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut OutboundCtx,
    ) -> Result<()> {
        let absolute = match raw_target_authority(upstream_request.raw_path()) {
            RawTargetAuthority::Absolute { authority, .. } => {
                Some(http::HeaderValue::from_bytes(authority).map_err(|e| {
                    Error::because(ErrorType::InvalidHTTPHeader, "request authority", e)
                })?)
            }
            _ => None,
        };
        if let Some(authority) = absolute {
            // An HTTP proxy client sent `GET http://b/x`: the authority is the Host (RFC 9112
            // 3.2.2) and the endpoint gets the origin form `GET /x`, which the Uri already holds.
            upstream_request.insert_header(header::HOST, authority)?;
            let origin_form = upstream_request.uri.clone();
            upstream_request.set_uri(origin_form);
        }
        // The next hop learns how long this caller will wait (one small header value per try).
        let left = ctx.deadline.saturating_duration_since(Instant::now());
        upstream_request.insert_header(DEADLINE_HEADER, deadline_value(left))?;
        // The attempt's span is the next hop's parent (unsampled: see `trace`).
        if let Some(tp) = ctx.trace.as_ref().and_then(ReqTrace::outgoing) {
            upstream_request.insert_header(mesh_trace::context::TRACEPARENT, tp)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut OutboundCtx,
    ) -> Result<()> {
        let now = Instant::now();
        let status = upstream_response.status.as_u16();
        let failure = status >= 500;
        let route = ctx.route().clone();
        if let Some(a) = ctx.current.as_mut() {
            let ep = a.guard.endpoint();
            if !a.reported {
                route.breaker_result(ep.addr, now, failure, a.probe);
                a.reported = true;
            }
            route.metrics.attempt(if failure { 1 } else { 0 });
            ep.observe_latency(now.saturating_duration_since(a.started), now);
        }
        if !failure || !route.policy.retries.retries_status(status) {
            return Ok(());
        }
        // A retriable status: retry now, while nothing has gone downstream, or pass the
        // response on as it is.
        let retry_after = upstream_response
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v.as_bytes(), std::time::SystemTime::now()));
        let cap = Duration::from_millis(route.policy.retries.backoff_ms[1]);
        if retry_after.is_some_and(|d| d > cap) {
            ctx.refusal = Some(Refusal::NotRetriable);
            route.count_refusal(Refusal::NotRetriable);
            return Ok(());
        }
        if !ctx.may_retry(session, Outcome::Status(status), true, now) {
            return Ok(());
        }
        ctx.retry_after = retry_after;
        ctx.fail_attempt(now, false);
        if let Some(t) = ctx.trace.as_mut() {
            t.end_attempt_retried(status);
        }
        Err(Error::explain(
            ErrorType::Custom(RETRY_STATUS),
            "retriable status from the endpoint",
        ))
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut OutboundCtx,
    ) -> Result<()> {
        strip_response_hop_by_hop(upstream_response);
        // Which try answered and where: cached header values, no formatting per response.
        upstream_response.insert_header("x-mesh-attempts", reason::attempts_value(ctx.attempts))?;
        if let Some(a) = &ctx.current {
            upstream_response
                .insert_header("x-mesh-upstream", a.guard.endpoint().header.clone())?;
        }
        Ok(())
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &OutboundCtx,
        error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // A retried status is policy at work, not a fault: no log line on the hot path.
        matches!(error.etype(), ErrorType::Custom(RETRY_STATUS))
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut OutboundCtx) {
        let status = session
            .as_ref()
            .response_written()
            .map(|r| r.status.as_u16());
        let m = ctx.route.as_ref().map_or(&self.unrouted, |r| &r.metrics);
        m.request(status, ctx.started.elapsed().as_secs_f64());
        if let Some(reason) = ctx.answered {
            m.error(reason.token());
        }
        if let Some(t) = ctx.trace.as_mut() {
            let (route, attempts) = (&ctx.route, ctx.attempts);
            t.end(status, ctx.answered.map(Reason::token), || {
                let mut a = vec![opentelemetry::KeyValue::new(
                    "mesh.attempts",
                    i64::from(attempts),
                )];
                if let Some(r) = route {
                    a.push(opentelemetry::KeyValue::new(
                        "mesh.upstream",
                        r.name.clone(),
                    ));
                }
                a
            });
        }
        if self.access_log {
            let req = session.req_header();
            let mut hex = [0u8; 32];
            tracing::info!(
                target: "access",
                trace_id = log_trace_id(ctx.trace.as_ref(), req, &mut hex),
                direction = "outbound",
                service = %self.mesh.service,
                upstream = ctx.route.as_ref().map_or("", |r| r.name.as_str()),
                endpoint = %ctx.current.as_ref().map(|a| a.guard.endpoint().addr.to_string()).unwrap_or_default(),
                method = %req.method,
                status = status.unwrap_or(0),
                attempts = ctx.attempts,
                reason = ctx.answered.map_or("", |r| r.token()),
                duration_ms = ctx.started.elapsed().as_secs_f64() * 1e3,
            );
        }
        // A probe whose outcome never arrived must not wedge its endpoint's breaker.
        if let Some(a) = ctx.current.take() {
            if a.probe && !a.reported {
                let route = ctx.route();
                route
                    .balancer
                    .breakers
                    .on_probe_cancelled(a.guard.endpoint().addr, Instant::now());
            }
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut OutboundCtx,
    ) -> FailToProxy {
        if let Some(done) = reason::downstream_failure(session, e).await {
            return done;
        }
        let reason = ctx.reason.unwrap_or(Reason::of_error(e.etype()));
        let service = ctx.route.as_ref().map_or("?", |r| r.name.as_str());
        let refused = ctx
            .refusal
            .map(|r| format!("; not retried: {}", r.as_str()))
            .unwrap_or_default();
        let detail = match ctx.detail.take() {
            Some(d) => d,
            None => format!(
                "service {service}: {} after {} attempt(s){refused}: {e}",
                match reason {
                    Reason::ConnectFailure => "no endpoint accepted a connection",
                    Reason::PerTryTimeout =>
                        "the endpoint did not answer within the per-try timeout",
                    Reason::RequestTimeout => "the request timeout passed",
                    _ => "the endpoint closed the connection",
                },
                ctx.attempts
            ),
        };
        let status = reason.status();
        let attempts = ctx.attempts;
        self.answer(session, ctx, reason, &detail, attempts).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        if let Some(h) = host {
            r.insert_header("host", h).unwrap();
        }
        r
    }

    #[test]
    fn authority_from_host_header_or_absolute_uri() {
        assert_eq!(authority_host(&req("/x", Some("b"))), Some("b"));
        assert_eq!(
            authority_host(&req("/x", Some("b:8080"))),
            Some("b"),
            "the port is not part of the name"
        );
        assert_eq!(
            authority_host(&req("http://c:80/x", Some("ignored"))),
            Some("c"),
            "absolute-form wins over Host"
        );
        assert_eq!(authority_host(&req("/x", Some("[::1]:80"))), Some("::1"));
        assert_eq!(
            authority_host(&req("/x", None)),
            None,
            "no authority at all"
        );
    }

    fn resp(status: u16, fields: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in fields {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn names(r: &ResponseHeader) -> Vec<String> {
        let mut n: Vec<String> = r.headers.keys().map(|k| k.to_string()).collect();
        n.sort();
        n.dedup();
        n
    }

    #[test]
    fn the_deadline_header_round_trips() {
        for ms in [0u64, 1, 999, 15_000, 86_400_000] {
            let mut r = req("/x", Some("b"));
            r.insert_header(DEADLINE_HEADER, deadline_value(Duration::from_millis(ms)))
                .unwrap();
            assert_eq!(r.headers[DEADLINE_HEADER], ms.to_string().as_str());
            assert_eq!(caller_deadline(&r), Some(Duration::from_millis(ms)));
        }
        let sub_ms = deadline_value(Duration::from_micros(1500));
        assert_eq!(sub_ms, "1", "whole milliseconds, rounded down");
    }

    #[test]
    fn response_hop_by_hop_fields_are_removed() {
        let mut r = resp(
            200,
            &[
                ("Content-Length", "2"),
                ("Connection", "keep-alive, X-Secret"),
                ("Connection", "x-other"),
                ("X-Secret", "1"),
                ("X-Other", "2"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Upgrade", "h2c"),
                ("X-Kept", "yes"),
            ],
        );
        strip_response_hop_by_hop(&mut r);
        assert_eq!(
            names(&r),
            ["connection", "content-length", "x-kept"],
            "nominated and standard hop-by-hop fields go; Pingora rewrites Connection"
        );
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(
            !wire.contains("X-Secret:") && wire.contains("X-Kept: yes"),
            "the case-preserving name map follows: {wire}"
        );
    }

    #[test]
    fn response_without_hop_by_hop_fields_is_untouched() {
        let fields = [
            ("Content-Type", "text/plain"),
            ("Connection", "keep-alive"),
            ("Content-Length", "2"),
        ];
        let mut r = resp(200, &fields);
        strip_response_hop_by_hop(&mut r);
        assert_eq!(r.headers, resp(200, &fields).headers);
    }

    #[test]
    fn framing_fields_are_never_nominated_away() {
        let mut r = resp(
            200,
            &[
                ("Connection", "Content-Length, transfer-encoding, close"),
                ("Content-Length", "2"),
            ],
        );
        strip_response_hop_by_hop(&mut r);
        assert_eq!(r.headers["content-length"], "2", "Pingora frames by it");
    }

    #[test]
    fn switching_protocols_keeps_its_handshake() {
        let fields = [("Connection", "Upgrade"), ("Upgrade", "websocket")];
        let mut r = resp(101, &fields);
        strip_response_hop_by_hop(&mut r);
        assert_eq!(r.headers, resp(101, &fields).headers);
    }

    #[test]
    fn malformed_nominations_are_ignored() {
        let mut r = resp(
            200,
            &[
                ("Connection", " , \"bad token\", x-a ,,"),
                ("X-A", "1"),
                ("X-B", "2"),
            ],
        );
        strip_response_hop_by_hop(&mut r);
        assert_eq!(names(&r), ["connection", "x-b"]);
    }
}
