//! The routing table shared by the control plane and the sidecar.
//!
//! A table is written by hand as TOML (one file per environment), served by the control plane as
//! JSON, and read back by every sidecar. Both directions go through the same two steps:
//!
//! 1. **parse** into the raw types of [`raw`] (serde, `deny_unknown_fields`: a misspelt key is an
//!    error, not a silently ignored setting);
//! 2. **compile** the raw table into [`Table`], running every check and collecting *every* error
//!    with the path of the offending item (`services.b.retries.attempts: must be 1..=10, got 0`),
//!    so an operator sees all of them at once.
//!
//! Only a compiled [`Table`] exists outside this crate, so holding one means it validated.
//!
//! Layout:
//! - `raw`: the serde shapes of the file, with optional fields;
//! - `lib.rs` (this file): the validated types, defaults and [`Table::compile`];
//! - `error`: [`TableError`] and [`InvalidField`].

mod error;
pub mod faults;
pub mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub use error::{InvalidField, TableError};
use serde::Serialize;

/// Defaults applied where a table says nothing. The README lists them.
pub mod defaults {
    pub const CONNECT_MS: u64 = 1_000;
    pub const REQUEST_MS: u64 = 15_000;
    pub const ATTEMPTS: u32 = 2;
    pub const BACKOFF_BASE_MS: u64 = 25;
    pub const BACKOFF_CAP_MS: u64 = 250;
    pub const CONSECUTIVE_FAILURES: u32 = 5;
    pub const BASE_EJECTION_MS: u64 = 30_000;
    pub const MAX_EJECTED_PERCENT: u32 = 50;
    pub const MAX_EJECTION_MS: u64 = 300_000;
    pub const MAX_CONCURRENT: u32 = 1_024;
    pub const MAX_PENDING: u32 = 1_024;
    pub const BUDGET_RATIO: f64 = 0.2;
    pub const BUDGET_MIN_PER_S: u32 = 10;
    pub const BUDGET_WINDOW_MS: u64 = 10_000;
    pub const MAX_BODY_BYTES: u64 = 64 * 1024;
    pub const PANIC_THRESHOLD_PERCENT: u32 = 50;
    pub const HEALTH_INTERVAL_MS: u64 = 1_000;
    pub const HEALTH_TIMEOUT_MS: u64 = 500;
    pub const HEALTHY_THRESHOLD: u32 = 2;
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    pub const HEALTH_PATH: &str = "/healthz";
    pub const REPLICAS: u32 = 1;
    pub const ERROR_STATUS: u16 = 503;
}

/// A validated routing table for one environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    /// Bumped by the operator on every change; the ETag is derived from it and the content.
    pub version: u64,
    /// Routing policy per service name.
    pub services: BTreeMap<String, Service>,
    /// How the local lab runs this environment (ignored by sidecars).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lab: Option<Lab>,
}

/// One service's routing policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub endpoints: Endpoints,
    pub lb: Lb,
    /// The request header whose value `ring-hash` hashes (required with `ring-hash`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// Below this share of usable endpoints, balance across all of them (Envoy's panic
    /// threshold); 0 disables it.
    pub panic_threshold_percent: u32,
    pub timeouts: Timeouts,
    pub retries: Retries,
    pub breaker: Breaker,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Faults injected into requests to the service (`faults`), in the order written: the
    /// first that applies to a request is the one injected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<faults::Fault>,
}

/// Active health checking of every endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// `http` (GET `path`, healthy on 2xx) or `tcp` (a connection is accepted).
    pub kind: HealthCheckKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive successes that make an unhealthy endpoint healthy again.
    pub healthy: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub unhealthy: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthCheckKind {
    Http,
    Tcp,
}

/// Where a service's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoints {
    /// A fixed list of `host:port` addresses.
    Static(Vec<String>),
    /// A DNS name resolved by the sidecar (headless Service in Kubernetes), every address on `port`.
    Dns { host: String, port: u16 },
}

