//! The inbound proxy: other services' calls to the local app.
//!
//! It forwards every request to the app over pooled keep-alive connections, with the read
//! timeout of the local service's table entry (its `request_ms`), drops the app's hop-by-hop
//! response fields, and answers with a reasoned 502/504 when the app is down or too slow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::metrics::RouteMetrics;
use crate::outbound::caller_deadline;
use crate::outbound::strip_response_hop_by_hop;
use crate::reason::{self, Reason};
use crate::routes::Mesh;
use crate::trace::{self, ReqTrace};

const APP_CONNECT: Duration = Duration::from_secs(1);
const APP_IDLE: Duration = Duration::from_secs(60);

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
}

/// Per-request state of the inbound side.
pub struct InboundCtx {
    /// What is left of the caller's deadline, when it sent one.
    deadline: Option<Duration>,
    started: Instant,
    answered: Option<Reason>,
    /// The request's trace; `None` when tracing is off.
    trace: Option<ReqTrace>,
}

impl Inbound {
    fn app_timeout(&self) -> Duration {
        self.mesh
            .routes()
            .and_then(|r| {
                r.lookup(&self.mesh.service)
                    .map(|s| s.policy.timeouts.request())
            })
            .unwrap_or(Duration::from_millis(mesh_table::defaults::REQUEST_MS))
    }
}

#[async_trait]
impl ProxyHttp for Inbound {
    type CTX = InboundCtx;

    fn new_ctx(&self) -> InboundCtx {
        InboundCtx {
            deadline: None,
            started: Instant::now(),
            answered: None,
            trace: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut InboundCtx) -> Result<bool> {
        if let Some(tracing) = &self.tracing {
            let req = session.req_header();
            let peer = session.client_addr();
            ctx.trace = Some(ReqTrace::start(
                tracing,
                req,
                opentelemetry::trace::SpanKind::Server,
                || {
                    use opentelemetry::KeyValue;
                    let mut a = trace::request_attrs(req, &self.mesh.service, "inbound");
                    a.push(KeyValue::new("mesh.endpoint", self.app.to_string()));
                    if let Some(host) = crate::outbound::authority_host(req) {
                        a.push(KeyValue::new("server.address", host.to_owned()));
                    }
                    if let Some(p) = peer.and_then(|p| p.as_inet()) {
                        a.push(KeyValue::new("network.peer.address", p.ip().to_string()));
                        a.push(KeyValue::new("network.peer.port", i64::from(p.port())));
                    }
                    a
                },
            ));
        }
        ctx.deadline = caller_deadline(session.req_header());
        if ctx.deadline.is_some_and(|d| d.is_zero()) {
            self.metrics.timeout(3);
            ctx.answered = Some(Reason::DeadlineExceeded);
            // The caller has given up already: do no work for it.
            let detail = format!(
                "the caller's deadline passed before service {} was called",
                self.mesh.service
            );
            let (h, body) = reason::response(
                Reason::DeadlineExceeded,
                "inbound",
                &self.mesh.service,
                &detail,
                0,
            );
            reason::send(session, h, body).await;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut InboundCtx,
    ) -> Result<Box<HttpPeer>> {
        let timeout = match ctx.deadline {
            Some(left) => with_grace(left).min(self.app_timeout()),
            None => self.app_timeout(),
        };
        let mut peer = HttpPeer::new(self.app, false, String::new());
        peer.options.connection_timeout = Some(APP_CONNECT);
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        peer.options.idle_timeout = Some(APP_IDLE);
        Ok(Box::new(peer))
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut InboundCtx) {
        let status = session
            .as_ref()
            .response_written()
            .map(|r| r.status.as_u16());
        self.metrics
            .request(status, ctx.started.elapsed().as_secs_f64());
        if let Some(reason) = ctx.answered {
            self.metrics.error(reason.token());
        }
        if let Some(t) = ctx.trace.as_mut() {
            t.end(status, ctx.answered.map(Reason::token), Vec::new);
        }
        if self.access_log {
            let req = session.req_header();
            let mut hex = [0u8; 32];
            tracing::info!(
                target: "access",
                trace_id = crate::outbound::log_trace_id(ctx.trace.as_ref(), req, &mut hex),
                direction = "inbound",
                service = %self.mesh.service,
                upstream = %self.mesh.service,
                endpoint = %self.app,
                method = %req.method,
                status = status.unwrap_or(0),
                attempts = 1,
                reason = ctx.answered.map_or("", |r| r.token()),
                duration_ms = ctx.started.elapsed().as_secs_f64() * 1e3,
            );
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut InboundCtx,
    ) -> Result<()> {
        // The app's parent is this hop's server span (unsampled: see `trace`).
        if let Some(tp) = ctx.trace.as_ref().and_then(ReqTrace::outgoing) {
            upstream_request.insert_header(mesh_trace::context::TRACEPARENT, tp)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut InboundCtx,
    ) -> Result<()> {
        strip_response_hop_by_hop(upstream_response);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut InboundCtx,
    ) -> FailToProxy {
        if let Some(done) = reason::downstream_failure(session, e).await {
            return done;
        }
        let deadline_bound = ctx
            .deadline
            .is_some_and(|left| with_grace(left) < self.app_timeout());
        let reason = match Reason::of_error(e.etype()) {
            Reason::PerTryTimeout if deadline_bound => Reason::DeadlineExceeded,
            r => r,
        };
        ctx.answered = Some(reason);
        let detail = format!("app {} of service {}: {e}", self.app, self.mesh.service);
        let (h, body) = reason::response(reason, "inbound", &self.mesh.service, &detail, 0);
        let status = reason.status();
        reason::send(session, h, body).await;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}
