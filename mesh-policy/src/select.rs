//! Choosing one endpoint of a service per attempt: the endpoint set, its load statistics and the
//! balancing algorithms `pingora-load-balancing` lacks.
//!
//! This module is pure policy with no I/O: it knows nothing of sockets, HTTP or the clock. The
//! caller passes the time (`now: Instant`), a random number generator (a fast per-thread one in
//! production, a seeded one in tests) and a filter saying which endpoints this attempt may use
//! (not already tried by the request, not ejected by the breaker, not unhealthy). What the proxy
//! adds to an endpoint (its address as a header value) is the proxy's.
//!
//! - [`Endpoint`]: one address with its in-flight count (kept by [`InFlightGuard`]) and its
//!   peak-EWMA latency estimate, shared as `Arc<Endpoint>` so both survive a set rebuild.
//! - [`EndpointSet`]: the endpoints of one service under one [`Algorithm`]. Rebuilding it from a
//!   new address list keeps the `Arc` of every endpoint that stays.
//! - [`EndpointSet::pick`]: round-robin, random, power-of-two-choices on in-flight requests or on
//!   peak-EWMA load, or Ketama ring hash; with Envoy's panic threshold.
//!
//! The pick path allocates nothing and every loop in it is bounded by the set's size: candidates
//! are sampled by index and re-drawn (or counted and ranked) instead of being collected.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pingora_ketama::{Bucket, Continuum, DEFAULT_POINT_MULTIPLE};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Random draws tried before falling back to counting the candidates. With half the endpoints
/// usable, eight draws all miss with probability 1/256; the fallback keeps the choice uniform.
const MAX_DRAWS: usize = 8;

/// How the next endpoint is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// The next endpoint in address order, skipping the ones the attempt may not use.
    RoundRobin,
    /// Uniform among the usable endpoints.
    Random,
    /// Two distinct random usable endpoints; the one with fewer requests in flight wins.
    P2cLeastRequest,
    /// Two distinct random usable endpoints; the one with the lower peak-EWMA load wins
    /// (latency estimate × (in flight + 1)), as Linkerd balances.
    P2cEwma,
    /// Ketama consistent hashing of the request key (a random point without one); unusable
    /// endpoints are passed over by walking the ring.
    RingHash,
}