impl Serialize for Endpoints {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Endpoints::Static(list) => list.serialize(s),
            Endpoints::Dns { host, port } => s.serialize_str(&format!("dns:{host}:{port}")),
        }
    }
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lb {
    RoundRobin,
    Random,
    /// Power of two choices: the one with fewer requests in flight.
    P2cLeastRequest,
    /// Power of two choices on peak-EWMA latency x requests in flight (Linkerd's default).
    P2cEwma,
    /// Consistent hashing (Ketama) on the value of `hash_header`.
    RingHash,
}

impl Lb {
    pub const NAMES: &'static [&'static str] = &[
        "round-robin",
        "random",
        "p2c-least-request",
        "p2c-ewma",
        "ring-hash",
    ];

    fn parse(s: &str) -> Option<Lb> {
        match s {
            "round-robin" => Some(Lb::RoundRobin),
            "random" => Some(Lb::Random),
            "p2c-least-request" => Some(Lb::P2cLeastRequest),
            "p2c-ewma" => Some(Lb::P2cEwma),
            "ring-hash" => Some(Lb::RingHash),
            _ => None,
        }
    }
}

/// Timeouts of one service's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// TCP connect to one endpoint.
    pub connect_ms: u64,
    /// One attempt: from sending the request to the end of the response headers, and between
    /// reads of the body. `None`: bounded only by `request_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_ms: Option<u64>,
    /// The whole request, every attempt included.
    pub request_ms: u64,
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub fn per_try(&self) -> Option<Duration> {
        self.per_try_ms.map(Duration::from_millis)
    }
    pub fn request(&self) -> Duration {
        Duration::from_millis(self.request_ms)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: defaults::CONNECT_MS,
            per_try_ms: None,
            request_ms: defaults::REQUEST_MS,
        }
    }
}

/// A condition under which a failed attempt may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// The TCP connection could not be made: nothing reached the endpoint.
    ConnectFailure,
    /// The connection broke before a response arrived.
    Reset,
    /// Any 5xx status.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// One specific status code.
    Status(u16),
}

impl RetryOn {
    fn parse(s: &str) -> Option<RetryOn> {
        Some(match s {
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "5xx" => RetryOn::ServerError,
            "gateway-error" => RetryOn::GatewayError,
            code => match code.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => RetryOn::Status(c),
                _ => return None,
            },
        })
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::ConnectFailure => f.write_str("connect-failure"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::ServerError => f.write_str("5xx"),
            RetryOn::GatewayError => f.write_str("gateway-error"),
            RetryOn::Status(c) => write!(f, "{c}"),
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Retry policy of one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retries {
    /// Total tries, the first one included.
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    /// Exponential backoff between tries: `[base, cap]`.
    pub backoff_ms: [u64; 2],
    pub budget: Budget,
    /// Request bodies up to this size are buffered for replay; larger ones are not retried.
    pub max_body_bytes: u64,
    /// Send a second try to another endpoint when the first has not answered after this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedge_after_ms: Option<u64>,
}

/// Retries may add at most `ratio` of the requests in the window, plus `min_per_s`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Budget {
    pub ratio: f64,
    pub min_per_s: u32,
    pub window_ms: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            ratio: defaults::BUDGET_RATIO,
            min_per_s: defaults::BUDGET_MIN_PER_S,
            window_ms: defaults::BUDGET_WINDOW_MS,
        }
    }
}

impl Retries {
    /// Whether a failure of this kind may be retried at all (the attempt count is checked apart).
    pub fn retries_on(&self, cond: RetryOn) -> bool {
        self.on.contains(&cond)
    }

    /// Whether a response with this status may be retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.on.iter().any(|c| match *c {
            RetryOn::ServerError => (500..=599).contains(&status),
            RetryOn::GatewayError => matches!(status, 502..=504),
            RetryOn::Status(s) => s == status,
            RetryOn::ConnectFailure | RetryOn::Reset => false,
        })
    }
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: defaults::ATTEMPTS,
            on: vec![RetryOn::ConnectFailure, RetryOn::GatewayError],
            backoff_ms: [defaults::BACKOFF_BASE_MS, defaults::BACKOFF_CAP_MS],
            budget: Budget::default(),
            max_body_bytes: defaults::MAX_BODY_BYTES,
            hedge_after_ms: None,
        }
    }
}

