//! What the service does with each request: the [`Behaviour`] knobs, their validation, the
//! `PUT /behaviour` patch format and the pure per-request decision ([`decide`]).
//!
//! Nothing here touches sockets or clocks; randomness comes in as a `&mut impl Rng` so tests
//! can drive it with a seeded generator.

use std::fmt;
use std::time::Duration;

use rand::Rng;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

/// Upper bound for `latency_ms` and `jitter_ms` (one hour), so that the microsecond arithmetic in
/// [`jittered_latency`] can never overflow and a typo cannot park requests for days.
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// Upper bound on the number of downstream calls made for one request.
pub const MAX_CALLS: usize = 32;

/// The run-time behaviour of the service; `GET /behaviour` returns it as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Behaviour {
    /// Base delay before answering, in milliseconds.
    pub latency_ms: u64,
    /// Uniform jitter added to the latency: the delay is drawn from
    /// `[latency - jitter, latency + jitter]`, clamped at zero.
    pub jitter_ms: u64,
    /// Probability (0..=1) that a request is answered with `error_status` (an injected error).
    pub error_rate: f64,
    /// Status of injected errors, 400..=599.
    pub error_status: u16,
    /// Services called (through the sidecar) on each request.
    pub calls: Vec<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            jitter_ms: 0,
            error_rate: 0.0,
            error_status: 503,
            calls: Vec::new(),
        }
    }
}

/// One field of [`Behaviour`]; names it in error messages, as a JSON field or a CLI flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    LatencyMs,
    JitterMs,
    ErrorRate,
    ErrorStatus,
    Calls,
}

impl Field {
    /// The field's name in the `/behaviour` JSON.
    pub fn json_name(self) -> &'static str {
        match self {
            Field::LatencyMs => "latency_ms",
            Field::JitterMs => "jitter_ms",
            Field::ErrorRate => "error_rate",
            Field::ErrorStatus => "error_status",
            Field::Calls => "calls",
        }
    }

    /// The command-line flag that sets the field.
    pub fn flag(self) -> &'static str {
        match self {
            Field::LatencyMs => "--latency-ms",
            Field::JitterMs => "--jitter-ms",
            Field::ErrorRate => "--error-rate",
            Field::ErrorStatus => "--error-status",
            Field::Calls => "--calls",
        }
    }
}

/// A behaviour value that is out of range. `Display` names the JSON field
/// (`error_rate must be between 0 and 1, got 1.5`); [`InvalidBehaviour::for_flag`] names the flag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} {problem}", field.json_name())]
pub struct InvalidBehaviour {
    pub field: Field,
    /// What is wrong, without the field name, e.g. `must be between 0 and 1, got 1.5`.
    pub problem: String,
}

impl InvalidBehaviour {
    fn new(field: Field, problem: impl fmt::Display) -> Self {
        Self {
            field,
            problem: problem.to_string(),
        }
    }

    /// The message with the CLI flag instead of the JSON field name.
    pub fn for_flag(&self) -> String {
        format!("{} {}", self.field.flag(), self.problem)
    }
}

impl Behaviour {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), InvalidBehaviour> {
        check_delay(Field::LatencyMs, self.latency_ms)?;
        check_delay(Field::JitterMs, self.jitter_ms)?;
        if !(0.0..=1.0).contains(&self.error_rate) {
            // Also catches NaN: `contains` is false for it.
            return Err(InvalidBehaviour::new(
                Field::ErrorRate,
                format_args!("must be between 0 and 1, got {}", self.error_rate),
            ));
        }
        if !(400..=599).contains(&self.error_status) {
            return Err(InvalidBehaviour::new(
                Field::ErrorStatus,
                format_args!("must be between 400 and 599, got {}", self.error_status),
            ));
        }
        if self.calls.len() > MAX_CALLS {
            return Err(InvalidBehaviour::new(
                Field::Calls,
                format_args!(
                    "may name at most {MAX_CALLS} services, got {}",
                    self.calls.len()
                ),
            ));
        }
        for name in &self.calls {
            check_service_name(name)?;
        }
        Ok(())
    }

    /// Applies `patch` to a copy of `self` and validates the result; `self` is left unchanged,
    /// so a rejected patch changes nothing.
    pub fn patched(&self, patch: BehaviourPatch) -> Result<Behaviour, InvalidBehaviour> {
        let next = Behaviour {
            latency_ms: patch.latency_ms.unwrap_or(self.latency_ms),
            jitter_ms: patch.jitter_ms.unwrap_or(self.jitter_ms),
            error_rate: patch.error_rate.unwrap_or(self.error_rate),
            error_status: patch.error_status.unwrap_or(self.error_status),
            calls: patch.calls.unwrap_or_else(|| self.calls.clone()),
        };
        next.validate()?;
        Ok(next)
    }
}

