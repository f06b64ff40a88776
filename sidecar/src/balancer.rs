//! Endpoints of one service and the choice of one per attempt.
//!
//! Discovery and selection come from `pingora-load-balancing`: [`MeshDiscovery`] turns the
//! table's `endpoints` (a static list, or `dns:HOST:PORT` for a headless Kubernetes Service) into
//! backends, and the selector of the table's `lb` picks one. A retry asks for an endpoint other
//! than the ones already tried, through `select_with`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use mesh_table::{Endpoints, Lb};
use pingora_error::{Error, ErrorType, Result};
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::selection::{Random, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use serde::Serialize;

/// Resolves a service's endpoints; remembers the last resolution error for `/endpoints`.
pub struct MeshDiscovery {
    endpoints: Endpoints,
    last: Mutex<DiscoveryStatus>,
}

/// What the last discovery found, for the admin port.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscoveryStatus {
    pub last_error: Option<String>,
    #[serde(with = "opt_time")]
    pub last_resolved: Option<SystemTime>,
}

mod opt_time {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
            None => s.serialize_none(),
        }
    }
}

impl MeshDiscovery {
    pub fn new(endpoints: Endpoints) -> Self {
        MeshDiscovery {
            endpoints,
            last: Mutex::new(DiscoveryStatus::default()),
        }
    }

    async fn resolve(&self) -> std::result::Result<BTreeSet<Backend>, String> {
        let mut out = BTreeSet::new();
        match &self.endpoints {
            Endpoints::Static(list) => {
                for addr in list {
                    if let Ok(sa) = addr.parse::<SocketAddr>() {
                        out.insert(backend(sa));
                        continue;
                    }
                    let found = tokio::net::lookup_host(addr.as_str())
                        .await
                        .map_err(|e| format!("resolving {addr}: {e}"))?;
                    out.extend(found.map(backend));
                }
            }
            Endpoints::Dns { host, port } => {
                let found = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("resolving {host}: {e}"))?;
                out.extend(found.map(backend));
            }
        }
        Ok(out)
    }
}

fn backend(addr: SocketAddr) -> Backend {
    Backend {
        addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    }
}

#[async_trait]
impl ServiceDiscovery for MeshDiscovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let res = self.resolve().await;
        let mut last = self.last.lock().expect("discovery status lock");
        match res {
            Ok(set) => {
                last.last_error = None;
                last.last_resolved = Some(SystemTime::now());
                Ok((set, HashMap::new()))
            }
            Err(e) => {
                last.last_error = Some(e.clone());
                // An error keeps the previous endpoints: LoadBalancer::update leaves them as they were.
                Err(Error::explain(ErrorType::InternalError, e))
            }
        }
    }
}

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
}

/// One service's endpoints and selector.
pub struct Balancer {
    selector: Selector,
    discovery: std::sync::Arc<MeshDiscovery>,
    dynamic: bool,
}

/// `Backends` owns its discovery as a box; this forwards to a shared one so the balancer can
/// read the discovery status.
struct Shared(std::sync::Arc<MeshDiscovery>);

#[async_trait]
impl ServiceDiscovery for Shared {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        self.0.discover().await
    }
}

impl Balancer {
    pub fn new(endpoints: Endpoints, lb: Lb) -> Self {
        let dynamic = match &endpoints {
            Endpoints::Dns { .. } => true,
            Endpoints::Static(list) => list.iter().any(|a| a.parse::<SocketAddr>().is_err()),
        };
        let discovery = std::sync::Arc::new(MeshDiscovery::new(endpoints));
        let backends = Backends::new(Box::new(Shared(discovery.clone())));
        let selector = match lb {
            Lb::RoundRobin => Selector::RoundRobin(LoadBalancer::from_backends(backends)),
            Lb::Random => Selector::Random(LoadBalancer::from_backends(backends)),
        };
        Balancer {
            selector,
            discovery,
            dynamic,
        }
    }

    /// Whether endpoints come from DNS and need refreshing.
    pub fn is_dynamic(&self) -> bool {
        self.dynamic
    }

    /// Runs discovery; on error the previous endpoints stay.
    pub async fn refresh(&self) {
        let res = match &self.selector {
            Selector::RoundRobin(lb) => lb.update().await,
            Selector::Random(lb) => lb.update().await,
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "endpoint discovery failed; keeping the previous endpoints");
        }
    }

    /// Picks an endpoint not in `avoid` when one exists, else any endpoint; `None` when the
    /// service has no endpoints at all.
    pub fn pick(&self, avoid: &[SocketAddr]) -> Option<SocketAddr> {
        let fresh = |b: &Backend, healthy: bool| {
            healthy && b.addr.as_inet().is_some_and(|a| !avoid.contains(a))
        };
        let any = |_: &Backend, healthy: bool| healthy;
        let chosen = match &self.selector {
            Selector::RoundRobin(lb) => lb
                .select_with(b"", 64, fresh)
                .or_else(|| lb.select_with(b"", 64, any)),
            Selector::Random(lb) => lb
                .select_with(b"", 64, fresh)
                .or_else(|| lb.select_with(b"", 64, any)),
        };
        chosen.and_then(|b| b.addr.as_inet().copied())
    }

    /// Every current endpoint.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let set = match &self.selector {
            Selector::RoundRobin(lb) => lb.backends().get_backend(),
            Selector::Random(lb) => lb.backends().get_backend(),
        };
        set.iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .collect()
    }

    pub fn discovery_status(&self) -> DiscoveryStatus {
        self.discovery
            .last
            .lock()
            .expect("discovery status lock")
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Endpoints {
        Endpoints::Static(list.iter().map(|s| s.to_string()).collect())
    }

    #[tokio::test]
    async fn round_robin_visits_every_endpoint() {
        let b = Balancer::new(
            addrs(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]),
            Lb::RoundRobin,
        );
        b.refresh().await;
        let mut seen: Vec<_> = (0..3).map(|_| b.pick(&[]).expect("an endpoint")).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            3,
            "three picks in a row hit three endpoints: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_retry_avoids_the_endpoint_that_failed() {
        let b = Balancer::new(addrs(&["127.0.0.1:1", "127.0.0.1:2"]), Lb::Random);
        b.refresh().await;
        let failed: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..50 {
            assert_ne!(
                b.pick(&[failed]),
                Some(failed),
                "the failed endpoint is avoided while another exists"
            );
        }
    }

    #[tokio::test]
    async fn with_every_endpoint_tried_any_is_picked() {
        let b = Balancer::new(addrs(&["127.0.0.1:1"]), Lb::RoundRobin);
        b.refresh().await;
        let only: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            b.pick(&[only]),
            Some(only),
            "a single endpoint is retried rather than giving up"
        );
    }

    #[tokio::test]
    async fn no_endpoints_before_discovery_and_after_a_failed_lookup() {
        let b = Balancer::new(
            Endpoints::Dns {
                host: "no-such-host.invalid".into(),
                port: 80,
            },
            Lb::RoundRobin,
        );
        assert_eq!(b.pick(&[]), None, "nothing to pick before discovery");
        b.refresh().await;
        assert_eq!(b.pick(&[]), None, "an unresolvable name has no endpoints");
        assert!(
            b.discovery_status().last_error.is_some(),
            "the lookup error is kept for /endpoints"
        );
    }
}
