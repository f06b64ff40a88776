//! Per-endpoint outlier detection (failure accrual): which endpoints of a service are ejected.
//!
//! Every endpoint has a small state machine, [`EndpointBreaker`]. While **closed** it counts
//! consecutive failures (a success resets the count); the `consecutive_failures`-th in a row
//! **opens** it for `base_ejection × times_ejected` (capped at `max_ejection`). Once that time is
//! up the next admission check finds it **half-open**: exactly one real request goes through as
//! the probe. The probe's success closes the breaker; its failure opens it again for the next,
//! longer ejection; a probe that never reports (the request was cancelled) leaves the endpoint
//! half-open with no probe in flight, so the next request becomes the probe.
//!
//! [`Breakers`] holds one breaker per endpoint of a service and enforces `max_ejected_percent`:
//! at most `floor(endpoints × percent / 100)` endpoints are out (open or half-open) at once, so
//! 50 % of 3 endpoints ejects at most 1 and 10 % of 3 ejects none. The bound is checked when an
//! endpoint would be ejected; an endpoint that is already out stays out until its own probe
//! succeeds, even when the set shrinks under it.
//!
//! This module is pure policy: it sees classified outcomes (`failure: bool`) and takes the time
//! as `now` on every time-dependent call, so tests drive it with `base + offset` and no sleeps.
//! It never logs; the set-level methods return the [`Transition`] they made so the caller can log
//! or count it outside the lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Outlier-detection settings for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failures in a row that eject an endpoint. 0 is treated as 1.
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th ejection lasts n times this.
    pub base_ejection: Duration,
    /// The longest any ejection lasts.
    pub max_ejection: Duration,
    /// At most `floor(endpoints × max_ejected_percent / 100)` endpoints are out at once.
    pub max_ejected_percent: u32,
}

impl BreakerConfig {
    /// Cap on one ejection when the routing table does not set one (Envoy's default), also the
    /// fallback should `now + ejection` overflow an `Instant`.
    pub const DEFAULT_MAX_EJECTION: Duration =
        Duration::from_millis(mesh_table::defaults::MAX_EJECTION_MS);

    /// How long the `times_ejected`-th ejection lasts: `base_ejection × times_ejected`, capped.
    pub fn ejection_for(&self, times_ejected: u32) -> Duration {
        self.base_ejection
            .checked_mul(times_ejected.max(1))
            .map_or(self.max_ejection, |d| d.min(self.max_ejection))
    }

    /// How many of `total` endpoints may be out at once: `floor(total × percent / 100)`.
    pub fn max_ejected(&self, total: usize) -> usize {
        let pct = u64::from(self.max_ejected_percent.min(100));
        // `total` is an endpoint count; it fits in u64 and the product cannot overflow.
        (total as u64 * pct / 100) as usize
    }

    fn threshold(&self) -> u32 {
        self.consecutive_failures.max(1)
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig::from(&mesh_table::Breaker::default())
    }
}

impl From<&mesh_table::Breaker> for BreakerConfig {
    fn from(b: &mesh_table::Breaker) -> Self {
        BreakerConfig {
            consecutive_failures: b.consecutive_failures,
            base_ejection: Duration::from_millis(b.base_ejection_ms),
            max_ejection: Duration::from_millis(b.max_ejection_ms),
            max_ejected_percent: b.max_ejected_percent,
        }
    }
}

/// Where one endpoint's breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Traffic flows; counting failures in a row.
    Closed { consecutive_failures: u32 },
    /// Ejected: no traffic until `until`.
    Open { until: Instant },
    /// Ejection over: one request at a time may probe the endpoint.
    HalfOpen { probe_in_flight: bool },
}

impl State {
    /// The name shown by the admin port: `closed`, `open` or `half-open`.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

/// Whether a request may go to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it; report the outcome with `was_probe = false`.
    Yes,
    /// Send it as the half-open endpoint's only probe; report the outcome with
    /// `was_probe = true`, or call `on_probe_cancelled` if it never completes.
    Probe,
    /// Do not send it here: the endpoint is ejected or already being probed.
    No,
}