/// Outlier detection (per endpoint) and the concurrency limit (per service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Breaker {
    pub consecutive_failures: u32,
    pub base_ejection_ms: u64,
    /// Cap of `base_ejection_ms` x times ejected.
    pub max_ejection_ms: u64,
    pub max_ejected_percent: u32,
    /// In-flight requests to the service; past it (and `max_pending`), 503 overflow at once.
    pub max_concurrent: u32,
    /// Requests that may wait for a free slot once `max_concurrent` are in flight.
    pub max_pending: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            consecutive_failures: defaults::CONSECUTIVE_FAILURES,
            base_ejection_ms: defaults::BASE_EJECTION_MS,
            max_ejection_ms: defaults::MAX_EJECTION_MS,
            max_ejected_percent: defaults::MAX_EJECTED_PERCENT,
            max_concurrent: defaults::MAX_CONCURRENT,
            max_pending: defaults::MAX_PENDING,
        }
    }
}

/// How the local lab runs an environment: the entry service and each demo service's behaviour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lab {
    pub entry: String,
    pub services: BTreeMap<String, LabService>,
}

/// One demo service in the lab.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabService {
    pub replicas: u32,
    pub calls: Vec<String>,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub error_rate: f64,
    pub error_status: u16,
}

impl Table {
    /// Parses and validates a TOML table.
    pub fn from_toml_str(s: &str) -> Result<Table, TableError> {
        let raw: raw::RawTable = toml::from_str(s).map_err(|e| TableError::Syntax {
            format: "TOML",
            message: e.to_string().trim_end().to_owned(),
        })?;
        Table::compile(raw)
    }

    /// Parses and validates a JSON table (what the control plane serves).
    pub fn from_json_str(s: &str) -> Result<Table, TableError> {
        let raw: raw::RawTable = serde_json::from_str(s).map_err(|e| TableError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?;
        Table::compile(raw)
    }

    /// The table as JSON, in the shape [`Table::from_json_str`] reads back.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a table always serializes")
    }

    /// Runs every check on a raw table and builds the validated one, or returns every error.
    pub fn compile(raw: raw::RawTable) -> Result<Table, TableError> {
        let mut errs = Vec::new();
        let mut services = BTreeMap::new();
        let declared: Vec<String> = raw.services.keys().cloned().collect();
        if raw.services.is_empty() {
            errs.push(InvalidField::new(
                "services",
                "a table needs at least one service",
            ));
        }
        for (name, svc) in raw.services {
            let path = format!("services.{name}");
            if let Err(why) = check_name(&name) {
                errs.push(InvalidField::new(&path, why));
            }
            if let Some(s) = compile_service(&path, svc, &mut errs) {
                services.insert(name, s);
            }
        }
        let lab = raw.lab.map(|l| compile_lab(l, &declared, &mut errs));
        if errs.is_empty() {
            Ok(Table {
                version: raw.version,
                services,
                lab,
            })
        } else {
            Err(TableError::Invalid(errs))
        }
    }
}

/// Service names are DNS labels: they appear in Host headers and Kubernetes names.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "service name {name:?} must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
        ))
    }
}

