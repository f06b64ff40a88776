//! Faults a service's table can carry: HTTP faults (delay, abort) that the sidecars inject into
//! matching requests, on the callers' side (outbound) or the service's own (inbound), each with a
//! name, a selection (a share of requests, every n-th, the first tries of each request) and an
//! optional time window.
//!
//! ```toml
//! [[services.c.faults]]
//! name = "slow-c"
//! side = "outbound"          # the callers' sidecars (default); "inbound": c's own
//! percent = 50               # of matching requests (default 100); or every = 3; or first_tries = 2
//! after_ms = 0               # active from this long after the table is installed ...
//! for_ms = 5000              # ... for this long, then gone (default: no end)
//! delay = { fixed_ms = 200 } # or { min_ms, max_ms } (uniform), { mean_ms, stddev_ms } (normal),
//!                            # or { scale_ms, shape, max_ms } (Pareto tail)
//! abort = { status = 503, body = "overloaded", grpc_status = 14 }
//! match = { path_prefix = "/api", method = "GET", headers = { "x-user" = "test" } }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::InvalidField;

/// The longest delay a fault may add (ms): a fault is for seeing a system under stress, not for
/// holding a connection forever.
pub const MAX_DELAY_MS: u64 = 600_000;
/// The Pareto samples' cap when the table sets none (ms).
pub const DEFAULT_PARETO_MAX_MS: u64 = 60_000;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_tries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<RawDelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<RawAbort>,
    #[serde(rename = "match")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<RawMatch>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelay {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stddev_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<f64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAbort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// One named fault of a service. Serialized in the form the table is written in, so the JSON
/// a control plane serves reads back as the same fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub name: String,
    pub side: Side,
    pub select: Select,
    /// When it is active, from the moment the table is installed; `None`: always.
    pub window: Option<Window>,
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
    pub matches: Match,
}

impl Fault {
    /// The fault as a table writes it.
    pub fn to_raw(&self) -> RawFault {
        let (percent, every, first_tries) = match self.select {
            Select::Percent(p) => (Some(p), None, None),
            Select::Every(n) => (None, Some(n), None),
            Select::FirstTries(n) => (None, None, Some(n)),
        };
        let delay = self.delay.map(|d| match d {
            Delay::Fixed { ms } => RawDelay {
                fixed_ms: Some(ms),
                ..RawDelay::default()
            },
            Delay::Uniform { min_ms, max_ms } => RawDelay {
                min_ms: Some(min_ms),
                max_ms: Some(max_ms),
                ..RawDelay::default()
            },
            Delay::Normal { mean_ms, stddev_ms } => RawDelay {
                mean_ms: Some(mean_ms),
                stddev_ms: Some(stddev_ms),
                ..RawDelay::default()
            },
            Delay::Pareto {
                scale_ms,
                shape,
                max_ms,
            } => RawDelay {
                scale_ms: Some(scale_ms),
                shape: Some(shape),
                max_ms: Some(max_ms),
                ..RawDelay::default()
            },
        });
        let m = &self.matches;
        let any_match = m.path_prefix.is_some() || m.method.is_some() || !m.headers.is_empty();
        RawFault {
            name: Some(self.name.clone()),
            side: Some(
                match self.side {
                    Side::Outbound => "outbound",
                    Side::Inbound => "inbound",
                }
                .into(),
            ),
            percent,
            every,
            first_tries,
            after_ms: self.window.map(|w| w.after_ms),
            for_ms: self.window.and_then(|w| w.for_ms),
            delay,
            abort: self.abort.as_ref().map(|a| RawAbort {
                status: Some(a.status),
                body: a.body.clone(),
                grpc_status: a.grpc_status,
            }),
            matches: any_match.then(|| RawMatch {
                path_prefix: m.path_prefix.clone(),
                method: m.method.clone(),
                headers: m.headers.clone(),
            }),
        }
    }
}

impl Serialize for Fault {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_raw().serialize(s)
    }
}

/// Which sidecar injects the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The callers' sidecars, on their requests to the service (as Istio's faults).
    Outbound,
    /// The service's own sidecar, on the requests it fronts.
    Inbound,
}

/// Which of the matching requests (or tries) get the fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Select {
    /// This share of them, drawn per request (0 to 100).
    Percent(f64),
    /// Every n-th one (counted per sidecar).
    Every(u64),
    /// The first n tries of every request: its retries meet the fault n times.
    FirstTries(u32),
}

/// When a fault is active: from `after_ms` after its table is installed, for `for_ms` (no end
/// when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub after_ms: u64,
    pub for_ms: Option<u64>,
}

