//! The request loop on the wire, with raw sockets on both ends: a WebSocket-style upgrade
//! handed to pingora-proxy on both listeners and through a hop, pipelined requests answered
//! in order, HTTP/1.0 clients given close-delimited bodies, pooled upstream connections
//! that the endpoint closed while idle, and a request header longer than the loop's first read
//! arriving in pieces.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use testkit::Proc;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn table(name: &str, services: &[(&str, SocketAddr)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshlab-reqpath-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::from("version = 1\n");
    for (svc, addr) in services {
        text.push_str(&format!(
            "[services.{svc}]\nendpoints = [\"{addr}\"]\nretries = {{ attempts = 2 }}\n"
        ));
    }
    let p = dir.join("table.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn sidecar(service: &str, app: SocketAddr, table: &Path) -> Proc {
    testkit::table_sidecar(service, app, table)
}

/// Reads one HTTP/1 head (up to the blank line) from `r`.
fn read_head(r: &mut impl BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("reading a head");
        assert!(n > 0, "connection closed inside a head: {head:?}");
        head.push_str(&line);
        if line == "\r\n" {
            return head;
        }
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

/// An upstream that accepts an upgrade (answers 101) and then echoes every byte back, upper
/// case, so the test can tell the echo from its own bytes. It records each handshake's head.
fn upgrade_echo() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let head = read_head(&mut r);
                seen.lock().unwrap().push(head);
                let mut w = conn;
                w.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                )
                .unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let up: Vec<u8> = buf[..n].to_ascii_uppercase();
                            if w.write_all(&up).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, heads)
}

