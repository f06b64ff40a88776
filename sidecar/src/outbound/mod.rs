//! The outbound listener: the local app's calls to other services.
//!
//! One request, in order: route it by its authority to a service of the active table (unknown
//! services and a missing table are answered at once); start its deadline (the route's
//! `request_ms`, cut to what is left of the caller's); take a concurrency slot; then the
//! attempt loop: back off before a retry, pick an endpoint the request has not tried and
//! whose breaker admits it, run one [`attempt::exchange`] under the try's timeout, classify how
//! it ended ([`attempt::Ended`]) and report that once ([`attempt::Try::finish`]); retry when
//! the policy grants it, else forward the response or answer with the reason. Hedged requests
//! run the same tries two at a time ([`hedge`]).
//!
//! Hot-path cost beyond pingora-core's sessions: one clone of the request header per try, one
//! timer per try, the `x-mesh-*` fields (static names), atomics for metrics and load. Nothing
//! is allocated for a request that is not retried, traced or answered by the sidecar.

pub mod attempt;
pub mod hedge;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::h1::server::Server;
use rand::Rng;

use crate::conn::Handler;
use crate::endpoints::balancer::with_rng;
use crate::forward::{self, Forwarded, ReqBody};
use crate::http::{self as h};
use crate::limits::Permit;
use crate::reason::{self, Reason};
use crate::state::{Mesh, ServiceRoute};
use crate::telemetry::access::Access;
use crate::telemetry::metrics::{RouteMetrics, TimeoutKind};
use crate::telemetry::trace::{self, ReqTrace};
use crate::upstream::Upstreams;
use attempt::{Ended, Failed, Limits, Source, Try};

/// A try's time limits when `remaining` is left of the request's deadline.
fn limits(route: &ServiceRoute, remaining: Duration) -> Limits {
    let t = &route.policy.timeouts;
    Limits {
        connect: t.connect().min(remaining),
        response: t.per_try().map_or(remaining, |p| p.min(remaining)),
        response_is_deadline: t.per_try().is_none_or(|p| p >= remaining),
    }
}
use mesh_policy::retry::{
    backoff, decide, is_idempotent, parse_retry_after, retry_delay, Attempt, Refusal,
};

pub struct Outbound {
    pub mesh: Arc<Mesh>,
    upstreams: Arc<Upstreams>,
    /// Metrics of requests that named no known service.
    unrouted: RouteMetrics,
    access_log: bool,
    /// Traces; `None` when off.
    tracing: trace::Shared,
}

/// What one request did, for its metrics, span and access-log line.
struct Ctx {
    started: Instant,
    route: Option<Arc<ServiceRoute>>,
    attempts: u32,
    /// The try whose response went downstream (kept until the response is done, so its
    /// endpoint counts as loaded), or the last one that failed.
    endpoint: Option<SocketAddr>,
    /// The reason of a response the sidecar made itself.
    answered: Option<Reason>,
    trace: Option<ReqTrace>,
}

impl Handler for Outbound {
    async fn serve(&self, s: &mut Server) {
        let mut cx = Ctx {
            started: Instant::now(),
            route: None,
            attempts: 0,
            endpoint: None,
            answered: None,
            trace: None,
        };
        self.proxy(s, &mut cx).await;
        self.done(s, &mut cx);
    }

    fn bad_request(&self) -> (&'static str, &str) {
        ("outbound", &self.mesh.service)
    }
}

/// A try's request: the prepared request (see `http::prepare_upstream`) with what is left of
/// the deadline at `deadline`, and the trace context the next hop continues: this try's own
/// span's (sampled requests), else the request's (`traceparent`, set once in `proxy`).
fn try_fields(deadline: Instant, traceparent: Option<http::HeaderValue>) -> h::TryFields {
    let left = deadline.saturating_duration_since(Instant::now());
    h::TryFields {
        deadline: Some(h::deadline_header(left)),
        traceparent,
    }
}

