//! The sidecar's shared state: the active routing table compiled for serving ([`Routes`], one
//! [`ServiceRoute`] per service) and where it came from ([`SourceStatus`]), both held by [`Mesh`].
//!
//! A [`Routes`] value is immutable: a new table builds a whole new one (balancers included,
//! endpoints discovered before it is published) and [`Mesh`] swaps it in with one atomic store.
//! Requests in flight keep the `Arc` of the routes they started with, so a swap drops nothing.

use mesh_policy::fault::Faults;
use mesh_table::faults::Side;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use mesh_table::Table;
use serde::Serialize;

use crate::endpoints::balancer::{Balancer, Chosen};
use crate::endpoints::discovery::DiscoveryStatus;
use crate::endpoints::health::{self, ServiceHealth};
use crate::limits::{ConcurrencyLimit, LimitSnapshot};
use crate::telemetry::metrics::{Metrics, RouteMetrics};
use mesh_policy::addr_map::TableMap;
use mesh_policy::breaker::{EndpointSnapshot, Transition};
use mesh_policy::retry::{BudgetSnapshot, Refusal, RetryBudget};
use mesh_policy::select::EndpointSet;

/// One service's policy and the state that enforces it.
///
/// Other modules go through its methods; the fields the request path (`outbound`) still reads
/// directly are crate-visible, the others private.
pub struct ServiceRoute {
    pub name: String,
    pub policy: mesh_table::Service,
    balancer: Balancer,
    pub(crate) limit: ConcurrencyLimit,
    pub(crate) budget: RetryBudget,
    /// The active health check, when the table configures one.
    health: Option<ServiceHealth>,
    pub(crate) metrics: RouteMetrics,
    /// The service's faults its callers' sidecars inject (`side = "outbound"`), and those its
    /// own sidecar injects (`"inbound"`); their windows run from when this policy was installed.
    pub(crate) faults_out: Faults,
    pub(crate) faults_in: Faults,
}

impl ServiceRoute {
    /// Picks an endpoint for an attempt by the service's algorithm, skipping those this request
    /// tried (`avoid`) and those their breakers eject (see [`Balancer::pick`]); `key` is the
    /// hash key of a ring-hash service.
    pub fn pick(&self, key: Option<&[u8]>, avoid: &[SocketAddr], now: Instant) -> Option<Chosen> {
        self.balancer
            .pick(key, avoid, now, self.policy.panic_threshold_percent)
    }

    /// The current endpoints, with their load and health.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.balancer.set()
    }

    /// Counts a retry the policy refused (`/metrics` and `/breakers` read the same counters).
    pub fn count_refusal(&self, r: Refusal) {
        self.metrics.refusal(r);
    }

    /// Tells the endpoint's breaker how a try went, counting ejections.
    pub fn breaker_result(&self, addr: SocketAddr, now: Instant, failure: bool, probe: bool) {
        if let Some(t) = self.balancer.report(addr, now, failure, probe) {
            if !matches!(t, Transition::Closed) {
                self.metrics.ejection();
            }
        }
    }

    /// Hands a breaker probe back unjudged, so the endpoint does not stay half-open with its
    /// probe out forever.
    pub fn probe_cancelled(&self, addr: SocketAddr, now: Instant) {
        self.balancer.probe_cancelled(addr, now);
    }

    /// Whether the endpoints come from DNS and need refreshing.
    pub fn is_dynamic(&self) -> bool {
        self.balancer.is_dynamic()
    }

    /// Runs discovery again; on error the current endpoints stay.
    pub async fn refresh_endpoints(&self) {
        self.balancer.refresh().await;
    }

    /// How the last endpoint discovery went.
    pub fn discovery_status(&self) -> DiscoveryStatus {
        self.balancer.discovery_status()
    }

    /// Each endpoint's breaker.
    pub fn breakers(&self, now: Instant) -> Vec<EndpointSnapshot> {
        self.balancer.breaker_snapshot(now)
    }

    /// How many endpoints their breakers hold out.
    pub fn ejected(&self) -> usize {
        self.balancer.ejected()
    }

    /// The concurrency in use, its limit and the overflows.
    pub fn concurrency(&self) -> LimitSnapshot {
        self.limit.snapshot()
    }

    /// The retry budget's balance.
    pub fn retry_budget(&self, now: Instant) -> BudgetSnapshot {
        self.budget.snapshot(now)
    }

    /// Retries refused so far, by reason.
    pub fn refusal_counts(&self) -> BTreeMap<&'static str, u64> {
        self.metrics.refusal_counts()
    }
}