fn compile_service(
    path: &str,
    raw: raw::RawService,
    errs: &mut Vec<InvalidField>,
) -> Option<Service> {
    let before = errs.len();
    let endpoints = compile_endpoints(&format!("{path}.endpoints"), raw.endpoints, errs);
    let lb = match raw.lb.as_deref() {
        None => Lb::RoundRobin,
        Some(s) => Lb::parse(s).unwrap_or_else(|| {
            errs.push(InvalidField::new(
                &format!("{path}.lb"),
                format!(
                    "unknown balancer {s:?}; expected one of {}",
                    Lb::NAMES.join(", ")
                ),
            ));
            Lb::RoundRobin
        }),
    };
    let hash_header = raw.hash_header;
    match (&hash_header, lb) {
        (None, Lb::RingHash) => errs.push(InvalidField::new(
            &format!("{path}.hash_header"),
            "ring-hash needs the name of the request header to hash, e.g. hash_header = \"x-user-id\"",
        )),
        (Some(_), lb) if lb != Lb::RingHash => errs.push(InvalidField::new(
            &format!("{path}.hash_header"),
            "only used with lb = \"ring-hash\"",
        )),
        (Some(h), _) if !is_header_name(h) => errs.push(InvalidField::new(
            &format!("{path}.hash_header"),
            format!("{h:?} is not a valid header name"),
        )),
        _ => {}
    }
    let panic_threshold_percent = raw
        .panic_threshold_percent
        .unwrap_or(defaults::PANIC_THRESHOLD_PERCENT);
    range_u64(
        errs,
        &format!("{path}.panic_threshold_percent"),
        panic_threshold_percent.into(),
        0,
        100,
    );
    let timeouts = compile_timeouts(&format!("{path}.timeouts"), raw.timeouts, errs);
    let retries = compile_retries(&format!("{path}.retries"), raw.retries, errs);
    if let Some(h) = retries.hedge_after_ms {
        if h >= timeouts.request_ms {
            errs.push(InvalidField::new(
                &format!("{path}.retries.hedge_after_ms"),
                format!(
                    "({h}) must be less than timeouts.request_ms ({})",
                    timeouts.request_ms
                ),
            ));
        }
    }
    let breaker = compile_breaker(&format!("{path}.breaker"), raw.breaker, errs);
    let health_check = raw
        .health_check
        .map(|h| compile_health(&format!("{path}.health_check"), h, errs));
    let faults = faults::compile_faults(
        raw.faults.unwrap_or_default(),
        &format!("{path}.faults"),
        errs,
    );
    if errs.len() > before {
        return None;
    }
    Some(Service {
        endpoints: endpoints?,
        lb,
        hash_header: hash_header.map(|h| h.to_ascii_lowercase()),
        panic_threshold_percent,
        timeouts,
        retries,
        breaker,
        health_check,
        faults,
    })
}

pub(crate) fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn compile_health(
    path: &str,
    raw: raw::RawHealthCheck,
    errs: &mut Vec<InvalidField>,
) -> HealthCheck {
    let kind = match raw.kind.as_deref() {
        None | Some("http") => HealthCheckKind::Http,
        Some("tcp") => HealthCheckKind::Tcp,
        Some(k) => {
            errs.push(InvalidField::new(
                &format!("{path}.kind"),
                format!("unknown kind {k:?}; expected http or tcp"),
            ));
            HealthCheckKind::Http
        }
    };
    let hc_path = match kind {
        HealthCheckKind::Http => {
            let p = raw.path.unwrap_or_else(|| defaults::HEALTH_PATH.to_owned());
            if !p.starts_with('/') || p.contains(char::is_whitespace) {
                errs.push(InvalidField::new(
                    &format!("{path}.path"),
                    format!("{p:?} must be an absolute path like /healthz"),
                ));
            }
            Some(p)
        }
        HealthCheckKind::Tcp => {
            if raw.path.is_some() {
                errs.push(InvalidField::new(
                    &format!("{path}.path"),
                    "a tcp check has no path",
                ));
            }
            None
        }
    };
    let interval_ms = range_u64(
        errs,
        &format!("{path}.interval_ms"),
        raw.interval_ms.unwrap_or(defaults::HEALTH_INTERVAL_MS),
        10,
        3_600_000,
    );
    let timeout_ms = range_u64(
        errs,
        &format!("{path}.timeout_ms"),
        raw.timeout_ms.unwrap_or(defaults::HEALTH_TIMEOUT_MS),
        1,
        60_000,
    );
    let healthy = raw.healthy.unwrap_or(defaults::HEALTHY_THRESHOLD);
    range_u64(errs, &format!("{path}.healthy"), healthy.into(), 1, 100);
    let unhealthy = raw.unhealthy.unwrap_or(defaults::UNHEALTHY_THRESHOLD);
    range_u64(errs, &format!("{path}.unhealthy"), unhealthy.into(), 1, 100);
    HealthCheck {
        kind,
        path: hc_path,
        interval_ms,
        timeout_ms,
        healthy,
        unhealthy,
    }
}

