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
use pingora_core::protocols::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use mesh_table::RetryOn;

use crate::reason::{self, Reason};
use crate::routes::{Mesh, ServiceRoute};

/// How long an idle upstream connection stays in the pool.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

pub struct Outbound {
    pub mesh: Arc<Mesh>,
}

/// Per-request state, alive across every attempt of one downstream request.
pub struct OutboundCtx {
    route: Option<Arc<ServiceRoute>>,
    deadline: Instant,
    attempts: u32,
    /// The endpoint of the attempt in progress.
    current: Option<SocketAddr>,
    /// Endpoints that failed this request. Allocated only when an attempt fails.
    failed: Vec<SocketAddr>,
    /// Why the sidecar is answering itself, when it is.
    reason: Option<Reason>,
    detail: Option<String>,
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
    async fn answer(&self, session: &mut Session, reason: Reason, detail: &str, attempts: u32) {
        let (h, body) = reason::response(reason, "outbound", detail, attempts);
        if let Err(e) = session.as_mut().write_error_response(h, body).await {
            tracing::debug!(error = %e, "could not send the error response downstream");
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
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut OutboundCtx) -> Result<bool> {
        let Some(routes) = self.mesh.routes() else {
            self.answer(session, Reason::NoTable, "no routing table loaded yet", 0)
                .await;
            return Ok(true);
        };
        let Some(host) = authority_host(session.req_header()) else {
            let detail = "the request names no service: send a Host header or an absolute URI";
            self.answer(session, Reason::BadRequest, detail, 0).await;
            return Ok(true);
        };
        let Some(route) = routes.lookup(host) else {
            let detail = format!(
                "no service {host:?} in routing table version {} (known: {})",
                routes.table.version,
                routes.names()
            );
            self.answer(session, Reason::UnknownService, &detail, 0)
                .await;
            return Ok(true);
        };
        let policy = &route.policy;
        ctx.deadline = Instant::now() + policy.timeouts.request();
        if policy.retries.attempts > 1 {
            // Keeps the request body (up to Pingora's bounded buffer) so a retry can resend it.
            session.as_mut().enable_retry_buffering();
        }
        ctx.route = Some(route.clone());
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut OutboundCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx.route.as_ref().expect("request_filter sets the route");
        ctx.attempts += 1;
        let now = Instant::now();
        let Some(remaining) = ctx
            .deadline
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
        else {
            ctx.reason = Some(Reason::RequestTimeout);
            return Err(Error::explain(
                ErrorType::HTTPStatus(504),
                "request timeout before an attempt",
            ));
        };
        let Some(addr) = route.balancer.pick(&ctx.failed) else {
            ctx.reason = Some(Reason::NoHealthyEndpoint);
            ctx.detail = Some(format!("service {} has no endpoints", route.name));
            return Err(Error::explain(ErrorType::HTTPStatus(503), "no endpoint"));
        };
        ctx.current = Some(addr);
        let t = &route.policy.timeouts;
        let try_timeout = t.per_try().map_or(remaining, |p| p.min(remaining));
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(t.connect().min(remaining));
        peer.options.read_timeout = Some(try_timeout);
        peer.options.write_timeout = Some(try_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut OutboundCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(a) = ctx.current.take() {
            ctx.failed.push(a);
        }
        ctx.reason = Some(Reason::ConnectFailure);
        let retries = &ctx.route.as_ref().expect("route set").policy.retries;
        let retry = retries.retries_on(RetryOn::ConnectFailure)
            && ctx.attempts < retries.attempts
            && Instant::now() < ctx.deadline;
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
        let mut e = e.more_context(format!("endpoint {peer}"));
        if let Some(a) = ctx.current.take() {
            ctx.failed.push(a);
        }
        let reason = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Reason::PerTryTimeout,
            _ => Reason::UpstreamReset,
        };
        ctx.reason = Some(reason);
        let retries = &ctx.route.as_ref().expect("route set").policy.retries;
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let allowed = ctx.attempts < retries.attempts && Instant::now() < ctx.deadline;
        // A pooled connection the endpoint had already closed is not the endpoint's failure:
        // retry it like Pingora does; a reset of a fresh connection only when the table says so.
        let wanted = client_reused
            || (reason == Reason::UpstreamReset && retries.retries_on(RetryOn::Reset));
        e.set_retry(replayable && allowed && wanted);
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut OutboundCtx,
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
            upstream_request.insert_header(http::header::HOST, authority)?;
            let origin_form = upstream_request.uri.clone();
            upstream_request.set_uri(origin_form);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut OutboundCtx,
    ) -> Result<()> {
        strip_response_hop_by_hop(upstream_response);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut OutboundCtx,
    ) -> FailToProxy {
        if *e.esource() == ErrorSource::Downstream {
            let code = match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            };
            if code > 0 {
                let _ = session.respond_error(code).await;
            }
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let reason = ctx.reason.unwrap_or(match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError => Reason::ConnectFailure,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Reason::PerTryTimeout,
            _ => Reason::UpstreamReset,
        });
        let service = ctx.route.as_ref().map_or("?", |r| r.name.as_str());
        let detail = match ctx.detail.take() {
            Some(d) => d,
            None => format!(
                "service {service}: {} after {} attempt(s): {e}",
                match reason {
                    Reason::ConnectFailure => "no endpoint accepted a connection",
                    Reason::PerTryTimeout => "the endpoint did not answer in time",
                    Reason::RequestTimeout => "the request timeout passed",
                    _ => "the endpoint closed the connection",
                },
                ctx.attempts
            ),
        };
        let status = reason.status();
        self.answer(session, reason, &detail, ctx.attempts).await;
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
