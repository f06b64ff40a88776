//! The HTTP routes.
//!
//! - `GET /v1/envs`: every environment with its version, ETag, source file and last error;
//! - `GET /v1/envs/{env}/table`: the table as JSON with a strong `ETag`, or `304` when
//!   `If-None-Match` matches; `404` with a JSON error naming the known environments;
//! - `GET /healthz`: `ok`;
//! - `GET /metrics`: the registry in the Prometheus text format.
//!
//! `HEAD` works on every route (axum answers it with the `GET` handler, body removed).
//!
//! The table route is the hot path, hit by every sidecar on every poll: it clones an `Arc`, a
//! `Bytes` and a `HeaderValue` (reference counts, no copy) and bumps one counter.

use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::{etag, AppState};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

/// The control plane's routes, ready to serve.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/envs", get(list_envs))
        .route("/v1/envs/{env}/table", get(table))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Everything a handler can fail with; each becomes a JSON `{"error": "..."}` response that
/// says what is wrong without exposing internals.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unknown environment {name:?}; known: {}", known.join(", "))]
    UnknownEnv { name: String, known: Vec<String> },
    /// Details are logged, not sent.
    #[error("internal error")]
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::UnknownEnv { .. } => StatusCode::NOT_FOUND,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = serde_json::json!({ "error": self.to_string() });
        (status, Json(body)).into_response()
    }
}

#[derive(Serialize)]
struct EnvInfo<'a> {
    name: &'a str,
    version: u64,
    etag: &'a str,
    source: String,
    last_error: Option<&'a str>,
}

#[derive(Serialize)]
struct EnvList<'a> {
    envs: Vec<EnvInfo<'a>>,
}

async fn list_envs(State(s): State<AppState>) -> Response {
    let snap = s.tables.snapshot();
    let envs = snap
        .values()
        .map(|e| EnvInfo {
            name: &e.name,
            version: e.version,
            etag: e.etag_str(),
            source: e.source.display().to_string(),
            last_error: e.last_error.as_deref(),
        })
        .collect();
    let mut resp = Json(EnvList { envs }).into_response();
    resp.headers_mut().insert(CACHE_CONTROL, NO_CACHE);
    resp
}

