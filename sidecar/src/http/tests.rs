use super::*;
use crate::h1::body::Writer;
use crate::h1::response::Response;

/// A GET request header as a client sends it, parsed.
fn req(target: &str, fields: &[(&str, &str)]) -> Request {
    let mut wire = format!("GET {target} HTTP/1.1\r\n");
    for (k, v) in fields {
        wire.push_str(&format!("{k}: {v}\r\n"));
    }
    wire.push_str("\r\n");
    Request::parse(wire.as_bytes()).unwrap().unwrap().0
}

/// The names of the fields that go upstream, in lower case, sorted.
fn up_names(r: &Request) -> Vec<String> {
    let mut n: Vec<String> = r
        .upstream_fields()
        .map(|(k, _)| String::from_utf8_lossy(k).to_ascii_lowercase())
        .collect();
    n.sort();
    n
}

#[test]
fn authority_from_host_header_or_absolute_uri() {
    assert_eq!(authority_host(&req("/x", &[("host", "b")])), Some("b"));
    assert_eq!(
        authority_host(&req("/x", &[("host", "b:8080")])),
        Some("b"),
        "the port is not part of the name"
    );
    assert_eq!(
        authority_host(&req("http://c:80/x", &[])),
        Some("c"),
        "absolute-form"
    );
    assert_eq!(
        authority_host(&req("/x", &[("host", "[::1]:80")])),
        Some("::1")
    );
    assert_eq!(authority_host(&req("/x", &[])), None, "no authority at all");
}

#[test]
fn the_deadline_header_round_trips() {
    for ms in [0u64, 1, 999, 15_000, 86_400_000] {
        let value = deadline_value(Duration::from_millis(ms));
        assert_eq!(value, ms.to_string().as_str());
        let r = req(
            "/x",
            &[
                ("host", "b"),
                ("x-mesh-deadline-ms", value.to_str().unwrap()),
            ],
        );
        assert_eq!(caller_deadline(&r), Some(Duration::from_millis(ms)));
    }
    let sub_ms = deadline_value(Duration::from_micros(1500));
    assert_eq!(sub_ms, "1", "whole milliseconds, rounded down");
}

#[test]
fn two_names_for_one_request_are_refused() {
    for (target, host) in [
        ("http://b/x", "other"),
        ("http://b/x", "B"),
        ("http://u@b/x", "b"),
    ] {
        let wire = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert!(
            matches!(
                Request::parse(wire.as_bytes()),
                Err(crate::h1::request::Malformed::Authority(_))
            ),
            "{target} with Host {host}"
        );
    }
    let mut nominated = req("/x", &[("host", "b"), ("connection", "close, Host")]);
    assert_eq!(
        prepare_upstream(&mut nominated),
        Err(BadRequest::ProtectedNomination("Host".into()))
    );
}

#[test]
fn the_upstream_request_is_origin_form_without_hop_by_hop_fields() {
    let r = req(
        "http://b:8080/x?q=1",
        &[
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic x"),
            ("Upgrade", "h2c"),
            ("Expect", "100-continue"),
            ("X-Kept", "yes"),
        ],
    );
    let mut up = r.clone();
    prepare_upstream(&mut up).unwrap();
    assert_eq!(up_names(&up), ["x-kept"]);
    assert_eq!(
        up.upstream_host(),
        Some(b"b:8080".as_slice()),
        "the target's authority is the Host"
    );
    assert_eq!(up.upstream_target(), b"/x?q=1", "origin form");
    let (wire, body) = head(&up, &TryFields::default());
    assert_eq!(body, Writer::Done);
    let mut lines: Vec<&str> = wire
        .split_terminator("\r\n")
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        lines.remove(0),
        "GET /x?q=1 HTTP/1.1",
        "origin form, HTTP/1.1"
    );
    lines.sort();
    assert_eq!(
        lines,
        ["X-Kept: yes", "host: b:8080"],
        "the client's fields as they came; the Host the sidecar's"
    );
    assert!(wire.ends_with("\r\n\r\n"));
    let mut bare = req("http://b", &[]);
    prepare_upstream(&mut bare).unwrap();
    assert_eq!(bare.upstream_target(), b"/", "no path: the root");
    let mut same = req("http://b/y", &[("Host", "b")]);
    prepare_upstream(&mut same).unwrap();
    assert_eq!(same.upstream_host(), None, "the Host sent is the authority");
    assert_eq!(up_names(&same), ["host"]);
}

/// A try's request header as it goes on the wire, and its body framing.
fn head(r: &Request, fields: &TryFields) -> (String, Writer) {
    let mut out = bytes::BytesMut::new();
    let body = write_upstream_head(r, fields, &mut out);
    (String::from_utf8_lossy(&out).into_owned(), body)
}

