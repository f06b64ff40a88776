//! The `x-mesh-*` headers: their names, and the encodings of their values.
//!
//! The names are [`HeaderName`] constants made by `from_static`, evaluated at compile time, so
//! the request path never parses or allocates a name: using one copies a pointer to static
//! bytes. The value encoders build an [`HeaderValue`] straight from an integer (no `String` in
//! between); the common small attempt counts are static values.
//!
//! | header | set by | value |
//! | --- | --- | --- |
//! | `x-mesh-deadline-ms` | a caller, the sidecar, the demo service | the time the caller still waits, whole milliseconds |
//! | `x-mesh-attempts` | the outbound sidecar, on its responses | tries made |
//! | `x-mesh-upstream` | the outbound sidecar, when an endpoint answered | that endpoint, `IP:PORT` |
//! | `x-mesh-hedged` | the outbound sidecar, when a hedge was sent | `1` |
//! | `x-mesh-error` | the sidecar, on answers it makes itself | one reason token, e.g. `deadline-exceeded` |
//! | `x-mesh-mirror` | nothing yet: reserved for mirrored (shadow) copies of a request | – |

use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// The names as `&'static str`, for APIs that take a name as a string: Pingora's
/// `insert_header` keeps a `&'static str` as it is, where a [`HeaderName`] is copied first.
pub mod names {
    pub const DEADLINE_MS: &str = "x-mesh-deadline-ms";
    pub const ATTEMPTS: &str = "x-mesh-attempts";
    pub const UPSTREAM: &str = "x-mesh-upstream";
    pub const HEDGED: &str = "x-mesh-hedged";
    pub const ERROR: &str = "x-mesh-error";
    pub const MIRROR: &str = "x-mesh-mirror";
}

/// The time the caller will still wait for the answer, in whole milliseconds; each hop sends
/// the next one what is left ([`deadline_value`], [`parse_deadline`]).
pub const X_MESH_DEADLINE_MS: HeaderName = HeaderName::from_static(names::DEADLINE_MS);

/// How many tries the outbound sidecar made for a response ([`attempts_value`]).
pub const X_MESH_ATTEMPTS: HeaderName = HeaderName::from_static(names::ATTEMPTS);

/// The endpoint (`IP:PORT`) whose answer this is.
pub const X_MESH_UPSTREAM: HeaderName = HeaderName::from_static(names::UPSTREAM);

/// `1` on a response to a request that was hedged (a second try sent while the first was
/// still waiting).
pub const X_MESH_HEDGED: HeaderName = HeaderName::from_static(names::HEDGED);

/// On a response the sidecar made itself: why, as one reason token (the README's table).
pub const X_MESH_ERROR: HeaderName = HeaderName::from_static(names::ERROR);

/// Reserved for a mirrored (shadow) copy of a request, so its receiver can tell it from live
/// traffic; nothing sends it yet.
pub const X_MESH_MIRROR: HeaderName = HeaderName::from_static(names::MIRROR);

/// The `x-mesh-deadline-ms` value for `left`: whole milliseconds (rounded down), formatted on
/// the stack into one allocation that the value's clones share (`HeaderValue::from` an integer
/// takes two, and a value copied from a slice allocates again on its first clone).
pub fn deadline_value(left: Duration) -> HeaderValue {
    let mut ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (ms % 10) as u8;
        ms /= 10;
        if ms == 0 {
            break;
        }
    }
    let owned = bytes::Bytes::from_owner(digits).slice(at..);
    HeaderValue::from_maybe_shared(owned).expect("ASCII digits are a valid field value")
}

/// Reads an `x-mesh-deadline-ms` value: ASCII digits, surrounding blanks allowed. Anything else
/// (empty, a sign, a fraction, too many digits) is `None`: a caller's deadline that cannot be
/// read is ignored, not guessed.
pub fn parse_deadline(value: &[u8]) -> Option<Duration> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    let mut ms: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        ms = ms.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(Duration::from_millis(ms))
}

/// The `x-mesh-attempts` value for `n` tries: a static value for 0..=10, formatted otherwise.
pub fn attempts_value(n: u32) -> HeaderValue {
    const SMALL: [&str; 11] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    match SMALL.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_lowercase_ones() {
        let names = [
            (X_MESH_DEADLINE_MS, "x-mesh-deadline-ms"),
            (X_MESH_ATTEMPTS, "x-mesh-attempts"),
            (X_MESH_UPSTREAM, "x-mesh-upstream"),
            (X_MESH_HEDGED, "x-mesh-hedged"),
            (X_MESH_ERROR, "x-mesh-error"),
            (X_MESH_MIRROR, "x-mesh-mirror"),
        ];
        for (name, text) in names {
            assert_eq!(name.as_str(), text, "{text}");
            assert_eq!(
                HeaderName::from_bytes(text.to_uppercase().as_bytes()).expect("valid"),
                name,
                "{text} matches whatever case it arrives in"
            );
        }
    }

    #[test]
    fn deadlines_are_whole_milliseconds() {
        assert_eq!(deadline_value(Duration::from_millis(300)), "300", "300 ms");
        assert_eq!(
            deadline_value(Duration::from_micros(1_999)),
            "1",
            "rounded down: never promise more time than is left"
        );
        assert_eq!(deadline_value(Duration::ZERO), "0", "a passed deadline");
        assert_eq!(
            deadline_value(Duration::MAX),
            u64::MAX.to_string().as_str(),
            "saturates instead of wrapping"
        );
    }

    #[test]
    fn deadlines_read_back() {
        for ms in [0, 1, 300, 86_400_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(
                parse_deadline(deadline_value(d).as_bytes()),
                Some(d),
                "{ms} ms round-trips"
            );
        }
        assert_eq!(
            parse_deadline(b" 250 "),
            Some(Duration::from_millis(250)),
            "blanks around the digits are allowed"
        );
        for bad in [
            &b""[..],
            b"  ",
            b"soon",
            b"-5",
            b"+5",
            b"1.5",
            b"1 5",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_deadline(bad),
                None,
                "{:?} is ignored",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn attempts_are_plain_numbers() {
        for n in [0, 1, 10, 11, 1_000] {
            assert_eq!(attempts_value(n), n.to_string().as_str(), "{n} tries");
        }
    }
}