async fn table(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(env) = s.tables.get(&name) else {
        s.tables.metrics().unknown_env();
        tracing::debug!(env = %name, "request for an unknown environment");
        return Err(ApiError::UnknownEnv {
            name,
            known: s.tables.snapshot().keys().cloned().collect(),
        });
    };
    let inm = headers.get_all(IF_NONE_MATCH).iter().map(|v| v.as_bytes());
    if etag::if_none_match(inm, env.etag_str()) {
        env.counters.not_modified.inc();
        let headers = [(ETAG, env.etag.clone()), (CACHE_CONTROL, NO_CACHE)];
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    env.counters.ok.inc();
    let headers = [
        (CONTENT_TYPE, JSON),
        (ETAG, env.etag.clone()),
        (CACHE_CONTROL, NO_CACHE),
    ];
    Ok((headers, env.body.clone()).into_response())
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let encoder = prometheus::TextEncoder::new();
    let text = encoder
        .encode_to_string(&s.registry.gather())
        .map_err(|e| {
            tracing::error!(error = %e, "cannot encode metrics");
            ApiError::Internal
        })?;
    let ct = HeaderValue::from_static(prometheus::TEXT_FORMAT);
    Ok(([(CONTENT_TYPE, ct)], text).into_response())
}

#[cfg(test)]
mod tests {
    //! The routes over a real socket on port 0 (no `tower` dependency for `oneshot`), served by
    //! [`crate::run`] and stopped through its shutdown future.

    use std::net::SocketAddr;
    use std::sync::Arc;

    use prometheus::Registry;
    use testkit::Response;
    use tokio::sync::oneshot;

    use crate::testutil::{table, TempDir};
    use crate::{run, AppState, Metrics, Tables};

    struct Server {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
        _dir: TempDir,
    }

    async fn serve(dir: TempDir) -> Server {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).expect("register metrics");
        let tables = Tables::load(dir.path(), metrics).expect("valid tables load");
        let state = AppState::new(Arc::new(tables), registry);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, state, async {
            let _ = rx.await;
        }));
        Server {
            addr,
            stop: Some(tx),
            task,
            _dir: dir,
        }
    }

    async fn dev_and_prod() -> Server {
        let dir = TempDir::new("api");
        dir.write("dev/table.toml", &table(7, 2));
        dir.write("prod.toml", &table(2, 3));
        serve(dir).await
    }

    async fn req(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let method = method.to_owned();
        let path = path.to_owned();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            testkit::http(addr, &method, &path, &h, b"")
        })
        .await
        .expect("request thread")
        .expect("HTTP request")
    }

    #[tokio::test]
    async fn the_table_is_served_with_a_strong_etag() {
        let srv = dev_and_prod().await;
        let r = req(srv.addr, "GET", "/v1/envs/dev/table", &[]).await;
        assert_eq!(r.status, 200, "dev is served: {}", r.body);
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "JSON content type"
        );
        assert_eq!(r.header("cache-control"), Some("no-cache"), "revalidate");
        let tag = r.header("etag").expect("an ETag").to_owned();
        assert_eq!(
            tag,
            crate::etag::etag(7, r.body.as_bytes()),
            "the ETag is version and hash of the body"
        );
        let t = mesh_table::Table::from_json_str(&r.body).expect("the body is a table");
        assert_eq!(t.version, 7, "dev's table");
    }

    #[tokio::test]
    async fn a_matching_if_none_match_gets_304_without_body() {
        let srv = dev_and_prod().await;
        let r = req(srv.addr, "GET", "/v1/envs/dev/table", &[]).await;
        let tag = r.header("etag").expect("an ETag").to_owned();
        let weak = format!("W/{tag}");
        let list = format!("\"other\", {tag}");
        for inm in [tag.as_str(), weak.as_str(), list.as_str(), "*"] {
            let r = req(
                srv.addr,
                "GET",
                "/v1/envs/dev/table",
                &[("If-None-Match", inm)],
            )
            .await;
            assert_eq!(r.status, 304, "If-None-Match: {inm}");
            assert_eq!(r.body, "", "a 304 has no body (If-None-Match: {inm})");
            assert_eq!(
                r.header("etag"),
                Some(tag.as_str()),
                "a 304 carries the ETag"
            );
        }
        let r = req(
            srv.addr,
            "GET",
            "/v1/envs/dev/table",
            &[("If-None-Match", "\"7-0000000000000000\"")],
        )
        .await;
        assert_eq!(r.status, 200, "a stale ETag gets the table");
    }

    #[tokio::test]
    async fn head_is_get_without_body() {
        let srv = dev_and_prod().await;
        let get = req(srv.addr, "GET", "/v1/envs/prod/table", &[]).await;
        let head = req(srv.addr, "HEAD", "/v1/envs/prod/table", &[]).await;
        assert_eq!(head.status, 200, "HEAD is answered");
        assert_eq!(head.header("etag"), get.header("etag"), "same ETag as GET");
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "HEAD announces the GET body's length"
        );
    }

    #[tokio::test]
    async fn an_unknown_env_is_404_naming_the_known_ones() {
        let srv = dev_and_prod().await;
        let r = req(srv.addr, "GET", "/v1/envs/x/table", &[]).await;
        assert_eq!(r.status, 404, "x does not exist");
        assert_eq!(
            r.json(),
            serde_json::json!({"error": "unknown environment \"x\"; known: dev, prod"}),
            "the error names the env and the known ones"
        );
    }

    #[tokio::test]
    async fn envs_are_listed_with_version_etag_source_and_error() {
        let srv = dev_and_prod().await;
        let r = req(srv.addr, "GET", "/v1/envs", &[]).await;
        assert_eq!(r.status, 200, "the list is served");
        let v = r.json();
        let envs = v["envs"].as_array().expect("an envs array");
        let names: Vec<&str> = envs.iter().filter_map(|e| e["name"].as_str()).collect();
        assert_eq!(names, vec!["dev", "prod"], "every env, sorted");
        assert_eq!(envs[0]["version"], 7, "dev's version");
        assert!(
            envs[0]["etag"]
                .as_str()
                .is_some_and(|t| t.starts_with("\"7-")),
            "dev's ETag: {}",
            envs[0]["etag"]
        );
        assert!(
            envs[0]["source"]
                .as_str()
                .is_some_and(|s| s.ends_with("dev/table.toml")),
            "dev's source: {}",
            envs[0]["source"]
        );
        assert!(envs[0]["last_error"].is_null(), "no error: {}", envs[0]);
    }

    #[tokio::test]
    async fn health_and_metrics_answer() {
        let srv = dev_and_prod().await;
        let r = req(srv.addr, "GET", "/healthz", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "healthz");
        let tag = req(srv.addr, "GET", "/v1/envs/dev/table", &[])
            .await
            .header("etag")
            .expect("an ETag")
            .to_owned();
        req(
            srv.addr,
            "GET",
            "/v1/envs/dev/table",
            &[("If-None-Match", &tag)],
        )
        .await;
        req(srv.addr, "GET", "/v1/envs/nope/table", &[]).await;
        let m = req(srv.addr, "GET", "/metrics", &[]).await;
        assert_eq!(m.status, 200, "metrics are served");
        for line in [
            "meshlab_cp_table_requests_total{env=\"dev\",result=\"200\"} 1",
            "meshlab_cp_table_requests_total{env=\"dev\",result=\"304\"} 1",
            "meshlab_cp_table_requests_total{env=\"_unknown\",result=\"404\"} 1",
            "meshlab_cp_table_version{env=\"prod\"} 2",
            "meshlab_cp_reloads_total{env=\"dev\"} 0",
            "meshlab_cp_reload_errors_total{env=\"dev\"} 0",
            "meshlab_cp_table_loaded_timestamp_seconds{env=\"dev\"}",
        ] {
            assert!(m.body.contains(line), "metrics have {line:?}:\n{}", m.body);
        }
    }

    #[tokio::test]
    async fn run_returns_once_shutdown_completes() {
        let mut srv = dev_and_prod().await;
        srv.stop
            .take()
            .expect("stop once")
            .send(())
            .expect("server alive");
        let res = tokio::time::timeout(std::time::Duration::from_secs(5), srv.task)
            .await
            .expect("run returns within 5 s of shutdown");
        res.expect("server task").expect("run ends cleanly");
    }
}
