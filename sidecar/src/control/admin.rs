//! The admin port: health, readiness and what the sidecar is doing.
//!
//! - `/live`: 200 while the process runs;
//! - `/ready`: 200 once a routing table is loaded and the proxy listeners accept, else 503
//!   saying which is missing;
//! - `/config`: the active table, its version and source, and the last poll and its error;
//! - `/endpoints`: per service, the balancer and the current endpoints with their load;
//! - `/breakers`: per service, each endpoint's breaker state, consecutive failures, times
//!   ejected and last transition; the concurrency in use and its limit; the retry budget;
//! - `POST /drain`, `POST /undrain`: `/ready` answers 503 "draining" (so a load balancer or
//!   the kubelet takes the pod out of rotation before it stops) or serves normally again; the
//!   proxy keeps serving whatever still arrives. State-changing endpoints need
//!   `Authorization: Bearer <token>` with the token of `--admin-token` (`MESH_ADMIN_TOKEN`);
//!   without a token configured they are disabled;
//! - `/debug/allocations`: only with the `alloc-count` feature: the allocator's counters as
//!   JSON (`alloc_count::Snapshot`), read by the bench before and after a load run;
//! - `/`: this list.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::json;

use crate::state::Mesh;

#[derive(Clone)]
pub struct AdminState {
    pub mesh: Arc<Mesh>,
    /// Raised when every proxy listener accepts connections.
    pub listeners_up: Arc<AtomicBool>,
    /// Raised by `POST /drain`: `/ready` answers 503.
    pub draining: Arc<AtomicBool>,
    /// The bearer token state-changing endpoints require; `None`: they are disabled.
    pub token: Option<Arc<str>>,
}

pub fn app(state: AdminState) -> Router {
    let router = Router::new()
        .route("/", get(index))
        .route("/live", get(|| async { Json(json!({ "live": true })) }))
        .route("/ready", get(ready))
        .route("/config", get(config))
        .route("/endpoints", get(endpoints))
        .route("/breakers", get(breakers))
        .route("/metrics", get(metrics))
        .route("/drain", post(drain))
        .route("/undrain", post(undrain));
    #[cfg(feature = "alloc-count")]
    let router = router.route(
        "/debug/allocations",
        get(|| async { Json(crate::alloc_count::global()) }),
    );
    router.with_state(state)
}

async fn index() -> String {
    let mut list = INDEX.to_owned();
    if cfg!(feature = "alloc-count") {
        list.push_str("/debug/allocations  the allocator's counters (built with alloc-count)\n");
    }
    list
}

const INDEX: &str = "meshlab sidecar admin\n\
     /live       200 while the process runs\n\
     /ready      200 once a routing table is loaded and the listeners accept\n\
     /config     the active routing table, its version and source, the last poll and its error\n\
     /endpoints  per service: balancer, endpoints (in flight, latency estimate), last DNS resolution\n\
     /metrics    Prometheus metrics (text format)\n\
     /breakers   per service: each endpoint's breaker (closed, open, half-open), concurrency in use and its limit, retry budget\n\
     POST /drain    /ready answers 503 \"draining\" (needs Authorization: Bearer <--admin-token>)\n\
     POST /undrain  /ready serves normally again (same token)\n";

async fn ready(State(s): State<AdminState>) -> Response {
    let table = s.mesh.routes().is_some();
    let listeners = s.listeners_up.load(Ordering::Acquire);
    let draining = s.draining.load(Ordering::Acquire);
    if table && listeners && !draining {
        return Json(json!({ "ready": true })).into_response();
    }
    let mut why = Vec::new();
    if !table {
        let st = s.mesh.status();
        why.push(format!(
            "no routing table loaded yet from {}{}",
            st.source,
            st.last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ));
    }
    if !listeners {
        why.push("proxy listeners are not accepting yet".to_owned());
    }
    if draining {
        why.push("draining: POST /undrain to serve again".to_owned());
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "ready": false, "why": why })),
    )
        .into_response()
}

async fn config(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let routes = s.mesh.routes();
    Json(json!({
        "service": s.mesh.service,
        "env": s.mesh.env,
        "version": routes.as_ref().map(|r| r.table.version),
        "status": s.mesh.status(),
        "table": routes.as_ref().map(|r| &r.table),
    }))
}

async fn endpoints(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let mut services = serde_json::Map::new();
    if let Some(routes) = s.mesh.routes() {
        let mut list: Vec<_> = routes.services().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        for r in list {
            let set = r.endpoints();
            let mut eps: Vec<String> = set.endpoints().iter().map(|e| e.addr.to_string()).collect();
            eps.sort();
            services.insert(
                r.name.clone(),
                json!({
                    "lb": r.policy.lb,
                    "source": r.policy.endpoints,
                    "endpoints": eps,
                    "load": set.snapshot(std::time::Instant::now()),
                    "discovery": r.discovery_status(),
                }),
            );
        }
    }
    Json(json!({ "services": services }))
}

/// Checks `Authorization: Bearer <token>` for a state-changing endpoint: the refusal to send,
/// or `None` when the caller may go on.
fn refusal(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &s.token else {
        let why = "state-changing admin endpoints are disabled: start the sidecar with \
                   --admin-token or MESH_ADMIN_TOKEN to enable them";
        return Some((StatusCode::FORBIDDEN, Json(json!({ "error": why }))).into_response());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    // Compared in constant time: the admin port may be reachable from the pod network.
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        return None;
    }
    let why = if given.is_none() {
        "missing Authorization: Bearer <token> (the sidecar's --admin-token)"
    } else {
        "wrong bearer token"
    };
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": why })),
        )
            .into_response(),
    )
}

/// The token of an `Authorization: Bearer <token>` value; the scheme in any case (RFC 9110
/// 11.1: auth-scheme names are case-insensitive).
fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

async fn drain(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    set_draining(&s, &headers, true)
}

async fn undrain(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    set_draining(&s, &headers, false)
}

/// `POST /drain` and `/undrain`: behind the token, flips what `/ready` answers.
fn set_draining(s: &AdminState, headers: &HeaderMap, on: bool) -> Response {
    if let Some(denied) = refusal(s, headers) {
        return denied;
    }
    let was = s.draining.swap(on, Ordering::AcqRel);
    tracing::info!(draining = on, "admin: drain state set");
    Json(json!({ "draining": on, "was_draining": was })).into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let Some(text) = s.mesh.render_metrics() else {
        let off = json!({ "error": "metrics are off: this sidecar runs with --metrics off" });
        return (axum::http::StatusCode::NOT_FOUND, Json(off)).into_response();
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

async fn breakers(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let now = std::time::Instant::now();
    let mut services = serde_json::Map::new();
    if let Some(routes) = s.mesh.routes() {
        for r in routes.services() {
            services.insert(
                r.name.clone(),
                json!({
                    "endpoints": r.breakers(now),
                    "ejected": r.ejected(),
                    "concurrency": r.concurrency(),
                    "retry_budget": r.retry_budget(now),
                    "retry_refusals": r.refusal_counts(),
                }),
            );
        }
    }
    Json(json!({ "services": services }))
}

/// Runs the admin server on a listener bound by `main`.
pub struct AdminService {
    pub state: AdminState,
    pub listener: Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().expect("listener lock").take() else {
            return;
        };
        let listener = match std_listener
            .set_nonblocking(true)
            .and_then(|_| tokio::net::TcpListener::from_std(std_listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin listener unusable");
                return;
            }
        };
        let served = axum::serve(listener, app(self.state.clone()))
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin server failed");
        }
    }
}
