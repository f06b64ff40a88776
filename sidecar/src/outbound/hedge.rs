//! Hedged requests: when a try has not answered after `hedge_after_ms`, a second try goes to
//! another endpoint; the first response header to arrive wins and the other try is dropped
//! (its connection closed, which cancels it at the endpoint's sidecar).
//!
//! Only idempotent requests without a body are hedged (a body would have to be read twice).
//! A hedge is a retry for the budget: it is sent only when the retry budget grants one. Both
//! tries are ordinary [`Try`]s: they report to the breakers, the latency estimates, the
//! metrics and the trace exactly as any other try does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::h1::request::Request;

use super::attempt::{self, Ended, Failed, Source, Try};
use super::try_fields;
use crate::forward::ReqBody;
use crate::reason::Reason;
use crate::state::ServiceRoute;
use crate::telemetry::metrics::RetryReason;
use crate::telemetry::trace::ReqTrace;
use crate::upstream::{Conn, Upstreams};
use mesh_policy::retry::is_idempotent;

/// Whether this request is served hedged, and after how long.
pub fn wants_hedge(route: &ServiceRoute, req: &Request) -> Option<Duration> {
    let after = route.policy.retries.hedge_after_ms?;
    (is_idempotent(req.method.as_str()) && !crate::http::has_body(req))
        .then(|| Duration::from_millis(after))
}

/// The try that answered first.
pub struct Won {
    pub winner: Try,
    pub conn: Conn,
    pub attempts: u32,
}

/// How a hedged request ended when the sidecar has to answer itself.
pub struct Lost {
    pub reason: Reason,
    pub detail: String,
    pub attempts: u32,
}

type Traced<'a> = Option<(&'a mesh_trace::Tracing, &'a mut ReqTrace)>;

fn reborrow<'b>(t: &'b mut Traced<'_>) -> Option<(&'b mesh_trace::Tracing, &'b mut ReqTrace)> {
    t.as_mut().map(|(tr, rt)| (*tr, &mut **rt))
}

