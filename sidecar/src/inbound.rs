//! The inbound listener: other services' calls to the local app.
//!
//! It forwards every request to the app over pooled keep-alive connections, within the local
//! service's `request_ms` and the caller's deadline (plus a little grace), drops the app's
//! hop-by-hop response fields, and answers with a reasoned 502/504 when the app is down or too
//! slow. A caller whose deadline has passed gets a 504 at once and the app does no work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::h1::server::Server;

use crate::conn::Handler;
use crate::forward::{self, Forwarded, ReqBody};
use crate::http as h;
use crate::outbound::attempt::{self, Ended, Failed, Limits, Source};
use crate::reason::{self, Reason};
use crate::state::Mesh;
use crate::telemetry::access::Access;
use crate::telemetry::metrics::{RouteMetrics, TimeoutKind};
use crate::telemetry::trace::{self, ReqTrace};
use crate::upstream::Upstreams;

const APP_CONNECT: Duration = Duration::from_secs(1);

/// How much longer than the caller's deadline the inbound side waits for the app. The caller's
/// own sidecar times the request out at the deadline and names the cause itself; this side
/// stops the app's work shortly after, as a backstop, without racing the caller's timer.
pub fn with_grace(left: Duration) -> Duration {
    left + left / 10 + Duration::from_millis(50)
}

pub struct Inbound {
    pub mesh: Arc<Mesh>,
    pub app: SocketAddr,
    pub metrics: RouteMetrics,
    pub access_log: bool,
    /// Traces; `None` when off.
    pub tracing: trace::Shared,
    pub upstreams: Arc<Upstreams>,
}

struct Ctx {
    started: Instant,
    answered: Option<Reason>,
    trace: Option<ReqTrace>,
}

impl Handler for Inbound {
    async fn serve(&self, s: &mut Server) {
        let mut cx = Ctx {
            started: Instant::now(),
            answered: None,
            trace: None,
        };
        self.proxy(s, &mut cx).await;
        self.done(s, &mut cx);
    }

    fn bad_request(&self) -> (&'static str, &str) {
        ("inbound", &self.mesh.service)
    }
}

impl Inbound {
    /// This service's own route in the active table, if it has one.
    fn own_route(&self) -> Option<Arc<crate::state::ServiceRoute>> {
        self.mesh
            .routes()
            .and_then(|r| r.lookup(&self.mesh.service).cloned())
    }

    async fn answer(&self, s: &mut Server, cx: &mut Ctx, reason: Reason, detail: &str) {
        cx.answered = Some(reason);
        reason::answer(s, reason, "inbound", &self.mesh.service, detail, 0).await;
    }

    async fn proxy(&self, s: &mut Server, cx: &mut Ctx) {
        if let Some(tracing) = &self.tracing {
            let req = s.req_header();
            let peer = s.peer_addr();
            cx.trace = Some(ReqTrace::start(
                tracing,
                req,
                opentelemetry::trace::SpanKind::Server,
                || {
                    use opentelemetry::KeyValue;
                    let mut a = trace::request_attrs(req, &self.mesh.service, "inbound");
                    a.push(KeyValue::new("mesh.endpoint", self.app.to_string()));
                    if let Some(host) = h::authority_host(req) {
                        a.push(KeyValue::new("server.address", host.to_owned()));
                    }
                    if let Some(p) = peer {
                        a.push(KeyValue::new("network.peer.address", p.ip().to_string()));
                        a.push(KeyValue::new("network.peer.port", i64::from(p.port())));
                    }
                    a
                },
            ));
        }
        let caller = h::caller_deadline(s.req_header());
        if caller.is_some_and(|d| d.is_zero()) {
            self.metrics.timeout(TimeoutKind::Deadline);
            // The caller has given up already: do no work for it.
            let detail = format!(
                "the caller's deadline passed before service {} was called",
                self.mesh.service
            );
            return self.answer(s, cx, Reason::DeadlineExceeded, &detail).await;
        }
        // The table's faults on this service's own side: each request that arrives is a first
        // try here.
        let route = self.own_route();
        let fault = route.as_ref().and_then(|r| {
            crate::outbound::fault_for(&r.faults_in, s.req_header(), 0, Instant::now())
        });
        if let Some((name, delay, abort)) = fault {
            if let Some(d) = delay {
                self.metrics.fault(&name, "delay");
                tokio::time::sleep(d).await;
            }
            if let Some(abort) = abort {
                self.metrics.fault(&name, "abort");
                cx.answered = Some(Reason::InjectedFault);
                let service = &self.mesh.service;
                return reason::answer_fault(s, &abort, &name, "inbound", service, 0).await;
            }
        }
        let app_timeout = route.as_ref().map_or(
            Duration::from_millis(mesh_table::defaults::REQUEST_MS),
            |r| r.policy.timeouts.request(),
        );
        let (timeout, deadline_bound) = match caller {
            Some(left) if with_grace(left) < app_timeout => (with_grace(left), true),
            _ => (app_timeout, false),
        };
        let mut body = ReqBody::of(s, None);
        if let Err(e) = h::prepare_upstream(s.req_header_mut()) {
            return self.answer(s, cx, Reason::BadRequest, &e.to_string()).await;
        }
        // The app's parent is this hop's server span (unsampled: see `trace`).
        let traceparent = cx.trace.as_ref().and_then(ReqTrace::outgoing);
        let fields = || h::TryFields {
            deadline: None,
            traceparent: traceparent.clone(),
        };
        let idempotent = mesh_policy::retry::is_idempotent(s.req_header().method.as_str());
        let limits = Limits {
            connect: APP_CONNECT,
            response: timeout,
            response_is_deadline: deadline_bound,
        };
        let source = Source::Client(&mut *s);
        let exchanged = attempt::run(
            &self.upstreams,
            self.app,
            limits,
            source,
            fields,
            idempotent,
            &mut body,
        )
        .await;
        let mut conn = match exchanged {
            Ok(conn) => conn,
            Err(Failed::Client) => {
                s.set_keep_alive(false);
                return;
            }
            Err(f) => {
                let ended = match f {
                    Failed::Try(ended) => ended,
                    _ => Ended::Reset,
                };
                let reason = match ended {
                    Ended::TimedOut { deadline: true } => Reason::DeadlineExceeded,
                    Ended::TimedOut { deadline: false } => Reason::PerTryTimeout,
                    e => e.reason(),
                };
                let what = match ended {
                    Ended::ConnectFailed { .. } => "refused the connection",
                    Ended::TimedOut { .. } => "did not answer in time",
                    _ => "closed the connection",
                };
                let detail = format!("the app of service {} {what}", self.mesh.service);
                return self.answer(s, cx, reason, &detail).await;
            }
        };
        let forwarded = forward::response(s, &mut conn.client, &[], timeout).await;
        if forwarded == Forwarded::Complete {
            self.upstreams.put(self.app, conn.client);
        }
    }

    fn done(&self, s: &Server, cx: &mut Ctx) {
        let status = s.response_status();
        let elapsed = cx.started.elapsed();
        self.metrics.request(status, elapsed.as_secs_f64());
        if let Some(reason) = cx.answered {
            self.metrics.error(reason.token());
        }
        if let Some(t) = cx.trace.as_mut() {
            t.end(status, cx.answered.map(Reason::token), Vec::new);
        }
        if self.access_log {
            Access {
                direction: "inbound",
                service: &self.mesh.service,
                upstream: &self.mesh.service,
                endpoint: Some(self.app),
                req: s.req_header(),
                trace: cx.trace.as_ref(),
                status,
                attempts: 1,
                answered: cx.answered,
                elapsed,
            }
            .log();
        }
    }
}