fn check_delay(field: Field, ms: u64) -> Result<(), InvalidBehaviour> {
    if ms > MAX_DELAY_MS {
        return Err(InvalidBehaviour::new(
            field,
            format_args!("must be at most {MAX_DELAY_MS} ms, got {ms}"),
        ));
    }
    Ok(())
}

/// A downstream service name becomes the authority of `http://<name>/…`: it must be a host name
/// with an optional port (`c`, `c.mesh-dev`, `c:8080`).
fn check_service_name(name: &str) -> Result<(), InvalidBehaviour> {
    let (host, port) = match name.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (name, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(InvalidBehaviour::new(
            Field::Calls,
            format_args!("entries must be service names like `c` or `c:8080`, got {name:?}"),
        ))
    }
}

/// Parses the `--calls` value: a comma-separated list of service names. The empty string means
/// "no calls" (handy for an env var that is set but empty); empty entries such as `c,,d` are
/// rejected.
pub fn parse_calls(list: &str) -> Result<Vec<String>, InvalidBehaviour> {
    if list.trim().is_empty() {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|entry| {
            let entry = entry.trim();
            check_service_name(entry).map(|()| entry.to_owned())
        })
        .collect()
}

/// The body of `PUT /behaviour`: any subset of the [`Behaviour`] fields. Unknown fields are
/// rejected and type errors name the field (`latency_ms: invalid type: …`); `null` is a type
/// error, not "leave unchanged".
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BehaviourPatch {
    #[serde(default, deserialize_with = "de_latency_ms")]
    pub latency_ms: Option<u64>,
    #[serde(default, deserialize_with = "de_jitter_ms")]
    pub jitter_ms: Option<u64>,
    #[serde(default, deserialize_with = "de_error_rate")]
    pub error_rate: Option<f64>,
    #[serde(default, deserialize_with = "de_error_status")]
    pub error_status: Option<u16>,
    #[serde(default, deserialize_with = "de_calls")]
    pub calls: Option<Vec<String>>,
}

/// A `PUT /behaviour` body that does not parse; `field` names the offending field when there is
/// one (a wrongly typed or unknown field), `message` is serde's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PatchError {
    pub field: Option<String>,
    pub message: String,
}

/// Parses a `PUT /behaviour` body (JSON) into a [`BehaviourPatch`]. The body must be a JSON
/// object (serde would otherwise also accept the struct as a positional array).
pub fn parse_patch(body: &[u8]) -> Result<BehaviourPatch, PatchError> {
    let object = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
        .map_err(|e| PatchError {
            field: None,
            message: format!("the body must be a JSON object: {e}"),
        })?;
    BehaviourPatch::deserialize(serde_json::Value::Object(object)).map_err(|e| {
        let message = e.to_string();
        let known = [
            Field::LatencyMs,
            Field::JitterMs,
            Field::ErrorRate,
            Field::ErrorStatus,
            Field::Calls,
        ]
        .into_iter()
        .map(Field::json_name)
        .find(|name| {
            message
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(": "))
        });
        let field = match known {
            Some(name) => Some(name.to_owned()),
            None => message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split_once('`'))
                .map(|(name, _)| name.to_owned()),
        };
        PatchError { field, message }
    })
}

/// Deserializes a present field as `Some(T)`, prefixing any error with the field's name.
fn named<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    field: Field,
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d)
        .map(Some)
        .map_err(|e| D::Error::custom(format_args!("{}: {e}", field.json_name())))
}

fn de_latency_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    named(Field::LatencyMs, d)
}
fn de_jitter_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    named(Field::JitterMs, d)
}
fn de_error_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    named(Field::ErrorRate, d)
}
fn de_error_status<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    named(Field::ErrorStatus, d)
}
fn de_calls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    named(Field::Calls, d)
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// How long to wait before answering (or calling downstream).
    pub delay: Duration,
    /// Whether to answer with the injected error status.
    pub inject_error: bool,
}

/// Whether [`decide`] will draw from the generator for this behaviour; callers use it to skip
/// locking a shared generator on the common no-randomness path.
pub fn needs_rng(b: &Behaviour) -> bool {
    b.jitter_ms > 0 || (b.error_rate > 0.0 && b.error_rate < 1.0)
}

/// Decides one request. Draws happen in a fixed order: first the jitter (only when
/// `jitter_ms > 0`), then the error coin (only when `0 < error_rate < 1`; rate 0 never and rate 1
/// always injects). So the same seed and behaviour give the same sequence of decisions.
pub fn decide(b: &Behaviour, rng: &mut impl Rng) -> Decision {
    let delay = jittered_latency(b.latency_ms, b.jitter_ms, rng);
    let inject_error = if b.error_rate >= 1.0 {
        true
    } else if b.error_rate <= 0.0 {
        false
    } else {
        rng.random::<f64>() < b.error_rate
    };
    Decision {
        delay,
        inject_error,
    }
}

