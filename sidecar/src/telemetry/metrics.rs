//! The sidecar's Prometheus metrics: one registry made in `main`, families registered here.
//!
//! Hot-path cost: every label set a request touches is resolved once, when a route is built
//! ([`RouteMetrics`]), so a request increments atomics and observes a histogram without a
//! lookup, a lock or an allocation. Label values are bounded: directions, service names from
//! the table, status classes, fixed reason lists, and endpoints (bounded by the table). Gauges
//! that mirror state (breakers, endpoints, the table) are set when `/metrics` is scraped, by the
//! mesh state through the `scrape_*` methods: this module does not depend on the state.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use mesh_policy::breaker::EndpointSnapshot;
use mesh_policy::retry::Refusal;
use mesh_policy::select::EndpointSet;

/// Request-duration buckets: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Status classes in label order: 1xx..5xx, then "error" for no response at all.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];
/// How a try ended, as `meshlab_upstream_attempts_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Success,
    FailureStatus,
    ConnectFailure,
    Reset,
    Timeout,
}

impl AttemptResult {
    pub const ALL: [AttemptResult; 5] = [
        AttemptResult::Success,
        AttemptResult::FailureStatus,
        AttemptResult::ConnectFailure,
        AttemptResult::Reset,
        AttemptResult::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Success => "success",
            AttemptResult::FailureStatus => "failure_status",
            AttemptResult::ConnectFailure => "connect_failure",
            AttemptResult::Reset => "reset",
            AttemptResult::Timeout => "timeout",
        }
    }
}

/// What a retry was for, as `meshlab_retries_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    Status,
    ConnectFailure,
    Reset,
    Timeout,
    Hedge,
}

impl RetryReason {
    pub const ALL: [RetryReason; 5] = [
        RetryReason::Status,
        RetryReason::ConnectFailure,
        RetryReason::Reset,
        RetryReason::Timeout,
        RetryReason::Hedge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Status => "status",
            RetryReason::ConnectFailure => "connect_failure",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
            RetryReason::Hedge => "hedge",
        }
    }
}

/// Timeout kinds, as `meshlab_timeouts_total` labels them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    Connect,
    PerTry,
    Request,
    Deadline,
}