/// Runs the first try, and a second one once `after` passes without an answer.
pub async fn race(
    upstreams: &Upstreams,
    base: &Request,
    route: &Arc<ServiceRoute>,
    deadline: Instant,
    after: Duration,
    mut traced: Traced<'_>,
    traceparent: Option<http::HeaderValue>,
) -> Result<Won, Lost> {
    let policy = &route.policy;
    let method = &base.method;
    let key: Option<&[u8]> = policy.hash_header.as_deref().and_then(|h| base.get(h));
    let now = Instant::now();
    let Some(first) = route.pick(key, &[], now) else {
        return Err(Lost {
            reason: Reason::NoHealthyEndpoint,
            detail: format!("service {} has no usable endpoint", route.name),
            attempts: 0,
        });
    };
    let mut a = Try::start(route, first, 1, now, reborrow(&mut traced), method);
    let tp_a = a.own_traceparent().or_else(|| traceparent.clone());
    let run = |t: &Try, tp: Option<http::HeaderValue>| {
        let addr = t.addr();
        let limits = super::limits(route, deadline.saturating_duration_since(Instant::now()));
        async move {
            let mut body = ReqBody::none();
            let fields = || try_fields(deadline, tp.clone());
            attempt::run(
                upstreams,
                addr,
                limits,
                Source::Header(base),
                fields,
                true,
                &mut body,
            )
            .await
        }
    };
    let fut_a = run(&a, tp_a);
    tokio::pin!(fut_a);
    let timeout = tokio::time::sleep_until(deadline.into());
    tokio::pin!(timeout);

    // The first try alone, until it answers or the hedge delay passes.
    let early = tokio::select! {
        r = &mut fut_a => Some(r),
        _ = tokio::time::sleep(after) => None,
        _ = &mut timeout => return Err(timed_out(route, 1)),
    };
    let a_failed: Option<Ended> = match early.map(|r| settle(&mut a, r)) {
        Some(Ok(conn)) => {
            return Ok(Won {
                winner: a,
                conn,
                attempts: 1,
            })
        }
        Some(Err(ended)) => Some(ended),
        None => None,
    };
    // The first try failed early, or is slow: a second try elsewhere, if the budget grants it.
    let now = Instant::now();
    let avoid = [a.addr()];
    let second = route
        .budget
        .try_withdraw(now)
        .then(|| route.pick(key, &avoid, now))
        .flatten()
        .filter(|c| a_failed.is_some() || c.endpoint.addr != a.addr());
    let Some(second) = second else {
        if let Some(ended) = a_failed {
            return Err(failed(route, ended, 1));
        }
        // No budget or no other endpoint: wait for the first try alone.
        let r = tokio::select! {
            r = &mut fut_a => r,
            _ = &mut timeout => return Err(timed_out(route, 1)),
        };
        return match settle(&mut a, r) {
            Ok(conn) => Ok(Won {
                winner: a,
                conn,
                attempts: 1,
            }),
            Err(ended) => Err(failed(route, ended, 1)),
        };
    };
    route.metrics.retry(match a_failed {
        Some(ended) => ended.retry_label(),
        None => RetryReason::Hedge,
    });
    let mut b = Try::start(route, second, 2, now, reborrow(&mut traced), method);
    let tp_b = b.own_traceparent().or_else(|| traceparent.clone());
    let fut_b = run(&b, tp_b);
    tokio::pin!(fut_b);
    let mut a_done: Option<Result<Conn, Ended>> = a_failed.map(Err);
    let mut b_done: Option<Result<Conn, Ended>> = None;
    // The first response header wins; a try that fails leaves the other one to finish.
    loop {
        tokio::select! {
            r = &mut fut_a, if a_done.is_none() => a_done = Some(settle(&mut a, r)),
            r = &mut fut_b, if b_done.is_none() => b_done = Some(settle(&mut b, r)),
            _ = &mut timeout => return Err(timed_out(route, 2)),
        }
        match (&a_done, &b_done) {
            (Some(Ok(_)), _) => {
                let Some(Ok(conn)) = a_done.take() else {
                    unreachable!()
                };
                b.end_span(None, Some("hedge-lost".into()));
                return Ok(Won {
                    winner: a,
                    conn,
                    attempts: 2,
                });
            }
            (_, Some(Ok(_))) => {
                let Some(Ok(conn)) = b_done.take() else {
                    unreachable!()
                };
                a.end_span(None, Some("hedge-lost".into()));
                return Ok(Won {
                    winner: b,
                    conn,
                    attempts: 2,
                });
            }
            (Some(Err(_)), Some(Err(ended))) => return Err(failed(route, *ended, 2)),
            _ => {}
        }
    }
}

/// Reports a finished try; a response header is a win whatever its status (hedging does not
/// retry statuses).
fn settle(t: &mut Try, r: Result<Conn, Failed>) -> Result<Conn, Ended> {
    let now = Instant::now();
    let ended = match r {
        Ok(conn) => {
            let status = conn.client.status();
            t.finish(Ended::Answered(status), now);
            t.end_span(Some(status), None);
            return Ok(conn);
        }
        Err(Failed::Try(ended)) => ended,
        // Hedged requests have no body to read from the client, and `run` sends a stale
        // connection's request again itself.
        Err(Failed::Client) | Err(Failed::Stale) => Ended::Reset,
    };
    t.finish(ended, now);
    t.end_span(None, Some(ended.reason().token().into()));
    Err(ended)
}

fn timed_out(route: &ServiceRoute, attempts: u32) -> Lost {
    Lost {
        reason: Reason::RequestTimeout,
        detail: format!(
            "service {}: the request timeout passed after {attempts} hedged attempt(s)",
            route.name
        ),
        attempts,
    }
}

fn failed(route: &ServiceRoute, ended: Ended, attempts: u32) -> Lost {
    Lost {
        reason: ended.reason(),
        detail: format!(
            "service {}: {attempts} hedged attempt(s) failed: {}",
            route.name,
            ended.reason().token()
        ),
        attempts,
    }
}