/// How long a delay fault holds a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delay {
    Fixed {
        ms: u64,
    },
    Uniform {
        min_ms: u64,
        max_ms: u64,
    },
    Normal {
        mean_ms: u64,
        stddev_ms: u64,
    },
    /// A heavy tail: `scale_ms` is the least delay, `shape` the tail (smaller: heavier), samples
    /// capped at `max_ms`.
    Pareto {
        scale_ms: u64,
        shape: f64,
        max_ms: u64,
    },
}

/// What an abort fault answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub status: u16,
    pub body: Option<String>,
    /// Also a `grpc-status` header with this code (a gRPC caller reads it, not the status).
    pub grpc_status: Option<u32>,
}

/// Which requests a fault applies to: all of these that are set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    pub path_prefix: Option<String>,
    /// Exactly this method (methods are case-sensitive).
    pub method: Option<String>,
    /// Each header (lower-case name) with exactly this value.
    pub headers: BTreeMap<String, String>,
}

/// Validates a service's faults, pushing every problem found with its path.
pub fn compile_faults(raw: Vec<RawFault>, path: &str, errs: &mut Vec<InvalidField>) -> Vec<Fault> {
    let mut out: Vec<Fault> = Vec::with_capacity(raw.len());
    for (i, f) in raw.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Some(fault) = compile_fault(f, &p, errs) {
            if out.iter().any(|o| o.name == fault.name) {
                errs.push(InvalidField::new(
                    &format!("{p}.name"),
                    format!("{:?} names another fault of this service", fault.name),
                ));
            }
            out.push(fault);
        }
    }
    out
}

fn compile_fault(f: RawFault, p: &str, errs: &mut Vec<InvalidField>) -> Option<Fault> {
    let before = errs.len();
    let name = match f.name {
        Some(n) if is_fault_name(&n) => n,
        Some(n) => {
            errs.push(InvalidField::new(
                &format!("{p}.name"),
                format!("{n:?}: use 1 to 63 lower-case letters, digits and '-'"),
            ));
            n
        }
        None => {
            errs.push(InvalidField::new(
                &format!("{p}.name"),
                "every fault needs a name (it is counted and logged under it)",
            ));
            String::new()
        }
    };
    let side = match f.side.as_deref() {
        None | Some("outbound") => Side::Outbound,
        Some("inbound") => Side::Inbound,
        Some(s) => {
            errs.push(InvalidField::new(
                &format!("{p}.side"),
                format!("{s:?}: expected \"outbound\" or \"inbound\""),
            ));
            Side::Outbound
        }
    };
    let select = match (f.percent, f.every, f.first_tries) {
        (None, None, None) => Select::Percent(100.0),
        (Some(pc), None, None) => {
            if !(0.0..=100.0).contains(&pc) {
                errs.push(InvalidField::new(
                    &format!("{p}.percent"),
                    format!("{pc} is outside 0..100"),
                ));
            }
            Select::Percent(pc)
        }
        (None, Some(n), None) => {
            if n == 0 {
                errs.push(InvalidField::new(
                    &format!("{p}.every"),
                    "must be at least 1",
                ));
            }
            Select::Every(n)
        }
        (None, None, Some(n)) => {
            if n == 0 {
                errs.push(InvalidField::new(
                    &format!("{p}.first_tries"),
                    "must be at least 1",
                ));
            }
            Select::FirstTries(n)
        }
        _ => {
            errs.push(InvalidField::new(
                p,
                "set one of percent, every and first_tries, not several",
            ));
            Select::Percent(100.0)
        }
    };
    let window = match (f.after_ms, f.for_ms) {
        (None, None) => None,
        (after, for_ms) => {
            if for_ms == Some(0) {
                errs.push(InvalidField::new(
                    &format!("{p}.for_ms"),
                    "must be at least 1",
                ));
            }
            Some(Window {
                after_ms: after.unwrap_or(0),
                for_ms,
            })
        }
    };
    let delay = f
        .delay
        .and_then(|d| compile_delay(d, &format!("{p}.delay"), errs));
    let abort = f.abort.and_then(|a| {
        let ap = format!("{p}.abort");
        let status = match a.status {
            Some(s) if (200..=599).contains(&s) => s,
            Some(s) => {
                errs.push(InvalidField::new(
                    &format!("{ap}.status"),
                    format!("{s} is not a final status (200..599)"),
                ));
                return None;
            }
            None => {
                errs.push(InvalidField::new(
                    &format!("{ap}.status"),
                    "an abort needs a status",
                ));
                return None;
            }
        };
        if a.grpc_status.is_some_and(|g| g > 16) {
            errs.push(InvalidField::new(
                &format!("{ap}.grpc_status"),
                "gRPC status codes are 0..16",
            ));
        }
        Some(Abort {
            status,
            body: a.body,
            grpc_status: a.grpc_status,
        })
    });
    if delay.is_none() && abort.is_none() && errs.len() == before {
        errs.push(InvalidField::new(
            p,
            "a fault needs a delay, an abort, or both",
        ));
    }
    let matches = f.matches.map_or_else(Match::default, |m| {
        let mp = format!("{p}.match");
        if m.path_prefix
            .as_ref()
            .is_some_and(|pp| !pp.starts_with('/'))
        {
            errs.push(InvalidField::new(
                &format!("{mp}.path_prefix"),
                "a path prefix starts with '/'",
            ));
        }
        if m.method
            .as_ref()
            .is_some_and(|me| me.is_empty() || !me.bytes().all(|b| b.is_ascii_uppercase()))
        {
            errs.push(InvalidField::new(
                &format!("{mp}.method"),
                "a method in upper case, e.g. \"GET\"",
            ));
        }
        let mut headers = BTreeMap::new();
        for (name, value) in m.headers {
            if !crate::is_header_name(&name) {
                errs.push(InvalidField::new(
                    &format!("{mp}.headers.{name}"),
                    "not a valid header name",
                ));
            }
            headers.insert(name.to_ascii_lowercase(), value);
        }
        Match {
            path_prefix: m.path_prefix,
            method: m.method,
            headers,
        }
    });
    (errs.len() == before).then_some(Fault {
        name,
        side,
        select,
        window,
        delay,
        abort,
        matches,
    })
}

