//! Head sampling, decided once per trace from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
//!
//! The names and defaults are the OpenTelemetry SDK's (`parentbased_always_on` when unset). A
//! parent-based sampler keeps the caller's decision (the `sampled` flag of its `traceparent`);
//! a root decision by ratio compares the low 63 bits of the trace id with `ratio * 2^63`, the
//! SDK's own rule, so every hop of a trace that starts a root decision agrees.

use crate::context::TraceParent;
use crate::ConfigError;

/// How a root span (no parent) is decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    /// Sampled when the trace id falls under this fraction.
    Ratio(f64),
}

/// The sampler of one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Follow the parent's `sampled` flag when there is a parent.
    pub parent_based: bool,
    pub root: Root,
}

impl Default for Sampler {
    /// `parentbased_always_on`, the SDK's default.
    fn default() -> Self {
        Sampler {
            parent_based: true,
            root: Root::AlwaysOn,
        }
    }
}

impl Sampler {
    /// Reads the two standard variables' values (`None`: unset).
    pub fn from_vars(sampler: Option<&str>, arg: Option<&str>) -> Result<Sampler, ConfigError> {
        let ratio = || -> Result<f64, ConfigError> {
            let Some(raw) = arg else { return Ok(1.0) };
            match raw.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(ConfigError::new(
                    "OTEL_TRACES_SAMPLER_ARG",
                    raw,
                    "a sampling ratio between 0 and 1, e.g. 0.01",
                )),
            }
        };
        let name = sampler.map(str::trim).unwrap_or("parentbased_always_on");
        let (parent_based, root) = match name {
            "always_on" => (false, Root::AlwaysOn),
            "always_off" => (false, Root::AlwaysOff),
            "traceidratio" => (false, Root::Ratio(ratio()?)),
            "parentbased_always_on" | "" => (true, Root::AlwaysOn),
            "parentbased_always_off" => (true, Root::AlwaysOff),
            "parentbased_traceidratio" => (true, Root::Ratio(ratio()?)),
            other => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_SAMPLER",
                    other,
                    "one of always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio",
                ))
            }
        };
        Ok(Sampler { parent_based, root })
    }

    /// The same sampler as the SDK's, for spans made through its tracer.
    pub fn to_sdk(&self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler as S;
        let root = match self.root {
            Root::AlwaysOn => S::AlwaysOn,
            Root::AlwaysOff => S::AlwaysOff,
            Root::Ratio(r) => S::TraceIdRatioBased(r),
        };
        if self.parent_based {
            S::ParentBased(Box::new(root))
        } else {
            root
        }
    }

    /// Whether a span of trace `trace_id` under `parent` (the caller's context, if any) is
    /// sampled. No allocation, no lock.
    pub fn sample(&self, parent: Option<&TraceParent>, trace_id: &[u8; 16]) -> bool {
        if self.parent_based {
            if let Some(p) = parent {
                return p.sampled;
            }
        }
        match self.root {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::Ratio(r) => ratio_sampled(r, trace_id),
        }
    }
}

/// The SDK's `TraceIdRatioBased` rule.
fn ratio_sampled(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(sampled: bool) -> TraceParent {
        TraceParent {
            trace_id: [7; 16],
            span_id: [1; 8],
            sampled,
        }
    }

    #[test]
    fn the_standard_names_parse() {
        let s = Sampler::from_vars(Some("parentbased_traceidratio"), Some("0.01")).unwrap();
        assert_eq!(s.root, Root::Ratio(0.01), "ratio from the argument");
        assert!(s.parent_based, "parent based");
        assert_eq!(
            Sampler::from_vars(None, None).unwrap(),
            Sampler::default(),
            "unset is parentbased_always_on"
        );
        assert_eq!(
            Sampler::from_vars(Some("traceidratio"), None).unwrap().root,
            Root::Ratio(1.0),
            "a ratio without argument samples everything, as the SDK does"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = Sampler::from_vars(Some("parentbased_traceidratio"), Some("1.5")).unwrap_err();
        assert!(
            e.to_string().contains("OTEL_TRACES_SAMPLER_ARG") && e.to_string().contains("1.5"),
            "{e}"
        );
        let e = Sampler::from_vars(Some("sometimes"), None).unwrap_err();
        assert!(e.to_string().contains("OTEL_TRACES_SAMPLER="), "{e}");
        assert!(
            Sampler::from_vars(Some("traceidratio"), Some("abc")).is_err(),
            "not a number"
        );
    }

    #[test]
    fn a_parent_decides_for_parent_based_samplers() {
        let ratio0 = Sampler::from_vars(Some("parentbased_traceidratio"), Some("0")).unwrap();
        assert!(
            ratio0.sample(Some(&tp(true)), &[0; 16]),
            "sampled parent wins"
        );
        assert!(
            !ratio0.sample(None, &[0xff; 16]),
            "a root at ratio 0 is not sampled"
        );
        let on = Sampler::from_vars(Some("parentbased_always_on"), None).unwrap();
        assert!(
            !on.sample(Some(&tp(false)), &[0; 16]),
            "unsampled parent wins"
        );
        let always = Sampler::from_vars(Some("always_on"), None).unwrap();
        assert!(
            always.sample(Some(&tp(false)), &[0; 16]),
            "always_on ignores the parent"
        );
    }

    #[test]
    fn the_ratio_samples_about_that_fraction_of_trace_ids() {
        let s = Sampler::from_vars(Some("traceidratio"), Some("0.25")).unwrap();
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| s.sample(None, &crate::context::new_trace_id(&mut rng)))
            .count();
        let frac = hits as f64 / n as f64;
        assert!(
            (0.23..0.27).contains(&frac),
            "sampled {frac} of random trace ids"
        );
    }
}
