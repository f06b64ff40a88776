//! Counting the load's outcomes: a [`Tally`] per window (the live line each second) and one
//! for the whole run (the summary), latencies in an HDR histogram.
//!
//! Latency is recorded for every request that was sent and ended (a success, an error status,
//! a timeout or a broken connection), from just before sending to the end of the body, so
//! slow failures show in the percentiles. Requests that were never sent (`overload-local`,
//! `unfinished`) count as failed but have no latency.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::children::{Crash, UncleanStop};

/// Failure reason of a request not sent because `--concurrency` requests were in flight.
pub const OVERLOAD_LOCAL: &str = "overload-local";
/// Failure reason of a request still in flight when the run ended and the drain timed out.
pub const UNFINISHED: &str = "unfinished";

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A 2xx response, fully read.
    Ok { latency: Duration },
    /// Anything else: a status (`503`, or `503 <x-mesh-error>`), or a reason (`timeout`,
    /// `connect-error`, `transport-error`, [`OVERLOAD_LOCAL`], [`UNFINISHED`]).
    Failed {
        reason: String,
        latency: Option<Duration>,
    },
}

impl Outcome {
    pub fn failed(reason: impl Into<String>, latency: Option<Duration>) -> Outcome {
        Outcome::Failed {
            reason: reason.into(),
            latency,
        }
    }
}

/// Counts and latencies of a set of requests.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latencies in microseconds.
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    /// Failed requests by status or reason.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            // 1 µs to 1 h at 3 significant digits; larger values are clamped.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Tally {
    pub fn record(&mut self, o: &Outcome) {
        let latency = match o {
            Outcome::Ok { latency } => {
                self.ok += 1;
                Some(*latency)
            }
            Outcome::Failed { reason, latency } => {
                *self.errors.entry(reason.clone()).or_default() += 1;
                *latency
            }
        };
        if let Some(l) = latency {
            let us = u64::try_from(l.as_micros()).unwrap_or(u64::MAX).max(1);
            self.latency_us.saturating_record(us);
        }
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn requests(&self) -> u64 {
        self.ok + self.failed()
    }

    /// The latency at quantile `q` (0..=1) in milliseconds; `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (!self.latency_us.is_empty()).then(|| self.latency_us.value_at_quantile(q) as f64 / 1e3)
    }

    pub fn max_ms(&self) -> Option<f64> {
        (!self.latency_us.is_empty()).then(|| self.latency_us.max() as f64 / 1e3)
    }

    /// Share of successes in percent; `None` without requests.
    pub fn ok_percent(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| self.ok as f64 * 100.0 / n as f64)
    }
}

/// The shared recorder: the current one-second window and the whole run.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<(Tally, Tally)>,
}

impl Recorder {
    pub fn record(&self, o: Outcome) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.record(&o);
        g.1.record(&o);
    }

    /// The current window, replaced by an empty one.
    pub fn take_window(&self) -> Tally {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut g.0)
    }

    /// The whole run so far.
    pub fn total(&self) -> Tally {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}ms"))
}

/// The live line of one window: `t=5s rps=200 ok=100.0% p50=2.1ms p99=8.3ms`.
pub fn live_line(t: Duration, window: &Tally, window_len: Duration) -> String {
    let secs = window_len.as_secs_f64().max(1e-3);
    format!(
        "t={}s rps={:.0} ok={} p50={} p99={}",
        t.as_secs_f64().round() as u64,
        window.requests() as f64 / secs,
        window
            .ok_percent()
            .map_or("-".into(), |p| format!("{p:.1}%")),
        ms(window.quantile_ms(0.5)),
        ms(window.quantile_ms(0.99)),
    )
}

/// The run's result, printed as text or (with `--json`) as one JSON object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub env: String,
    /// How long load was sent, in seconds.
    pub duration_s: f64,
    /// Requests per second achieved: requests that ended (success or failure) per second.
    pub rps: f64,
    pub target_rps: u32,
    pub concurrency: u32,
    /// Requests due by the pacer: `ok + failed`.
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    /// Failed requests by status (`503`, `503 <x-mesh-error>`) or reason.
    pub errors: BTreeMap<String, u64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Whether the run was ended by a signal rather than `--duration`.
    pub interrupted: bool,
    /// Children that exited on their own during the run.
    pub crashed: Vec<Crash>,
    /// Children that did not exit cleanly when stopped.
    pub unclean_stop: Vec<UncleanStop>,
    pub run_dir: PathBuf,
    /// Spans received and the slowest trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traces: Option<crate::traces::TraceReport>,
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

impl Summary {
    /// Builds the summary of `total` over `duration` of load.
    pub fn new(env: &str, total: &Tally, duration: Duration, target_rps: u32) -> Summary {
        let secs = duration.as_secs_f64();
        Summary {
            env: env.to_owned(),
            duration_s: round3(secs),
            rps: if secs > 0.0 {
                round3(total.requests() as f64 / secs)
            } else {
                0.0
            },
            target_rps,
            concurrency: 0,
            requests: total.requests(),
            ok: total.ok,
            failed: total.failed(),
            errors: total.errors.clone(),
            p50_ms: total.quantile_ms(0.5).map(round3),
            p90_ms: total.quantile_ms(0.9).map(round3),
            p99_ms: total.quantile_ms(0.99).map(round3),
            max_ms: total.max_ms().map(round3),
            interrupted: false,
            crashed: Vec::new(),
            unclean_stop: Vec::new(),
            run_dir: PathBuf::new(),
            traces: None,
        }
    }

