//! Active health checks: every endpoint of a service with a `health_check` is probed on its
//! interval, with pingora-load-balancing's `HttpHealthCheck` (GET the path, healthy on 200) or
//! `TcpHealthCheck` (a connection is accepted). `healthy` consecutive passes make an endpoint
//! usable again, `unhealthy` consecutive failures take it out of the balancer's candidates.
//!
//! One background task checks every service; the checks of one round run concurrently, each
//! bounded by the check's timeout, so a blackholed endpoint cannot hold up the others. The task
//! learns which services to check through [`Targets`], which the mesh state implements: this
//! module does not depend on the state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mesh_table::{HealthCheck as HealthConfig, HealthCheckKind};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend;
use tokio::task::JoinSet;

use mesh_policy::select::EndpointSet;

/// How often the checker looks for services whose interval has come.
const TICK: Duration = Duration::from_millis(20);

/// One service's active health check: its configuration and the pingora checker built from it.
pub struct ServiceHealth {
    config: HealthConfig,
    check: Arc<dyn HealthCheck + Send + Sync>,
}

impl ServiceHealth {
    pub fn new(service: &str, config: &HealthConfig) -> Self {
        ServiceHealth {
            config: config.clone(),
            check: checker(service, config),
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.config.interval_ms)
    }

    /// Adds one check per endpoint of `endpoints` to `tasks`; each records its outcome on its
    /// endpoint.
    fn spawn_checks(&self, service: &str, endpoints: &EndpointSet, tasks: &mut JoinSet<()>) {
        for ep in endpoints.endpoints().iter().cloned() {
            let check = self.check.clone();
            let cfg = self.config.clone();
            let service = service.to_owned();
            tasks.spawn(async move {
                let backend = Backend::new(&ep.addr.to_string()).expect("a socket address is a backend");
                let limit = Duration::from_millis(cfg.timeout_ms);
                let passed = matches!(tokio::time::timeout(limit, check.check(&backend)).await, Ok(Ok(())));
                if let Some(now_healthy) = ep.record_health_check(passed, cfg.healthy, cfg.unhealthy) {
                    tracing::info!(service = %service, endpoint = %ep.addr, healthy = now_healthy, "health check changed the endpoint's state");
                }
            });
        }
    }
}

/// The services to check, as the mesh state lists them.
pub trait Targets: Send + Sync {
    /// Calls `f` with every service of the active table that has a health check: its name, its
    /// check and its current endpoints.
    fn each_checked(&self, f: &mut dyn FnMut(&str, &ServiceHealth, &EndpointSet));
}

/// Builds the pingora checker for one service's configuration.
fn checker(service: &str, cfg: &HealthConfig) -> Arc<dyn HealthCheck + Send + Sync> {
    let timeout = Some(Duration::from_millis(cfg.timeout_ms));
    match cfg.kind {
        HealthCheckKind::Tcp => {
            let mut hc = TcpHealthCheck::new();
            hc.peer_template.options.connection_timeout = timeout;
            hc.peer_template.options.total_connection_timeout = timeout;
            Arc::from(hc as Box<dyn HealthCheck + Send + Sync>)
        }
        HealthCheckKind::Http => {
            let mut hc = HttpHealthCheck::new(service, false);
            let path = cfg
                .path
                .as_deref()
                .unwrap_or(mesh_table::defaults::HEALTH_PATH);
            if let Ok(uri) = path.parse() {
                hc.req.set_uri(uri);
            }
            hc.peer_template.options.connection_timeout = timeout;
            hc.peer_template.options.read_timeout = timeout;
            hc.peer_template.options.write_timeout = timeout;
            Arc::new(hc)
        }
    }
}

/// The background task running every service's health checks.
pub struct HealthChecker {
    targets: Arc<dyn Targets>,
}

impl HealthChecker {
    pub fn new(targets: Arc<dyn Targets>) -> Self {
        HealthChecker { targets }
    }

    /// Runs one round of checks for every service that is due; returns when they are done.
    async fn round(&self, last: &mut HashMap<String, Instant>) {
        let now = Instant::now();
        let mut tasks = JoinSet::new();
        self.targets
            .each_checked(&mut |service, health, endpoints| {
                let due = last
                    .get(service)
                    .is_none_or(|t| now.duration_since(*t) >= health.interval());
                if !due {
                    return;
                }
                last.insert(service.to_owned(), now);
                health.spawn_checks(service, endpoints, &mut tasks);
            });
        while tasks.join_next().await.is_some() {}
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = HashMap::new();
        loop {
            tokio::select! {
                _ = self.round(&mut last) => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