/// A state change, returned so the caller can log or count it outside the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open after `consecutive_failures` failures in a row.
    Ejected {
        ejection: Duration,
        times_ejected: u32,
    },
    /// Half-open → open: the probe failed.
    Reopened {
        ejection: Duration,
        times_ejected: u32,
    },
    /// Half-open → closed: the probe succeeded.
    Closed,
}

impl Transition {
    /// A short token for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Transition::Ejected { .. } => "ejected",
            Transition::Reopened { .. } => "reopened",
            Transition::Closed => "closed",
        }
    }
}

// Reasons recorded with each transition (shown by the admin port as `why`).
const WHY_FAILURES: &str = "consecutive failures";
const WHY_DUE: &str = "ejection over";
const WHY_PROBE_OK: &str = "probe succeeded";
const WHY_PROBE_FAILED: &str = "probe failed";
const WHY_PROBE_CANCELLED: &str = "probe cancelled";

/// One endpoint's breaker.
///
/// `times_ejected` survives recovery (as Envoy's ejection multiplier does, unlike Linkerd, which
/// starts its backoff afresh after a good probe), so an endpoint that flaps is ejected for longer
/// each time. It is forgiven one ejection per `base_ejection` spent closed, so an endpoint that
/// has been healthy for a while starts again from the base ejection.
#[derive(Debug, Clone)]
pub struct EndpointBreaker {
    config: BreakerConfig,
    state: State,
    times_ejected: u32,
    last_transition: Option<(Instant, &'static str)>,
}

impl EndpointBreaker {
    /// A closed breaker that has never ejected its endpoint.
    pub fn new(config: BreakerConfig) -> Self {
        EndpointBreaker {
            config,
            state: State::Closed {
                consecutive_failures: 0,
            },
            times_ejected: 0,
            last_transition: None,
        }
    }

    /// The state as last stored. An open breaker whose time is up still reads `Open` until the
    /// next [`admit`](Self::admit) moves it on.
    pub fn state(&self) -> State {
        self.state
    }

    /// Ejections counted towards the next one's length, after forgiving one per `base_ejection`
    /// spent closed.
    pub fn times_ejected(&self, now: Instant) -> u32 {
        let State::Closed { .. } = self.state else {
            return self.times_ejected;
        };
        let Some((closed_at, _)) = self.last_transition else {
            return self.times_ejected;
        };
        let healthy = now.saturating_duration_since(closed_at).as_nanos();
        let base = self.config.base_ejection.as_nanos();
        if base == 0 {
            return 0;
        }
        let forgiven = u32::try_from(healthy / base).unwrap_or(u32::MAX);
        self.times_ejected.saturating_sub(forgiven)
    }

    /// When the state last changed, and why.
    pub fn last_transition(&self) -> Option<(Instant, &'static str)> {
        self.last_transition
    }

    /// True when closed with `consecutive_failures - 1` failures in a row: the next failure
    /// ejects, if the set allows it.
    pub fn trips_on_next_failure(&self) -> bool {
        match self.state {
            State::Closed {
                consecutive_failures,
            } => consecutive_failures.saturating_add(1) >= self.config.threshold(),
            _ => false,
        }
    }

