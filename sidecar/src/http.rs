//! HTTP on the sidecar's hops: the `x-mesh-*` names, the request's authority, hop-by-hop
//! fields, and the request an upstream gets.
//!
//! Cost: no field map anywhere. A request is prepared once by marking which of its fields stay
//! on this hop ([`prepare_upstream`]); each try's header is written from the request's own
//! bytes into its connection's buffer ([`write_upstream_head`]), and each response going
//! downstream is written from the upstream's bytes ([`write_downstream_fields`]).

use std::time::Duration;

use crate::h1::request::Request;
use http::header::{HeaderName, HeaderValue};
use pingora_core::protocols::http::authority::{raw_target_authority, RawTargetAuthority};

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
pub fn caller_deadline(req: &Request) -> Option<Duration> {
    mesh_proto::headers::parse_deadline(req.get(X_MESH_DEADLINE_MS.as_str())?)
}

/// The host part of the request's authority: the absolute-form target's, else the Host header's.
pub fn authority_host(req: &Request) -> Option<&str> {
    host_of(req.target(), req.get("host"))
}

/// The host part of the authority of a request with `target` and `host` (its Host header).
pub fn host_of<'a>(target: &'a [u8], host: Option<&'a [u8]>) -> Option<&'a str> {
    let raw: &[u8] = match raw_target_authority(target).authority() {
        Some(a) => a,
        None => host?,
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
pub fn trace_id(req: &Request) -> &str {
    req.get(TRACEPARENT.as_str())
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32)
        .unwrap_or("")
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// It has a body to forward: a `Transfer-Encoding`, or a `Content-Length` other than 0.
    pub has_body: bool,
    /// Its `Content-Length`, when it has one and no `Transfer-Encoding`.
    pub length: Option<u64>,
}

pub fn framing(req: &Request) -> Framing {
    let f = &req.framing;
    Framing {
        has_body: f.transfer_encoding || f.content_length.is_some_and(|n| n > 0),
        length: f.content_length,
    }
}

/// Whether the request has a body to forward ([`Framing::has_body`]).
pub fn has_body(req: &Request) -> bool {
    framing(req).has_body
}

/// The request's `Content-Length` ([`Framing::length`]).
pub fn content_length(req: &Request) -> Option<u64> {
    framing(req).length
}

/// Request fields that stay on this hop: the hop-by-hop ones (RFC 9110 7.6.1), the proxy-only
/// ones, `Expect` (the sidecar answers `100 Continue` itself), and the framing fields (the
/// sidecar writes its own, one value).
fn stays_on_hop(name: &[u8]) -> bool {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 => is(b"te"),
        6 => is(b"expect"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        14 => is(b"content-length") || is(b"http2-settings"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        19 => is(b"proxy-authorization"),
        _ => false,
    }
}

/// Why a request cannot be forwarded as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("the request's authority is not a valid Host value")]
    BadAuthority,
    #[error("the Connection header nominates the protected field {0:?}")]
    ProtectedNomination(String),
}

/// Fields a `Connection` header may not nominate away: the request's routing and the
/// forwarding record.
fn is_protected(t: &[u8]) -> bool {
    t.eq_ignore_ascii_case(b"host")
        || t.eq_ignore_ascii_case(b"x-forwarded-for")
        || t.eq_ignore_ascii_case(b"x-forwarded-host")
        || t.eq_ignore_ascii_case(b"x-forwarded-proto")
}

/// Prepares the client's request for upstreams, once: which fields stay on this hop (the
/// hop-by-hop ones, the standard ones and those `Connection` nominates, `Expect`, and the
/// framing fields, which each try writes itself), and, for an absolute-form target, the
/// origin-form target and the Host it names. A `Connection` header that nominates a protected
/// field ([`is_protected`]) is refused, on both listeners. Nothing is copied or allocated.
pub fn prepare_upstream(req: &mut Request) -> Result<(), BadRequest> {
    if let Some(t) = nominated(req.get_all("connection")).find(|t| is_protected(t)) {
        return Err(BadRequest::ProtectedNomination(
            String::from_utf8_lossy(t).into_owned(),
        ));
    }
    let any_nominated = nominated(req.get_all("connection")).next().is_some();
    for i in 0..req.field_count() {
        let name = req.field_name(i);
        let nominated = any_nominated
            && nominated(req.get_all("connection")).any(|t| t.eq_ignore_ascii_case(name));
        if stays_on_hop(name) || nominated {
            req.drop_field(i);
        }
    }
    let target = req.target();
    if let RawTargetAuthority::Absolute {
        authority,
        path_and_query,
        ..
    } = raw_target_authority(target)
    {
        if HeaderValue::from_bytes(authority).is_err() {
            return Err(BadRequest::BadAuthority);
        }
        // The authority becomes the Host, unless the client sent it as the Host already
        // (a request whose Host differs from its target's authority is refused when read:
        // two names for one request is how requests are smuggled past routing).
        let same = req.get("host").is_some_and(|h| h == authority);
        // Both are parts of the target: kept as where they are in it, no copy.
        let at = |part: &[u8]| part.as_ptr() as usize - target.as_ptr() as usize;
        let path = (at(path_and_query), path_and_query.len());
        let host = (!same).then(|| (at(authority), authority.len()));
        req.set_upstream_target(path.0, path.1);
        if let Some((start, len)) = host {
            req.set_upstream_host(start, len);
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
/// Cost: one pass over the request's field index, each field's bytes copied as they came into
/// the connection's buffer: no field map, nothing parsed or allocated. Fields go on in the
/// client's order and case; the framing field is the sidecar's own (`transfer-encoding:
/// chunked`, or one `content-length` value), and so are `host` for an absolute-form target and
/// the try's fields (lower case). The target goes as the client sent it (bytes that are not
/// UTF-8 included), in origin form.
pub fn write_upstream_head(
    req: &Request,
    fields: &TryFields,
    out: &mut bytes::BytesMut,
) -> crate::h1::body::Writer {
    use crate::h1::body::Writer;
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(req.upstream_target());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = req.upstream_host() {
        put_field(out, b"host", host);
    }
    let deadline = mesh_proto::headers::names::DEADLINE_MS.as_bytes();
    let traceparent = b"traceparent".as_slice();
    for (name, value) in req.upstream_fields() {
        let replaced = (fields.deadline.is_some() && name.eq_ignore_ascii_case(deadline))
            || (fields.traceparent.is_some() && name.eq_ignore_ascii_case(traceparent));
        if !replaced {
            put_field(out, name, value);
        }
    }
    let f = framing(req);
    let body = if req.framing.transfer_encoding {
        put_field(out, b"transfer-encoding", b"chunked");
        Writer::Chunked
    } else if let Some(n) = f.length {
        put_field(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
        Writer::Length(n)
    } else {
        Writer::Done
    };
    if let Some(d) = &fields.deadline {
        put_field(out, deadline, d.as_bytes());
    }
    if let Some(tp) = &fields.traceparent {
        put_field(out, traceparent, tp.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    body
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
    let nominations = || nominated(up.head.get_all("connection"));
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

/// The field names a message's `Connection` values nominate: every token but the options that
/// name no field (`close`, `keep-alive`) and the framing fields, which each hop writes itself.
fn nominated<'a>(connection: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    connection
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"content-length")
                && !t.eq_ignore_ascii_case(b"transfer-encoding")
        })
}

#[cfg(test)]
mod tests;