/// The values of `name` in a request header on the wire.
fn values<'a>(wire: &'a str, name: &str) -> Vec<&'a str> {
    wire.split_terminator("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn a_try_replaces_the_callers_deadline_and_trace_context() {
    let r = req(
        "/x",
        &[
            ("host", "b"),
            ("x-mesh-deadline-ms", "900"),
            ("traceparent", "00-caller"),
            ("x-dup", "1"),
            ("x-dup", "2"),
        ],
    );
    let fields = TryFields {
        deadline: Some(HeaderValue::from_static("250")),
        traceparent: Some(HeaderValue::from_static("00-ours")),
    };
    let (copy, _) = head(&r, &fields);
    assert_eq!(values(&copy, "x-mesh-deadline-ms"), ["250"]);
    assert_eq!(values(&copy, "traceparent"), ["00-ours"]);
    assert_eq!(values(&copy, "x-dup"), ["1", "2"], "repeats kept, in order");
    assert_eq!(
        copy.matches("\r\n").count(),
        7,
        "request line, 5 fields, end"
    );
    let (kept, _) = head(&r, &TryFields::default());
    assert_eq!(
        values(&kept, "x-mesh-deadline-ms"),
        ["900"],
        "no field of its own: passed on"
    );
    assert_eq!(values(&kept, "traceparent"), ["00-caller"]);
}

#[test]
fn a_target_goes_on_as_it_came_and_one_outside_ascii_is_refused() {
    let r = req("/a%20b/../c?d=%e9&e", &[]);
    let mut out = bytes::BytesMut::new();
    let fields = TryFields {
        deadline: Some(HeaderValue::from_static("5")),
        traceparent: None,
    };
    write_upstream_head(&r, &fields, &mut out);
    assert!(out.starts_with(b"GET /a%20b/../c?d=%e9&e HTTP/1.1\r\n"));
    assert!(out.ends_with(b"\r\nx-mesh-deadline-ms: 5\r\n\r\n"));
    // RFC 9112 3.2: a request-target is ASCII; raw bytes beyond it are refused, not repaired.
    assert!(Request::parse(b"GET /caf\xe9 HTTP/1.1\r\n\r\n").is_err());
}

#[test]
fn a_chunked_request_stays_chunked_and_loses_a_conflicting_length() {
    let r = req(
        "/x",
        &[
            ("host", "b"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
        ],
    );
    let mut up = r.clone();
    prepare_upstream(&mut up).unwrap();
    assert_eq!(
        up_names(&up),
        ["host"],
        "framing fields are the sidecar's to write"
    );
    let (wire, _) = head(&up, &TryFields::default());
    assert_eq!(values(&wire, "transfer-encoding"), ["chunked"]);
    assert!(values(&wire, "content-length").is_empty());
    assert!(has_body(&r));
    assert_eq!(content_length(&r), None, "chunked wins over a length");
    assert_eq!(
        content_length(&req("/", &[("content-length", "12")])),
        Some(12)
    );
    assert!(!has_body(&req("/", &[("content-length", "0")])));
    assert_eq!(head(&up, &TryFields::default()).1, Writer::Chunked);
    let mut sized = req("/x", &[("host", "b"), ("Content-Length", "12, 12")]);
    prepare_upstream(&mut sized).unwrap();
    let (wire, body) = head(&sized, &TryFields::default());
    assert_eq!(body, Writer::Length(12));
    assert_eq!(
        values(&wire, "content-length"),
        ["12"],
        "one value, however the client repeated it"
    );
}

/// A response header as an upstream sends it, parsed.
fn resp(status: u16, fields: &[(&str, &str)]) -> Response {
    resp_with_reason(status, "Whatever", fields)
}

fn resp_with_reason(status: u16, reason: &str, fields: &[(&str, &str)]) -> Response {
    let mut wire = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in fields {
        wire.push_str(&format!("{k}: {v}\r\n"));
    }
    wire.push_str("\r\n");
    Response::parse(wire.as_bytes()).unwrap().unwrap().0
}

/// The fields a client gets of `up`, as written on the wire (in order), and whether a `Date`
/// was among them.
fn down(
    up: &Response,
    fields: &[(HeaderName, HeaderValue)],
    reframe: Reframe,
) -> (Vec<(String, String)>, bool) {
    let mut out = bytes::BytesMut::new();
    let date = write_downstream_fields(up, fields, reframe, &mut out);
    let wire = String::from_utf8(out.to_vec()).unwrap();
    let lines = wire
        .split_terminator("\r\n")
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_string(), v.to_string())
        })
        .collect();
    (lines, date)
}

/// Their names in lower case, sorted, once each.
fn down_names(lines: &[(String, String)]) -> Vec<String> {
    let mut n: Vec<String> = lines.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
    n.sort();
    n.dedup();
    n
}

