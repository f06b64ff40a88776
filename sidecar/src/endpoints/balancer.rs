//! Endpoints of one service and the choice of one per attempt.
//!
//! [`Balancer`] keeps the addresses [`MeshDiscovery`] finds as an [`EndpointSet`] (the selection
//! algorithms of `mesh_policy::select`) and the per-endpoint [`Breakers`]: an endpoint is a
//! candidate for an attempt when this request has not tried it yet, its active health checks
//! pass and its breaker has not ejected it. A new endpoint list keeps the state (in-flight
//! counts, latency estimates, breakers) of the endpoints that stay. A pick hands out an
//! [`Upstream`]: the policy's endpoint plus what the proxy adds to it, its address as a header
//! value.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderValue;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use mesh_table::{Endpoints, Lb};

use super::discovery::{DiscoveryStatus, MeshDiscovery};
use mesh_policy::breaker::{Admission, BreakerConfig, Breakers, EndpointSnapshot, Transition};
use mesh_policy::select::{self, Algorithm, Endpoint, EndpointSet};

/// One service's endpoints, breakers and selection.
pub struct Balancer {
    discovery: MeshDiscovery,
    algorithm: Algorithm,
    pool: ArcSwap<Pool>,
    breakers: Breakers,
    dynamic: bool,
    /// Held by the refresh in progress: discovery and the set rebuild must not interleave.
    refreshing: tokio::sync::Mutex<()>,
}

/// What a pick chose for one attempt.
pub struct Chosen {
    pub endpoint: Upstream,
    /// This attempt is the half-open breaker's single probe.
    pub probe: bool,
}

/// An endpoint as the proxy sends to it: the policy's [`Endpoint`] (address, load, health) and
/// its address as the `x-mesh-upstream` value, made once per endpoint, so answering a request
/// clones a reference count instead of formatting. Derefs to the [`Endpoint`].
#[derive(Debug, Clone)]
pub struct Upstream {
    endpoint: Arc<Endpoint>,
    pub header: HeaderValue,
}

impl Upstream {
    /// Counts a request in flight to this endpoint until the returned guard is dropped. Keep the
    /// guard in the request's context for the whole attempt.
    #[must_use = "the request counts as in flight only while the guard lives"]
    pub fn start(&self) -> InFlightGuard {
        InFlightGuard {
            _in_flight: self.endpoint.start(),
            upstream: self.clone(),
        }
    }
}

impl Deref for Upstream {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// One request in flight to an [`Upstream`]; dropping it ends the count.
#[derive(Debug)]
pub struct InFlightGuard {
    upstream: Upstream,
    _in_flight: select::InFlightGuard,
}

impl InFlightGuard {
    pub fn endpoint(&self) -> &Upstream {
        &self.upstream
    }
}

/// The endpoint set of one service and, index for index, each endpoint's address as a header
/// value; swapped as one, so the two always match.
struct Pool {
    set: Arc<EndpointSet>,
    headers: Vec<HeaderValue>,
}

impl Pool {
    fn new(set: EndpointSet) -> Self {
        let headers = set
            .endpoints()
            .iter()
            .map(|e| header_value(e.addr))
            .collect();
        Pool {
            set: Arc::new(set),
            headers,
        }
    }

    /// `endpoint`, which this pool's set picked, with its header value.
    fn upstream(&self, endpoint: Arc<Endpoint>) -> Upstream {
        // The set's endpoints are sorted by address and `headers` follows them.
        let found = self
            .set
            .endpoints()
            .binary_search_by(|e| e.addr.cmp(&endpoint.addr));
        let header = match found {
            Ok(i) => self.headers[i].clone(),
            // Not reached: the endpoint came from this set. Formatting is still correct.
            Err(_) => header_value(endpoint.addr),
        };
        Upstream { endpoint, header }
    }
}

fn header_value(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&addr.to_string()).expect("an address is a header value")
}

pub fn algorithm(lb: Lb) -> Algorithm {
    match lb {
        Lb::RoundRobin => Algorithm::RoundRobin,
        Lb::Random => Algorithm::Random,
        Lb::P2cLeastRequest => Algorithm::P2cLeastRequest,
        Lb::P2cEwma => Algorithm::P2cEwma,
        Lb::RingHash => Algorithm::RingHash,
    }
}