    /// True while the endpoint takes no ordinary traffic (open or half-open): what
    /// `max_ejected_percent` counts.
    pub fn is_out(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// True while open and not yet due for a probe.
    pub fn is_ejected(&self, now: Instant) -> bool {
        matches!(self.state, State::Open { until } if now < until)
    }

    /// May a request go to this endpoint now? Moves an open breaker whose time is up to
    /// half-open, and hands out the half-open breaker's single probe.
    pub fn admit(&mut self, now: Instant) -> Admission {
        if let State::Open { until } = self.state {
            if now < until {
                return Admission::No;
            }
            self.half_open(now);
        }
        match self.state {
            State::Closed { .. } => Admission::Yes,
            State::HalfOpen {
                probe_in_flight: false,
            } => {
                self.state = State::HalfOpen {
                    probe_in_flight: true,
                };
                Admission::Probe
            }
            State::HalfOpen {
                probe_in_flight: true,
            }
            | State::Open { .. } => Admission::No,
        }
    }

    /// An ordinary (non-probe) request succeeded. While closed this resets the failure count;
    /// while open or half-open it is ignored: the request was admitted before the ejection and
    /// says nothing about the endpoint now.
    pub fn on_success(&mut self, _now: Instant) {
        if let State::Closed { .. } = self.state {
            self.state = State::Closed {
                consecutive_failures: 0,
            };
        }
    }

    /// An ordinary (non-probe) request failed. While closed this counts the failure and, at
    /// `consecutive_failures` in a row, ejects the endpoint if `can_eject` (the set's
    /// `max_ejected_percent` allows one more out); otherwise the count stays at the threshold and
    /// the next failure asks again. Ignored while open or half-open, as for
    /// [`on_success`](Self::on_success). Returns true if the endpoint was ejected by this call.
    pub fn on_failure(&mut self, now: Instant, can_eject: bool) -> bool {
        let State::Closed {
            consecutive_failures,
        } = self.state
        else {
            return false;
        };
        let failures = consecutive_failures.saturating_add(1);
        if failures >= self.config.threshold() && can_eject {
            self.eject(now);
            return true;
        }
        self.state = State::Closed {
            consecutive_failures: failures,
        };
        false
    }

    /// The probe succeeded: close. If this breaker is not awaiting a probe (it was reset in the
    /// meantime), the outcome counts as an ordinary success.
    pub fn on_probe_success(&mut self, now: Instant) {
        if self.awaiting_probe() {
            self.close(now);
        } else {
            self.on_success(now);
        }
    }

    /// The probe failed: open again for the next, longer ejection (the endpoint was already out,
    /// so the set-level bound does not apply). If this breaker is not awaiting a probe, the
    /// outcome counts as an ordinary failure under `can_eject`. Returns true if the endpoint was
    /// ejected by this call.
    pub fn on_probe_failure(&mut self, now: Instant, can_eject: bool) -> bool {
        if self.awaiting_probe() {
            self.reopen(now);
            true
        } else {
            self.on_failure(now, can_eject)
        }
    }

    /// The probe's request ended without an outcome (cancelled, client gone): back to half-open
    /// with no probe in flight, so the next request probes instead. No-op otherwise.
    pub fn on_probe_cancelled(&mut self, now: Instant) {
        if self.awaiting_probe() {
            self.state = State::HalfOpen {
                probe_in_flight: false,
            };
            self.last_transition = Some((now, WHY_PROBE_CANCELLED));
        }
    }

    fn awaiting_probe(&self) -> bool {
        self.state
            == State::HalfOpen {
                probe_in_flight: true,
            }
    }

    /// Closed → open: `consecutive_failures` in a row. Stays open until `now + ejection`; the
    /// first admission check after that moves on to half-open.
    fn eject(&mut self, now: Instant) {
        self.times_ejected = self.times_ejected(now).saturating_add(1);
        self.open_for_next_ejection(now, WHY_FAILURES);
    }

    /// Half-open → open: the probe failed. Stays open for the next, longer ejection.
    fn reopen(&mut self, now: Instant) {
        self.times_ejected = self.times_ejected.saturating_add(1);
        self.open_for_next_ejection(now, WHY_PROBE_FAILED);
    }

    fn open_for_next_ejection(&mut self, now: Instant, why: &'static str) {
        let ejection = self.config.ejection_for(self.times_ejected);
        // `Instant + Duration` panics on overflow; only an absurd `max_ejection` gets near it.
        let until = now
            .checked_add(ejection)
            .or_else(|| now.checked_add(BreakerConfig::DEFAULT_MAX_EJECTION))
            .unwrap_or(now);
        self.state = State::Open { until };
        self.last_transition = Some((now, why));
    }

    /// Open → half-open: the ejection is over (found lazily by `admit`). Stays half-open until
    /// the single probe reports: success closes, failure reopens, cancellation frees the slot.
    fn half_open(&mut self, now: Instant) {
        self.state = State::HalfOpen {
            probe_in_flight: false,
        };
        self.last_transition = Some((now, WHY_DUE));
    }

    /// Half-open → closed: the probe succeeded. Stays closed until `consecutive_failures` in a
    /// row. `times_ejected` is kept (see the type's doc).
    fn close(&mut self, now: Instant) {
        self.state = State::Closed {
            consecutive_failures: 0,
        };
        self.last_transition = Some((now, WHY_PROBE_OK));
    }

    fn transition_since(&self, before: State) -> Option<Transition> {
        match (before, self.state) {
            (State::Closed { .. }, State::Open { .. }) => Some(Transition::Ejected {
                ejection: self.config.ejection_for(self.times_ejected),
                times_ejected: self.times_ejected,
            }),
            (State::HalfOpen { .. }, State::Open { .. }) => Some(Transition::Reopened {
                ejection: self.config.ejection_for(self.times_ejected),
                times_ejected: self.times_ejected,
            }),
            (State::HalfOpen { .. }, State::Closed { .. }) => Some(Transition::Closed),
            _ => None,
        }
    }
}

/// One endpoint as the admin port shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSnapshot {
    pub addr: SocketAddr,
    /// `closed`, `open` or `half-open`; an ejection whose time is up already reads `half-open`.
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub times_ejected: u32,
    /// Milliseconds of ejection left (0 unless open).
    pub ejected_until_ms: u64,
    /// Whether the half-open endpoint's probe is out.
    pub probe_in_flight: bool,
    /// Milliseconds since the last state change, if there was one.
    pub last_transition_ms_ago: Option<u64>,
    /// Why the state last changed.
    pub why: Option<&'static str>,
}

/// The breakers of one service's endpoints, shared by every proxy thread.
///
/// Locking: the map sits behind an `RwLock` that only [`sync_endpoints`](Self::sync_endpoints)
/// (a discovery update, rare) takes for writing; the request path takes it for reading, so
/// threads never wait on each other for the map. Each endpoint's breaker has its own `Mutex`,
/// held for a few comparisons and never across an await, so two requests contend only when they
/// finish on the same endpoint at the same instant. The number of endpoints out is an atomic,
/// reserved with a compare-and-swap before an ejection, so the `max_ejected_percent` check needs
/// no lock on the other endpoints (locking them in turn could deadlock and would be O(n)).
#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    endpoints: RwLock<HashMap<SocketAddr, Mutex<EndpointBreaker>>>,
    /// Endpoints open or half-open. Changed only under an endpoint's lock (with the map read
    /// lock held), or recounted under the map write lock.
    out: AtomicUsize,
}