#[test]
fn response_hop_by_hop_fields_are_removed() {
    let r = resp(
        200,
        &[
            ("Content-Length", "2"),
            ("Connection", "keep-alive, X-Secret"),
            ("Connection", "x-other"),
            ("X-Secret", "1"),
            ("X-Other", "2"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("X-Kept", "yes"),
        ],
    );
    let (lines, date) = down(&r, &[], Reframe::Same);
    assert_eq!(
        down_names(&lines),
        ["content-length", "x-kept"],
        "nominated and standard hop-by-hop fields go; the session writes its own Connection"
    );
    assert!(!date);
    assert_eq!(
        lines,
        [
            ("Content-Length".to_string(), "2".to_string()),
            ("X-Kept".to_string(), "yes".to_string())
        ],
        "names in the upstream's case, in its order"
    );
}

#[test]
fn the_meshs_fields_replace_the_upstreams() {
    let up = resp(
        503,
        &[
            ("Content-Length", "0"),
            ("x-mesh-attempts", "7"),
            ("Date", "Tue, 08 Dec 2026 00:00:00 GMT"),
            ("X-Kept", "1"),
        ],
    );
    let (lines, date) = down(
        &up,
        &[(X_MESH_ATTEMPTS, HeaderValue::from_static("2"))],
        Reframe::Same,
    );
    assert!(date, "the upstream's Date is kept");
    let attempts: Vec<_> = lines
        .iter()
        .filter(|(n, _)| n == "x-mesh-attempts")
        .collect();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].1, "2");
    assert_eq!(
        down_names(&lines),
        ["content-length", "date", "x-kept", "x-mesh-attempts"]
    );
}

#[test]
fn response_without_hop_by_hop_fields_is_untouched() {
    let fields = [
        ("Content-Type", "text/plain"),
        ("Content-Length", "2"),
        ("x-Odd-Case", "A,  b"),
    ];
    let (lines, _) = down(&resp(200, &fields), &[], Reframe::Same);
    let want: Vec<(String, String)> = fields
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(lines, want);
}

#[test]
fn framing_fields_are_never_nominated_away() {
    let r = resp(
        200,
        &[
            ("Connection", "Content-Length, transfer-encoding, close"),
            ("Content-Length", "2"),
        ],
    );
    let (lines, _) = down(&r, &[], Reframe::Same);
    assert_eq!(
        down_names(&lines),
        ["content-length"],
        "the session frames by it"
    );
}

#[test]
fn a_body_framed_again_gets_its_own_transfer_encoding() {
    let chunked = resp(200, &[("Transfer-Encoding", "gzip, chunked"), ("X-A", "1")]);
    let (lines, _) = down(&chunked, &[], Reframe::Chunked);
    assert_eq!(
        lines[0],
        ("Transfer-Encoding".into(), "gzip, chunked".into()),
        "chunked again as it came: the codings go on as sent"
    );
    let close = resp(200, &[("X-A", "1")]);
    let (lines, _) = down(&close, &[], Reframe::Chunked);
    assert_eq!(down_names(&lines), ["transfer-encoding", "x-a"]);
    assert!(lines.contains(&("transfer-encoding".into(), "chunked".into())));
    let (lines, _) = down(&chunked, &[], Reframe::Close);
    assert_eq!(
        down_names(&lines),
        ["x-a"],
        "an HTTP/1.0 client gets a body delimited by the close"
    );
}

#[test]
fn malformed_nominations_are_ignored() {
    let r = resp(
        200,
        &[
            ("Connection", " , \"bad token\", x-a ,,"),
            ("X-A", "1"),
            ("X-B", "2"),
        ],
    );
    let (lines, _) = down(&r, &[], Reframe::Same);
    assert_eq!(down_names(&lines), ["x-b"]);
}

#[test]
fn fields_are_found_in_any_case_first_value_first() {
    let r = req(
        "/",
        &[
            ("host", "b"),
            ("X-Mesh-Deadline-Ms", "250"),
            ("x-mesh-deadline-ms", "999"),
        ],
    );
    assert_eq!(r.get("x-mesh-deadline-ms"), Some(b"250".as_slice()));
    assert_eq!(r.get("traceparent"), None);
    assert_eq!(caller_deadline(&r), Some(Duration::from_millis(250)));
    assert_eq!(r.get_all("x-mesh-deadline-ms").count(), 2);
}

#[test]
fn a_repeated_deadline_shares_its_value() {
    let a = deadline_header(Duration::from_micros(15_000_900));
    let b = deadline_header(Duration::from_micros(15_000_100));
    assert_eq!(a, "15000");
    assert_eq!(
        a.as_bytes().as_ptr(),
        b.as_bytes().as_ptr(),
        "the same bytes, shared"
    );
    let c = deadline_header(Duration::from_millis(14_999));
    assert_eq!(c, "14999", "another millisecond, another value");
    assert_eq!(deadline_header(Duration::ZERO), "0");
}

#[test]
fn a_length_that_transfer_encoding_overrides_is_dropped() {
    let up = resp(
        200,
        &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
    );
    let (lines, _) = down(&up, &[], Reframe::Chunked);
    assert_eq!(
        down_names(&lines),
        ["transfer-encoding"],
        "RFC 9112 6.3: a client must not see both"
    );
}
