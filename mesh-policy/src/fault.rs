//! Fault decisions: which request (or try) gets which of a service's faults, and how long a
//! delay fault holds it. Pure: the request comes in as its method, path and a field lookup,
//! time as `now`, randomness as the caller's seeded `rng`, so a run is reproducible.
//!
//! The faults are tried in the order the table lists them; the first whose window is open, whose
//! match holds and whose selection picks the request is the one injected (one fault per try, as
//! Istio's route-level faults). Units: `percent` draws once per try that matches; `every` counts
//! the tries that match, per sidecar; `first_tries` picks the first tries of every request, so a
//! retry policy meets the fault exactly that many times.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use mesh_table::faults::{Abort, Delay, Fault, Select, Side};
use rand::Rng;

/// A service's faults for one side, as a sidecar holds them between table swaps.
#[derive(Debug)]
pub struct Faults {
    list: Vec<Armed>,
    /// When the table carrying them was installed: the origin of every window.
    installed: Instant,
}

#[derive(Debug)]
struct Armed {
    fault: Fault,
    /// The tries that matched so far (for `every`).
    matched: AtomicU64,
}

/// What a request looks like to a fault's match.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a [u8],
    /// The first value of a field by its lower-case name.
    pub field: &'a dyn Fn(&str) -> Option<&'a [u8]>,
}

/// The fault a try gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected<'f> {
    /// The fault's name, which it is counted and logged under.
    pub name: &'f str,
    /// Hold the try this long first.
    pub delay: Option<Duration>,
    /// Then answer this instead of sending the try.
    pub abort: Option<&'f Abort>,
}

impl Faults {
    /// The faults of `faults` that `side` injects, armed from `installed`.
    pub fn new(faults: &[Fault], side: Side, installed: Instant) -> Faults {
        Faults {
            list: faults
                .iter()
                .filter(|f| f.side == side)
                .map(|f| Armed {
                    fault: f.clone(),
                    matched: AtomicU64::new(0),
                })
                .collect(),
            installed,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The fault try number `try_n` (0 for the first try) of `req` gets at `now`, if any.
    pub fn decide<R: Rng + ?Sized>(
        &self,
        req: &Request<'_>,
        try_n: u32,
        now: Instant,
        rng: &mut R,
    ) -> Option<Injected<'_>> {
        let since = now.saturating_duration_since(self.installed);
        self.list.iter().find_map(|a| {
            let f = &a.fault;
            let open = f.window.is_none_or(|w| {
                let from = Duration::from_millis(w.after_ms);
                since >= from
                    && w.for_ms
                        .is_none_or(|d| since < from + Duration::from_millis(d))
            });
            if !open || !matches(f, req) {
                return None;
            }
            let picked = match f.select {
                Select::Percent(p) => p >= 100.0 || rng.random::<f64>() * 100.0 < p,
                Select::Every(n) => (a.matched.fetch_add(1, Relaxed) + 1) % n == 0,
                Select::FirstTries(n) => try_n < n,
            };
            picked.then(|| Injected {
                name: &f.name,
                delay: f.delay.map(|d| delay(d, rng)),
                abort: f.abort.as_ref(),
            })
        })
    }
}

fn matches(f: &Fault, req: &Request<'_>) -> bool {
    let m = &f.matches;
    m.method.as_deref().is_none_or(|me| me == req.method)
        && m.path_prefix
            .as_deref()
            .is_none_or(|p| req.path.starts_with(p.as_bytes()))
        && m.headers
            .iter()
            .all(|(name, value)| (req.field)(name) == Some(value.as_bytes()))
}

/// One draw of a delay.
pub fn delay<R: Rng + ?Sized>(d: Delay, rng: &mut R) -> Duration {
    let ms = match d {
        Delay::Fixed { ms } => ms as f64,
        Delay::Uniform { min_ms, max_ms } => {
            min_ms as f64 + rng.random::<f64>() * (max_ms - min_ms) as f64
        }
        Delay::Normal { mean_ms, stddev_ms } => {
            // Box-Muller; below zero is no delay.
            let u1 = 1.0 - rng.random::<f64>();
            let u2 = rng.random::<f64>();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (mean_ms as f64 + z * stddev_ms as f64).max(0.0)
        }
        Delay::Pareto {
            scale_ms,
            shape,
            max_ms,
        } => {
            let u = 1.0 - rng.random::<f64>();
            (scale_ms as f64 / u.powf(1.0 / shape)).min(max_ms as f64)
        }
    };
    Duration::from_micros((ms * 1000.0) as u64)
}

#[cfg(test)]
mod tests;
