use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::body::{Malformed, Reader, Step, Writer};
use super::client::{Client, Error};
use super::response::{self, Response};

/// Reads a whole body from `wire` fed `piece` bytes at a time, as a connection would: the
/// body's bytes, and where the body ended in `wire`.
fn read_all(mut reader: Reader, wire: &[u8], piece: usize) -> Result<(Vec<u8>, usize), Malformed> {
    let mut body = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut consumed = 0;
    loop {
        match reader.step(&buf)? {
            Step::Data { skip, len } => {
                body.extend_from_slice(&buf[skip..skip + len]);
                buf.drain(..skip + len);
                consumed += skip + len;
            }
            Step::End { consume } => {
                buf.drain(..consume);
                return Ok((body, consumed + consume));
            }
            Step::More { consume } => {
                buf.drain(..consume);
                consumed += consume;
                assert!(fed < wire.len(), "ran out of input: {body:?}");
                let end = (fed + piece).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
    }
}

#[test]
fn a_chunked_body_is_read_whole_however_it_arrives() {
    let wire =
        b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\nA \r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
    for piece in [1, 2, 3, 7, wire.len()] {
        let (body, end) = read_all(Reader::chunked(), wire, piece).unwrap();
        assert_eq!(body, b"hello 0123456789", "in pieces of {piece}");
        assert_eq!(
            &wire[end..],
            b"NEXT",
            "ends where the body ends (pieces of {piece})"
        );
    }
}

#[test]
fn malformed_chunked_bodies_are_refused() {
    let bad: [(&[u8], Malformed); 6] = [
        (b"z\r\n", Malformed::ChunkSize),
        (b"5\nhello\r\n", Malformed::ChunkSize),
        (b"5\r\nhelloXX0\r\n\r\n", Malformed::ChunkEnd),
        (b"11111111111111111\r\n", Malformed::ChunkSize),
        (b"5 x\r\n", Malformed::ChunkSize),
        (b"-5\r\n", Malformed::ChunkSize),
    ];
    for (wire, why) in bad {
        assert_eq!(
            read_all(Reader::chunked(), wire, wire.len()).unwrap_err(),
            why,
            "{}",
            wire.escape_ascii()
        );
    }
    let long = [b"5;".as_slice(), &[b'x'; 5000]].concat();
    assert_eq!(
        read_all(Reader::chunked(), &long, 1000).unwrap_err(),
        Malformed::LineTooLong
    );
    let mut trailers = b"0\r\n".to_vec();
    for _ in 0..2000 {
        trailers.extend_from_slice(b"x-t: 0123456789\r\n");
    }
    assert_eq!(
        read_all(Reader::chunked(), &trailers, 4096).unwrap_err(),
        Malformed::TrailersTooLong
    );
}

#[test]
fn a_length_body_ends_at_its_length() {
    let (body, end) = read_all(Reader::length(5), b"helloNEXT", 2).unwrap();
    assert_eq!((body.as_slice(), end), (b"hello".as_slice(), 5));
    assert!(Reader::length(0).is_done());
}

#[test]
fn request_bodies_are_framed_as_their_header_says() {
    let mut out = BytesMut::new();
    let mut w = Writer::Chunked;
    w.before(5, &mut out).unwrap();
    out.extend_from_slice(b"hello");
    w.after(5, &mut out);
    w.before(0, &mut out).unwrap();
    w.after(0, &mut out);
    assert!(w.finish(&mut out));
    assert_eq!(&out[..], b"5\r\nhello\r\n0\r\n\r\n");
    let mut w = Writer::Length(4);
    let mut out = BytesMut::new();
    w.before(3, &mut out).unwrap();
    assert!(w.before(2, &mut out).is_err(), "past the length");
    assert!(!w.finish(&mut out), "one byte short");
    assert!(out.is_empty());
}

fn parse(wire: &str) -> Result<Option<(Response, usize)>, response::Malformed> {
    Response::parse(wire.as_bytes())
}

#[test]
fn a_response_header_is_parsed_with_its_framing() {
    let wire =
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nconnection: Close\r\nX-A: 1\r\n\r\nhello";
    let (r, len) = parse(wire).unwrap().unwrap();
    assert_eq!((r.status, r.http10, len), (200, false, wire.len() - 5));
    assert_eq!(r.reason(), b"OK");
    assert_eq!(
        r.framing.content_length,
        Some(5),
        "agreeing values are one length"
    );
    assert_eq!(r.framing.keep_alive, Some(false));
    assert_eq!(r.get("x-a"), Some(b"1".as_slice()));
    assert_eq!(r.head.len(), 3);
    assert!(
        parse("HTTP/1.1 200 OK\r\nX-A: 1\r\n").unwrap().is_none(),
        "incomplete"
    );

    let (te, _) =
        parse("HTTP/1.0 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: x\r\n\r\n")
            .unwrap()
            .unwrap();
    assert!(te.http10 && te.framing.chunked && te.framing.content_length.is_none());
    let (gz, _) = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(gz.framing.transfer_encoding && !gz.framing.chunked);
}

#[test]
fn ambiguous_or_malformed_response_headers_are_refused() {
    for wire in [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        assert_eq!(
            parse(wire).unwrap_err(),
            response::Malformed::ContentLength,
            "{wire}"
        );
    }
    assert!(matches!(
        parse("HTTP/1.1 2x0 OK\r\n\r\n"),
        Err(response::Malformed::Syntax(_))
    ));
    let many: String = (0..300).map(|i| format!("x-{i}: 1\r\n")).collect();
    assert_eq!(
        parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).unwrap_err(),
        response::Malformed::TooLarge
    );
}

/// A client on a real loopback connection, and the server's side of it.
async fn pair() -> (Client, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    let stream: pingora_core::protocols::l4::stream::Stream = c.unwrap().into();
    (Client::new(Box::new(stream)), s.unwrap().0)
}

async fn read_request(server: &mut TcpStream, until: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(until) {
        let n = server.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

const IDLE: Duration = Duration::from_secs(5);

/// A client that has sent a bodiless GET (`head`: a HEAD), and the server end that read it.
async fn sent_get(head: bool) -> (Client, TcpStream) {
    let (mut c, mut server) = pair().await;
    c.begin(head, |out| {
        out.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        Writer::Done
    });
    c.finish_body().await.unwrap();
    read_request(&mut server, b"\r\n\r\n").await;
    (c, server)
}

#[tokio::test]
async fn an_exchange_is_one_write_and_its_connection_is_reusable() {
    let (mut c, mut server) = pair().await;
    c.begin(false, |out| {
        out.extend_from_slice(b"POST /x HTTP/1.1\r\nhost: b\r\ncontent-length: 5\r\n\r\n");
        Writer::Length(5)
    });
    c.write_body(b"hello").await.unwrap();
    c.finish_body().await.unwrap();
    // Header and body arrived together: one segment, read at once.
    let mut buf = [0u8; 4096];
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(
        &buf[..n],
        b"POST /x HTTP/1.1\r\nhost: b\r\ncontent-length: 5\r\n\r\nhello"
    );
    server
        .write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await
        .unwrap();
    let r = c.read_response().await.unwrap();
    assert_eq!(r.status, 200, "the interim response is skipped");
    let mut body = Vec::new();
    while let Some(piece) = c.read_body(IDLE).await.unwrap() {
        body.extend_from_slice(piece);
    }
    assert_eq!(body, b"abc");
    assert!(c.into_reusable().is_some());
}

#[tokio::test]
async fn a_connection_is_not_reused_unless_its_response_ended_cleanly() {
    // HTTP/1.0 without keep-alive, a close-delimited body, `Connection: close`, bytes past the
    // response, a HEAD's body-less response with a length: only the last is reusable.
    let cases: [(&[u8], bool, bool); 5] = [
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
            false,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\nok", false, false),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            false,
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
            false,
            false,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", true, true),
    ];
    for (response, head, reusable) in cases {
        let (mut c, mut server) = sent_get(head).await;
        server.write_all(response).await.unwrap();
        if !reusable {
            let _ = server.shutdown().await;
        }
        c.read_response().await.unwrap();
        let mut body = Vec::new();
        while let Some(piece) = c.read_body(IDLE).await.unwrap() {
            body.extend_from_slice(piece);
        }
        assert_eq!(
            body,
            if head {
                b"".as_slice()
            } else {
                b"ok".as_slice()
            },
            "{}",
            response.escape_ascii()
        );
        assert_eq!(
            c.into_reusable().is_some(),
            reusable,
            "{}",
            response.escape_ascii()
        );
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_an_end() {
    let (mut c, mut server) = sent_get(false).await;
    server
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
        .await
        .unwrap();
    drop(server);
    c.read_response().await.unwrap();
    assert_eq!(c.read_body(IDLE).await.unwrap(), Some(b"short".as_slice()));
    assert!(matches!(c.read_body(IDLE).await, Err(Error::Closed(_))));
}

#[tokio::test]
async fn a_large_chunked_request_body_goes_out_framed() {
    let (mut c, mut server) = pair().await;
    c.begin(false, |out| {
        out.extend_from_slice(b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
        Writer::Chunked
    });
    let big = vec![b'x'; 100_000];
    let reader =
        tokio::spawn(async move { (read_request(&mut server, b"0\r\n\r\n").await, server) });
    c.write_body(b"small").await.unwrap();
    c.write_body(&big).await.unwrap();
    c.finish_body().await.unwrap();
    let (got, _server) = reader.await.unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (body, end) = read_all(Reader::chunked(), &got[head_end..], 1500).unwrap();
    assert_eq!(end, got.len() - head_end);
    assert_eq!(body.len(), 100_005);
    assert!(body.starts_with(b"smallxxx"));
}

#[tokio::test]
async fn a_large_response_body_streams_through_a_growing_buffer() {
    let (mut c, mut server) = sent_get(false).await;
    let n = 1_000_000;
    let writer = tokio::spawn(async move {
        server
            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        server.write_all(&vec![7u8; n]).await.unwrap();
        server
    });
    c.read_response().await.unwrap();
    let (mut total, mut largest) = (0, 0);
    while let Some(piece) = c.read_body(IDLE).await.unwrap() {
        assert!(piece.iter().all(|&b| b == 7));
        total += piece.len();
        largest = largest.max(piece.len());
    }
    let _server = writer.await.unwrap();
    assert_eq!(total, n);
    assert!(
        largest > 4096,
        "reads grew past the first buffer: {largest}"
    );
    assert!(c.into_reusable().is_some());
}

#[tokio::test]
async fn a_silent_body_times_out() {
    let (mut c, mut server) = sent_get(false).await;
    server
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    c.read_response().await.unwrap();
    let idle = Duration::from_millis(50);
    assert!(matches!(
        c.read_body(idle).await,
        Err(Error::BodyTimeout(_))
    ));
}

use super::server::{Out, ReadError, Server};

/// A server side of a real loopback connection that has been sent `wire`, and the client end.
async fn served(wire: &[u8]) -> (Server, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    let mut client = c.unwrap();
    client.write_all(wire).await.unwrap();
    let stream: pingora_core::protocols::l4::stream::Stream = s.unwrap().0.into();
    (Server::new(Box::new(stream), BytesMut::new()), client)
}

async fn read_one(wire: &[u8]) -> (Result<bool, ReadError>, Server, TcpStream) {
    let (mut s, c) = served(wire).await;
    let r = s.read_request(true).await;
    (r, s, c)
}

#[tokio::test]
async fn a_request_header_is_read_with_its_fields_and_keep_alive() {
    let (r, s, _c) =
        read_one(b"GET /a?b=1 HTTP/1.1\r\nHost: svc\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n").await;
    assert!(r.unwrap());
    let req = s.req_header();
    assert_eq!(req.method, http::Method::GET);
    assert_eq!(req.target(), b"/a?b=1");
    assert_eq!(req.path(), b"/a");
    assert_eq!(req.get("host"), Some(b"svc".as_slice()));
    assert_eq!(req.get_all("x-dup").count(), 2);
    assert!(s.will_keep_alive() && s.body_done() && !s.is_upgrade_req());

    for (wire, keep) in [
        (b"GET / HTTP/1.0\r\n\r\n".as_slice(), false),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
    ] {
        let (r, s, _c) = read_one(wire).await;
        assert!(r.unwrap());
        assert_eq!(s.will_keep_alive(), keep, "{}", wire.escape_ascii());
    }
    let (r, s, _c) =
        read_one(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nrest")
            .await;
    assert!(r.unwrap() && s.is_upgrade_req());
    let (_, bytes) = s.into_hand_over();
    assert!(bytes.starts_with(b"GET /ws HTTP/1.1\r\n") && bytes.ends_with(b"\r\n\r\nrest"));
}

#[tokio::test]
async fn ambiguous_or_malformed_requests_are_refused() {
    for wire in [
        "GET /m 4 HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
    ] {
        let (r, _, _c) = read_one(wire.as_bytes()).await;
        assert!(matches!(r, Err(ReadError::Malformed(_))), "{wire:?}: {r:?}");
    }
    // Both framings: the length goes, and the connection closes after the response.
    let (r, s, _c) = read_one(
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(r.unwrap());
    assert!(s.req_header().both_framings && s.req_header().framing.chunked);
    assert!(!s.will_keep_alive());
    // Closed before any byte, and in the middle of a header.
    let (mut s, c) = served(b"").await;
    drop(c);
    assert!(!s.read_request(true).await.unwrap());
    let (mut s, c) = served(b"GET / HT").await;
    drop(c);
    assert!(matches!(s.read_request(true).await, Err(ReadError::Closed)));
}

#[tokio::test]
async fn a_body_is_read_and_the_next_request_is_handed_back() {
    let (r, mut s, _c) = read_one(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(r.unwrap());
    let mut body = Vec::new();
    while let Some(piece) = s.read_body().await.unwrap() {
        body.extend_from_slice(piece);
    }
    assert_eq!(body, b"abc");
    s.begin_response(204, b"No Content", Out::Empty, |_| false);
    s.finish().await.unwrap();
    let (_, more) = s.into_next().expect("kept alive");
    assert_eq!(&more.unwrap()[..], b"GET /next HTTP/1.1\r\n\r\n");
}

/// What the client end reads until the server side is dropped.
async fn received(mut c: TcpStream) -> String {
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn a_response_goes_out_with_its_first_body_bytes_framed_as_asked() {
    let (r, mut s, mut c) = read_one(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(r.unwrap());
    s.begin_response(200, b"OK", Out::Chunked, |o| {
        super::server::put_field(o, b"transfer-encoding", b"chunked");
        true
    });
    s.write_body(b"hello").await.unwrap();
    // The header and the first piece, in one segment.
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(
        first,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n5\r\nhello\r\n"
    );
    s.write_body(b"").await.unwrap();
    s.finish().await.unwrap();
    assert!(s.into_next().is_some());
    assert_eq!(received(c).await, "0\r\n\r\n");

    // HEAD: the length is said, no body is sent.
    let (r, mut s, c) = read_one(b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(r.unwrap());
    s.begin_response(200, b"OK", Out::Empty, |o| {
        super::server::put_field(o, b"content-length", b"5");
        false
    });
    s.write_body(b"hello").await.unwrap();
    s.finish().await.unwrap();
    assert!(s.into_next().is_none(), "the client asked to close");
    let got = received(c).await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: "),
        "{got}"
    );
    assert!(got.ends_with("\r\nconnection: close\r\n\r\n"), "{got}");
}

#[tokio::test]
async fn an_answer_before_the_body_was_read_closes_the_connection() {
    let (r, mut s, c) = read_one(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\npart").await;
    assert!(r.unwrap());
    s.begin_response(503, b"Service Unavailable", Out::Length(2), |o| {
        super::server::put_field(o, b"content-length", b"2");
        true
    });
    s.write_body(b"no").await.unwrap();
    s.finish().await.unwrap();
    assert!(s.into_next().is_none());
    let got = received(c).await;
    assert!(got.contains("\r\nconnection: close\r\n\r\nno"), "{got}");
}