fn compile_endpoints(
    path: &str,
    raw: raw::RawEndpoints,
    errs: &mut Vec<InvalidField>,
) -> Option<Endpoints> {
    match raw {
        raw::RawEndpoints::Dns(s) => {
            let Some(rest) = s.strip_prefix("dns:") else {
                errs.push(InvalidField::new(
                    path,
                    format!(
                        "{s:?} is neither \"dns:HOST:PORT\" nor a list of \"HOST:PORT\" addresses"
                    ),
                ));
                return None;
            };
            match split_host_port(rest) {
                Ok((host, port)) => Some(Endpoints::Dns {
                    host: host.to_owned(),
                    port,
                }),
                Err(why) => {
                    errs.push(InvalidField::new(path, format!("{s:?}: {why}")));
                    None
                }
            }
        }
        raw::RawEndpoints::Static(list) => {
            if list.is_empty() {
                errs.push(InvalidField::new(path, "the list of endpoints is empty"));
                return None;
            }
            let mut ok = true;
            for (i, addr) in list.iter().enumerate() {
                if let Err(why) = split_host_port(addr) {
                    errs.push(InvalidField::new(
                        &format!("{path}[{i}]"),
                        format!("{addr:?}: {why}"),
                    ));
                    ok = false;
                }
            }
            ok.then_some(Endpoints::Static(list))
        }
    }
}

/// Splits `host:port` (IPv6 as `[::1]:80`), checking both halves.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| "expected HOST:PORT".to_owned())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("bad host {host:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(format!("port must be 1..=65535, got {port:?}")),
    }
}

fn range_u64(errs: &mut Vec<InvalidField>, path: &str, v: u64, lo: u64, hi: u64) -> u64 {
    if !(lo..=hi).contains(&v) {
        errs.push(InvalidField::new(
            path,
            format!("must be {lo}..={hi}, got {v}"),
        ));
    }
    v
}

fn compile_timeouts(
    path: &str,
    raw: Option<raw::RawTimeouts>,
    errs: &mut Vec<InvalidField>,
) -> Timeouts {
    let d = Timeouts::default();
    let Some(raw) = raw else { return d };
    let connect_ms = range_u64(
        errs,
        &format!("{path}.connect_ms"),
        raw.connect_ms.unwrap_or(d.connect_ms),
        1,
        60_000,
    );
    let request_ms = range_u64(
        errs,
        &format!("{path}.request_ms"),
        raw.request_ms.unwrap_or(d.request_ms),
        1,
        3_600_000,
    );
    let per_try_ms = raw
        .per_try_ms
        .map(|v| range_u64(errs, &format!("{path}.per_try_ms"), v, 1, 3_600_000));
    if let Some(p) = per_try_ms {
        if p > request_ms {
            errs.push(InvalidField::new(
                &format!("{path}.per_try_ms"),
                format!("({p}) must not exceed request_ms ({request_ms}): one try cannot outlive the request"),
            ));
        }
    }
    Timeouts {
        connect_ms,
        per_try_ms,
        request_ms,
    }
}

