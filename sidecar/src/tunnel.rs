//! Upgraded connections (WebSocket and other `Upgrade` requests), served by pingora-proxy.
//!
//! The request loop (`conn`) hands an Upgrade request over unanswered; pingora-proxy reads it
//! again and, once the endpoint answers `101`, copies bytes both ways with its duplex loop.
//! Policies act on the handshake only: the outbound side routes by authority and picks an
//! endpoint the breaker admits (a connect failure is reported to the breaker and retried once
//! elsewhere); the inbound side goes to the local app. Reads in either direction time out
//! after [`TUNNEL_IDLE`] of silence, not at the request's deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::http as h;
use crate::reason::{self, Reason};
use crate::state::{Mesh, ServiceRoute};

/// The idle timeout of an upgraded connection's reads (both directions).
pub const TUNNEL_IDLE: Duration = Duration::from_secs(3600);

/// Where upgraded connections go.
pub enum Side {
    /// To an endpoint of the service the request's authority names.
    Outbound,
    /// To the local app.
    Inbound { app: SocketAddr },
}

pub struct Tunnel {
    pub mesh: Arc<Mesh>,
    pub side: Side,
}

/// Per-handshake state.
#[derive(Default)]
pub struct TunnelCtx {
    route: Option<Arc<ServiceRoute>>,
    endpoint: Option<SocketAddr>,
    tries: u32,
    reason: Option<Reason>,
    detail: Option<String>,
}

impl Tunnel {
    fn hop(&self) -> &'static str {
        match self.side {
            Side::Outbound => "outbound",
            Side::Inbound { .. } => "inbound",
        }
    }

    fn peer(addr: SocketAddr, connect: Duration) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(connect);
        peer.options.read_timeout = Some(TUNNEL_IDLE);
        peer.options.write_timeout = Some(TUNNEL_IDLE);
        Box::new(peer)
    }
}

#[async_trait]
impl ProxyHttp for Tunnel {
    type CTX = TunnelCtx;

    fn new_ctx(&self) -> TunnelCtx {
        TunnelCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut TunnelCtx) -> Result<bool> {
        if matches!(self.side, Side::Inbound { .. }) {
            return Ok(false);
        }
        let req = session.req_header();
        let refused = match (
            self.mesh.routes(),
            h::host_of(
                req.raw_path(),
                req.headers.get(http::header::HOST).map(|v| v.as_bytes()),
            ),
        ) {
            (None, _) => Some((Reason::NoTable, "no routing table loaded yet".to_owned())),
            (_, None) => Some((
                Reason::BadRequest,
                "the request names no service".to_owned(),
            )),
            (Some(routes), Some(host)) => match routes.lookup(host) {
                Some(r) => {
                    ctx.route = Some(r.clone());
                    None
                }
                None => Some((Reason::UnknownService, format!("no service {host:?}"))),
            },
        };
        if let Some((reason, detail)) = refused {
            let (header, body) =
                reason::response(reason, self.hop(), &self.mesh.service, &detail, 0);
            session.write_error_response(header, body).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut TunnelCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.tries += 1;
        let route = match (&self.side, &ctx.route) {
            (Side::Inbound { app }, _) => return Ok(Self::peer(*app, Duration::from_secs(1))),
            (Side::Outbound, Some(r)) => r.clone(),
            (Side::Outbound, None) => {
                return Error::e_explain(ErrorType::InternalError, "no route")
            }
        };
        let policy = &route.policy;
        let key = policy
            .hash_header
            .as_deref()
            .and_then(|name| session.req_header().headers.get(name))
            .map(|v| v.as_bytes());
        let avoid: Vec<SocketAddr> = ctx.endpoint.into_iter().collect();
        let now = Instant::now();
        let Some(chosen) = route.pick(key, &avoid, now) else {
            ctx.reason = Some(Reason::NoHealthyEndpoint);
            ctx.detail = Some(format!("service {} has no usable endpoint", route.name));
            return Error::e_explain(ErrorType::HTTPStatus(503), "no endpoint");
        };
        let addr = chosen.endpoint.addr;
        // The handshake is the try the breaker hears about; a probe cannot be judged by a
        // connection that may stay open for hours, so it is handed back.
        if chosen.probe {
            route.probe_cancelled(addr, now);
        }
        ctx.endpoint = Some(addr);
        Ok(Self::peer(addr, policy.timeouts.connect()))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut TunnelCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(route), Some(addr)) = (&ctx.route, ctx.endpoint) {
            route.breaker_result(addr, Instant::now(), true, false);
        }
        ctx.reason = Some(Reason::ConnectFailure);
        // Nothing was sent: one more endpoint, on the outbound side.
        e.set_retry(ctx.route.is_some() && ctx.tries < 2);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut TunnelCtx,
    ) -> FailToProxy {
        if *e.esource() == pingora_error::ErrorSource::Downstream {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let reason = ctx.reason.unwrap_or(Reason::of_error(e.etype()));
        let detail = ctx
            .detail
            .take()
            .unwrap_or_else(|| format!("the upgrade handshake failed: {}", reason.token()));
        let (header, body) =
            reason::response(reason, self.hop(), &self.mesh.service, &detail, ctx.tries);
        let _ = session.write_error_response(header, body).await;
        FailToProxy {
            error_code: reason.status(),
            can_reuse_downstream: false,
        }
    }
}
