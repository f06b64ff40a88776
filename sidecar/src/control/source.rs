//! Where routing tables come from: the control plane (conditional GET every poll interval) or a
//! file (reread when its modification time or size changes).
//!
//! Every fetched table is validated before it is built; one that does not validate is rejected
//! with every error recorded on the status, and the last good table keeps serving. The same
//! background loop re-resolves DNS endpoints every `dns_refresh`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use mesh_table::Table;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::state::{Mesh, Routes};

/// Where tables come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// `GET {base}/v1/envs/{env}/table` with `If-None-Match`.
    ControlPlane { url: String },
    /// A TOML file on disk.
    File { path: PathBuf },
}

impl Origin {
    pub fn control_plane(base: &str, env: &str) -> Origin {
        Origin::ControlPlane {
            url: format!("{}/v1/envs/{env}/table", base.trim_end_matches('/')),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Origin::ControlPlane { url } => format!("control-plane {url}"),
            Origin::File { path } => format!("file {}", path.display()),
        }
    }
}

/// The background task that keeps the routes current.
pub struct TableSource {
    mesh: Arc<Mesh>,
    origin: Origin,
    interval: Duration,
    dns_refresh: Duration,
    client: reqwest::Client,
    state: tokio::sync::Mutex<FetchState>,
}

#[derive(Default)]
struct FetchState {
    /// The ETag of the last table received, valid or not (sent as `If-None-Match`).
    etag: Option<String>,
    /// Set when the table with `etag` was rejected: a 304 then still means "invalid".
    rejected: bool,
    /// The file's (mtime, len) when last read.
    file_stamp: Option<(SystemTime, u64)>,
}

/// What one poll did.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    Installed(u64),
    Unchanged,
    Rejected,
    Failed,
}

impl TableSource {
    pub fn new(mesh: Arc<Mesh>, origin: Origin, interval: Duration, dns_refresh: Duration) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(interval.clamp(Duration::from_secs(1), Duration::from_secs(5)))
            .build()
            .expect("an HTTP client without TLS always builds");
        TableSource {
            mesh,
            origin,
            interval,
            dns_refresh,
            client,
            state: tokio::sync::Mutex::new(FetchState::default()),
        }
    }

    /// Fetches once and installs the table when it is new and valid.
    pub async fn poll_once(&self) -> Polled {
        let mut st = self.state.lock().await;
        let fetched = match &self.origin {
            Origin::ControlPlane { url } => self.fetch_http(url, &mut st).await,
            Origin::File { path } => fetch_file(path, &mut st).await,
        };
        let now = SystemTime::now();
        match fetched {
            Err(e) => {
                self.mesh.update_status(|s| {
                    s.last_poll = Some(now);
                    s.polls += 1;
                    s.poll_errors += 1;
                    if s.last_error.as_deref() != Some(&e) {
                        tracing::warn!(error = %e, "table fetch failed; keeping the last good table");
                    }
                    s.last_error = Some(e);
                });
                Polled::Failed
            }
            Ok(None) => {
                let rejected = st.rejected;
                self.mesh.update_status(|s| {
                    s.last_poll = Some(now);
                    s.polls += 1;
                    if !rejected {
                        s.last_success = Some(now);
                        s.last_error = None;
                    }
                });
                Polled::Unchanged
            }
            Ok(Some((text, is_json))) => {
                let parsed = if is_json {
                    Table::from_json_str(&text)
                } else {
                    Table::from_toml_str(&text)
                };
                match parsed {
                    Err(e) => {
                        st.rejected = true;
                        let lines = e.lines();
                        tracing::error!(
                            source = %self.origin.describe(),
                            errors = %lines.join("; "),
                            "rejected an invalid routing table; keeping the last good one"
                        );
                        self.mesh.update_status(|s| {
                            s.last_poll = Some(now);
                            s.polls += 1;
                            s.tables_rejected += 1;
                            s.last_error = Some(format!("rejected an invalid table: {e}"));
                            s.rejected = lines;
                        });
                        Polled::Rejected
                    }
                    Ok(table) => {
                        st.rejected = false;
                        let version = table.version;
                        let previous = self.mesh.routes();
                        let routes = Routes::build(table, previous.as_deref(), &self.mesh).await;
                        self.mesh.install(routes);
                        tracing::info!(version, source = %self.origin.describe(), "routing table installed");
                        let etag = st.etag.clone();
                        self.mesh.update_status(|s| {
                            s.last_poll = Some(now);
                            s.last_success = Some(now);
                            s.last_change = Some(now);
                            s.polls += 1;
                            s.etag = etag;
                            s.last_error = None;
                            s.rejected.clear();
                        });
                        Polled::Installed(version)
                    }
                }
            }
        }
    }

    /// `Ok(None)`: not modified. `Ok(Some((body, is_json)))`: a table to validate.
    async fn fetch_http(
        &self,
        url: &str,
        st: &mut FetchState,
    ) -> Result<Option<(String, bool)>, String> {
        let mut req = self.client.get(url);
        if let Some(etag) = &st.etag {
            req = req.header("if-none-match", etag);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("control plane unreachable at {url}: {}", error_chain(&e)))?;
        match resp.status().as_u16() {
            304 => Ok(None),
            200 => {
                let etag = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = resp
                    .text()
                    .await
                    .map_err(|e| format!("reading the table from {url}: {}", error_chain(&e)))?;
                st.etag = etag;
                Ok(Some((body, true)))
            }
            status => {
                let body = resp.text().await.unwrap_or_default();
                Err(format!(
                    "control plane answered {status} for {url}: {}",
                    body.trim().chars().take(200).collect::<String>()
                ))
            }
        }
    }

    /// Re-resolves every DNS service concurrently, beside the polling (a slow resolver must
    /// not delay tables). A refresh still running from the last round is not started twice:
    /// `Balancer::refresh` serialises itself.
    fn refresh_dns(&self) {
        if let Some(routes) = self.mesh.routes() {
            for r in routes.services().filter(|r| r.is_dynamic()) {
                let r = r.clone();
                tokio::spawn(async move { r.refresh_endpoints().await });
            }
        }
    }
}

async fn fetch_file(path: &PathBuf, st: &mut FetchState) -> Result<Option<(String, bool)>, String> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("cannot read table file {}: {e}", path.display()))?;
    let stamp = (
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.len(),
    );
    if st.file_stamp == Some(stamp) {
        return Ok(None);
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("cannot read table file {}: {e}", path.display()))?;
    st.file_stamp = Some(stamp);
    Ok(Some((text, false)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[async_trait]
impl BackgroundService for TableSource {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut poll = tokio::time::interval(self.interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dns = tokio::time::interval(self.dns_refresh);
        dns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        dns.tick().await; // the first build already resolved every name
        loop {
            tokio::select! {
                _ = poll.tick() => { self.poll_once().await; }
                _ = dns.tick() => self.refresh_dns(),
                _ = shutdown.changed() => return,
            }
        }
    }
}