/// A compiled routing table.
pub struct Routes {
    pub table: Table,
    services: TableMap<String, Arc<ServiceRoute>>,
}

impl Routes {
    /// Builds the state of every service and runs its first discovery. A service whose policy
    /// is unchanged from `previous` keeps its whole state (breakers, budget, limits, endpoint
    /// load); a changed one keeps the load and latency estimates of the endpoints that stay.
    pub async fn build(table: Table, previous: Option<&Routes>, mesh: &Mesh) -> Routes {
        let mut services =
            TableMap::with_capacity_and_hasher(table.services.len(), Default::default());
        for (name, svc) in &table.services {
            let prev = previous.and_then(|p| p.services.get(name));
            if let Some(prev) = prev.filter(|p| p.policy == *svc) {
                services.insert(name.clone(), prev.clone());
                continue;
            }
            let balancer = Balancer::new(svc, prev.map(|p| &p.balancer));
            if !balancer.is_dynamic() {
                // A list of addresses resolves at once.
                balancer.refresh().await;
            }
            let b = &svc.retries.budget;
            let route = Arc::new(ServiceRoute {
                name: name.clone(),
                policy: svc.clone(),
                balancer,
                limit: ConcurrencyLimit::from_table(name.as_str(), &svc.breaker),
                budget: RetryBudget::new(b.ratio, b.min_per_s, Duration::from_millis(b.window_ms)),
                health: svc
                    .health_check
                    .as_ref()
                    .map(|h| ServiceHealth::new(name, h)),
                metrics: mesh.metrics.route("outbound", &mesh.service, name),
                faults_out: Faults::new(&svc.faults, Side::Outbound, Instant::now()),
                faults_in: Faults::new(&svc.faults, Side::Inbound, Instant::now()),
            });
            if route.is_dynamic() {
                // DNS can be slow (seconds per name without a resolver): the table is installed
                // at once, keeping the endpoints the service had, and names resolve beside it.
                let resolving = route.clone();
                tokio::spawn(async move { resolving.refresh_endpoints().await });
            }
            services.insert(name.clone(), route);
        }
        Routes { table, services }
    }

    /// The route for a request authority's host (`b`, `b:8080`'s host part, or a Kubernetes
    /// name such as `b.mesh-dev.svc.cluster.local`).
    /// The route of the service `host` names: the service's own name, or its Kubernetes name
    /// (`b.NAMESPACE.svc[.cluster.local]`), in any case (host names are case-insensitive,
    /// RFC 4343; service names are lower case, so only a name with an upper-case letter is
    /// lowered, into a copy).
    pub fn lookup(&self, host: &str) -> Option<&Arc<ServiceRoute>> {
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.lookup_lower(&host.to_ascii_lowercase());
        }
        self.lookup_lower(host)
    }

    fn lookup_lower(&self, host: &str) -> Option<&Arc<ServiceRoute>> {
        if let Some(r) = self.services.get(host) {
            return Some(r);
        }
        let (first, rest) = host.split_once('.')?;
        let cluster_name = rest.ends_with(".svc.cluster.local")
            || rest.ends_with(".svc")
            || rest.ends_with(".svc.cluster.local.");
        if cluster_name {
            self.services.get(first)
        } else {
            None
        }
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceRoute>> {
        self.services.values()
    }

    pub fn names(&self) -> String {
        let mut v: Vec<&str> = self.services.keys().map(String::as_str).collect();
        v.sort_unstable();
        v.join(", ")
    }
}

/// Where the active table came from and how the last fetch went, for `/config`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    /// `control-plane http://…/v1/envs/dev/table` or `file /path/table.toml`.
    pub source: String,
    pub etag: Option<String>,
    #[serde(serialize_with = "time")]
    pub last_poll: Option<SystemTime>,
    #[serde(serialize_with = "time")]
    pub last_success: Option<SystemTime>,
    #[serde(serialize_with = "time")]
    pub last_change: Option<SystemTime>,
    /// The last fetch or validation error; `None` once a fetch succeeds again.
    pub last_error: Option<String>,
    /// Every validation error of the last rejected table.
    pub rejected: Vec<String>,
    pub polls: u64,
    pub poll_errors: u64,
    pub tables_rejected: u64,
}

fn time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
        None => s.serialize_none(),
    }
}

