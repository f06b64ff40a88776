//! The one duration syntax of every binary's flags (`--poll-interval 1s`, `--duration 20s`,
//! `--watch-interval 500ms`): [`humantime`]'s, a number and a unit, several parts allowed.
//!
//! Accepted: `500ms`, `2s`, `1.5s`, `2m`, `1h`, `1h 30m`, `3d`, `10 s`, and `0`. Units: `ns`,
//! `us`, `ms`, `s`, `m`, `h`, `d`, `w` (and humantime's long forms, `sec`, `min`, `hours`, …).
//! A bare number other than `0` is refused: `5` could mean seconds or milliseconds. Durations
//! longer than [`MAX`] are refused too, so adding one to an instant cannot overflow.
//!
//! [`format`] is the other direction: the text the lab passes to another binary's flag.

use std::fmt;
use std::time::Duration;

/// The longest duration any flag takes: 365 days.
pub const MAX: Duration = Duration::from_secs(365 * 86_400);

/// What every error shows as the expected form.
const EXPECTED: &str =
    "expected a number and a unit (ms, s, m, h, d), e.g. 500ms, 1.5s, 2m or 1h 30m";

/// A flag value that is not a duration (or not one the flag takes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {value:?}: {problem}; {EXPECTED}")]
pub struct InvalidDuration {
    /// The text as given.
    pub value: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a duration's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Empty,
    /// A number without a unit, e.g. `5`.
    NoUnit {
        number: u64,
    },
    UnknownUnit {
        unit: String,
    },
    /// A character that belongs nowhere (a sign, punctuation, a unit without its number).
    Unexpected {
        found: char,
        at: usize,
    },
    /// Too many digits, or finer than a nanosecond.
    Overflow,
    /// Longer than [`MAX`].
    TooLong,
    /// Zero where the flag needs a positive duration (an interval).
    Zero,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => f.write_str("it is empty"),
            Problem::NoUnit { number } => {
                write!(f, "{number} has no unit (write {number}s or {number}ms)")
            }
            Problem::UnknownUnit { unit } => write!(f, "unknown unit {unit:?}"),
            Problem::Unexpected { found, at } => {
                write!(f, "unexpected {found:?} at character {}", at + 1)
            }
            Problem::Overflow => f.write_str("the number is too large or finer than 1ns"),
            Problem::TooLong => f.write_str("it is longer than 365 days"),
            Problem::Zero => f.write_str("it must be greater than zero"),
        }
    }
}

/// Parses a duration (see the module doc); `0` is allowed.
pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let invalid = |problem| InvalidDuration {
        value: text.to_owned(),
        problem,
    };
    let d = humantime::parse_duration(text).map_err(|e| invalid(problem(text, e)))?;
    if d > MAX {
        return Err(invalid(Problem::TooLong));
    }
    Ok(d)
}

/// Parses a duration that must be greater than zero: an interval or a period (a zero one would
/// spin, or panic in `tokio::time::interval`).
pub fn parse_positive(text: &str) -> Result<Duration, InvalidDuration> {
    match parse(text)? {
        Duration::ZERO => Err(InvalidDuration {
            value: text.to_owned(),
            problem: Problem::Zero,
        }),
        d => Ok(d),
    }
}

fn problem(text: &str, e: humantime::DurationError) -> Problem {
    use humantime::DurationError as E;
    let at = |offset: usize| Problem::Unexpected {
        found: text[offset..].chars().next().unwrap_or(' '),
        at: text[..offset].chars().count(),
    };
    match e {
        E::Empty => Problem::Empty,
        E::InvalidCharacter(offset) | E::NumberExpected(offset) => at(offset),
        E::UnknownUnit { unit, value, .. } if unit.is_empty() => Problem::NoUnit { number: value },
        E::UnknownUnit { unit, .. } => Problem::UnknownUnit { unit },
        E::NumberOverflow => Problem::Overflow,
    }
}

/// The text for another binary's duration flag: whole seconds as `Ns`, anything else as whole
/// milliseconds `Nms` (at least `1ms`). [`parse`] reads it back.
pub fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_documented_form_parses() {
        let cases = [
            ("500ms", ms(500)),
            ("1s", ms(1_000)),
            ("20s", ms(20_000)),
            ("1.5s", ms(1_500)),
            ("0.25s", ms(250)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("1h 30m", ms(5_400_000)),
            ("3d", ms(3 * 86_400_000)),
            ("10 s", ms(10_000)),
            (" 200ms ", ms(200)),
            ("250us", Duration::from_micros(250)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("365d", MAX),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "parse({text:?})");
        }
    }

    #[test]
    fn bad_values_name_the_value_the_problem_and_the_form() {
        let cases = [
            ("", Problem::Empty),
            ("5", Problem::NoUnit { number: 5 }),
            ("10x", Problem::UnknownUnit { unit: "x".into() }),
            ("ms", Problem::Unexpected { found: 'm', at: 0 }),
            ("-1s", Problem::Unexpected { found: '-', at: 0 }),
            ("1e99h", Problem::UnknownUnit { unit: "e".into() }),
            ("1,5s", Problem::Unexpected { found: ',', at: 1 }),
            ("99999999999999999999s", Problem::Overflow),
            ("366d", Problem::TooLong),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.problem, want, "the problem with {text:?}");
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("invalid duration {text:?}: "))
                    && msg.ends_with("e.g. 500ms, 1.5s, 2m or 1h 30m"),
                "the message names the value and the expected form: {msg}"
            );
        }
        assert_eq!(
            parse("5").expect_err("no unit").to_string(),
            "invalid duration \"5\": 5 has no unit (write 5s or 5ms); expected a number and a \
             unit (ms, s, m, h, d), e.g. 500ms, 1.5s, 2m or 1h 30m",
            "the whole message, once"
        );
    }

    #[test]
    fn intervals_must_be_positive() {
        assert_eq!(parse_positive("200ms"), Ok(ms(200)), "a positive interval");
        for text in ["0", "0s", "0ms"] {
            assert_eq!(
                parse_positive(text).map_err(|e| e.problem),
                Err(Problem::Zero),
                "{text:?} is no interval"
            );
        }
        assert!(
            parse_positive("5").is_err(),
            "the grammar is the same as parse's"
        );
    }

    #[test]
    fn formatted_durations_read_back() {
        let cases = [
            (ms(1_000), "1s"),
            (ms(200), "200ms"),
            (ms(1_500), "1500ms"),
            (Duration::from_micros(10), "1ms"),
            (ms(0), "0s"),
        ];
        for (d, want) in cases {
            assert_eq!(format(d), want, "format({d:?})");
        }
        for d in [ms(1_000), ms(200), ms(1_500), ms(60_000)] {
            assert_eq!(parse(&format(d)), Ok(d), "{d:?} round-trips");
        }
    }
}
