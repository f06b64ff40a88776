//! Active health checks: every endpoint of a service with a `health_check` is probed on its
//! interval, with pingora-load-balancing's `HttpHealthCheck` (GET the path, healthy on 200) or
//! `TcpHealthCheck` (a connection is accepted). `healthy` consecutive passes make an endpoint
//! usable again, `unhealthy` consecutive failures take it out of the balancer's candidates.
//!
//! One background task checks every service; the checks of one round run concurrently, each
//! bounded by the check's timeout, so a blackholed endpoint cannot hold up the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mesh_table::{HealthCheck as HealthConfig, HealthCheckKind};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend;

use crate::state::Mesh;

/// How often the checker looks for services whose interval has come.
const TICK: Duration = Duration::from_millis(20);

/// Builds the pingora checker for one service's configuration.
pub fn checker(service: &str, cfg: &HealthConfig) -> Arc<dyn HealthCheck + Send + Sync> {
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
    pub mesh: Arc<Mesh>,
}

impl HealthChecker {
    /// Runs one round of checks for every service that is due; returns when they are done.
    async fn round(&self, last: &mut HashMap<String, Instant>) {
        let Some(routes) = self.mesh.routes() else {
            return;
        };
        let now = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for route in routes.services() {
            let Some(cfg) = route.policy.health_check.clone() else {
                continue;
            };
            let due = last
                .get(&route.name)
                .is_none_or(|t| now.duration_since(*t) >= Duration::from_millis(cfg.interval_ms));
            if !due {
                continue;
            }
            last.insert(route.name.clone(), now);
            let check = route
                .health
                .clone()
                .expect("a service with health_check has a checker");
            for ep in route.balancer.set().endpoints().iter().cloned() {
                let check = check.clone();
                let cfg = cfg.clone();
                let service = route.name.clone();
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
