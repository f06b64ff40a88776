use super::*;

fn req(target: &str, fields: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
    for (k, v) in fields {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
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
        authority_host(&req("http://c:80/x", &[("host", "ignored")])),
        Some("c"),
        "absolute-form wins over Host"
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
        let mut r = req("/x", &[("host", "b")]);
        r.insert_header(
            X_MESH_DEADLINE_MS.clone(),
            deadline_value(Duration::from_millis(ms)),
        )
        .unwrap();
        assert_eq!(r.headers[&X_MESH_DEADLINE_MS], ms.to_string().as_str());
        assert_eq!(caller_deadline(&r), Some(Duration::from_millis(ms)));
    }
    let sub_ms = deadline_value(Duration::from_micros(1500));
    assert_eq!(sub_ms, "1", "whole milliseconds, rounded down");
}

#[test]
fn an_absolute_target_naming_another_host_is_refused() {
    let ok = req("http://b/x", &[("host", "B")]);
    assert_eq!(
        check_authority(&ok),
        Ok(()),
        "hosts compare case-insensitively"
    );
    let bad = req("http://b/x", &[("host", "other")]);
    assert!(
        matches!(check_authority(&bad), Err(BadRequest::HostMismatch { .. })),
        "two names for one request"
    );
    let mut nominated = req("/x", &[("host", "b"), ("connection", "close, Host")]);
    assert_eq!(
        prepare_upstream(&mut nominated),
        Err(BadRequest::ProtectedNomination("Host".into()))
    );
}

fn names(h: &http::HeaderMap) -> Vec<String> {
    let mut n: Vec<String> = h.keys().map(|k| k.to_string()).collect();
    n.sort();
    n.dedup();
    n
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
    assert_eq!(names(&up.headers), ["host", "x-kept"]);
    assert_eq!(
        up.headers["host"], "b:8080",
        "the target's authority is the Host"
    );
    let mut wire = Vec::new();
    up.header_to_h1_wire(&mut wire);
    let wire = String::from_utf8(wire).unwrap();
    assert_eq!(up.raw_path(), b"/x?q=1", "origin form");
    assert_eq!(upstream_copy(&up).version, http::Version::HTTP_11);
    assert!(
        wire.contains("X-Kept: yes"),
        "case kept on what is forwarded: {wire}"
    );
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
    assert_eq!(up.headers["transfer-encoding"], "chunked");
    assert!(!up.headers.contains_key("content-length"));
    assert!(has_body(&r));
    assert_eq!(content_length(&r), None, "chunked wins over a length");
    assert_eq!(
        content_length(&req("/", &[("content-length", "12")])),
        Some(12)
    );
    assert!(!has_body(&req("/", &[("content-length", "0")])));
}

fn resp(status: u16, fields: &[(&str, &str)]) -> ResponseHeader {
    let mut r = ResponseHeader::build(status, None).unwrap();
    for (k, v) in fields {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

#[test]
fn response_hop_by_hop_fields_are_removed() {
    let mut r = resp(
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
    strip_response_hop_by_hop(&mut r);
    assert_eq!(
        names(&r.headers),
        ["connection", "content-length", "x-kept"],
        "nominated and standard hop-by-hop fields go; the session rewrites Connection"
    );
    let mut wire = Vec::new();
    r.header_to_h1_wire(&mut wire);
    let wire = String::from_utf8(wire).unwrap();
    assert!(
        !wire.contains("X-Secret:") && wire.contains("X-Kept: yes"),
        "the case-preserving name map follows: {wire}"
    );
}

#[test]
fn response_without_hop_by_hop_fields_is_untouched() {
    let fields = [
        ("Content-Type", "text/plain"),
        ("Connection", "keep-alive"),
        ("Content-Length", "2"),
    ];
    let mut r = resp(200, &fields);
    strip_response_hop_by_hop(&mut r);
    assert_eq!(r.headers, resp(200, &fields).headers);
}

#[test]
fn framing_fields_are_never_nominated_away() {
    let mut r = resp(
        200,
        &[
            ("Connection", "Content-Length, transfer-encoding, close"),
            ("Content-Length", "2"),
        ],
    );
    strip_response_hop_by_hop(&mut r);
    assert_eq!(r.headers["content-length"], "2", "the session frames by it");
}

#[test]
fn switching_protocols_keeps_its_handshake() {
    let fields = [("Connection", "Upgrade"), ("Upgrade", "websocket")];
    let mut r = resp(101, &fields);
    strip_response_hop_by_hop(&mut r);
    assert_eq!(r.headers, resp(101, &fields).headers);
}

#[test]
fn malformed_nominations_are_ignored() {
    let mut r = resp(
        200,
        &[
            ("Connection", " , \"bad token\", x-a ,,"),
            ("X-A", "1"),
            ("X-B", "2"),
        ],
    );
    strip_response_hop_by_hop(&mut r);
    assert_eq!(names(&r.headers), ["connection", "x-b"]);
}