/// Parameters of the peak-EWMA latency estimate (Linkerd's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EwmaConfig {
    /// The estimate of an endpoint with no sample yet. Neither 0 (a new endpoint would take all
    /// the traffic) nor huge (it would take none).
    pub initial: Duration,
    /// The time constant of the decay: after `decay` without a sample the estimate has fallen to
    /// 1/e of its value, and a new sample weighs `1 - exp(-elapsed / decay)`.
    pub decay: Duration,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        EwmaConfig {
            initial: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

/// The peak-EWMA state of one endpoint (Finagle's `PeakEwma`, as tower and Linkerd use it).
///
/// Both fields `cost_ns` and `stamp` change together on every sample, so they sit behind one
/// `Mutex` rather than in two atomics, where a reader could pair a new cost with an old stamp and
/// decay a fresh peak by a long-gone interval. An uncontended `std` mutex is one atomic swap to
/// lock and one to unlock, and the critical section is a handful of float operations that cannot
/// panic; tower's `PeakEwma` makes the same choice.
#[derive(Debug)]
struct PeakEwma {
    /// The estimate at `stamp`, in nanoseconds.
    cost_ns: f64,
    /// When `cost_ns` was last set; `None` until the endpoint is first weighed or sampled, so
    /// the initial estimate starts decaying then (no clock is read at construction).
    stamp: Option<Instant>,
    sampled: bool,
    initial_ns: f64,
    decay_ns: f64,
}

impl PeakEwma {
    fn new(config: &EwmaConfig) -> Self {
        PeakEwma {
            cost_ns: nanos(config.initial),
            stamp: None,
            sampled: false,
            initial_ns: nanos(config.initial),
            decay_ns: decay_ns(config.decay),
        }
    }

    /// The weight the past keeps at `now`: `exp(-elapsed / decay)`.
    fn weight(&self, now: Instant) -> f64 {
        match self.stamp {
            None => 1.0,
            Some(stamp) => (-nanos(now.saturating_duration_since(stamp)) / self.decay_ns).exp(),
        }
    }

    /// The estimate at `now`: the last value decayed toward zero by the time since, so an
    /// endpoint that stopped getting traffic after a slow spell is tried again eventually.
    ///
    /// Unlike tower, the decayed value is not written back: how often an endpoint is weighed
    /// does not change how much its next sample counts.
    fn estimate(&mut self, now: Instant) -> f64 {
        if self.stamp.is_none() {
            self.stamp = Some(now);
        }
        self.cost_ns * self.weight(now)
    }

    /// A sample above the current estimate replaces it at once (peak sensitivity); a lower one
    /// pulls it down by the weight the time since the last update earns it.
    fn observe(&mut self, rtt_ns: f64, now: Instant) {
        let w = self.weight(now);
        let current = self.cost_ns * w;
        self.cost_ns = if rtt_ns > current {
            rtt_ns
        } else {
            current + rtt_ns * (1.0 - w)
        };
        self.stamp = Some(now);
        self.sampled = true;
    }

    fn reconfigure(&mut self, config: &EwmaConfig) {
        self.initial_ns = nanos(config.initial);
        self.decay_ns = decay_ns(config.decay);
        if !self.sampled {
            self.cost_ns = self.initial_ns;
        }
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// A zero decay would divide by zero; one nanosecond means "no memory" just as well.
fn decay_ns(d: Duration) -> f64 {
    nanos(d).max(1.0)
}

/// One endpoint of a service and its load.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    in_flight: AtomicU32,
    ewma: Mutex<PeakEwma>,
    /// Active health: endpoints start healthy; the health checker alone writes these.
    healthy: AtomicBool,
    /// Consecutive results of the same kind: positive successes, negative failures.
    health_streak: AtomicI32,
}

impl Endpoint {
    /// An endpoint with the default [`EwmaConfig`].
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_ewma_config(addr, &EwmaConfig::default())
    }

    pub fn with_ewma_config(addr: SocketAddr, config: &EwmaConfig) -> Self {
        Endpoint {
            addr,
            in_flight: AtomicU32::new(0),
            ewma: Mutex::new(PeakEwma::new(config)),
            healthy: AtomicBool::new(true),
            health_streak: AtomicI32::new(0),
        }
    }

    /// Whether the last active health checks passed (always true without health checks).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records one active health check: `healthy` consecutive passes make an unhealthy endpoint
    /// healthy, `unhealthy` consecutive failures make a healthy one unhealthy. Returns the new
    /// state when it changed. Called by one checker per service, so plain loads and stores
    /// suffice.
    pub fn record_health_check(&self, passed: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        let streak = self.health_streak.load(Ordering::Relaxed);
        let streak = match (passed, streak) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        self.health_streak.store(streak, Ordering::Relaxed);
        let was = self.is_healthy();
        let now = if was {
            !(streak < 0 && streak.unsigned_abs() >= unhealthy)
        } else {
            streak > 0 && streak.unsigned_abs() >= healthy
        };
        (now != was).then(|| {
            self.healthy.store(now, Ordering::Relaxed);
            now
        })
    }

    /// Counts a request in flight until the returned guard is dropped. Keep the guard in the
    /// request's context for the whole attempt.
    #[must_use = "the request counts as in flight only while the guard lives"]
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            endpoint: Arc::clone(self),
        }
    }

    /// Requests currently in flight to this endpoint.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Feeds one observed round-trip time (request sent to response head) into the estimate.
    pub fn observe_latency(&self, rtt: Duration, now: Instant) {
        self.lock_ewma().observe(nanos(rtt), now);
    }

    /// The peak-EWMA latency estimate at `now`.
    pub fn ewma(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.lock_ewma().estimate(now) as u64)
    }

    /// The P2C-EWMA load at `now`: estimate (ns) × (in flight + 1).
    pub fn load(&self, now: Instant) -> f64 {
        let estimate = self.lock_ewma().estimate(now);
        estimate * (f64::from(self.in_flight()) + 1.0)
    }

    /// What the admin port shows of this endpoint.
    pub fn snapshot(&self, now: Instant) -> EndpointSnapshot {
        EndpointSnapshot {
            addr: self.addr,
            in_flight: self.in_flight(),
            ewma_ms: self.lock_ewma().estimate(now) / 1e6,
            healthy: self.is_healthy(),
        }
    }

    /// The critical section cannot panic, so a poisoned lock still holds a consistent state.
    fn lock_ewma(&self) -> MutexGuard<'_, PeakEwma> {
        self.ewma.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One request in flight to an endpoint; dropping it ends the count.
#[derive(Debug)]
pub struct InFlightGuard {
    endpoint: Arc<Endpoint>,
}