impl Breakers {
    /// No endpoints yet; call [`sync_endpoints`](Self::sync_endpoints).
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            endpoints: RwLock::new(HashMap::new()),
            out: AtomicUsize::new(0),
        }
    }

    /// The settings every endpoint's breaker uses.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Makes the set `addrs`: endpoints that stay keep their state, new ones start closed,
    /// removed ones are forgotten (a returning endpoint starts afresh).
    pub fn sync_endpoints(&self, addrs: &[SocketAddr]) {
        let mut map = self
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut old = std::mem::take(&mut *map);
        for addr in addrs {
            if map.contains_key(addr) {
                continue;
            }
            let breaker = old
                .remove(addr)
                .unwrap_or_else(|| Mutex::new(EndpointBreaker::new(self.config)));
            map.insert(*addr, breaker);
        }
        let out = map.values().filter(|b| lock(b).is_out()).count();
        self.out.store(out, Ordering::Relaxed);
    }

    /// May a request go to `addr` now? An address not in the set is admitted: the breaker has
    /// nothing against it (the balancer decides what exists). No allocation, no logging.
    pub fn admit(&self, addr: SocketAddr, now: Instant) -> Admission {
        let map = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match map.get(&addr) {
            Some(b) => lock(b).admit(now),
            None => Admission::Yes,
        }
    }

    /// Records a request's classified outcome. `was_probe` is true when [`admit`](Self::admit)
    /// said [`Admission::Probe`] for it. Returns the transition made, if any, for the caller to
    /// log or count. No allocation, no logging.
    pub fn on_result(
        &self,
        addr: SocketAddr,
        now: Instant,
        failure: bool,
        was_probe: bool,
    ) -> Option<Transition> {
        let map = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut b = lock(map.get(&addr)?);
        let before = b.state;
        let was_out = b.is_out();
        if !failure {
            if was_probe {
                b.on_probe_success(now);
            } else {
                b.on_success(now);
            }
        } else {
            // Reserve a slot only if this failure would take a closed endpoint out.
            let reserved = b.trips_on_next_failure() && self.reserve_slot(map.len());
            let ejected = if was_probe {
                b.on_probe_failure(now, reserved)
            } else {
                b.on_failure(now, reserved)
            };
            if reserved && !ejected {
                self.out.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if was_out && !b.is_out() {
            self.out.fetch_sub(1, Ordering::Relaxed);
        }
        b.transition_since(before)
    }

    /// The probe admitted for `addr` ended without an outcome: let the next request probe.
    pub fn on_probe_cancelled(&self, addr: SocketAddr, now: Instant) {
        let map = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = map.get(&addr) {
            lock(b).on_probe_cancelled(now);
        }
    }

    /// True while `addr` is open and not yet due for a probe: the balancer should skip it.
    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        let map = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&addr).is_some_and(|b| lock(b).is_ejected(now))
    }

    /// How many endpoints are open or half-open.
    pub fn out(&self) -> usize {
        self.out.load(Ordering::Relaxed)
    }

    /// Every endpoint's breaker, sorted by address, for the admin port.
    pub fn snapshot(&self, now: Instant) -> Vec<EndpointSnapshot> {
        let map = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<EndpointSnapshot> = map
            .iter()
            .map(|(addr, b)| snapshot_of(*addr, &lock(b), now))
            .collect();
        all.sort_by_key(|s| s.addr);
        all
    }

    /// Takes one of the `max_ejected` slots if one is free.
    fn reserve_slot(&self, total: usize) -> bool {
        let max = self.config.max_ejected(total);
        self.out
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |out| {
                (out < max).then_some(out + 1)
            })
            .is_ok()
    }
}

