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
//! This module is pure policy with no I/O: it sees classified outcomes (`failure: bool`), never
//! a response, and takes the time as `now` on every time-dependent call, so tests drive it with
//! `base + offset` and no sleeps.
//! It never logs; the set-level methods return the [`Transition`] they made so the caller can log
//! or count it outside the lock.

use crate::addr_map::AddrMap;
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
    endpoints: RwLock<AddrMap<Mutex<EndpointBreaker>>>,
    /// Endpoints open or half-open. Changed only under an endpoint's lock (with the map read
    /// lock held), or recounted under the map write lock.
    out: AtomicUsize,
}

impl Breakers {
    /// No endpoints yet; call [`sync_endpoints`](Self::sync_endpoints).
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            endpoints: RwLock::new(AddrMap::default()),
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
        if self.all_closed() {
            return Admission::Yes;
        }
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
        if self.all_closed() {
            return false;
        }
        let map = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&addr).is_some_and(|b| lock(b).is_ejected(now))
    }

    /// No endpoint is out, the common case: a closed breaker admits every request and ejects
    /// none, so [`admit`](Self::admit) and [`is_ejected`](Self::is_ejected) answer without the
    /// map or a lock. The count is reserved before an endpoint is ejected and released after it
    /// closes, so it is never 0 while one is out; a thread that reads it a moment late sends one
    /// more request to an endpoint just ejected, as if that request had come a moment earlier
    /// (its outcome is ignored by the open breaker, as for any request already in flight).
    fn all_closed(&self) -> bool {
        self.out.load(Ordering::Relaxed) == 0
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
mod tests;