impl InFlightGuard {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint as the admin port reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointSnapshot {
    pub addr: SocketAddr,
    pub in_flight: u32,
    pub ewma_ms: f64,
    pub healthy: bool,
}

/// The endpoints of one service and the algorithm that picks among them.
pub struct EndpointSet {
    /// Sorted by address, without duplicates (the ring maps its points back by binary search).
    endpoints: Vec<Arc<Endpoint>>,
    algorithm: Algorithm,
    ewma: EwmaConfig,
    rr: AtomicUsize,
    /// The Ketama continuum over the addresses, for [`Algorithm::RingHash`] only.
    ring: Option<Continuum>,
}

impl fmt::Debug for EndpointSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSet")
            .field("algorithm", &self.algorithm)
            .field(
                "endpoints",
                &self.endpoints.iter().map(|e| e.addr).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl EndpointSet {
    /// Builds the set with the default [`EwmaConfig`]; see [`EndpointSet::with_ewma_config`].
    pub fn new(
        addrs: impl IntoIterator<Item = SocketAddr>,
        algorithm: Algorithm,
        previous: Option<&EndpointSet>,
    ) -> Self {
        Self::with_ewma_config(addrs, algorithm, EwmaConfig::default(), previous)
    }

    /// Builds the set over `addrs` (duplicates collapse). An address also in `previous` keeps its
    /// `Arc<Endpoint>`, so its in-flight count and latency estimate carry over (its EWMA
    /// parameters are updated to `ewma`); the round-robin position carries over too. The ring is
    /// rebuilt from the new addresses: removing one of N endpoints moves only the keys it held,
    /// about 1/N of them.
    ///
    /// The ring stores endpoint indices as `u16`: a set holds at most 65 536 endpoints.
    pub fn with_ewma_config(
        addrs: impl IntoIterator<Item = SocketAddr>,
        algorithm: Algorithm,
        ewma: EwmaConfig,
        previous: Option<&EndpointSet>,
    ) -> Self {
        let mut addrs: Vec<SocketAddr> = addrs.into_iter().collect();
        addrs.sort_unstable();
        addrs.dedup();
        let endpoints: Vec<Arc<Endpoint>> = addrs
            .iter()
            .map(|addr| match previous.and_then(|p| p.get(addr)) {
                Some(kept) => {
                    if previous.is_some_and(|p| p.ewma != ewma) {
                        kept.lock_ewma().reconfigure(&ewma);
                    }
                    Arc::clone(kept)
                }
                None => Arc::new(Endpoint::with_ewma_config(*addr, &ewma)),
            })
            .collect();
        let ring = (algorithm == Algorithm::RingHash).then(|| {
            let buckets: Vec<Bucket> = addrs.iter().map(|a| Bucket::new(*a, 1)).collect();
            Continuum::new(&buckets)
        });
        let rr = previous.map_or(0, |p| p.rr.load(Ordering::Relaxed));
        EndpointSet {
            endpoints,
            algorithm,
            ewma,
            rr: AtomicUsize::new(rr),
            ring,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Every endpoint, in address order.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The endpoint at `addr`, if it is in the set.
    pub fn get(&self, addr: &SocketAddr) -> Option<&Arc<Endpoint>> {
        self.index_of(addr).map(|i| &self.endpoints[i])
    }

    /// Every endpoint as the admin port reports it (allocates: not for the request path).
    pub fn snapshot(&self, now: Instant) -> Vec<EndpointSnapshot> {
        self.endpoints.iter().map(|e| e.snapshot(now)).collect()
    }

    /// Picks the endpoint for one attempt, or `None` when there is none to pick.
    ///
    /// `usable` is the caller's filter (not yet tried by this request, not ejected, healthy).
    /// `key` matters to [`Algorithm::RingHash`] only (without one it picks a random point);
    /// `now` to [`Algorithm::P2cEwma`] only.
    ///
    /// Panic threshold (Envoy's): when fewer than `panic_threshold_percent` % of the endpoints
    /// are usable, the filter is presumed to be wrong rather than the endpoints (a breaker
    /// ejecting most of a healthy set would otherwise pile all traffic on the few left), so
    /// `usable` is ignored and the pick balances across all endpoints. `0` disables it; values
    /// above 100 act as 100 (panic as soon as any endpoint is unusable). Since the filter also
    /// excludes endpoints already tried, a request that has tried most of a small set panics
    /// too and may be sent to one it tried. Without panic and with no usable endpoint, the
    /// result is `None`: the caller decides whether to fall back.
    pub fn pick<R: Rng + ?Sized>(
        &self,
        key: Option<&[u8]>,
        now: Instant,
        rng: &mut R,
        usable: impl Fn(&Endpoint) -> bool,
        panic_threshold_percent: u32,
    ) -> Option<Arc<Endpoint>> {
        if self.endpoints.is_empty() {
            return None;
        }
        let panic = self.in_panic(&usable, panic_threshold_percent);
        let ok = |e: &Endpoint| panic || usable(e);
        let index = match self.algorithm {
            Algorithm::RoundRobin => self.round_robin(&ok),
            Algorithm::Random => self.sample(rng, &ok, None),
            Algorithm::P2cLeastRequest => self.p2c(rng, &ok, |e| f64::from(e.in_flight())),
            Algorithm::P2cEwma => self.p2c(rng, &ok, |e| e.load(now)),
            Algorithm::RingHash => self.ring_walk(key, rng, &ok),
        }?;
        Some(Arc::clone(&self.endpoints[index]))
    }

    /// Whether usable / total × 100 < threshold; counts only until the answer is known.
    fn in_panic(&self, usable: &impl Fn(&Endpoint) -> bool, threshold_percent: u32) -> bool {
        if threshold_percent == 0 {
            return false;
        }
        let needed = u64::from(threshold_percent.min(100)) * self.endpoints.len() as u64;
        let mut count = 0u64;
        for endpoint in &self.endpoints {
            if usable(endpoint) {
                count += 1;
                if count * 100 >= needed {
                    return false;
                }
            }
        }
        true
    }

    /// Takes the next slot of the shared counter, and another for each unusable endpoint met,
    /// so the endpoint after an unusable one does not get its share too.
    fn round_robin(&self, ok: &impl Fn(&Endpoint) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        for _ in 0..n {
            let i = self.rr.fetch_add(1, Ordering::Relaxed) % n;
            if ok(&self.endpoints[i]) {
                return Some(i);
            }
        }
        // Concurrent picks took some of our slots: look at every endpoint once.
        (0..n).find(|&i| ok(&self.endpoints[i]))
    }

    /// A uniformly random index `ok` accepts, other than `exclude`: a few draws, then (few
    /// candidates) count the candidates and take a random rank. Both steps are uniform over the
    /// candidates, so their mixture is too.
    fn sample<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        ok: &impl Fn(&Endpoint) -> bool,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let n = self.endpoints.len();
        let candidate = |i: usize| Some(i) != exclude && ok(&self.endpoints[i]);
        for _ in 0..MAX_DRAWS {
            let i = rng.random_range(0..n);
            if candidate(i) {
                return Some(i);
            }
        }
        let count = (0..n).filter(|&i| candidate(i)).count();
        if count == 0 {
            return None;
        }
        let rank = rng.random_range(0..count);
        (0..n)
            .filter(|&i| candidate(i))
            .nth(rank)
            // The caller's filter changed between the two scans (a breaker moved): take any.
            .or_else(|| (0..n).find(|&i| candidate(i)))
    }

    /// Power of two choices: two distinct candidates, the lower `cost` wins, a tie goes to the
    /// first. With one candidate, that one.
    fn p2c<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        ok: &impl Fn(&Endpoint) -> bool,
        cost: impl Fn(&Endpoint) -> f64,
    ) -> Option<usize> {
        let first = self.sample(rng, ok, None)?;
        let Some(second) = self.sample(rng, ok, Some(first)) else {
            return Some(first);
        };
        if cost(&self.endpoints[second]) < cost(&self.endpoints[first]) {
            Some(second)
        } else {
            Some(first)
        }
    }

    /// From the key's point on the continuum, the first endpoint `ok` accepts. Passing over an
    /// unusable endpoint lands where its keys would go if it were removed from the set. The
    /// walk is bounded by the number of points (160 per endpoint) and is that long only when
    /// few endpoints are usable.
    fn ring_walk<R: Rng + ?Sized>(
        &self,
        key: Option<&[u8]>,
        rng: &mut R,
        ok: &impl Fn(&Endpoint) -> bool,
    ) -> Option<usize> {
        let ring = self.ring.as_ref()?;
        let mut point = match key {
            Some(key) => ring.node_idx(key),
            None => ring.node_idx(&rng.random::<u64>().to_le_bytes()),
        };
        let mut rejected: Option<SocketAddr> = None;
        for _ in 0..self.endpoints.len() * DEFAULT_POINT_MULTIPLE as usize {
            let addr = *ring.get_addr(&mut point)?;
            if rejected == Some(addr) {
                continue;
            }
            let i = self.index_of(&addr)?;
            if ok(&self.endpoints[i]) {
                return Some(i);
            }
            rejected = Some(addr);
        }
        None
    }

    fn index_of(&self, addr: &SocketAddr) -> Option<usize> {
        self.endpoints.binary_search_by(|e| e.addr.cmp(addr)).ok()
    }
}

#[cfg(test)]
mod tests;