impl Outbound {
    pub fn new(
        mesh: Arc<Mesh>,
        upstreams: Arc<Upstreams>,
        access_log: bool,
        tracing: trace::Shared,
    ) -> Self {
        let unrouted = mesh.metrics.route("outbound", &mesh.service, "_unknown");
        Outbound {
            mesh,
            upstreams,
            unrouted,
            access_log,
            tracing,
        }
    }

    async fn answer(&self, s: &mut Server, cx: &mut Ctx, reason: Reason, detail: &str) {
        cx.answered = Some(reason);
        reason::answer(
            s,
            reason,
            "outbound",
            &self.mesh.service,
            detail,
            cx.attempts,
        )
        .await;
    }

    async fn proxy(&self, s: &mut Server, cx: &mut Ctx) {
        if let Some(tracing) = &self.tracing {
            let req = s.req_header();
            cx.trace = Some(ReqTrace::start(
                tracing,
                req,
                opentelemetry::trace::SpanKind::Client,
                || {
                    let mut a = trace::request_attrs(req, &self.mesh.service, "outbound");
                    if let Some(host) = h::authority_host(req) {
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
            return self
                .answer(s, cx, Reason::NoTable, "no routing table loaded yet")
                .await;
        };
        let Some(host) = h::authority_host(s.req_header()) else {
            let detail = "the request names no service: send a Host header or an absolute URI";
            return self.answer(s, cx, Reason::BadRequest, detail).await;
        };
        let Some(route) = routes.lookup(host).cloned() else {
            let detail = format!(
                "no service {host:?} in routing table version {} (known: {})",
                routes.table.version,
                routes.names()
            );
            return self.answer(s, cx, Reason::UnknownService, &detail).await;
        };
        cx.route = Some(route.clone());
        let now = Instant::now();
        // The whole request, every try and backoff included, fits in the route's timeout and
        // in what is left of the caller's own deadline.
        let mut budget = route.policy.timeouts.request();
        if let Some(left) = h::caller_deadline(s.req_header()) {
            if left.is_zero() {
                route.metrics.timeout(TimeoutKind::Deadline);
                let detail = format!(
                    "the caller's deadline for service {} has already passed",
                    route.name
                );
                return self.answer(s, cx, Reason::DeadlineExceeded, &detail).await;
            }
            budget = budget.min(left);
        }
        let deadline = now + budget;
        let _permit: Permit = match route.limit.acquire(budget).await {
            Ok(p) => p,
            Err(overflow) => {
                route.metrics.overflow();
                return self
                    .answer(s, cx, Reason::Overflow, &overflow.to_string())
                    .await;
            }
        };
        route.budget.on_request(now);
        let hedge = hedge::wants_hedge(&route, s.req_header());
        let mut body = ReqBody::of(s, Some(route.policy.retries.max_body_bytes));
        if let Err(e) = h::prepare_upstream(s.req_header_mut()) {
            return self.answer(s, cx, Reason::BadRequest, &e.to_string()).await;
        }
        // The request's trace context (an unsampled root's; a sampled try sends its own
        // span's), for every try; each try sends what is left of the deadline.
        let traceparent = cx.trace.as_ref().and_then(ReqTrace::outgoing);
        if let Some(after) = hedge {
            // Boxed: most requests are not hedged, and the hedging future is large.
            return Box::pin(self.hedged(s, cx, &route, deadline, after, traceparent)).await;
        }
        self.tries(s, cx, &route, &mut body, deadline, traceparent)
            .await;
    }

    /// The attempt loop.
    async fn tries(
        &self,
        s: &mut Server,
        cx: &mut Ctx,
        route: &Arc<ServiceRoute>,
        body: &mut ReqBody,
        deadline: Instant,
        traceparent: Option<http::HeaderValue>,
    ) {
        let policy = &route.policy;
        let idempotent = is_idempotent(s.req_header().method.as_str());
        // Endpoints that failed this request; allocated only when a try fails.
        let mut failed: Vec<SocketAddr> = Vec::new();
        let mut retry_after: Option<Duration> = None;
        let mut refusal: Option<Refusal> = None;
        let mut last = Ended::Reset;
        loop {
            cx.attempts += 1;
            if cx.attempts > 1 {
                // Back off before a retry: exponential with full jitter, or the endpoint's
                // Retry-After, never past the deadline.
                let [base_ms, cap_ms] = policy.retries.backoff_ms;
                let jitter = with_rng(|r| r.random::<f64>());
                let cap = Duration::from_millis(cap_ms);
                let jittered =
                    backoff(cx.attempts - 1, Duration::from_millis(base_ms), cap, jitter);
                let delay = retry_delay(retry_after.take(), jittered, cap).unwrap_or(cap);
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(delay.min(left)).await;
            }
            let mut now = Instant::now();
            let mut remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                let detail = format!(
                    "service {}: the request timeout passed after {} attempt(s)",
                    route.name,
                    cx.attempts - 1
                );
                cx.attempts -= 1;
                return self.answer(s, cx, Reason::RequestTimeout, &detail).await;
            }
            // The table's faults on the callers' side: one more step of the try, before an
            // endpoint is picked (an injected abort reaches no endpoint).
            if let Some((name, delay, abort)) =
                fault_for(&route.faults_out, s.req_header(), cx.attempts - 1, now)
            {
                if let Some(d) = delay {
                    route.metrics.fault(&name, "delay");
                    tokio::time::sleep(d.min(remaining)).await;
                    if d >= remaining {
                        let detail = format!(
                            "service {}: the request timeout passed in the delay of fault {name:?}",
                            route.name
                        );
                        cx.attempts -= 1;
                        return self.answer(s, cx, Reason::RequestTimeout, &detail).await;
                    }
                    now = Instant::now();
                    remaining = deadline.saturating_duration_since(now);
                }
                if let Some(abort) = abort {
                    route.metrics.fault(&name, "abort");
                    let ended = Ended::Injected(abort.status);
                    last = ended;
                    if policy.retries.retries_status(abort.status)
                        && self.may_retry(
                            route,
                            cx,
                            ended,
                            idempotent,
                            body,
                            deadline,
                            now,
                            &mut refusal,
                        )
                    {
                        continue;
                    }
                    cx.answered = Some(Reason::InjectedFault);
                    let service = &self.mesh.service;
                    return reason::answer_fault(
                        s,
                        &abort,
                        &name,
                        "outbound",
                        service,
                        cx.attempts,
                    )
                    .await;
                }
            }
            let key = policy
                .hash_header
                .as_deref()
                .and_then(|name| s.req_header().get(name));
            let Some(chosen) = route.pick(key, &failed, now) else {
                cx.attempts -= 1;
                let (reason, detail) = if route.endpoints().is_empty() {
                    (
                        Reason::NoHealthyEndpoint,
                        format!("service {} has no endpoints", route.name),
                    )
                } else if cx.attempts > 0 {
                    (
                        last.reason(),
                        failure_detail(route, last, cx.attempts, refusal),
                    )
                } else {
                    (
                        Reason::BreakerOpen,
                        format!(
                            "every endpoint of service {} is ejected by its breaker",
                            route.name
                        ),
                    )
                };
                return self.answer(s, cx, reason, &detail).await;
            };
            let traced = self.tracing.as_deref().zip(cx.trace.as_mut());
            let mut t = Try::start(
                route,
                chosen,
                cx.attempts,
                now,
                traced,
                &s.req_header().method,
            );
            let addr = t.addr();
            cx.endpoint = Some(addr);
            let limits = limits(route, remaining);
            let tp = t.own_traceparent().or_else(|| traceparent.clone());
            let exchanged = attempt::run(
                &self.upstreams,
                addr,
                limits,
                Source::Client(&mut *s),
                || try_fields(deadline, tp.clone()),
                idempotent,
                body,
            )
            .await;
            let now = Instant::now();
            let (ended, conn) = match exchanged {
                Ok(conn) => {
                    let status = conn.client.status();
                    (Ended::Answered(status), Some(conn))
                }
                Err(Failed::Client) => {
                    // The client left or sent a broken body: nobody to answer.
                    t.end_span(None, Some("client-gone".into()));
                    s.set_keep_alive(false);
                    return;
                }
                Err(Failed::Try(ended)) => (ended, None),
                Err(Failed::Stale) => (Ended::Reset, None),
            };
            t.finish(ended, now);
            last = ended;
            // A response is retried only for a retriable status whose Retry-After (if any)
            // fits the backoff cap, while nothing has gone downstream; other outcomes go
            // straight to the policy.
            let answer_retriable = match (ended, &conn) {
                (Ended::Answered(status), Some(conn)) => {
                    match retriable_status(route, status, &conn.client) {
                        Some(after) => {
                            retry_after = after;
                            true
                        }
                        None => false,
                    }
                }
                _ => true,
            };
            let may_retry = answer_retriable
                && self.may_retry(
                    route,
                    cx,
                    ended,
                    idempotent,
                    body,
                    deadline,
                    now,
                    &mut refusal,
                );
            if may_retry {
                t.end_span(
                    match ended {
                        Ended::Answered(s) => Some(s),
                        _ => None,
                    },
                    Some(match ended {
                        Ended::Answered(s) => format!("status-{s}").into(),
                        e => e.reason().token().into(),
                    }),
                );
                failed.push(addr);
                continue;
            }
            let Some(mut conn) = conn else {
                t.end_span(None, Some(ended.reason().token().into()));
                let detail = failure_detail(route, ended, cx.attempts, refusal);
                return self.answer(s, cx, ended.reason(), &detail).await;
            };
            let status = conn.client.status();
            t.end_span(Some(status), None);
            let (fields, n) = Self::mesh_fields(cx.attempts, t.upstream_header(), false);
            let idle = policy.timeouts.per_try().unwrap_or(remaining);
            let forwarded = forward::response(s, &mut conn.client, &fields[..n], idle).await;
            if forwarded == Forwarded::Complete {
                self.upstreams.put(addr, conn.client);
            }
            drop(t);
            return;
        }
    }

    /// The mesh's own fields on a forwarded response: which try answered and where (cached
    /// header values, static names, no formatting or parsing per response), and whether it
    /// was a hedge. The first `n` of the array.
    fn mesh_fields(
        attempts: u32,
        upstream: http::HeaderValue,
        hedged: bool,
    ) -> ([(http::HeaderName, http::HeaderValue); 3], usize) {
        let fields = [
            (h::X_MESH_ATTEMPTS, reason::attempts_value(attempts)),
            (h::X_MESH_UPSTREAM, upstream),
            (h::X_MESH_HEDGED, http::HeaderValue::from_static("1")),
        ];
        (fields, if hedged { 3 } else { 2 })
    }

    /// Asks the retry policy whether a failed try may be retried, counting the retry or the
    /// refusal.
    #[allow(clippy::too_many_arguments)]
    fn may_retry(
        &self,
        route: &ServiceRoute,
        cx: &Ctx,
        ended: Ended,
        idempotent: bool,
        body: &ReqBody,
        deadline: Instant,
        now: Instant,
        refusal: &mut Option<Refusal>,
    ) -> bool {
        let reached = ended.reached_app();
        let attempt = Attempt {
            attempts_made: cx.attempts,
            max_attempts: route.policy.retries.attempts,
            outcome: ended.outcome(),
            idempotent,
            request_reached_app: reached,
            body_replayable: body.replayable(),
            time_left: deadline.saturating_duration_since(now),
            retries: &route.policy.retries,
        };
        match decide(&attempt, &route.budget, now) {
            Ok(()) => {
                route.metrics.retry(ended.retry_label());
                true
            }
            Err(r) => {
                *refusal = Some(r);
                route.count_refusal(r);
                false
            }
        }
    }

    /// Hedged requests (see [`hedge`]).
    async fn hedged(
        &self,
        s: &mut Server,
        cx: &mut Ctx,
        route: &Arc<ServiceRoute>,
        deadline: Instant,
        after: Duration,
        traceparent: Option<http::HeaderValue>,
    ) {
        let traced = self.tracing.as_deref().zip(cx.trace.as_mut());
        let won = hedge::race(
            &self.upstreams,
            s.req_header(),
            route,
            deadline,
            after,
            traced,
            traceparent,
        )
        .await;
        match won {
            Ok(w) => {
                cx.attempts = w.attempts;
                cx.endpoint = Some(w.winner.addr());
                let mut conn = w.conn;
                let (fields, n) =
                    Self::mesh_fields(w.attempts, w.winner.upstream_header(), w.attempts > 1);
                let idle = route
                    .policy
                    .timeouts
                    .per_try()
                    .unwrap_or(deadline.saturating_duration_since(Instant::now()));
                let forwarded = forward::response(s, &mut conn.client, &fields[..n], idle).await;
                if forwarded == Forwarded::Complete {
                    self.upstreams.put(w.winner.addr(), conn.client);
                }
            }
            Err(f) => {
                cx.attempts = f.attempts;
                self.answer(s, cx, f.reason, &f.detail).await;
            }
        }
    }

    /// The request is over: its metrics, span and access-log line.
    fn done(&self, s: &Server, cx: &mut Ctx) {
        let status = s.response_status();
        let m = cx.route.as_ref().map_or(&self.unrouted, |r| &r.metrics);
        let elapsed = cx.started.elapsed();
        m.request(status, elapsed.as_secs_f64());
        if let Some(reason) = cx.answered {
            m.error(reason.token());
        }
        if let Some(t) = cx.trace.as_mut() {
            let (route, attempts) = (&cx.route, cx.attempts);
            t.end(status, cx.answered.map(Reason::token), || {
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
            Access {
                direction: "outbound",
                service: &self.mesh.service,
                upstream: cx.route.as_ref().map_or("", |r| r.name.as_str()),
                endpoint: cx.endpoint,
                req: s.req_header(),
                trace: cx.trace.as_ref(),
                status,
                attempts: cx.attempts,
                answered: cx.answered,
                elapsed,
            }
            .log();
        }
    }
}

/// For a response with `status`: `None` when it is passed on as it is (not a status the
/// policy retries, or a `Retry-After` past the backoff cap, counted as a refusal), else the
/// endpoint's `Retry-After`, if it sent one, for the delay before the retry.
fn retriable_status(
    route: &ServiceRoute,
    status: u16,
    up: &crate::h1::client::Client,
) -> Option<Option<Duration>> {
    let retries = &route.policy.retries;
    if status < 500 || !retries.retries_status(status) {
        return None;
    }
    let after = up
        .response()
        .and_then(|r| r.get("retry-after"))
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    if after.is_some_and(|d| d > Duration::from_millis(retries.backoff_ms[1])) {
        route.count_refusal(Refusal::NotRetriable);
        return None;
    }
    Some(after)
}

/// The detail of a request that failed at its last try.
fn failure_detail(
    route: &ServiceRoute,
    ended: Ended,
    attempts: u32,
    refusal: Option<Refusal>,
) -> String {
    let refused = refusal
        .map(|r| format!("; not retried: {}", r.as_str()))
        .unwrap_or_default();
    let what = match ended {
        Ended::ConnectFailed { timed_out: true } => "no endpoint accepted a connection in time",
        Ended::ConnectFailed { .. } => "no endpoint accepted a connection",
        Ended::TimedOut { deadline: false } => {
            "the endpoint did not answer within the per-try timeout"
        }
        Ended::TimedOut { deadline: true } => "the request timeout passed",
        _ => "the endpoint closed the connection",
    };
    format!(
        "service {}: {what} after {attempts} attempt(s){refused}",
        route.name
    )
}

/// The fault try `n` (0: the first) of `req` gets from `faults` at `now`, if any: its name, its
/// delay and its abort, kept apart from the route (allocates only when a fault applies).
pub(crate) fn fault_for(
    faults: &mesh_policy::fault::Faults,
    req: &crate::h1::request::Request,
    n: u32,
    now: Instant,
) -> Option<(String, Option<Duration>, Option<mesh_table::faults::Abort>)> {
    if faults.is_empty() {
        return None;
    }
    let field = |name: &str| req.get(name);
    let view = mesh_policy::fault::Request {
        method: req.method.as_str(),
        path: req.path(),
        field: &field,
    };
    with_rng(|r| faults.decide(&view, n, now, r))
        .map(|i| (i.name.to_owned(), i.delay, i.abort.cloned()))
}