fn upgrade_through(addr: SocketAddr, host: &str) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        c,
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let head = read_head(&mut r);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "the upgrade is answered 101 through the sidecar: {head:?}"
    );
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "the handshake's fields reach the client: {head:?}"
    );
    for msg in ["hello", "second message, after a pause"] {
        c.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        r.read_exact(&mut got)
            .expect("the echo comes back through the tunnel");
        assert_eq!(
            got,
            msg.to_ascii_uppercase().as_bytes(),
            "bytes pass both ways"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_upgrade_is_tunnelled_through_both_listeners_and_a_hop() {
    let (echo, heads) = upgrade_echo();
    let t = table("upgrade", &[("b", echo)]);
    let b = sidecar("b", echo, &t);
    let t = table("upgrade-a", &[("b", b.addr("inbound")), ("direct", echo)]);
    let a = sidecar("a", "127.0.0.1:9".parse().unwrap(), &t);

    upgrade_through(b.addr("inbound"), "b");
    upgrade_through(a.addr("outbound"), "direct");
    upgrade_through(a.addr("outbound"), "b");

    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 3, "one handshake per tunnel: {heads:?}");
    for h in heads.iter() {
        let lower = h.to_ascii_lowercase();
        assert!(
            lower.contains("upgrade: websocket") && lower.contains("connection: upgrade"),
            "the endpoint gets the upgrade request whole: {h:?}"
        );
        assert!(lower.starts_with("get /chat http/1.1"), "{h:?}");
    }
    let r = testkit::http(a.addr("outbound"), "GET", "/", &[("Host", "nowhere")], b"")
        .expect("the outbound listener answers");
    assert_eq!(
        r.status, 404,
        "plain requests still go through the request loop"
    );
}

/// An upstream that answers every request `200` with the body `answer` makes from the
/// request's head (request line included), keeps the connection alive, and closes it
/// `close_after` after each response when set (as a server with a short keep-alive timeout
/// does, without saying so in the response). Returns its address and its connection count.
fn answering_upstream(
    close_after: Option<Duration>,
    answer: impl Fn(&str) -> String + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let cn = conns.clone();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            cn.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut head = String::new();
                    if r.read_line(&mut head).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push_str(&read_head(&mut r));
                    let mut body = vec![0u8; content_length(&head)];
                    r.read_exact(&mut body).unwrap();
                    let body = answer(&head);
                    let _ = write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if let Some(d) = close_after {
                        std::thread::sleep(d);
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// An [`answering_upstream`] whose body is the request's number; returns its address, its
/// request count and its connection count.
fn counting_upstream(
    close_after: Option<Duration>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let rq = requests.clone();
    let (addr, conns) = answering_upstream(close_after, move |_| {
        (rq.fetch_add(1, Ordering::SeqCst) + 1).to_string()
    });
    (addr, requests, conns)
}

/// Reads one response with a Content-Length body; returns (head, body).
fn read_response(r: &mut impl BufRead) -> (String, String) {
    let head = read_head(r);
    let mut body = vec![0u8; content_length(&head)];
    r.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let (up, requests, _) = counting_upstream(None);
    let t = table("pipeline", &[("b", up)]);
    let a = sidecar("a", up, &t);
    for (label, addr) in [
        ("outbound", a.addr("outbound")),
        ("inbound", a.addr("inbound")),
    ] {
        let before = requests.load(Ordering::SeqCst);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let one = "GET /x HTTP/1.1\r\nHost: b\r\n\r\n";
        let post = "POST /y HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nabc";
        c.write_all(format!("{one}{post}{one}").as_bytes()).unwrap();
        let mut r = BufReader::new(c);
        for i in 1..=3 {
            let (head, body) = read_response(&mut r);
            assert!(
                head.starts_with("HTTP/1.1 200"),
                "{label}: response {i}: {head:?}"
            );
            assert_eq!(
                body,
                (before + i).to_string(),
                "{label}: response {i} answers request {i}, in order"
            );
        }
    }
}

#[test]
fn an_http10_client_gets_a_close_delimited_body_not_chunks() {
    // An upstream answering without a length: the body ends when it closes.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            read_head(&mut r);
            let mut w = conn;
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno length here");
        }
    });
    let t = table("http10", &[("b", up)]);
    let a = sidecar("a", up, &t);
    for (version, chunked) in [("HTTP/1.0", false), ("HTTP/1.1", true)] {
        let mut c = TcpStream::connect(a.addr("outbound")).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(
            c,
            "GET /x {version}\r\nHost: b\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        let (head, body) = all.split_once("\r\n\r\n").unwrap();
        let lower = head.to_ascii_lowercase();
        assert_eq!(
            lower.contains("transfer-encoding: chunked"),
            chunked,
            "{version}: {head:?}"
        );
        if chunked {
            assert!(body.contains("no length here"), "{version}: {body:?}");
        } else {
            assert_eq!(
                body, "no length here",
                "{version}: the body as sent, ended by the close"
            );
        }
    }
}

#[test]
fn a_pooled_connection_the_endpoint_closed_is_replaced_without_a_failure() {
    // The endpoint closes each connection right after answering, without a Connection: close,
    // so every connection the sidecar pools is closed by the time it is taken again (each
    // request waits until the one before is back in the pool). Without the replacement, a GET
    // would be retried (x-mesh-attempts: 2) and a POST refused (502).
    let (up, requests, conns) = counting_upstream(Some(Duration::ZERO));
    let t = table("stale", &[("b", up)]);
    let a = sidecar("a", up, &t);
    for (i, pause) in [0u64, 150, 150, 700, 700].into_iter().enumerate() {
        for method in ["GET", "POST"] {
            std::thread::sleep(Duration::from_millis(pause.max(50)));
            let r = testkit::http(a.addr("outbound"), method, "/", &[("Host", "b")], b"")
                .expect("outbound answers");
            assert_eq!(
                r.status, 200,
                "request {i} ({method}) after {pause} ms: a closed pooled connection is not a failure: {r:?}"
            );
            assert_eq!(
                r.header("x-mesh-attempts"),
                Some("1"),
                "not counted as a retry"
            );
        }
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        10,
        "each request reached the endpoint once"
    );
    assert_eq!(
        conns.load(Ordering::SeqCst),
        10,
        "a new connection replaced each closed one"
    );
    let breakers = testkit::get(a.addr("admin"), "/breakers").unwrap().body;
    assert!(
        !breakers.contains("\"open\""),
        "the endpoint's breaker heard no failure: {breakers}"
    );
}

/// An [`answering_upstream`] whose body is the length of the `x-big` field it got.
fn big_field_upstream() -> SocketAddr {
    let (addr, _) = answering_upstream(None, |head| {
        head.lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(n, _)| n.eq_ignore_ascii_case("x-big"))
            .map(|(_, v)| v.len())
            .unwrap_or(0)
            .to_string()
    });
    addr
}

#[test]
fn a_header_longer_than_the_first_read_arriving_in_pieces_is_read_whole() {
    // The loop reads a request's first bytes (up to 16 KiB) before it parses them, and reads
    // the rest after: a 20 KB field sent in three pieces must arrive whole, and the connection
    // must then serve its next request.
    let up = big_field_upstream();
    let t = table("bigfield", &[("b", up)]);
    let a = sidecar("a", up, &t);
    let value = "v".repeat(20_000);
    for (label, addr) in [
        ("outbound", a.addr("outbound")),
        ("inbound", a.addr("inbound")),
    ] {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let req = format!("GET /big HTTP/1.1\r\nHost: b\r\nX-Big: {value}\r\n\r\n");
        let bytes = req.as_bytes();
        for piece in [&bytes[..10], &bytes[10..5_000], &bytes[5_000..]] {
            c.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut r = BufReader::new(c.try_clone().unwrap());
        let (head, body) = read_response(&mut r);
        assert!(head.starts_with("HTTP/1.1 200"), "{label}: {head:?}");
        assert_eq!(
            body, "20000",
            "{label}: the whole field reached the upstream"
        );
        c.write_all(b"GET /next HTTP/1.1\r\nHost: b\r\nX-Big: 1\r\n\r\n")
            .unwrap();
        let (head, body) = read_response(&mut r);
        assert!(head.starts_with("HTTP/1.1 200"), "{label}: next: {head:?}");
        assert_eq!(body, "1", "{label}: the connection serves its next request");
    }
}