fn compile_retries(
    path: &str,
    raw: Option<raw::RawRetries>,
    errs: &mut Vec<InvalidField>,
) -> Retries {
    let d = Retries::default();
    let Some(raw) = raw else { return d };
    let attempts = raw.attempts.unwrap_or(d.attempts);
    if !(1..=10).contains(&attempts) {
        errs.push(InvalidField::new(
            &format!("{path}.attempts"),
            format!("must be 1..=10, got {attempts}"),
        ));
    }
    let on = match raw.on {
        None => d.on,
        Some(list) => {
            let mut on = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                match RetryOn::parse(s) {
                    Some(c) if !on.contains(&c) => on.push(c),
                    Some(_) => errs.push(InvalidField::new(&format!("{path}.on[{i}]"), format!("{s:?} is listed twice"))),
                    None => errs.push(InvalidField::new(
                        &format!("{path}.on[{i}]"),
                        format!("unknown condition {s:?}; expected connect-failure, reset, 5xx, gateway-error or a status code 100..=599"),
                    )),
                }
            }
            on
        }
    };
    let backoff_ms = raw.backoff_ms.unwrap_or(d.backoff_ms);
    let [base, cap] = backoff_ms;
    if base == 0 || base > cap || cap > 60_000 {
        errs.push(InvalidField::new(
            &format!("{path}.backoff_ms"),
            format!("must be [base, cap] with 1 <= base <= cap <= 60000, got [{base}, {cap}]"),
        ));
    }
    let budget = match raw.budget {
        None => Budget::default(),
        Some(b) => {
            let d = Budget::default();
            let ratio = b.ratio.unwrap_or(d.ratio);
            if !(0.0..=10.0).contains(&ratio) {
                errs.push(InvalidField::new(
                    &format!("{path}.budget.ratio"),
                    format!("must be between 0 and 10, got {ratio}"),
                ));
            }
            let min_per_s = b.min_per_s.unwrap_or(d.min_per_s);
            range_u64(
                errs,
                &format!("{path}.budget.min_per_s"),
                min_per_s.into(),
                0,
                1_000_000,
            );
            let window_ms = range_u64(
                errs,
                &format!("{path}.budget.window_ms"),
                b.window_ms.unwrap_or(d.window_ms),
                1_000,
                600_000,
            );
            Budget {
                ratio,
                min_per_s,
                window_ms,
            }
        }
    };
    let max_body_bytes = range_u64(
        errs,
        &format!("{path}.max_body_bytes"),
        raw.max_body_bytes.unwrap_or(d.max_body_bytes),
        0,
        16 * 1024 * 1024,
    );
    let hedge_after_ms = raw
        .hedge_after_ms
        .map(|h| range_u64(errs, &format!("{path}.hedge_after_ms"), h, 1, 3_600_000));
    Retries {
        attempts,
        on,
        backoff_ms,
        budget,
        max_body_bytes,
        hedge_after_ms,
    }
}

fn compile_breaker(
    path: &str,
    raw: Option<raw::RawBreaker>,
    errs: &mut Vec<InvalidField>,
) -> Breaker {
    let d = Breaker::default();
    let Some(raw) = raw else { return d };
    let cf = raw.consecutive_failures.unwrap_or(d.consecutive_failures);
    range_u64(
        errs,
        &format!("{path}.consecutive_failures"),
        cf.into(),
        1,
        1_000,
    );
    let base = range_u64(
        errs,
        &format!("{path}.base_ejection_ms"),
        raw.base_ejection_ms.unwrap_or(d.base_ejection_ms),
        1,
        3_600_000,
    );
    let max_ejection = range_u64(
        errs,
        &format!("{path}.max_ejection_ms"),
        raw.max_ejection_ms.unwrap_or(d.max_ejection_ms),
        1,
        86_400_000,
    );
    if max_ejection < base {
        errs.push(InvalidField::new(
            &format!("{path}.max_ejection_ms"),
            format!("({max_ejection}) must be at least base_ejection_ms ({base})"),
        ));
    }
    let pct = raw.max_ejected_percent.unwrap_or(d.max_ejected_percent);
    range_u64(
        errs,
        &format!("{path}.max_ejected_percent"),
        pct.into(),
        0,
        100,
    );
    let mc = raw.max_concurrent.unwrap_or(d.max_concurrent);
    range_u64(
        errs,
        &format!("{path}.max_concurrent"),
        mc.into(),
        1,
        1_000_000,
    );
    let mp = raw.max_pending.unwrap_or(d.max_pending);
    range_u64(
        errs,
        &format!("{path}.max_pending"),
        mp.into(),
        0,
        1_000_000,
    );
    Breaker {
        consecutive_failures: cf,
        base_ejection_ms: base,
        max_ejection_ms: max_ejection,
        max_ejected_percent: pct,
        max_concurrent: mc,
        max_pending: mp,
    }
}