impl TimeoutKind {
    pub const ALL: [TimeoutKind; 4] = [
        TimeoutKind::Connect,
        TimeoutKind::PerTry,
        TimeoutKind::Request,
        TimeoutKind::Deadline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::PerTry => "per_try",
            TimeoutKind::Request => "request",
            TimeoutKind::Deadline => "deadline",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// Whether requests are counted and timed (`--metrics off` turns it off, for the bench and
    /// for whoever does not scrape). Counters of rare events (refusals, ejections, errors)
    /// count either way: `/breakers` reads them.
    per_request: bool,
    requests: IntCounterVec,
    duration: HistogramVec,
    attempts: IntCounterVec,
    retries: IntCounterVec,
    refusals: IntCounterVec,
    timeouts: IntCounterVec,
    errors: IntCounterVec,
    faults: IntCounterVec,
    ejections: IntCounterVec,
    overflows: IntCounterVec,
    breaker_state: IntGaugeVec,
    endpoints: IntGaugeVec,
    table_version: IntGauge,
    polls: IntGauge,
    poll_errors: IntGauge,
    tables_rejected: IntGauge,
}

/// The handles one route's requests use, resolved once.
pub struct RouteMetrics {
    class: [IntCounter; 6],
    duration: Histogram,
    attempts: [IntCounter; 5],
    retries: [IntCounter; 5],
    refusals: [IntCounter; 6],
    timeouts: [IntCounter; 4],
    ejections: IntCounter,
    overflows: IntCounter,
    errors: IntCounterVec,
    faults: IntCounterVec,
    labels: [String; 3],
    per_request: bool,
}

fn counter(
    name: &str,
    help: &str,
    labels: &[&str],
    r: &Registry,
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    name: &str,
    help: &str,
    labels: &[&str],
    r: &Registry,
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge(name: &str, help: &str, r: &Registry) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// Every family registered, requests counted and timed.
    pub fn new() -> prometheus::Result<Metrics> {
        Metrics::with_per_request(true)
    }

    /// `per_request: false`: no counting or timing on the request path, and `/metrics`
    /// says metrics are off instead of serving zeros.
    pub fn with_per_request(per_request: bool) -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let route = ["direction", "service", "upstream"];
        let requests = counter(
            "meshlab_requests_total",
            "Requests through the sidecar, by direction, local service, upstream service and status class.",
            &["direction", "service", "upstream", "class"],
            &r,
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "meshlab_request_duration_seconds",
                "Time from the request's arrival to the end of its response (or failure).",
            )
            .buckets(BUCKETS.to_vec()),
            &route,
        )?;
        r.register(Box::new(duration.clone()))?;
        Ok(Metrics {
            per_request,
            requests,
            duration,
            attempts: counter(
                "meshlab_upstream_attempts_total",
                "Tries sent to an endpoint, by how each ended.",
                &["direction", "service", "upstream", "result"],
                &r,
            )?,
            retries: counter(
                "meshlab_retries_total",
                "Retries (and hedges) sent, by what they were for.",
                &["direction", "service", "upstream", "reason"],
                &r,
            )?,
            refusals: counter(
                "meshlab_retry_refusals_total",
                "Failed tries not retried, by why (budget, attempts, not-idempotent, ...).",
                &["direction", "service", "upstream", "reason"],
                &r,
            )?,
            timeouts: counter(
                "meshlab_timeouts_total",
                "Timeouts by kind: connect, per_try, request, deadline.",
                &["direction", "service", "upstream", "kind"],
                &r,
            )?,
            errors: counter(
                "meshlab_sidecar_errors_total",
                "Responses the sidecar made itself, by x-mesh-error reason.",
                &["direction", "service", "upstream", "reason"],
                &r,
            )?,
            faults: counter(
                "meshlab_faults_injected_total",
                "Faults injected into requests, by the fault's name (from the table) and kind: delay, abort.",
                &["direction", "service", "upstream", "fault", "kind"],
                &r,
            )?,
            ejections: counter(
                "meshlab_breaker_ejections_total",
                "Endpoints ejected by their breaker (first ejections and re-ejections after a failed probe).",
                &["direction", "service", "upstream"],
                &r,
            )?,
            overflows: counter(
                "meshlab_overflow_total",
                "Requests refused at once by the concurrency limits.",
                &["direction", "service", "upstream"],
                &r,
            )?,
            breaker_state: gauge_vec(
                "meshlab_breaker_state",
                "Breaker state per endpoint: 0 closed, 1 open, 2 half-open.",
                &["service", "upstream", "endpoint"],
                &r,
            )?,
            endpoints: gauge_vec(
                "meshlab_endpoints",
                "Endpoints per upstream service by state: usable, unhealthy, ejected.",
                &["service", "upstream", "state"],
                &r,
            )?,
            table_version: gauge("meshlab_table_version", "Version of the active routing table.", &r)?,
            polls: gauge("meshlab_table_polls", "Table fetches since start (control plane or file).", &r)?,
            poll_errors: gauge(
                "meshlab_table_poll_errors",
                "Table fetches that failed (control plane unreachable, bad status).",
                &r,
            )?,
            tables_rejected: gauge(
                "meshlab_tables_rejected",
                "Fetched tables rejected because they did not validate.",
                &r,
            )?,
            registry: r,
        })
    }

    /// Resolves every handle of one (direction, service, upstream).
    pub fn route(&self, direction: &str, service: &str, upstream: &str) -> RouteMetrics {
        let l = [direction, service, upstream];
        let with = |v: &IntCounterVec, last: &str| v.with_label_values(&[l[0], l[1], l[2], last]);
        RouteMetrics {
            class: CLASSES.map(|c| with(&self.requests, c)),
            duration: self.duration.with_label_values(&l),
            attempts: AttemptResult::ALL.map(|r| with(&self.attempts, r.as_str())),
            retries: RetryReason::ALL.map(|r| with(&self.retries, r.as_str())),
            refusals: Refusal::ALL.map(|r| with(&self.refusals, r.as_str())),
            timeouts: TimeoutKind::ALL.map(|k| with(&self.timeouts, k.as_str())),
            ejections: self.ejections.with_label_values(&l),
            overflows: self.overflows.with_label_values(&l),
            errors: self.errors.clone(),
            faults: self.faults.clone(),
            labels: l.map(str::to_owned),
            per_request: self.per_request,
        }
    }

    /// Whether requests are counted (`--metrics on`).
    pub fn per_request(&self) -> bool {
        self.per_request
    }

    /// Starts a scrape: the table source's counters, and the endpoint gauges cleared (an endpoint
    /// gone since the last scrape must not linger). The mesh state then sets the table version
    /// and every upstream's gauges, and [`encode`](Self::encode) writes them out.
    pub fn scrape_source(&self, polls: u64, poll_errors: u64, tables_rejected: u64) {
        self.polls.set(polls as i64);
        self.poll_errors.set(poll_errors as i64);
        self.tables_rejected.set(tables_rejected as i64);
        self.breaker_state.reset();
        self.endpoints.reset();
    }

    /// The active table's version, at a scrape.
    pub fn scrape_table_version(&self, version: u64) {
        self.table_version.set(version as i64);
    }

    /// One upstream service's breakers and endpoint counts, at a scrape.
    pub fn scrape_upstream(
        &self,
        service: &str,
        upstream: &str,
        breakers: &[EndpointSnapshot],
        set: &EndpointSet,
    ) {
        let mut ejected = 0;
        for b in breakers {
            let v = match b.state {
                "open" => 1,
                "half-open" => 2,
                _ => 0,
            };
            if v == 1 {
                ejected += 1;
            }
            self.breaker_state
                .with_label_values(&[service, upstream, &b.addr.to_string()])
                .set(v);
        }
        let unhealthy = set.endpoints().iter().filter(|e| !e.is_healthy()).count() as i64;
        let total = set.len() as i64;
        let g = |s: &str| self.endpoints.with_label_values(&[service, upstream, s]);
        g("unhealthy").set(unhealthy);
        g("ejected").set(ejected);
        g("usable").set((total - unhealthy - ejected).max(0));
    }

    /// The text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl RouteMetrics {
    /// One request done: its status (`None`: no response at all) and duration.
    pub fn request(&self, status: Option<u16>, seconds: f64) {
        if !self.per_request {
            return;
        }
        let i = match status {
            Some(s @ 100..=599) => usize::from(s / 100) - 1,
            _ => 5,
        };
        self.class[i].inc();
        self.duration.observe(seconds);
    }

    /// A fault injected: `kind` is `delay` or `abort`; `fault` is a name from the table.
    pub fn fault(&self, fault: &str, kind: &'static str) {
        if !self.per_request {
            return;
        }
        let [d, s, u] = &self.labels;
        self.faults.with_label_values(&[d, s, u, fault, kind]).inc();
    }

    /// A try ended.
    pub fn attempt(&self, result: AttemptResult) {
        if !self.per_request {
            return;
        }
        self.attempts[result as usize].inc();
    }

    /// A retry (or hedge) was sent.
    pub fn retry(&self, reason: RetryReason) {
        self.retries[reason as usize].inc();
    }

    pub fn refusal(&self, r: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|x| *x == r) {
            self.refusals[i].inc();
        }
    }

    /// Refusals so far, by reason (for `/breakers`: the same counters `/metrics` shows).
    pub fn refusal_counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        Refusal::ALL
            .iter()
            .zip(&self.refusals)
            .map(|(r, c)| (r.as_str(), c.get()))
            .collect()
    }

    /// A breaker ejected an endpoint (or ejected it again after a failed probe).
    pub fn ejection(&self) {
        self.ejections.inc();
    }

    /// A request refused at once by the concurrency limit.
    pub fn overflow(&self) {
        self.overflows.inc();
    }

    pub fn timeout(&self, kind: TimeoutKind) {
        self.timeouts[kind as usize].inc();
    }

    /// A response the sidecar made itself (error path only: resolves its label set here).
    pub fn error(&self, reason: &str) {
        let [d, s, u] = &self.labels;
        self.errors
            .with_label_values(&[d.as_str(), s.as_str(), u.as_str(), reason])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_one_ok(m: &Metrics) -> (u64, u64) {
        let r = m.route("outbound", "a", "b");
        r.request(Some(200), 0.001);
        r.attempt(AttemptResult::Success);
        (r.class[1].get(), r.attempts[0].get())
    }

    #[test]
    fn per_request_counting_follows_the_switch() {
        let on = Metrics::new().unwrap();
        assert_eq!(count_one_ok(&on), (1, 1));
        assert_eq!(
            count_one_ok(&on),
            (2, 2),
            "handles of one route share their counters"
        );
        let off = Metrics::with_per_request(false).unwrap();
        assert_eq!(count_one_ok(&off), (0, 0));
        let r = off.route("outbound", "a", "b");
        r.refusal(Refusal::ALL[0]);
        assert_eq!(
            r.refusal_counts()[Refusal::ALL[0].as_str()],
            1,
            "rare events count either way: /breakers reads them"
        );
    }
}
