//! The table as written: every field optional where a default exists, unknown keys rejected.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    pub version: u64,
    #[serde(default)]
    pub services: BTreeMap<String, RawService>,
    pub lab: Option<RawLab>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub endpoints: RawEndpoints,
    pub lb: Option<String>,
    pub hash_header: Option<String>,
    pub panic_threshold_percent: Option<u32>,
    pub health_check: Option<RawHealthCheck>,
    pub timeouts: Option<RawTimeouts>,
    pub retries: Option<RawRetries>,
    pub breaker: Option<RawBreaker>,
    pub faults: Option<Vec<crate::faults::RawFault>>,
}

/// `"dns:HOST:PORT"` or `["HOST:PORT", ...]`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "endpoints as \"dns:HOST:PORT\" or a list of \"HOST:PORT\" strings"
)]
pub enum RawEndpoints {
    Dns(String),
    Static(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect_ms: Option<u64>,
    pub per_try_ms: Option<u64>,
    pub request_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub attempts: Option<u32>,
    pub on: Option<Vec<String>>,
    pub backoff_ms: Option<[u64; 2]>,
    pub budget: Option<RawBudget>,
    pub max_body_bytes: Option<u64>,
    pub hedge_after_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub ratio: Option<f64>,
    pub min_per_s: Option<u32>,
    pub window_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub healthy: Option<u32>,
    pub unhealthy: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub consecutive_failures: Option<u32>,
    pub base_ejection_ms: Option<u64>,
    pub max_ejection_ms: Option<u64>,
    pub max_ejected_percent: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub max_pending: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLab {
    pub entry: String,
    #[serde(default)]
    pub services: BTreeMap<String, RawLabService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLabService {
    pub replicas: Option<u32>,
    pub calls: Option<Vec<String>>,
    pub latency_ms: Option<u64>,
    pub jitter_ms: Option<u64>,
    pub error_rate: Option<f64>,
    pub error_status: Option<u16>,
}
