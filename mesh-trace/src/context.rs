//! W3C Trace Context (`traceparent`), parsed and written without allocating.
//!
//! `traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>`. A header that does
//! not parse is treated as absent (W3C: "vendors MUST ignore the traceparent"), and a request
//! without one starts a new trace. `tracestate` is never rewritten here: a hop that forwards the
//! request keeps the caller's field as it came.

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header name.
pub const TRACESTATE: &str = "tracestate";

/// Length of a version-00 `traceparent` value.
pub const LEN: usize = 55;

/// One hop's trace context: the trace, the span that is the parent of the next hop, and
/// whether the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        // Upper case is invalid in version 00.
        _ => None,
    }
}

fn decode<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn encode_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

impl TraceParent {
    /// Parses a `traceparent` value. Versions other than 00 are read as 00 (their first four
    /// fields), as the spec asks; version `ff`, bad hex, or all-zero ids are rejected.
    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        if v.len() < LEN {
            return None;
        }
        let version = decode::<1>(&v[0..2])?[0];
        if version == 0xff || (version == 0 && v.len() != LEN) {
            return None;
        }
        if version != 0 && v.len() > LEN && v[LEN] != b'-' {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let trace_id = decode::<16>(&v[3..35])?;
        let span_id = decode::<8>(&v[36..52])?;
        let flags = decode::<1>(&v[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The header value, version 00, on the stack.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        encode_into(&self.trace_id, &mut out[3..35]);
        encode_into(&self.span_id, &mut out[36..52]);
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
    }

    /// The header value as an `http::HeaderValue`: one small allocation that its clones share
    /// (a value copied from a slice allocates again on its first clone, to share its bytes).
    pub fn header_value(&self) -> http::HeaderValue {
        let bytes = bytes::Bytes::from_owner(self.encode());
        http::HeaderValue::from_maybe_shared(bytes).expect("hex and dashes are a valid value")
    }
}

/// The trace id in lower-case hex, on the stack (for log lines).
pub fn trace_id_hex(trace_id: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    encode_into(trace_id, &mut out);
    out
}

/// A new random trace id (never all zero).
pub fn new_trace_id(rng: &mut impl rand::Rng) -> [u8; 16] {
    loop {
        let id: u128 = rng.random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A new random span id (never all zero).
pub fn new_span_id(rng: &mut impl rand::Rng) -> [u8; 8] {
    loop {
        let id: u64 = rng.random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_round_trips() {
        let tp = TraceParent::parse(GOOD.as_bytes()).expect("the W3C example parses");
        assert!(tp.sampled, "flags 01 is sampled");
        assert_eq!(tp.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(
            &tp.encode()[..],
            GOOD.as_bytes(),
            "encode gives the same text back"
        );
        assert_eq!(
            &trace_id_hex(&tp.trace_id)[..],
            b"4bf92f3577b34da6a3ce929d0e0e4736",
            "trace id as hex"
        );
        let unsampled = TraceParent {
            sampled: false,
            ..tp
        };
        assert!(
            unsampled.encode().ends_with(b"-00"),
            "an unsampled context is written with flags 00"
        );
    }

    #[test]
    fn malformed_headers_are_ignored() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ];
        for b in bad {
            assert_eq!(TraceParent::parse(b.as_bytes()), None, "{b:?} is rejected");
        }
    }

    #[test]
    fn a_future_version_is_read_by_its_first_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let tp = TraceParent::parse(v.as_bytes()).expect("a later version with more fields");
        assert_eq!(
            &tp.encode()[3..],
            &GOOD.as_bytes()[3..],
            "the same trace and span"
        );
    }
}
