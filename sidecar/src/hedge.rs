//! Hedged requests: when a try has not answered after `hedge_after_ms`, a second try goes to
//! another endpoint; the first response header to arrive wins and the other try is dropped
//! (its connection closed, which cancels it at the endpoint's sidecar).
//!
//! Pingora's proxy loop runs one upstream try at a time, so a hedged request is served here,
//! from `request_filter`, with Pingora's HTTP connector: only idempotent requests without a
//! body are hedged (a body would have to be sent twice), every other request takes the normal
//! path. A hedge is a retry for the budget: it is sent only when the retry budget grants one.
//! Both tries report to the breakers and the latency estimates like any other try.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use crate::balancer::Chosen;
use crate::outbound::{deadline_value, peer_for, strip_response_hop_by_hop, DEADLINE_HEADER};
use crate::reason::Reason;
use crate::routes::ServiceRoute;
use crate::trace::{end_span, method_name, ReqTrace};
use mesh_trace::Tracing;
use opentelemetry_sdk::trace::Span as SdkSpan;

/// Hop-by-hop request fields, never forwarded (RFC 9110 7.6.1).
const REQUEST_HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Whether this request is served hedged.
pub fn wants_hedge(route: &ServiceRoute, req: &RequestHeader) -> Option<Duration> {
    let after = route.policy.retries.hedge_after_ms?;
    let idempotent = crate::retry::is_idempotent(req.method.as_str());
    let has_body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    (idempotent && !has_body).then(|| Duration::from_millis(after))
}

/// How a hedged request ended when the sidecar has to answer itself.
pub struct Failed {
    pub reason: Reason,
    pub detail: String,
    pub attempts: u32,
}

struct Try {
    chosen: Chosen,
    started: Instant,
    /// The try's span, when the request is sampled.
    span: Option<SdkSpan>,
}

/// The tracing of a hedged request, when on.
type Traced<'a> = Option<(&'a Tracing, &'a mut ReqTrace)>;

/// The try's copy of the request, carrying its own `traceparent` when the request is traced,
/// and the try's span.
fn traced_request(
    req: &RequestHeader,
    traced: &mut Traced<'_>,
    n: u32,
    chosen: &Chosen,
) -> (RequestHeader, Option<SdkSpan>) {
    let mut r = req.clone();
    let Some((tracing, t)) = traced else {
        return (r, None);
    };
    let method = method_name(&req.method);
    t.start_attempt(tracing, method, n, chosen.endpoint.addr, chosen.probe);
    if let Some(tp) = t.outgoing() {
        let _ = r.insert_header(mesh_trace::context::TRACEPARENT, tp);
    }
    (r, t.take_attempt())
}

/// Ends a try's span, if it has one.
fn end_try(t: &mut Try, status: Option<u16>, reason: Option<&'static str>) {
    if let Some(span) = t.span.take() {
        end_span(span, status, reason.map(Into::into));
    }
}

/// One try: connect, send the header, read the response header.
async fn attempt(
    connector: &Connector,
    peer: HttpPeer,
    req: RequestHeader,
) -> Result<(HttpSession, HttpPeer)> {
    let (mut up, _reused) = connector.get_http_session(&peer).await?;
    up.write_request_header(Box::new(req)).await?;
    up.finish_request_body().await?;
    up.read_response_header().await?;
    Ok((up, peer))
}

/// The request as the endpoint gets it: origin-form, Host from the authority, no hop-by-hop
/// fields, the deadline left.
fn upstream_request(
    session: &Session,
    host: &http::HeaderValue,
    left: Duration,
) -> Result<RequestHeader> {
    let mut req = session.req_header().clone();
    for name in connection_nominated(&req)
        .into_iter()
        .chain(REQUEST_HOP_BY_HOP.iter().map(|s| s.to_string()))
    {
        req.remove_header(name.as_str());
    }
    let origin_form = req.uri.clone();
    req.set_uri(origin_form);
    req.insert_header(http::header::HOST, host.clone())?;
    req.insert_header(DEADLINE_HEADER, deadline_value(left))?;
    req.set_version(http::Version::HTTP_11);
    Ok(req)
}

fn connection_nominated(req: &RequestHeader) -> Vec<String> {
    req.headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "host")
        .collect()
}

