//! HTTP on the sidecar's hops: the `x-mesh-*` names, the request's authority, hop-by-hop
//! fields, and the request an upstream gets.
//!
//! Cost: header names are `HeaderName::from_static` statics, so no name is parsed or allocated
//! per request. Each try's request header is written straight into its connection's buffer
//! ([`write_upstream_head`]), and each response going downstream is built as one field map of
//! the right size with its values shared ([`downstream_response`]). Fields are removed from the prepared request only when present; a `Connection`
//! header that nominates fields is the only case that allocates beyond that.

use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use pingora_core::protocols::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_http::RequestHeader;

pub use mesh_proto::headers::{
    deadline_value, X_MESH_ATTEMPTS, X_MESH_DEADLINE_MS, X_MESH_ERROR, X_MESH_HEDGED,
    X_MESH_UPSTREAM,
};

/// RFC 9209.
pub static PROXY_STATUS: HeaderName = HeaderName::from_static("proxy-status");
/// W3C trace context.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The `x-mesh-deadline-ms` value for `left` ([`deadline_value`]), shared with the last
/// request on this thread that sent the same whole milliseconds: most of a route's requests
/// start with its full timeout left, so most tries send the value of the one before, a clone
/// that allocates nothing.
pub fn deadline_header(left: Duration) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(u128, HeaderValue)>> = const { RefCell::new(None) };
    }
    let ms = left.as_millis();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((m, v)) if *m == ms => v.clone(),
            _ => {
                let v = deadline_value(left);
                *last = Some((ms, v.clone()));
                v
            }
        }
    })
}

/// Parses `x-mesh-deadline-ms`.
pub fn caller_deadline(req: &RequestHeader) -> Option<Duration> {
    mesh_proto::headers::parse_deadline(get_custom(&req.headers, &X_MESH_DEADLINE_MS)?.as_bytes())
}

/// The first value of a field whose name is not one of the standard ones (`traceparent`,
/// `x-mesh-*`). Looking such a name up hashes its bytes (measured: ~350 instructions for a
/// miss); a short field map is scanned instead, where a standard name is told apart by its
/// kind and another by its length before any byte is compared.
pub fn get_custom<'a>(headers: &'a http::HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    const SCAN_UP_TO: usize = 16;
    if headers.keys_len() > SCAN_UP_TO {
        return headers.get(name);
    }
    headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// The host part of the request's authority: the absolute-form target's, else the Host header's.
pub fn authority_host(req: &RequestHeader) -> Option<&str> {
    let raw: &[u8] = match req.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => match raw_target_authority(req.raw_path()).authority() {
            Some(a) => a,
            None => req.headers.get(header::HOST)?.as_bytes(),
        },
    };
    let raw = std::str::from_utf8(raw).ok()?;
    let host = if let Some(v6) = raw.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    (!host.is_empty()).then_some(host)
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
pub fn trace_id(req: &RequestHeader) -> &str {
    req.headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32)
        .unwrap_or("")
}

/// How a request's body is framed, from one lookup of each framing field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// It has a body to forward: a `Transfer-Encoding`, or a `Content-Length` other than 0.
    pub has_body: bool,
    /// Its `Content-Length`, when it has a valid one and no `Transfer-Encoding`.
    pub length: Option<u64>,
}

pub fn framing(req: &RequestHeader) -> Framing {
    let chunked = req.headers.contains_key(header::TRANSFER_ENCODING);
    let length = req.headers.get(header::CONTENT_LENGTH);
    Framing {
        has_body: chunked || length.is_some_and(|v| v.as_bytes() != b"0"),
        length: length
            .filter(|_| !chunked)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse().ok()),
    }
}

/// Whether the request has a body to forward ([`Framing::has_body`]).
pub fn has_body(req: &RequestHeader) -> bool {
    framing(req).has_body
}

/// The request's `Content-Length` ([`Framing::length`]).
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    framing(req).length
}

/// Hop-by-hop request fields, never forwarded (RFC 9110 7.6.1), and the proxy-only ones.
static REQUEST_HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Why a request cannot be forwarded as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error(
        "the absolute-form target's authority {target:?} differs from the Host header {host:?}"
    )]
    HostMismatch { target: String, host: String },
    #[error("the request's authority is not a valid Host value")]
    BadAuthority,
    #[error("the Connection header nominates the protected field {0:?}")]
    ProtectedNomination(String),
}

