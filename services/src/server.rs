//! The HTTP server: shared state, the router and the serve loop with graceful shutdown.

use std::future::{Future, IntoFuture};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use prometheus::Registry;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::json;

use crate::behaviour::{self, Behaviour, BehaviourPatch, Decision, InvalidBehaviour};
use crate::downstream::{self, CallRecord};
use crate::metrics::{self, Metrics};
use crate::trace;

/// How long [`run`] lets in-flight requests finish after the shutdown signal before it gives up
/// on them and returns anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the service is started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The service name, e.g. `b`.
    pub service: String,
    /// This instance's name, e.g. `b-4242`.
    pub instance: String,
    /// `host:port` of the sidecar's outbound listener, used as HTTP proxy.
    pub sidecar: String,
    /// Initial behaviour; changed at run time with `PUT /behaviour`.
    pub behaviour: Behaviour,
    /// Seed of the one generator behind every random decision.
    pub seed: u64,
}

/// Why the state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid behaviour: {0}")]
    Behaviour(#[from] InvalidBehaviour),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("building the HTTP client for sidecar {sidecar}: {source}")]
    Client {
        sidecar: String,
        source: reqwest::Error,
    },
}

/// Shared state of the server; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    instance: String,
    /// Read lock-free on every request; replaced whole by `PUT /behaviour`.
    behaviour: ArcSwap<Behaviour>,
    /// Serialises writers so that concurrent PUTs do not lose each other's fields.
    update: Mutex<()>,
    /// The one seeded generator. Locked briefly (two draws at most, never across an await),
    /// and only when the behaviour needs randomness.
    rng: Mutex<SmallRng>,
    client: reqwest::Client,
    metrics: Metrics,
    registry: Registry,
    /// Traces; `None` when off.
    tracing: Option<Arc<mesh_trace::Tracing>>,
}

impl AppState {
    /// Validates the config, registers the metrics in `registry` (the same registry is rendered
    /// by `/metrics`) and builds the client for downstream calls.
    pub fn new(config: Config, registry: Registry) -> Result<Self, SetupError> {
        Self::new_traced(config, registry, None)
    }

    /// [`AppState::new`], recording spans through `tracing` when it is given.
    pub fn new_traced(
        config: Config,
        registry: Registry,
        tracing: Option<Arc<mesh_trace::Tracing>>,
    ) -> Result<Self, SetupError> {
        config.behaviour.validate()?;
        let metrics = Metrics::register(&registry)?;
        let client = downstream::client(&config.sidecar).map_err(|source| SetupError::Client {
            sidecar: config.sidecar.clone(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                service: config.service,
                instance: config.instance,
                behaviour: ArcSwap::from_pointee(config.behaviour),
                update: Mutex::new(()),
                rng: Mutex::new(SmallRng::seed_from_u64(config.seed)),
                client,
                metrics,
                registry,
                tracing,
            }),
        })
    }

    /// The current behaviour.
    pub fn behaviour(&self) -> Arc<Behaviour> {
        self.inner.behaviour.load_full()
    }

    /// Applies `patch` atomically: either every field changes or (on a validation error) none.
    pub fn update_behaviour(
        &self,
        patch: BehaviourPatch,
    ) -> Result<Arc<Behaviour>, InvalidBehaviour> {
        let _writer = self
            .inner
            .update
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let next = Arc::new(self.inner.behaviour.load().patched(patch)?);
        self.inner.behaviour.store(Arc::clone(&next));
        Ok(next)
    }

    fn decide(&self, b: &Behaviour) -> Decision {
        if behaviour::needs_rng(b) {
            let mut rng = self
                .inner
                .rng
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            behaviour::decide(b, &mut *rng)
        } else {
            // `decide` draws nothing for this behaviour: skip the shared lock and hand it a
            // throw-away generator (seeding one is a few arithmetic operations).
            behaviour::decide(b, &mut SmallRng::seed_from_u64(0))
        }
    }
}