/// The sidecar's shared state: the active routes and the table source's status.
pub struct Mesh {
    pub service: String,
    pub env: String,
    pub metrics: Arc<Metrics>,
    routes: ArcSwapOption<Routes>,
    status: Mutex<SourceStatus>,
}

impl Mesh {
    pub fn new(service: String, env: String, source: String, metrics: Arc<Metrics>) -> Arc<Mesh> {
        Arc::new(Mesh {
            service,
            env,
            metrics,
            routes: ArcSwapOption::empty(),
            status: Mutex::new(SourceStatus {
                source,
                ..Default::default()
            }),
        })
    }

    /// The active routes, `None` until a first table is loaded.
    pub fn routes(&self) -> Option<Arc<Routes>> {
        self.routes.load_full()
    }

    /// Publishes new routes atomically.
    pub fn install(&self, routes: Routes) {
        self.routes.store(Some(Arc::new(routes)));
    }

    pub fn status(&self) -> SourceStatus {
        self.status.lock().expect("status lock").clone()
    }

    pub fn update_status(&self, f: impl FnOnce(&mut SourceStatus)) {
        f(&mut self.status.lock().expect("status lock"));
    }

    /// The `/metrics` text, with the gauges that mirror this state (the table source, each
    /// upstream's breakers and endpoints) refreshed first; `None` when the sidecar runs with
    /// `--metrics off`.
    pub fn render_metrics(&self) -> Option<String> {
        if !self.metrics.per_request() {
            return None;
        }
        let now = Instant::now();
        let st = self.status();
        self.metrics
            .scrape_source(st.polls, st.poll_errors, st.tables_rejected);
        if let Some(routes) = self.routes() {
            self.metrics.scrape_table_version(routes.table.version);
            for r in routes.services() {
                self.metrics.scrape_upstream(
                    &self.service,
                    &r.name,
                    &r.breakers(now),
                    &r.endpoints(),
                );
            }
        }
        Some(self.metrics.encode())
    }
}

impl health::Targets for Mesh {
    fn each_checked(&self, f: &mut dyn FnMut(&str, &ServiceHealth, &EndpointSet)) {
        let Some(routes) = self.routes() else {
            return;
        };
        for route in routes.services() {
            if let Some(check) = &route.health {
                f(&route.name, check, &route.endpoints());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"
version = 3
[services.b]
endpoints = ["127.0.0.1:9001"]
[services.c-api]
endpoints = ["127.0.0.1:9002"]
"#;

    fn test_mesh() -> Arc<Mesh> {
        Mesh::new(
            "a".into(),
            "dev".into(),
            "test".into(),
            Arc::new(Metrics::new().unwrap()),
        )
    }

    #[tokio::test]
    async fn lookup_by_name_and_cluster_dns_name() {
        let r = Routes::build(Table::from_toml_str(TABLE).unwrap(), None, &test_mesh()).await;
        assert!(r.lookup("b").is_some(), "exact service name");
        assert!(r.lookup("c-api").is_some(), "names with dashes");
        assert!(
            r.lookup("b.mesh-dev.svc.cluster.local").is_some(),
            "Kubernetes FQDN"
        );
        assert!(
            r.lookup("b.mesh-dev.svc").is_some(),
            "short Kubernetes name"
        );
        assert!(
            r.lookup("b.example.com").is_none(),
            "an outside host is not the service b"
        );
        assert!(r.lookup("x").is_none(), "unknown name");
        assert!(r.lookup("B").is_some(), "host names are case-insensitive");
        assert!(r.lookup("C-Api.Mesh-Dev.SVC.cluster.local").is_some());
        assert_eq!(r.names(), "b, c-api");
    }

    #[tokio::test]
    async fn install_swaps_whole_tables_and_old_readers_keep_theirs() {
        let mesh = Mesh::new(
            "a".into(),
            "dev".into(),
            "test".into(),
            Arc::new(Metrics::new().unwrap()),
        );
        assert!(mesh.routes().is_none(), "no routes before the first table");
        mesh.install(Routes::build(Table::from_toml_str(TABLE).unwrap(), None, &mesh).await);
        let held = mesh.routes().expect("routes after install");
        let next = TABLE.replace("version = 3", "version = 4");
        mesh.install(Routes::build(Table::from_toml_str(&next).unwrap(), Some(&held), &mesh).await);
        assert_eq!(
            held.table.version, 3,
            "an in-flight request keeps its table"
        );
        assert_eq!(
            mesh.routes().unwrap().table.version,
            4,
            "new requests see the new table"
        );
    }
}