/// `latency ± jitter`, uniform at microsecond resolution, never below zero. Inputs are bounded by
/// [`MAX_DELAY_MS`] after validation; larger values saturate rather than overflow.
pub fn jittered_latency(latency_ms: u64, jitter_ms: u64, rng: &mut impl Rng) -> Duration {
    let base_us = latency_ms.saturating_mul(1000);
    if jitter_ms == 0 {
        return Duration::from_micros(base_us);
    }
    let jitter_us = i64::try_from(jitter_ms.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let offset = rng.random_range(-jitter_us..=jitter_us);
    let us = if offset < 0 {
        base_us.saturating_sub(offset.unsigned_abs())
    } else {
        base_us.saturating_add(offset.unsigned_abs())
    };
    Duration::from_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn rng(seed: u64) -> SmallRng {
        SmallRng::seed_from_u64(seed)
    }

    #[test]
    fn latency_without_jitter_is_exact_and_draws_nothing() {
        let mut a = rng(1);
        let mut b = rng(1);
        assert_eq!(
            jittered_latency(250, 0, &mut a),
            Duration::from_millis(250),
            "no jitter means exactly the latency"
        );
        assert_eq!(
            a.random::<u64>(),
            b.random::<u64>(),
            "no draw may be made when jitter is 0"
        );
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut r = rng(7);
        let mut seen_below = false;
        let mut seen_above = false;
        for _ in 0..2000 {
            let d = jittered_latency(100, 20, &mut r);
            assert!(
                d >= Duration::from_millis(80) && d <= Duration::from_millis(120),
                "100±20 ms gave {d:?}"
            );
            seen_below |= d < Duration::from_millis(100);
            seen_above |= d > Duration::from_millis(100);
        }
        assert!(
            seen_below && seen_above,
            "jitter should go both ways over 2000 draws"
        );
    }

    #[test]
    fn jitter_never_goes_below_zero() {
        let mut r = rng(3);
        let mut zeros = 0;
        for _ in 0..2000 {
            let d = jittered_latency(5, 50, &mut r);
            assert!(
                d <= Duration::from_millis(55),
                "5±50 ms gave {d:?}, above the upper bound"
            );
            zeros += usize::from(d.is_zero());
        }
        // Offsets below -5 ms (45% of [-50, 50]) clamp to zero.
        assert!(
            (800..1000).contains(&zeros),
            "5±50 ms should clamp to 0 about 45% of the time, got {zeros}/2000 zeros"
        );
    }

    #[test]
    fn huge_values_saturate_instead_of_panicking() {
        let d = jittered_latency(u64::MAX, u64::MAX, &mut rng(1));
        assert!(
            d <= Duration::from_micros(u64::MAX),
            "saturating arithmetic keeps the delay representable"
        );
    }

    fn with_rate(rate: f64) -> Behaviour {
        Behaviour {
            error_rate: rate,
            ..Behaviour::default()
        }
    }

    #[test]
    fn error_rate_zero_and_one_are_absolute_and_draw_nothing() {
        let mut r = rng(9);
        for _ in 0..100 {
            assert!(
                !decide(&with_rate(0.0), &mut r).inject_error,
                "rate 0 never injects"
            );
            assert!(
                decide(&with_rate(1.0), &mut r).inject_error,
                "rate 1 always injects"
            );
        }
        assert!(
            !needs_rng(&with_rate(0.0)) && !needs_rng(&with_rate(1.0)),
            "rates 0 and 1 need no generator"
        );
        let mut used = rng(11);
        let mut fresh = rng(11);
        decide(&with_rate(0.0), &mut used);
        decide(&with_rate(1.0), &mut used);
        assert_eq!(
            used.random::<u64>(),
            fresh.random::<u64>(),
            "when needs_rng is false, decide must not draw"
        );
        assert!(needs_rng(&with_rate(0.5)), "rate 0.5 needs the generator");
    }

    #[test]
    fn same_seed_gives_same_decisions() {
        let b = Behaviour {
            latency_ms: 10,
            jitter_ms: 5,
            error_rate: 0.3,
            ..Behaviour::default()
        };
        let run = |seed| {
            let mut r = rng(seed);
            (0..200).map(|_| decide(&b, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42), "same seed must give the same sequence");
        assert_ne!(run(42), run(43), "different seeds should differ");
    }

    #[test]
    fn error_rate_is_roughly_honoured() {
        let b = with_rate(0.25);
        let mut r = rng(5);
        let n = 10_000;
        let hits = (0..n).filter(|_| decide(&b, &mut r).inject_error).count();
        let rate = hits as f64 / n as f64;
        assert!(
            (0.22..0.28).contains(&rate),
            "rate 0.25 over {n} draws gave {rate}"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let cases: [(Behaviour, &str); 6] = [
            (
                with_rate(1.5),
                "error_rate must be between 0 and 1, got 1.5",
            ),
            (
                with_rate(-0.1),
                "error_rate must be between 0 and 1, got -0.1",
            ),
            (
                with_rate(f64::NAN),
                "error_rate must be between 0 and 1, got NaN",
            ),
            (
                Behaviour {
                    error_status: 200,
                    ..Behaviour::default()
                },
                "error_status must be between 400 and 599, got 200",
            ),
            (
                Behaviour {
                    latency_ms: MAX_DELAY_MS + 1,
                    ..Behaviour::default()
                },
                "latency_ms must be at most 3600000 ms, got 3600001",
            ),
            (
                Behaviour {
                    calls: vec!["c/x".into()],
                    ..Behaviour::default()
                },
                "calls entries must be service names like `c` or `c:8080`, got \"c/x\"",
            ),
        ];
        for (b, want) in cases {
            let err = b.validate().expect_err(want);
            assert_eq!(err.to_string(), want, "message for {b:?}");
        }
        let err = with_rate(1.5).validate().expect_err("rate 1.5 is invalid");
        assert_eq!(
            err.for_flag(),
            "--error-rate must be between 0 and 1, got 1.5",
            "flag form of the message"
        );
        assert_eq!(
            Behaviour::default().validate(),
            Ok(()),
            "defaults are valid"
        );
    }

    #[test]
    fn parse_calls_accepts_lists_and_rejects_junk() {
        assert_eq!(parse_calls(""), Ok(vec![]), "empty means no calls");
        assert_eq!(
            parse_calls("c, d:8080,e.mesh"),
            Ok(vec![
                "c".to_owned(),
                "d:8080".to_owned(),
                "e.mesh".to_owned()
            ]),
            "entries are trimmed and kept in order"
        );
        for bad in ["c,,d", "c,", "http://c", "c:0", "c:99999", "a b", ":80"] {
            let err = parse_calls(bad).expect_err(bad);
            assert_eq!(err.field, Field::Calls, "{bad:?} is a calls problem");
        }
    }

    #[test]
    fn patch_applies_subsets_and_validates() {
        let base = Behaviour::default();
        let patch: BehaviourPatch =
            serde_json::from_str(r#"{"error_rate":0.5,"calls":["c"]}"#).expect("valid patch");
        let next = base.patched(patch).expect("valid values");
        assert_eq!(next.error_rate, 0.5, "error_rate changed");
        assert_eq!(next.calls, vec!["c".to_owned()], "calls changed");
        assert_eq!(next.error_status, 503, "error_status untouched");

        let patch: BehaviourPatch =
            serde_json::from_str(r#"{"error_status":302}"#).expect("well-typed patch");
        let err = base.patched(patch).expect_err("302 is out of range");
        assert_eq!(err.field, Field::ErrorStatus, "names error_status");
    }

    #[test]
    fn patch_parse_errors_name_the_field() {
        let cases = [
            (r#"{"latency_ms":"slow"}"#, "latency_ms: invalid type"),
            (r#"{"latency_ms":-1}"#, "latency_ms: invalid value"),
            (r#"{"error_rate":null}"#, "error_rate: invalid type: null"),
            (r#"{"calls":"c"}"#, "calls: invalid type"),
            (r#"{"error_status":70000}"#, "error_status: invalid value"),
            (r#"{"latency":5}"#, "unknown field `latency`"),
        ];
        for (body, want) in cases {
            let err = serde_json::from_str::<BehaviourPatch>(body).expect_err(body);
            assert!(
                err.to_string().starts_with(want),
                "{body} gave {err}, expected it to start with {want:?}"
            );
        }
        for (body, field) in [
            (r#"{"jitter_ms":true}"#, Some("jitter_ms")),
            (r#"{"nope":1}"#, Some("nope")),
            ("[1]", None),
            ("not json", None),
        ] {
            let err = parse_patch(body.as_bytes()).expect_err(body);
            assert_eq!(
                err.field.as_deref(),
                field,
                "field of the error for {body}: {err}"
            );
        }
        assert_eq!(
            serde_json::from_str::<BehaviourPatch>("{}").expect("empty patch"),
            BehaviourPatch::default(),
            "an empty object is an empty patch"
        );
    }
}
