//! The control plane's Prometheus families, registered in the one registry `main` builds.
//!
//! - `meshlab_cp_table_requests_total{env,result}`: table requests by outcome (`200`, `304`,
//!   `404`). Requests for an unknown environment are counted under `env="_unknown"` (not a DNS
//!   label, so it cannot clash with a real one): any client can send any name, and a label per
//!   name would let it grow the series without bound.
//! - `meshlab_cp_reloads_total{env}`: tables re-read after start that validated and are served.
//! - `meshlab_cp_reload_errors_total{env}`: tables re-read after start that were rejected.
//! - `meshlab_cp_table_version{env}`: the `version` of the table being served.
//! - `meshlab_cp_table_loaded_timestamp_seconds{env}`: when that table was loaded (Unix time).

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The `env` label of requests for an environment that does not exist.
pub const UNKNOWN_ENV: &str = "_unknown";

/// Handles on every family; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: IntCounterVec,
    reloads: IntCounterVec,
    reload_errors: IntCounterVec,
    version: IntGaugeVec,
    loaded_at: GaugeVec,
    unknown: IntCounter,
}

/// The request counters of one environment, looked up once at load so that serving a table
/// costs an atomic increment and no label hashing.
#[derive(Clone, Debug)]
pub struct EnvCounters {
    pub ok: IntCounter,
    pub not_modified: IntCounter,
}

impl Metrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "meshlab_cp_table_requests_total",
                "Table requests by environment and result (200, 304, 404).",
            ),
            &["env", "result"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "meshlab_cp_reloads_total",
                "Tables re-read after start that validated and replaced the served one.",
            ),
            &["env"],
        )?;
        let reload_errors = IntCounterVec::new(
            Opts::new(
                "meshlab_cp_reload_errors_total",
                "Tables re-read after start that did not validate; the previous one is served.",
            ),
            &["env"],
        )?;
        let version = IntGaugeVec::new(
            Opts::new(
                "meshlab_cp_table_version",
                "The version of the table being served.",
            ),
            &["env"],
        )?;
        let loaded_at = GaugeVec::new(
            Opts::new(
                "meshlab_cp_table_loaded_timestamp_seconds",
                "When the table being served was loaded, in seconds since the Unix epoch.",
            ),
            &["env"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(reload_errors.clone()))?;
        registry.register(Box::new(version.clone()))?;
        registry.register(Box::new(loaded_at.clone()))?;
        let unknown = requests.with_label_values(&[UNKNOWN_ENV, "404"]);
        Ok(Metrics {
            requests,
            reloads,
            reload_errors,
            version,
            loaded_at,
            unknown,
        })
    }

    /// The 200 and 304 counters of `env`.
    pub fn env_counters(&self, env: &str) -> EnvCounters {
        EnvCounters {
            ok: self.requests.with_label_values(&[env, "200"]),
            not_modified: self.requests.with_label_values(&[env, "304"]),
        }
    }

    /// Counts a request for an environment that does not exist.
    pub fn unknown_env(&self) {
        self.unknown.inc();
    }

    /// Records that `env` now serves `version`, loaded at `at`. Creates the reload counters at 0
    /// so they exist before the first reload.
    pub fn loaded(&self, env: &str, version: u64, at: SystemTime) {
        self.version
            .with_label_values(&[env])
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.loaded_at.with_label_values(&[env]).set(secs);
        self.reloads.with_label_values(&[env]);
        self.reload_errors.with_label_values(&[env]);
    }

    /// Counts a successful reload of `env`.
    pub fn reloaded(&self, env: &str) {
        self.reloads.with_label_values(&[env]).inc();
    }

    /// Counts a rejected reload of `env`.
    pub fn reload_failed(&self, env: &str) {
        self.reload_errors.with_label_values(&[env]).inc();
    }
}
