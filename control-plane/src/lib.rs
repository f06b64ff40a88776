//! meshlab's control plane: it owns the routing tables and nothing else.
//!
//! At start it loads every environment of a tables directory, validates each one with
//! [`mesh_table`] and refuses to start while any of them is invalid, listing every problem with
//! its file and field path. It then serves each table as JSON with a strong ETag, so that every
//! sidecar can poll `GET /v1/envs/{env}/table` with `If-None-Match` and mostly get a bodiless
//! `304`. Tables are reloaded without a restart, by polling file stamps and on SIGHUP; an edit
//! that does not validate is logged, counted and shown as `last_error` in `/v1/envs`, while the
//! previous table keeps being served.
//!
//! # Layout
//! - `cli`: the command-line flags and the small duration parser (`500ms`, `2s`, `1m`);
//! - `discover`: finds the environments of a tables directory, in both layouts
//!   (`DIR/<env>.toml` and `DIR/<env>/table.toml`);
//! - `tables`: a loaded environment ([`Env`], body and ETag computed once at load), the set of
//!   them behind an atomic swap ([`Tables`]), the start-up load and the reload;
//! - `etag`: the ETag of a table body and `If-None-Match` matching (RFC 9110);
//! - `api`: the HTTP routes ([`app`]) and the one error type that becomes a response;
//! - `metrics`: the Prometheus families, registered in the registry made by `main`;
//! - `watch`: the reload loop (poll every `--watch-interval`, and re-read everything on SIGHUP);
//! - `lib.rs` (this file): [`AppState`] and [`run`], the server on a listener the caller bound;
//! - `main.rs`: flags, logging, the registry, binding, signals and the exit code.

mod api;
pub mod cli;
pub mod discover;
pub mod etag;
pub mod metrics;
pub mod tables;
pub mod watch;

#[cfg(test)]
mod testutil;

use std::future::Future;
use std::sync::Arc;

use prometheus::Registry;
use tokio::net::TcpListener;

pub use api::{app, ApiError};
pub use metrics::Metrics;
pub use tables::{Env, LoadError, ReloadOutcome, Tables, Trigger};

/// What every handler sees: the tables and the registry `/metrics` renders.
#[derive(Clone)]
pub struct AppState {
    pub tables: Arc<Tables>,
    pub registry: Registry,
}

impl AppState {
    pub fn new(tables: Arc<Tables>, registry: Registry) -> AppState {
        AppState { tables, registry }
    }
}

/// Serves [`app`] on `listener` until `shutdown` completes, then stops accepting and lets the
/// requests in flight finish before returning.
///
/// The caller binds the listener (tests bind port 0) and picks the shutdown signal.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