fn report(route: &ServiceRoute, t: &Try, failure: bool, now: Instant) {
    let addr = t.chosen.endpoint.addr;
    route.breaker_result(addr, now, failure, t.chosen.probe);
    route.metrics.attempt(if failure { 1 } else { 0 });
    if !failure {
        t.chosen
            .endpoint
            .observe_latency(now.saturating_duration_since(t.started), now);
    }
}

fn cancel(route: &ServiceRoute, t: &Try, now: Instant) {
    if t.chosen.probe {
        route
            .balancer
            .breakers
            .on_probe_cancelled(t.chosen.endpoint.addr, now);
    }
}

/// Serves one request with hedging. `Ok(attempts)` once a response went downstream;
/// `Err(Failed)` when the sidecar must answer itself.
pub async fn serve(
    connector: &Connector,
    session: &mut Session,
    route: &Arc<ServiceRoute>,
    host: &http::HeaderValue,
    deadline: Instant,
    hedge_after: Duration,
    mut traced: Traced<'_>,
) -> std::result::Result<u32, Failed> {
    let policy = &route.policy;
    let key_of = |s: &Session| {
        policy
            .hash_header
            .as_deref()
            .and_then(|h| s.req_header().headers.get(h))
            .map(|v| v.as_bytes().to_vec())
    };
    let key = key_of(session);
    let now = Instant::now();
    let left = deadline.saturating_duration_since(now);
    let Some(first) = route
        .balancer
        .pick(key.as_deref(), &[], now, policy.panic_threshold_percent)
    else {
        return Err(Failed {
            reason: Reason::NoHealthyEndpoint,
            detail: format!("service {} has no usable endpoint", route.name),
            attempts: 0,
        });
    };
    let req = upstream_request(session, host, left).map_err(|e| Failed {
        reason: Reason::BadRequest,
        detail: e.to_string(),
        attempts: 0,
    })?;
    let _load_a = first.endpoint.start();
    let (req_a, span_a) = traced_request(&req, &mut traced, 1, &first);
    let mut a = Try {
        chosen: first,
        started: now,
        span: span_a,
    };
    let fut_a = attempt(
        connector,
        peer_for(a.chosen.endpoint.addr, route, left),
        req_a,
    );
    tokio::pin!(fut_a);
    let mut attempts = 1;
    let timeout = tokio::time::sleep_until(deadline.into());
    tokio::pin!(timeout);

    // Phase 1: the first try alone, until it answers or the hedge delay passes.
    let early = tokio::select! {
        r = &mut fut_a => Some(r),
        _ = tokio::time::sleep(hedge_after) => None,
        _ = &mut timeout => {
            cancel(route, &a, Instant::now());
            return Err(timed_out(route, attempts));
        }
    };
    let (winner, result, loser) = match early {
        Some(Ok(r)) => (a, Ok(r), None),
        Some(Err(e)) => {
            // The first try failed before the hedge delay: one plain retry elsewhere, if the
            // budget grants it.
            let now = Instant::now();
            report(route, &a, true, now);
            end_try(&mut a, None, Some(Reason::of_error(e.etype()).token()));
            let avoid = [a.chosen.endpoint.addr];
            let next = route
                .budget
                .try_withdraw(now)
                .then(|| {
                    route
                        .balancer
                        .pick(key.as_deref(), &avoid, now, policy.panic_threshold_percent)
                })
                .flatten();
            let Some(chosen) = next else {
                return Err(failed(route, &e, attempts));
            };
            attempts = 2;
            let left = deadline.saturating_duration_since(now);
            let _load_b = chosen.endpoint.start();
            let (req_b, span_b) = traced_request(&req, &mut traced, 2, &chosen);
            let b = Try {
                chosen,
                started: now,
                span: span_b,
            };
            let r = tokio::select! {
                r = attempt(connector, peer_for(b.chosen.endpoint.addr, route, left), req_b) => r,
                _ = &mut timeout => {
                    cancel(route, &b, Instant::now());
                    return Err(timed_out(route, attempts));
                }
            };
            (b, r, None)
        }
        None => {
            let now = Instant::now();
            let avoid = [a.chosen.endpoint.addr];
            let second = route
                .budget
                .try_withdraw(now)
                .then(|| {
                    route
                        .balancer
                        .pick(key.as_deref(), &avoid, now, policy.panic_threshold_percent)
                })
                .flatten()
                .filter(|c| c.endpoint.addr != a.chosen.endpoint.addr);
            match second {
                None => {
                    // No budget or no other endpoint: wait for the first try alone.
                    let r = tokio::select! {
                        r = &mut fut_a => r,
                        _ = &mut timeout => {
                            cancel(route, &a, Instant::now());
                            return Err(timed_out(route, attempts));
                        }
                    };
                    (a, r, None)
                }
                Some(chosen) => {
                    attempts = 2;
                    route.metrics.retry(4);
                    let left = deadline.saturating_duration_since(now);
                    let _load_b = chosen.endpoint.start();
                    let (req_b, span_b) = traced_request(&req, &mut traced, 2, &chosen);
                    let b = Try {
                        chosen,
                        started: now,
                        span: span_b,
                    };
                    let fut_b = attempt(
                        connector,
                        peer_for(b.chosen.endpoint.addr, route, left),
                        req_b,
                    );
                    tokio::pin!(fut_b);
                    // Phase 2: the first response header wins; a try that fails leaves the
                    // other one to finish.
                    let mut a_done: Option<Result<(HttpSession, HttpPeer)>> = None;
                    let mut b_done: Option<Result<(HttpSession, HttpPeer)>> = None;
                    loop {
                        tokio::select! {
                            r = &mut fut_a, if a_done.is_none() => a_done = Some(r),
                            r = &mut fut_b, if b_done.is_none() => b_done = Some(r),
                            _ = &mut timeout => {
                                let now = Instant::now();
                                cancel(route, &a, now);
                                cancel(route, &b, now);
                                return Err(timed_out(route, attempts));
                            }
                        }
                        match (&a_done, &b_done) {
                            (Some(Ok(_)), _) => break (a, a_done.take().expect("set"), Some(b)),
                            (_, Some(Ok(_))) => break (b, b_done.take().expect("set"), Some(a)),
                            (Some(Err(e)), Some(Err(_))) => {
                                let now = Instant::now();
                                report(route, &a, true, now);
                                let mut a = a;
                                end_try(&mut a, None, Some(Reason::of_error(e.etype()).token()));
                                break (b, b_done.take().expect("set"), None);
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    };
    let now = Instant::now();
    let mut winner = winner;
    if let Some(mut l) = loser {
        cancel(route, &l, now);
        end_try(&mut l, None, Some("hedge-lost"));
    }
    let (mut up, peer) = match result {
        Ok(ok) => ok,
        Err(e) => {
            report(route, &winner, true, now);
            end_try(&mut winner, None, Some(Reason::of_error(e.etype()).token()));
            return Err(failed(route, &e, attempts));
        }
    };
    let mut resp = up
        .response_header()
        .expect("a response header was read")
        .clone();
    report(route, &winner, resp.status.as_u16() >= 500, now);
    end_try(&mut winner, Some(resp.status.as_u16()), None);
    strip_response_hop_by_hop(&mut resp);
    let _ = resp.insert_header("x-mesh-attempts", crate::reason::attempts_value(attempts));
    let _ = resp.insert_header("x-mesh-upstream", winner.chosen.endpoint.header.clone());
    if attempts > 1 {
        let _ = resp.insert_header("x-mesh-hedged", "1");
    }
    let head = session.req_header().method == http::Method::HEAD;
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        return Ok(attempts);
    }
    if !head {
        loop {
            match up.read_response_body().await {
                Ok(Some(chunk)) => {
                    if session
                        .write_response_body(Some(chunk), false)
                        .await
                        .is_err()
                    {
                        return Ok(attempts);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "hedged response body broke off");
                    return Ok(attempts);
                }
            }
        }
    }
    let _ = session.write_response_body(None, true).await;
    if up.response_done() {
        connector
            .release_http_session(up, &peer, peer.idle_timeout())
            .await;
    }
    Ok(attempts)
}

fn timed_out(route: &ServiceRoute, attempts: u32) -> Failed {
    Failed {
        reason: Reason::RequestTimeout,
        detail: format!(
            "service {}: the request timeout passed after {attempts} hedged attempt(s)",
            route.name
        ),
        attempts,
    }
}

fn failed(route: &ServiceRoute, e: &Error, attempts: u32) -> Failed {
    let reason = Reason::of_error(e.etype());
    Failed {
        reason,
        detail: format!(
            "service {}: {attempts} hedged attempt(s) failed: {e}",
            route.name
        ),
        attempts,
    }
}