fn compile_delay(d: RawDelay, p: &str, errs: &mut Vec<InvalidField>) -> Option<Delay> {
    let delay = match d {
        RawDelay {
            fixed_ms: Some(ms),
            min_ms: None,
            max_ms: None,
            mean_ms: None,
            stddev_ms: None,
            scale_ms: None,
            shape: None,
        } => Delay::Fixed { ms },
        RawDelay {
            fixed_ms: None,
            min_ms: Some(min_ms),
            max_ms: Some(max_ms),
            mean_ms: None,
            stddev_ms: None,
            scale_ms: None,
            shape: None,
        } => {
            if min_ms > max_ms {
                errs.push(InvalidField::new(p, "min_ms is above max_ms"));
            }
            Delay::Uniform { min_ms, max_ms }
        }
        RawDelay {
            fixed_ms: None,
            min_ms: None,
            max_ms: None,
            mean_ms: Some(mean_ms),
            stddev_ms: Some(stddev_ms),
            scale_ms: None,
            shape: None,
        } => Delay::Normal { mean_ms, stddev_ms },
        RawDelay {
            fixed_ms: None,
            min_ms: None,
            max_ms,
            mean_ms: None,
            stddev_ms: None,
            scale_ms: Some(scale_ms),
            shape: Some(shape),
        } => {
            if !(shape > 0.0 && shape.is_finite()) {
                errs.push(InvalidField::new(
                    &format!("{p}.shape"),
                    format!("{shape}: a Pareto shape is above 0"),
                ));
            }
            let max_ms = max_ms.unwrap_or(DEFAULT_PARETO_MAX_MS.max(scale_ms));
            if max_ms < scale_ms {
                errs.push(InvalidField::new(
                    &format!("{p}.max_ms"),
                    "below scale_ms, the least delay",
                ));
            }
            Delay::Pareto {
                scale_ms,
                shape,
                max_ms,
            }
        }
        _ => {
            errs.push(InvalidField::new(
                p,
                "one of { fixed_ms }, { min_ms, max_ms } (uniform), { mean_ms, stddev_ms } \
                 (normal) or { scale_ms, shape, max_ms } (Pareto)",
            ));
            return None;
        }
    };
    let most = match delay {
        Delay::Fixed { ms } => ms,
        Delay::Uniform { max_ms, .. } => max_ms,
        Delay::Normal { mean_ms, .. } => mean_ms,
        Delay::Pareto { max_ms, .. } => max_ms,
    };
    if most > MAX_DELAY_MS {
        errs.push(InvalidField::new(
            p,
            format!("{most} ms is more than the {MAX_DELAY_MS} ms a fault may add"),
        ));
    }
    Some(delay)
}

/// A fault name: what metrics label and log it by.
fn is_fault_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