fn compile_lab(raw: raw::RawLab, declared: &[String], errs: &mut Vec<InvalidField>) -> Lab {
    // Names declared under [services], valid or not: a service with a bad field has its own
    // errors already, so only names missing from the table altogether are flagged here.
    let known = |n: &str| declared.iter().any(|d| d == n);
    if !raw.services.contains_key(&raw.entry) {
        errs.push(InvalidField::new(
            "lab.entry",
            format!("{:?} is not a service of [lab.services]", raw.entry),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, s) in &raw.services {
        let path = format!("lab.services.{name}");
        if !known(name) {
            errs.push(InvalidField::new(
                &path,
                format!("{name:?} has no [services.{name}] routing entry"),
            ));
        }
        let replicas = s.replicas.unwrap_or(defaults::REPLICAS);
        range_u64(errs, &format!("{path}.replicas"), replicas.into(), 1, 32);
        for (i, c) in s.calls.iter().flatten().enumerate() {
            if !raw.services.contains_key(c) {
                errs.push(InvalidField::new(
                    &format!("{path}.calls[{i}]"),
                    format!("{c:?} is not a service of [lab.services]"),
                ));
            } else if c == name {
                errs.push(InvalidField::new(
                    &format!("{path}.calls[{i}]"),
                    "a service cannot call itself",
                ));
            }
        }
        let error_rate = s.error_rate.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&error_rate) {
            errs.push(InvalidField::new(
                &format!("{path}.error_rate"),
                format!("must be between 0 and 1, got {error_rate}"),
            ));
        }
        let error_status = s.error_status.unwrap_or(defaults::ERROR_STATUS);
        range_u64(
            errs,
            &format!("{path}.error_status"),
            error_status.into(),
            400,
            599,
        );
        out.insert(
            name.clone(),
            LabService {
                replicas,
                calls: s.calls.clone().unwrap_or_default(),
                latency_ms: range_u64(
                    errs,
                    &format!("{path}.latency_ms"),
                    s.latency_ms.unwrap_or(0),
                    0,
                    60_000,
                ),
                jitter_ms: range_u64(
                    errs,
                    &format!("{path}.jitter_ms"),
                    s.jitter_ms.unwrap_or(0),
                    0,
                    60_000,
                ),
                error_rate,
                error_status,
            },
        );
    }
    if let Some(cycle) = find_cycle(&out) {
        errs.push(InvalidField::new(
            "lab.services",
            format!("calls form a cycle: {}", cycle.join(" -> ")),
        ));
    }
    Lab {
        entry: raw.entry,
        services: out,
    }
}

/// A call cycle would make every request recurse until it times out.
fn find_cycle(services: &BTreeMap<String, LabService>) -> Option<Vec<String>> {
    fn visit<'a>(
        n: &'a str,
        services: &'a BTreeMap<String, LabService>,
        stack: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| *s == n) {
            let mut c: Vec<String> = stack[pos..].iter().map(|s| s.to_string()).collect();
            c.push(n.to_owned());
            return Some(c);
        }
        if done.contains(&n) {
            return None;
        }
        stack.push(n);
        for c in services.get(n).map(|s| s.calls.as_slice()).unwrap_or(&[]) {
            if let Some(cycle) = visit(c, services, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.push(n);
        None
    }
    let mut done = Vec::new();
    for name in services.keys() {
        if let Some(c) = visit(name, services, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests;