    /// The summary for people.
    pub fn text(&self) -> String {
        let pct = if self.requests > 0 {
            format!("{:.2}%", self.ok as f64 * 100.0 / self.requests as f64)
        } else {
            "-".into()
        };
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let mut s = format!(
            "summary: env={} duration={:.1}s{} requests={} ok={} ({pct}) failed={} \
             rps={:.1} (target {})\n",
            self.env,
            self.duration_s,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
            self.requests,
            self.ok,
            self.failed,
            self.rps,
            self.target_rps,
        );
        s.push_str(&format!(
            "latency ms: p50={} p90={} p99={} max={}\n",
            f(self.p50_ms),
            f(self.p90_ms),
            f(self.p99_ms),
            f(self.max_ms)
        ));
        if !self.errors.is_empty() {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            s.push_str(&format!("failed by status/reason: {}\n", e.join(", ")));
        }
        for c in &self.crashed {
            s.push_str(&format!(
                "crashed: {} (pid {}, {}); log: {}\n",
                c.name,
                c.pid,
                c.status,
                c.log.display()
            ));
        }
        for u in &self.unclean_stop {
            s.push_str(&format!("unclean stop: {} ({})\n", u.name, u.status));
        }
        s.push_str(&format!("run dir: {}\n", self.run_dir.display()));
        if let Some(t) = &self.traces {
            s.push_str(&t.text());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_ms(ms: u64) -> Outcome {
        Outcome::Ok {
            latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut t = Tally::default();
        for ms in 1..=100 {
            t.record(&ok_ms(ms));
        }
        let close = |got: Option<f64>, want: f64, what: &str| {
            let got = got.unwrap_or_else(|| panic!("{what} has a value"));
            assert!(
                (got - want).abs() <= want * 0.001 + 0.01,
                "{what}: got {got}, want {want} (3 significant digits)"
            );
        };
        close(t.quantile_ms(0.5), 50.0, "p50 of 1..=100 ms");
        close(t.quantile_ms(0.9), 90.0, "p90");
        close(t.quantile_ms(0.99), 99.0, "p99");
        close(t.max_ms(), 100.0, "max");
        assert_eq!(t.requests(), 100, "every request counted");
        assert_eq!(t.ok_percent(), Some(100.0), "all ok");
    }

    #[test]
    fn failures_count_by_reason_and_unsent_ones_have_no_latency() {
        let mut t = Tally::default();
        t.record(&ok_ms(2));
        t.record(&Outcome::failed("503", Some(Duration::from_millis(4))));
        t.record(&Outcome::failed("503", Some(Duration::from_millis(6))));
        t.record(&Outcome::failed(OVERLOAD_LOCAL, None));
        assert_eq!(t.requests(), 4, "requests include failures");
        assert_eq!(t.failed(), 3, "three failed");
        assert_eq!(t.errors["503"], 2, "by status");
        assert_eq!(t.errors[OVERLOAD_LOCAL], 1, "by reason");
        assert_eq!(
            t.latency_us.len(),
            3,
            "only sent requests have a latency sample"
        );
        assert_eq!(t.ok_percent(), Some(25.0), "ok share");
    }

    #[test]
    fn empty_tally_has_no_percentiles() {
        let t = Tally::default();
        assert_eq!(t.quantile_ms(0.5), None, "no p50 without samples");
        assert_eq!(t.ok_percent(), None, "no ok share without requests");
        assert_eq!(
            live_line(Duration::from_secs(3), &t, Duration::from_secs(1)),
            "t=3s rps=0 ok=- p50=- p99=-",
            "an empty window still prints a line"
        );
    }

    #[test]
    fn live_line_format() {
        let mut t = Tally::default();
        for _ in 0..199 {
            t.record(&ok_ms(2));
        }
        t.record(&Outcome::failed("timeout", Some(Duration::from_millis(8))));
        let line = live_line(Duration::from_secs(5), &t, Duration::from_secs(1));
        assert_eq!(
            line, "t=5s rps=200 ok=99.5% p50=2.0ms p99=2.0ms",
            "the live line"
        );
    }

    #[test]
    fn recorder_windows_reset_but_total_keeps_counting() {
        let r = Recorder::default();
        r.record(ok_ms(1));
        r.record(ok_ms(1));
        assert_eq!(r.take_window().requests(), 2, "first window");
        r.record(ok_ms(1));
        assert_eq!(r.take_window().requests(), 1, "second window starts empty");
        assert_eq!(r.total().requests(), 3, "the total has all of them");
    }

    #[test]
    fn summary_json_has_the_documented_keys() {
        let mut t = Tally::default();
        t.record(&ok_ms(3));
        t.record(&Outcome::failed("502", Some(Duration::from_millis(5))));
        let s = Summary::new("dev", &t, Duration::from_secs(2), 100);
        let v = serde_json::to_value(&s).expect("serializes");
        for key in [
            "env",
            "duration_s",
            "rps",
            "requests",
            "ok",
            "failed",
            "errors",
            "p50_ms",
            "p99_ms",
            "crashed",
        ] {
            assert!(v.get(key).is_some(), "summary JSON has {key:?}: {v}");
        }
        assert_eq!(v["requests"], 2, "requests");
        assert_eq!(v["rps"], 1.0, "2 requests over 2 s");
        assert_eq!(v["errors"]["502"], 1, "errors map");
        let text = s.text();
        assert!(
            text.contains("requests=2 ok=1 (50.00%) failed=1") && text.contains("502: 1"),
            "the text summary: {text}"
        );
    }
}