/// The router: reserved paths first, every other method and path answered by the application
/// handler.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/behaviour", get(get_behaviour).put(put_behaviour))
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .fallback(handle)
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight requests finish (at most [`DRAIN_TIMEOUT`]).
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = signalled_tx.send(());
    };
    let server = axum::serve(listener, app(state))
        .with_graceful_shutdown(signal)
        .into_future();
    let drain_deadline = async {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } else {
            // The server ended without a signal; the other branch finishes.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result,
        () = drain_deadline => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "in-flight requests did not finish in time");
            Ok(())
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    let (content_type, body) = metrics::render(&state.inner.registry);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn get_behaviour(State(state): State<AppState>) -> Response {
    Json(&*state.behaviour()).into_response()
}

/// `PUT /behaviour`: the body is parsed here rather than by the `Json` extractor so that every
/// bad input, whatever its kind, gets a `400` with a JSON error naming the field.
async fn put_behaviour(State(state): State<AppState>, body: Bytes) -> Response {
    let patch = match behaviour::parse_patch(&body) {
        Ok(patch) => patch,
        Err(e) => return bad_request(e.field.as_deref(), &e.message),
    };
    match state.update_behaviour(patch) {
        Ok(next) => {
            tracing::info!(behaviour = ?next, "behaviour updated");
            Json(&*next).into_response()
        }
        Err(e) => bad_request(Some(e.field.json_name()), &e.to_string()),
    }
}

fn bad_request(field: Option<&str>, error: &str) -> Response {
    let body = match field {
        Some(field) => json!({ "error": error, "field": field }),
        None => json!({ "error": error }),
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

#[derive(Serialize)]
struct Reply<'a> {
    service: &'a str,
    instance: &'a str,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_bytes: Option<u64>,
    calls: Vec<CallRecord<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    service: &'a str,
    instance: &'a str,
    error: &'a str,
}

/// Every non-reserved request: count the body, wait, maybe inject an error, call downstream.
async fn handle(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let span = state
        .inner
        .tracing
        .as_deref()
        .map(|t| trace::server_span(t, &state.inner.service, &method, uri.path(), &headers));
    let response = answer(
        &state,
        &method,
        &uri,
        &headers,
        body,
        started,
        span.as_ref(),
    )
    .await;
    state
        .inner
        .metrics
        .observe_request(response.status(), started.elapsed());
    if let Some(cx) = &span {
        trace::end(cx, Some(response.status().as_u16()), None);
    }
    response
}

async fn answer(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
    span: Option<&opentelemetry::Context>,
) -> Response {
    let inner = &*state.inner;
    let body_bytes = match count_body(body).await {
        Ok(n) => n,
        Err(e) => return bad_request(None, &format!("reading the request body: {e}")),
    };
    let behaviour = inner.behaviour.load_full();
    let decision = state.decide(&behaviour);
    if !decision.delay.is_zero() {
        tokio::time::sleep(decision.delay).await;
    }
    if decision.inject_error {
        inner.metrics.injected_error();
        let status =
            StatusCode::from_u16(behaviour.error_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let reply = ErrorReply {
            service: &inner.service,
            instance: &inner.instance,
            error: "injected error",
        };
        return (status, Json(reply)).into_response();
    }

    let calls = if behaviour.calls.is_empty() {
        Vec::new()
    } else {
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let forwarded = downstream::forwarded_headers(headers, started.elapsed());
        let traced = inner.tracing.as_deref().zip(span);
        downstream::call_all(
            &inner.client,
            &behaviour.calls,
            method,
            path_and_query,
            &forwarded,
            traced,
        )
        .await
    };
    let mut error = None;
    for call in &calls {
        inner.metrics.downstream_call(call.service, call.result());
        if error.is_none() {
            error = call.failure();
        }
    }
    let status = if error.is_some() {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    let reply = Reply {
        service: &inner.service,
        instance: &inner.instance,
        method: method.as_str(),
        path: uri.path(),
        body_bytes: (*method == Method::POST || body_bytes > 0).then_some(body_bytes),
        calls,
        error,
    };
    (status, Json(reply)).into_response()
}

/// Reads the body to its end, counting bytes without keeping them.
async fn count_body(mut body: Body) -> Result<u64, axum::Error> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}