impl Balancer {
    /// A balancer for `svc`; `previous` (the same service in the table being replaced) hands
    /// over its endpoints' state.
    pub fn new(svc: &mesh_table::Service, previous: Option<&Balancer>) -> Self {
        let dynamic = match &svc.endpoints {
            Endpoints::Dns { .. } => true,
            Endpoints::Static(list) => list.iter().any(|a| a.parse::<SocketAddr>().is_err()),
        };
        let algorithm = algorithm(svc.lb);
        let kept = previous.map(|p| p.set());
        let set = match &kept {
            Some(prev) => EndpointSet::new(
                prev.endpoints().iter().map(|e| e.addr),
                algorithm,
                Some(prev),
            ),
            None => EndpointSet::new(std::iter::empty(), algorithm, None),
        };
        let breakers = Breakers::new(BreakerConfig::from(&svc.breaker));
        let addrs: Vec<SocketAddr> = set.endpoints().iter().map(|e| e.addr).collect();
        breakers.sync_endpoints(&addrs);
        Balancer {
            discovery: MeshDiscovery::new(svc.endpoints.clone()),
            algorithm,
            pool: ArcSwap::from_pointee(Pool::new(set)),
            breakers,
            dynamic,
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether endpoints come from DNS and need refreshing.
    pub fn is_dynamic(&self) -> bool {
        self.dynamic
    }

    /// Runs discovery; on error the previous endpoints stay.
    pub async fn refresh(&self) {
        // One refresh at a time; a round that finds one still running skips.
        let Ok(_one) = self.refreshing.try_lock() else {
            return;
        };
        match self.discovery.discover().await {
            Ok(addrs) => {
                let current = self.set();
                let same =
                    current.len() == addrs.len() && addrs.iter().all(|a| current.get(a).is_some());
                if !same {
                    let next =
                        EndpointSet::new(addrs.iter().copied(), self.algorithm, Some(&current));
                    self.breakers.sync_endpoints(&addrs);
                    self.pool.store(Arc::new(Pool::new(next)));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "endpoint discovery failed; keeping the previous endpoints");
            }
        }
    }

    /// Picks an endpoint for an attempt: one this request has not tried (`avoid`) and whose
    /// breaker admits it, by the service's algorithm. When every endpoint was tried, one that
    /// was tried may be picked again (a retry beats giving up). `None`: no endpoint at all, or
    /// every one is ejected.
    pub fn pick(
        &self,
        key: Option<&[u8]>,
        avoid: &[SocketAddr],
        now: Instant,
        panic_threshold: u32,
    ) -> Option<Chosen> {
        let pool = self.pool.load();
        let set = &pool.set;
        let mut refused: [Option<SocketAddr>; 4] = [None; 4];
        for round in 0..2 {
            for slot in 0..refused.len() {
                let fresh = |e: &Endpoint| {
                    (round == 1 || !avoid.contains(&e.addr))
                        && !refused.contains(&Some(e.addr))
                        && e.is_healthy()
                        && !self.breakers.is_ejected(e.addr, now)
                };
                let Some(endpoint) =
                    with_rng(|rng| set.pick(key, now, rng, fresh, panic_threshold))
                else {
                    break;
                };
                match self.breakers.admit(endpoint.addr, now) {
                    Admission::Yes => {
                        return Some(Chosen {
                            endpoint: pool.upstream(endpoint),
                            probe: false,
                        })
                    }
                    Admission::Probe => {
                        return Some(Chosen {
                            endpoint: pool.upstream(endpoint),
                            probe: true,
                        })
                    }
                    // Half-open with its probe already out: try another endpoint.
                    Admission::No => refused[slot] = Some(endpoint.addr),
                }
            }
            if avoid.is_empty() {
                break;
            }
        }
        None
    }

    /// Tells the endpoint's breaker how a try went (`probe`: the try was the half-open
    /// breaker's probe); the state change it caused, if any.
    pub fn report(
        &self,
        addr: SocketAddr,
        now: Instant,
        failure: bool,
        probe: bool,
    ) -> Option<Transition> {
        self.breakers.on_result(addr, now, failure, probe)
    }

    /// Hands back a probe whose outcome will never arrive (given up, lost a hedge, the client
    /// left, or a tunnel that cannot be judged), so the breaker can send another.
    pub fn probe_cancelled(&self, addr: SocketAddr, now: Instant) {
        self.breakers.on_probe_cancelled(addr, now);
    }

    /// Each endpoint's breaker, for the admin port and the metrics.
    pub fn breaker_snapshot(&self, now: Instant) -> Vec<EndpointSnapshot> {
        self.breakers.snapshot(now)
    }

    /// How many endpoints their breakers hold out (open or half-open).
    pub fn ejected(&self) -> usize {
        self.breakers.out()
    }

    pub fn set(&self) -> Arc<EndpointSet> {
        Arc::clone(&self.pool.load().set)
    }

    pub fn discovery_status(&self) -> DiscoveryStatus {
        self.discovery.status()
    }
}

thread_local! {
    /// A per-thread generator: picks take no lock. Seeded from the clock and the thread, since
    /// endpoint choice needs spread, not secrecy; tests seed `select` directly.
    static RNG: std::cell::RefCell<SmallRng> = std::cell::RefCell::new(SmallRng::seed_from_u64(seed()));
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

pub fn with_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(list: &[&str], lb: &str) -> mesh_table::Service {
        let eps: Vec<String> = list.iter().map(|a| format!("\"{a}\"")).collect();
        let t = mesh_table::Table::from_toml_str(&format!(
            "version = 1\n[services.b]\nendpoints = [{}]\nlb = \"{lb}\"\n",
            eps.join(",")
        ))
        .unwrap();
        t.services["b"].clone()
    }

    #[tokio::test]
    async fn round_robin_visits_every_endpoint() {
        let b = Balancer::new(
            &svc(
                &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
                "round-robin",
            ),
            None,
        );
        b.refresh().await;
        let now = Instant::now();
        let mut seen: Vec<_> = (0..3)
            .map(|_| {
                b.pick(None, &[], now, 50)
                    .expect("an endpoint")
                    .endpoint
                    .addr
            })
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            3,
            "three picks in a row hit three endpoints: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_pick_carries_its_own_address_as_the_upstream_header() {
        let first = Balancer::new(
            &svc(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], "random"),
            None,
        );
        first.refresh().await;
        // A new table with another endpoint list: the rebuilt pool must stay index-aligned.
        let rebuilt = Balancer::new(
            &svc(&["127.0.0.1:9", "127.0.0.1:2", "127.0.0.1:5"], "random"),
            Some(&first),
        );
        rebuilt.refresh().await;
        for (name, b) in [("first", &first), ("rebuilt", &rebuilt)] {
            for _ in 0..30 {
                let chosen = b.pick(None, &[], Instant::now(), 0).expect("an endpoint");
                let addr = chosen.endpoint.addr.to_string();
                assert_eq!(
                    chosen.endpoint.header.to_str().ok(),
                    Some(addr.as_str()),
                    "{name}: x-mesh-upstream names the endpoint picked"
                );
                let guard = chosen.endpoint.start();
                assert_eq!(
                    guard.endpoint().in_flight(),
                    1,
                    "{name}: the guard counts the request on the policy's endpoint"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_retry_avoids_the_endpoint_that_failed() {
        let b = Balancer::new(&svc(&["127.0.0.1:1", "127.0.0.1:2"], "random"), None);
        b.refresh().await;
        let failed: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..50 {
            let got = b
                .pick(None, &[failed], Instant::now(), 0)
                .unwrap()
                .endpoint
                .addr;
            assert_ne!(
                got, failed,
                "the failed endpoint is avoided while another exists"
            );
        }
    }

    #[tokio::test]
    async fn with_every_endpoint_tried_any_is_picked() {
        let b = Balancer::new(&svc(&["127.0.0.1:1"], "round-robin"), None);
        b.refresh().await;
        let only: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let got = b
            .pick(None, &[only], Instant::now(), 0)
            .map(|c| c.endpoint.addr);
        assert_eq!(
            got,
            Some(only),
            "a single endpoint is retried rather than giving up"
        );
    }

    #[tokio::test]
    async fn ejected_endpoints_are_skipped_and_probed_once_due() {
        let b = Balancer::new(&svc(&["127.0.0.1:1", "127.0.0.1:2"], "round-robin"), None);
        b.refresh().await;
        let bad: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            b.report(bad, t0, true, false);
        }
        assert!(b.breakers.is_ejected(bad, t0), "five failures eject it");
        for _ in 0..10 {
            assert_ne!(
                b.pick(None, &[], t0, 0).unwrap().endpoint.addr,
                bad,
                "an ejected endpoint is not picked"
            );
        }
        let later = t0 + std::time::Duration::from_secs(31);
        let probes = (0..10)
            .filter_map(|_| b.pick(None, &[], later, 0))
            .filter(|c| c.endpoint.addr == bad && c.probe)
            .count();
        assert_eq!(
            probes, 1,
            "after the ejection exactly one request is the probe"
        );
    }

    #[tokio::test]
    async fn refresh_keeps_state_and_survives_a_failed_lookup() {
        let b = Balancer::new(
            &mesh_table::Table::from_toml_str(
                "version = 1\n[services.b]\nendpoints = \"dns:no-such-host.invalid:80\"\n",
            )
            .unwrap()
            .services["b"],
            None,
        );
        b.refresh().await;
        assert!(
            b.pick(None, &[], Instant::now(), 0).is_none(),
            "an unresolvable name has no endpoints"
        );
        assert!(
            b.discovery_status().last_error.is_some(),
            "the lookup error is kept for /endpoints"
        );
    }
}