/// Checks the request's authority once, when it arrives, before it is routed: an absolute-form
/// target whose authority differs from a Host header sent with it is refused (RFC 9112 3.2.2
/// lets a proxy replace Host, but two names for one request is how requests are smuggled past
/// routing).
pub fn check_authority(req: &RequestHeader) -> Result<(), BadRequest> {
    if let RawTargetAuthority::Absolute { authority, .. } = raw_target_authority(req.raw_path()) {
        if let Some(host) = req.headers.get(header::HOST) {
            if !host.as_bytes().eq_ignore_ascii_case(authority) {
                return Err(BadRequest::HostMismatch {
                    target: String::from_utf8_lossy(authority).into_owned(),
                    host: String::from_utf8_lossy(host.as_bytes()).into_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Fields a `Connection` header may not nominate away: the request's routing and the
/// forwarding record.
fn is_protected(t: &[u8]) -> bool {
    t.eq_ignore_ascii_case(b"host")
        || t.eq_ignore_ascii_case(b"x-forwarded-for")
        || t.eq_ignore_ascii_case(b"x-forwarded-host")
        || t.eq_ignore_ascii_case(b"x-forwarded-proto")
}

/// Turns the client's request, in place, into the request an upstream gets: origin-form (an
/// absolute-form target's authority becomes the Host), no hop-by-hop fields (the standard ones
/// and those `Connection` nominates), no `Expect` (the sidecar answers `100 Continue` itself),
/// and chunked framing for a chunked body. Done once per request, after the client
/// session has read what it needs from those fields (keep-alive, framing); each try then
/// copies the result and adds its own fields (deadline, trace context). Removes only what is
/// present: a request without such fields costs one pass over its field names. A
/// `Connection` header that nominates a protected field ([`is_protected`]) is refused, on both
/// listeners.
pub fn prepare_upstream(req: &mut RequestHeader) -> Result<(), BadRequest> {
    let mut nominated = false;
    for t in connection_nominations(&req.headers) {
        if is_protected(t) {
            return Err(BadRequest::ProtectedNomination(
                String::from_utf8_lossy(t).into_owned(),
            ));
        }
        nominated |= nominates_field(&req.headers, t);
    }
    if nominated {
        for n in &nominated_names(&req.headers) {
            req.remove_header(n);
        }
    }
    let strip = req
        .headers
        .keys()
        .any(|k| REQUEST_HOP_BY_HOP.contains(k) || k == header::EXPECT);
    if strip {
        for name in REQUEST_HOP_BY_HOP.iter().chain([&header::EXPECT]) {
            if req.headers.contains_key(name) {
                req.remove_header(name);
            }
        }
    }
    if let RawTargetAuthority::Absolute { authority, .. } = raw_target_authority(req.raw_path()) {
        // The authority becomes the Host, unless the client sent it as the Host already
        // (`check_authority` refused any other Host).
        let same = req
            .headers
            .get(header::HOST)
            .is_some_and(|h| h.as_bytes() == authority);
        if !same {
            let host = HeaderValue::from_bytes(authority).map_err(|_| BadRequest::BadAuthority)?;
            req.insert_header(header::HOST, host)
                .map_err(|_| BadRequest::BadAuthority)?;
        }
        let origin_form = req.uri.clone();
        req.set_uri(origin_form);
    }
    // A chunked body is forwarded chunked; Transfer-Encoding is ours to frame.
    if req.headers.contains_key(header::TRANSFER_ENCODING) {
        if req.headers[header::TRANSFER_ENCODING] != "chunked" {
            req.insert_header(header::TRANSFER_ENCODING, "chunked")
                .map_err(|_| BadRequest::BadAuthority)?;
        }
        if req.headers.contains_key(header::CONTENT_LENGTH) {
            req.remove_header(&header::CONTENT_LENGTH);
        }
    }
    Ok(())
}

/// A try's own fields, set on its copy of the prepared request in place of any the client
/// sent: what is left of the deadline, and the trace context the next hop continues.
#[derive(Debug, Clone, Default)]
pub struct TryFields {
    pub deadline: Option<HeaderValue>,
    pub traceparent: Option<HeaderValue>,
}

/// Puts the header of a try's request in `out`: the request prepared by [`prepare_upstream`],
/// as HTTP/1.1 whatever the client spoke (its own version stays on its session, which frames
/// the response by it), with the try's own `fields` in place of any the client sent under
/// their names. Returns how the body is framed.
///
/// Cost: one pass over the prepared fields, each name and value copied into the connection's
/// buffer as it goes out: no field map is built per try. Names go out in lower case (as
/// Envoy and hyper send them; HTTP/1.1 names are case-insensitive), and the target as the
/// client sent it (bytes that are not UTF-8 included).
pub fn write_upstream_head(
    prepared: &RequestHeader,
    fields: &TryFields,
    out: &mut bytes::BytesMut,
) -> crate::h1::body::Writer {
    use crate::h1::body::Writer;
    out.extend_from_slice(prepared.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(prepared.raw_path());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &prepared.headers {
        let replaced = (fields.deadline.is_some() && name == X_MESH_DEADLINE_MS)
            || (fields.traceparent.is_some() && name == TRACEPARENT);
        if !replaced {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if let Some(d) = &fields.deadline {
        put_field(out, X_MESH_DEADLINE_MS.as_str().as_bytes(), d.as_bytes());
    }
    if let Some(tp) = &fields.traceparent {
        put_field(out, TRACEPARENT.as_str().as_bytes(), tp.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let f = framing(prepared);
    if !f.has_body {
        Writer::Done
    } else if prepared.headers.contains_key(header::TRANSFER_ENCODING) {
        // `prepare_upstream` made it chunked.
        Writer::Chunked
    } else {
        Writer::Length(f.length.unwrap_or(0))
    }
}

fn put_field(out: &mut bytes::BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the client's response is framed, as [`write_downstream_fields`] needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reframe {
    /// As the upstream framed it: a length, or no body (its framing fields pass as sent).
    Same,
    /// Chunked by the sidecar (a chunked or close-delimited upstream body, HTTP/1.1 client).
    Chunked,
    /// Delimited by closing the connection (HTTP/1.0 client, length unknown).
    Close,
}

/// Puts the upstream's response fields as the client gets them in `out`, as they came (names
/// in the upstream's case, values untouched), without its hop-by-hop fields: `Connection`
/// (the client connection's own is written by the session), the standard ones and those its
/// `Connection` nominates (RFC 9110 7.6.1); without a `Content-Length` that a
/// `Transfer-Encoding` overrides (RFC 9112 6.3); with the framing `reframe` says; and with
/// `fields` (the `x-mesh-*` ones) in place of any the upstream sent. Returns whether a `Date`
/// was among them.
///
/// Cost: one pass over the response's field index, copying bytes: no field map, no name
/// parsed or allocated.
pub fn write_downstream_fields(
    up: &crate::h1::response::Response,
    fields: &[(HeaderName, HeaderValue)],
    reframe: Reframe,
    out: &mut bytes::BytesMut,
) -> bool {
    use crate::h1::server::put_field;
    let nominations = || {
        up.fields()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, v)| v.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !is_framing(std::str::from_utf8(t).unwrap_or(""))
            })
    };
    let any_nominated = nominations().next().is_some();
    let te = up.framing.transfer_encoding;
    // The upstream's Transfer-Encoding goes on when the body is chunked again as it came.
    let keep_te = match reframe {
        Reframe::Same => true,
        Reframe::Chunked => up.framing.chunked,
        Reframe::Close => false,
    };
    let mut has_date = false;
    for (name, value) in up.fields() {
        let skip = match response_field(name) {
            Field::HopByHop => true,
            Field::ContentLength => te,
            Field::TransferEncoding => !keep_te,
            Field::Date => {
                has_date = true;
                false
            }
            Field::Other => {
                fields
                    .iter()
                    .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
                    || (any_nominated && nominations().any(|t| t.eq_ignore_ascii_case(name)))
            }
        };
        if !skip {
            put_field(out, name, value);
        }
    }
    if reframe == Reframe::Chunked && !keep_te {
        put_field(out, b"transfer-encoding", b"chunked");
    }
    for (name, value) in fields {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    has_date
}

/// What a response field is to a proxy.
enum Field {
    HopByHop,
    ContentLength,
    TransferEncoding,
    Date,
    Other,
}

/// Told apart by length first: most fields are none of these.
fn response_field(name: &[u8]) -> Field {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        10 if is(b"connection") || is(b"keep-alive") => Field::HopByHop,
        16 if is(b"proxy-connection") => Field::HopByHop,
        2 if is(b"te") => Field::HopByHop,
        7 if is(b"upgrade") => Field::HopByHop,
        14 if is(b"content-length") => Field::ContentLength,
        17 if is(b"transfer-encoding") => Field::TransferEncoding,
        4 if is(b"date") => Field::Date,
        _ => Field::Other,
    }
}

fn is_framing(t: &str) -> bool {
    t.eq_ignore_ascii_case("content-length") || t.eq_ignore_ascii_case("transfer-encoding")
}

/// Whether a `Connection` token names a field of `headers` that must go with the hop: not a
/// framing field, and not one of the options that name no field (`close`, a reserved field
/// name, and `keep-alive`, whose field goes as hop-by-hop anyway), so the common
/// `Connection: keep-alive` and `close` cost no lookup.
fn nominates_field(headers: &http::HeaderMap, t: &[u8]) -> bool {
    if t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive") {
        return false;
    }
    std::str::from_utf8(t).is_ok_and(|t| !is_framing(t) && headers.contains_key(t))
}

/// The names of the fields a message's `Connection` header nominates, framing fields left out:
/// what a proxy removes with the hop (allocates; called only when one of them was sent).
fn nominated_names(headers: &http::HeaderMap) -> Vec<HeaderName> {
    connection_nominations(headers)
        .filter(|t| !is_framing(std::str::from_utf8(t).unwrap_or("")))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect()
}

/// The field names a message's `Connection` header nominates.
fn connection_nominations(headers: &http::HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests;