/// A breaker's state is a handful of plain fields, each assignment complete, so a panic while
/// it was locked cannot leave it half-written: carry on past a poisoned lock.
fn lock(b: &Mutex<EndpointBreaker>) -> MutexGuard<'_, EndpointBreaker> {
    b.lock().unwrap_or_else(PoisonError::into_inner)
}

fn snapshot_of(addr: SocketAddr, b: &EndpointBreaker, now: Instant) -> EndpointSnapshot {
    let (state, consecutive_failures, ejected_until_ms, probe_in_flight) = match b.state {
        State::Closed {
            consecutive_failures,
        } => ("closed", consecutive_failures, 0, false),
        State::Open { until } if now < until => ("open", 0, millis(until - now), false),
        State::Open { .. } => ("half-open", 0, 0, false),
        State::HalfOpen { probe_in_flight } => ("half-open", 0, 0, probe_in_flight),
    };
    EndpointSnapshot {
        addr,
        state,
        consecutive_failures,
        times_ejected: b.times_ejected(now),
        ejected_until_ms,
        probe_in_flight,
        last_transition_ms_ago: b
            .last_transition
            .map(|(at, _)| millis(now.saturating_duration_since(at))),
        why: b.last_transition.map(|(_, why)| why),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 8080))
    }

    fn set_of(n: u8, config: BreakerConfig) -> (Breakers, Vec<SocketAddr>) {
        let addrs: Vec<_> = (1..=n).map(addr).collect();
        let b = Breakers::new(config);
        b.sync_endpoints(&addrs);
        (b, addrs)
    }

    /// Fails `n` ordinary requests on `a`, returning the last transition.
    fn fail(b: &Breakers, a: SocketAddr, now: Instant, n: u32) -> Option<Transition> {
        let mut last = None;
        for _ in 0..n {
            assert_eq!(
                b.admit(a, now),
                Admission::Yes,
                "{a} should take traffic while closed"
            );
            last = b.on_result(a, now, true, false);
        }
        last
    }

    #[test]
    fn consecutive_failures_eject_an_endpoint() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(4, config());
        let a = addrs[0];

        assert_eq!(fail(&b, a, t0, 2), None, "2 failures of 3 are not enough");
        assert!(!b.is_ejected(a, t0), "still closed after 2 failures");

        let t = fail(&b, a, t0 + SECOND, 1);
        assert_eq!(
            t,
            Some(Transition::Ejected {
                ejection: Duration::from_secs(30),
                times_ejected: 1
            }),
            "the third failure in a row ejects for the base ejection"
        );
        assert!(b.is_ejected(a, t0 + SECOND), "ejected right after");
        assert_eq!(
            b.admit(a, t0 + 30 * SECOND),
            Admission::No,
            "no traffic during the ejection"
        );
        assert!(
            !b.is_ejected(addrs[1], t0 + SECOND),
            "the other endpoints are untouched"
        );

        let snap = &b.snapshot(t0 + 11 * SECOND)[0];
        assert_eq!(snap.state, "open", "snapshot shows it open");
        assert_eq!(snap.ejected_until_ms, 20_000, "20 s of 30 s left");
        assert_eq!(snap.why, Some("consecutive failures"), "and why");
        assert_eq!(snap.last_transition_ms_ago, Some(10_000), "and since when");
        assert_eq!(b.out(), 1, "one endpoint out");
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(4, config());
        let a = addrs[0];

        fail(&b, a, t0, 2);
        b.admit(a, t0);
        b.on_result(a, t0, false, false);
        assert_eq!(
            b.snapshot(t0)[0].consecutive_failures,
            0,
            "a success resets the count"
        );
        assert_eq!(fail(&b, a, t0, 2), None, "two more failures do not eject");
        assert!(
            !b.is_ejected(a, t0),
            "the count started again after the success"
        );
        assert!(fail(&b, a, t0, 1).is_some(), "the third in a row does");
    }

    #[test]
    fn ejections_grow_with_each_ejection_then_cap() {
        let t0 = Instant::now();
        let mut e = EndpointBreaker::new(config());
        let mut now = t0;
        let mut lengths = Vec::new();
        for _ in 0..12 {
            // Three failures in a row, then wait out the ejection and pass the probe.
            for _ in 0..3 {
                assert_eq!(e.admit(now), Admission::Yes, "closed before each round");
                e.on_failure(now, true);
            }
            let State::Open { until } = e.state() else {
                panic!("3 failures should open the breaker, got {:?}", e.state());
            };
            lengths.push((until - now).as_secs());
            now = until;
            assert_eq!(e.admit(now), Admission::Probe, "due: one probe");
            e.on_probe_success(now);
        }
        assert_eq!(lengths[0], 30, "first ejection is the base");
        assert_eq!(lengths[1], 60, "second doubles");
        assert_eq!(lengths[2], 90, "third is three times the base");
        assert_eq!(lengths[9], 300, "tenth reaches the cap");
        assert_eq!(lengths[11], 300, "and later ones stay at the cap");
    }

    #[test]
    fn a_long_healthy_spell_forgives_past_ejections() {
        let t0 = Instant::now();
        let mut e = EndpointBreaker::new(config());
        for _ in 0..3 {
            e.on_failure(t0, true);
        }
        let t1 = t0 + 30 * SECOND;
        assert_eq!(e.admit(t1), Admission::Probe, "due");
        e.on_probe_success(t1);
        assert_eq!(e.times_ejected(t1), 1, "remembered right after recovery");
        let t2 = t1 + 30 * SECOND;
        assert_eq!(e.times_ejected(t2), 0, "forgiven after one base of health");
        for _ in 0..3 {
            e.on_failure(t2, true);
        }
        assert_eq!(
            e.state(),
            State::Open {
                until: t2 + 30 * SECOND
            },
            "ejected for the base again, not twice it"
        );
    }

    #[test]
    fn half_open_admits_exactly_one_probe() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(4, config());
        let a = addrs[0];
        fail(&b, a, t0, 3);

        let due = t0 + 30 * SECOND;
        assert!(!b.is_ejected(a, due), "not ejected once due");
        assert_eq!(b.snapshot(due)[0].state, "half-open", "snapshot shows due");
        assert_eq!(b.admit(a, due), Admission::Probe, "first request probes");
        assert_eq!(b.admit(a, due), Admission::No, "a second one is refused");
        assert_eq!(
            b.admit(a, due + SECOND),
            Admission::No,
            "still refused while the probe is out"
        );
        assert!(
            b.snapshot(due)[0].probe_in_flight,
            "snapshot shows the probe"
        );

        // A late result from a request admitted before the ejection is no probe.
        assert_eq!(
            b.on_result(a, due, false, false),
            None,
            "a stale success does not close"
        );
        assert_eq!(b.admit(a, due), Admission::No, "the probe is still out");
    }

    #[test]
    fn probe_success_closes() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(4, config());
        let a = addrs[0];
        fail(&b, a, t0, 3);

        let due = t0 + 30 * SECOND;
        assert_eq!(b.admit(a, due), Admission::Probe, "probe");
        assert_eq!(
            b.on_result(a, due + SECOND, false, true),
            Some(Transition::Closed),
            "the probe's success closes"
        );
        assert_eq!(b.admit(a, due + SECOND), Admission::Yes, "traffic flows");
        assert_eq!(b.admit(a, due + SECOND), Admission::Yes, "all of it");
        assert_eq!(b.out(), 0, "nobody out");
        let snap = &b.snapshot(due + SECOND)[0];
        assert_eq!(
            (snap.state, snap.times_ejected, snap.why),
            ("closed", 1, Some("probe succeeded")),
            "closed, remembering one ejection"
        );
    }

    #[test]
    fn probe_failure_reopens_for_longer() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(4, config());
        let a = addrs[0];
        fail(&b, a, t0, 3);

        let due = t0 + 30 * SECOND;
        assert_eq!(b.admit(a, due), Admission::Probe, "probe");
        assert_eq!(
            b.on_result(a, due, true, true),
            Some(Transition::Reopened {
                ejection: Duration::from_secs(60),
                times_ejected: 2
            }),
            "the probe's failure reopens for twice the base"
        );
        assert!(b.is_ejected(a, due + 59 * SECOND), "ejected for 60 s");
        assert_eq!(
            b.admit(a, due + 60 * SECOND),
            Admission::Probe,
            "then probed again"
        );
        assert_eq!(b.out(), 1, "still one out throughout");
    }

    #[test]
    fn a_cancelled_probe_does_not_wedge_the_breaker() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(4, config());
        let a = addrs[0];
        fail(&b, a, t0, 3);

        let due = t0 + 30 * SECOND;
        assert_eq!(b.admit(a, due), Admission::Probe, "probe");
        b.on_probe_cancelled(a, due + SECOND);
        assert_eq!(
            b.admit(a, due + SECOND),
            Admission::Probe,
            "after cancellation the next request probes"
        );
        assert_eq!(b.admit(a, due + SECOND), Admission::No, "only one, again");
        assert_eq!(
            b.on_result(a, due + 2 * SECOND, false, true),
            Some(Transition::Closed),
            "and its success closes"
        );
    }

    #[test]
    fn max_ejected_percent_50_of_3_ejects_at_most_one() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(3, config());

        assert!(
            fail(&b, addrs[0], t0, 3).is_some(),
            "the first one goes out"
        );
        assert_eq!(fail(&b, addrs[1], t0, 3), None, "the second may not");
        assert!(!b.is_ejected(addrs[1], t0), "so it keeps serving");
        assert_eq!(
            fail(&b, addrs[1], t0, 5),
            None,
            "however many more failures"
        );
        assert_eq!(b.out(), 1, "one out of three");

        // Once the first is back, the second may go.
        let due = t0 + 30 * SECOND;
        assert_eq!(b.admit(addrs[0], due), Admission::Probe, "probe the first");
        b.on_result(addrs[0], due, false, true);
        assert_eq!(b.out(), 0, "the first is back");
        assert!(
            fail(&b, addrs[1], due, 1).is_some(),
            "the second's next failure ejects it: its count stayed at the threshold"
        );
    }

    #[test]
    fn max_ejected_percent_10_of_3_ejects_none() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(
            3,
            BreakerConfig {
                max_ejected_percent: 10,
                ..config()
            },
        );
        for a in &addrs {
            assert_eq!(fail(&b, *a, t0, 10), None, "{a} may not be ejected");
        }
        assert_eq!(b.out(), 0, "floor(3 × 10 / 100) = 0");
    }

    #[test]
    fn a_lone_endpoint_is_never_ejected_at_50_percent() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(1, config());
        assert_eq!(fail(&b, addrs[0], t0, 10), None, "floor(1 × 50 / 100) = 0");
    }

    #[test]
    fn sync_keeps_the_state_of_endpoints_that_stay() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(4, config());
        fail(&b, addrs[0], t0, 3);
        fail(&b, addrs[1], t0, 2);
        fail(&b, addrs[3], t0, 3);
        assert_eq!(b.out(), 2, "two out before the update");

        // addrs[3] leaves, addrs[4..] arrive.
        let next = [addrs[0], addrs[1], addrs[2], addr(5), addr(6)];
        b.sync_endpoints(&next);

        let snap = b.snapshot(t0);
        let by = |a: SocketAddr| snap.iter().find(|s| s.addr == a);
        assert_eq!(snap.len(), 5, "exactly the new set");
        assert!(by(addrs[3]).is_none(), "the removed endpoint is forgotten");
        assert!(
            b.is_ejected(addrs[0], t0),
            "a staying ejected endpoint stays out"
        );
        assert_eq!(
            by(addrs[1]).map(|s| s.consecutive_failures),
            Some(2),
            "a staying endpoint keeps its count"
        );
        assert_eq!(
            by(addr(5)).map(|s| s.state),
            Some("closed"),
            "a new endpoint starts closed"
        );
        assert_eq!(b.out(), 1, "the count of those out follows the set");

        b.sync_endpoints(&[addrs[3]]);
        assert_eq!(
            b.snapshot(t0)[0].times_ejected,
            0,
            "a returning endpoint starts afresh"
        );
    }

    #[test]
    fn unknown_endpoints_are_admitted_and_ignored() {
        let t0 = Instant::now();
        let (b, _) = set_of(2, config());
        let stranger = addr(99);
        assert_eq!(b.admit(stranger, t0), Admission::Yes, "not ours to refuse");
        assert_eq!(
            b.on_result(stranger, t0, true, false),
            None,
            "its outcome is ignored"
        );
        assert!(!b.is_ejected(stranger, t0), "never ejected");
    }

    #[test]
    fn snapshot_serializes_for_the_admin_port() {
        let t0 = Instant::now();
        let (b, addrs) = set_of(2, config());
        fail(&b, addrs[0], t0, 3);
        let json = serde_json::to_value(b.snapshot(t0 + SECOND)).expect("serializes");
        assert_eq!(
            json[0],
            serde_json::json!({
                "addr": "10.0.0.1:8080",
                "state": "open",
                "consecutive_failures": 0,
                "times_ejected": 1,
                "ejected_until_ms": 29_000,
                "probe_in_flight": false,
                "last_transition_ms_ago": 1_000,
                "why": "consecutive failures",
            }),
            "one object per endpoint"
        );
        assert_eq!(json[1]["why"], serde_json::Value::Null, "no transition yet");
    }

    #[test]
    fn config_from_the_table_uses_the_default_cap() {
        let c = BreakerConfig::default();
        assert_eq!(c.consecutive_failures, 5, "table default");
        assert_eq!(c.base_ejection, Duration::from_secs(30), "table default");
        assert_eq!(c.max_ejection, Duration::from_secs(300), "Envoy's cap");
        assert_eq!(c.max_ejected(3), 1, "50 % of 3");
    }
}
