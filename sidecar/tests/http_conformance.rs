//! The sidecar as an HTTP/1.1 proxy, checked on the wire against a real third-party server:
//! httpbin under gunicorn (installed into `.venv/` by `make setup`).
//!
//! One gunicorn and two sidecars serve every test of this file:
//! - sidecar `client`: outbound routes service `httpbin` to gunicorn and service `raw` to a
//!   scripted upstream in this process; inbound fronts gunicorn (`--app`);
//! - sidecar `raw-app`: inbound fronts the scripted upstream.
//!
//! The scripted upstream (`raw`) does what a WSGI server will not: it echoes the request head
//! exactly as it arrived (request line, header order and case) and answers with hop-by-hop
//! headers that gunicorn refuses to send.
//!
//! Every request is written as raw bytes on a `TcpStream` and every response is read by its
//! framing (Content-Length, chunked, or close), so a proxy that sends a body where there must be
//! none, or too few bytes, breaks the next response on the same connection.
//!
//! The processes are started once, on a thread that lives as long as the test process (children
//! die with the thread that started them: `PR_SET_PDEATHSIG`), and are stopped by an `atexit`
//! hook when the test harness exits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::{sidecar_cmd, start_ready_sidecar, wait_http_ok, Proc};

const STARTUP: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The processes under test
// ---------------------------------------------------------------------------------------------

/// Where the tests send requests.
struct Harness {
    /// gunicorn itself, for control requests that show what the app does without a proxy.
    app: SocketAddr,
    /// Sidecar `client`: outbound (services `httpbin` and `raw`) and inbound (to gunicorn).
    outbound: SocketAddr,
    inbound: SocketAddr,
    /// Sidecar `raw-app`: inbound to the scripted upstream.
    raw_inbound: SocketAddr,
}

/// One way to reach an upstream: an address to connect to and the Host to send.
#[derive(Clone, Copy, Debug)]
struct Target {
    label: &'static str,
    addr: SocketAddr,
    host: &'static str,
}

impl Harness {
    fn direct(&self) -> Target {
        Target {
            label: "gunicorn direct",
            addr: self.app,
            host: "httpbin",
        }
    }

    /// httpbin through the sidecar: outbound (by Host) and inbound (to `--app`).
    fn httpbin(&self) -> [Target; 2] {
        [
            Target {
                label: "outbound -> httpbin",
                addr: self.outbound,
                host: "httpbin",
            },
            Target {
                label: "inbound -> httpbin",
                addr: self.inbound,
                host: "httpbin",
            },
        ]
    }

    /// The scripted upstream through the sidecar, both ways.
    fn raw(&self) -> [Target; 2] {
        [
            Target {
                label: "outbound -> raw",
                addr: self.outbound,
                host: "raw",
            },
            Target {
                label: "inbound -> raw",
                addr: self.raw_inbound,
                host: "raw",
            },
        ]
    }
}

static HARNESS: OnceLock<Harness> = OnceLock::new();
/// The child processes, stopped by [`stop_children`] at exit.
static CHILDREN: Mutex<Vec<Proc>> = Mutex::new(Vec::new());
static TEMP_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The shared processes (started by the first test that asks), and a guard that prints their
/// logs if the calling test fails.
fn harness() -> (&'static Harness, LogsOnFailure) {
    (HARNESS.get_or_init(start), LogsOnFailure)
}

struct LogsOnFailure;

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        for p in children.iter() {
            let log = p.stderr();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "---- last {} lines of {}'s stderr ----\n{}",
                tail.len(),
                p.name,
                tail.join("\n")
            );
        }
    }
}

/// gunicorn from PATH (`make test` puts `.venv/bin` first), else `<repo>/.venv/bin/gunicorn`.
fn find_gunicorn() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("gunicorn"))
            .find(|p| p.is_file())
    });
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/gunicorn");
    on_path
        .or_else(|| venv.is_file().then_some(venv))
        .unwrap_or_else(|| {
            panic!(
                "gunicorn not found on PATH nor at .venv/bin/gunicorn: these tests need httpbin \
             under gunicorn; run `make setup` (it creates .venv/ from \
             scripts/requirements-test.txt)"
            )
        })
}

fn start() -> Harness {
    let gunicorn = find_gunicorn();
    // Children get SIGKILL when the thread that spawned them ends, so spawn them from a thread
    // that lives as long as the test process, not from the test's own thread.
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("conformance-children".into())
        .spawn(move || {
            let started = std::panic::catch_unwind(|| launch(&gunicorn));
            let _ = tx.send(started);
            loop {
                std::thread::park();
            }
        })
        .expect("spawn the thread that owns the children");
    match rx.recv().expect("the launching thread answers") {
        Ok(h) => h,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn launch(gunicorn: &PathBuf) -> Harness {
    let raw = RawUpstream::start();

    let mut cmd = Command::new(gunicorn);
    cmd.args([
        "--no-control-socket",
        "-b",
        "127.0.0.1:0",
        "-w",
        "2",
        "-k",
        "gthread",
        "--threads",
        "8",
        "--preload",
        "--graceful-timeout",
        "1",
        // Idle keep-alive connections close after 1 s (gunicorn's default is 2 s): the
        // keep-alive test waits that long to reuse the sidecar's pooled connections.
        "--keep-alive",
        "1",
        "httpbin:app",
    ]);
    let mut g = Proc::spawn(&mut cmd, "gunicorn");
    let app = gunicorn_addr(&mut g);
    wait_http_ok(app, "/get", STARTUP);
    keep(g);

    let dir = std::env::temp_dir().join(format!("meshlab-http-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the temp dir");
    *TEMP_DIR.lock().unwrap() = Some(dir.clone());
    let table = dir.join("table.toml");
    std::fs::write(
        &table,
        format!(
            "version = 1\n\
             [services.httpbin]\nendpoints = [\"{app}\"]\n\
             [services.raw]\nendpoints = [\"{raw}\"]\n"
        ),
    )
    .expect("write the table");
    let table = table.to_str().expect("utf-8 temp path").to_owned();

    let sidecar = |service: &str, app: SocketAddr| {
        let mut cmd = sidecar_cmd(service, app);
        cmd.args(["--table", &table]);
        start_ready_sidecar(&mut cmd, "sidecar", STARTUP)
    };
    let client = sidecar("client", app);
    let raw_app = sidecar("raw-app", raw);
    let h = Harness {
        app,
        outbound: client.addr("outbound"),
        inbound: client.addr("inbound"),
        raw_inbound: raw_app.addr("inbound"),
    };
    keep(client);
    keep(raw_app);
    h
}

/// Hands a child to [`CHILDREN`], registering the exit hook with the first one.
fn keep(p: Proc) {
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    if children.is_empty() {
        // SAFETY: registers a plain `extern "C" fn`; it runs once, at exit.
        unsafe {
            libc::atexit(stop_children);
        }
    }
    children.push(p);
}

extern "C" fn stop_children() {
    let children = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|e| e.into_inner()));
    for mut p in children {
        if p.name == "gunicorn" {
            // gunicorn stops its workers too when signalled (SIGKILL would orphan them):
            // SIGINT is its quick stop, SIGTERM its graceful one (`--graceful-timeout`), for
            // when SIGINT is ignored (a non-interactive shell's background jobs ignore it).
            p.signal(libc::SIGINT);
            if p.wait_timeout(Duration::from_secs(1)).is_none() {
                p.signal(libc::SIGTERM);
                p.wait_timeout(Duration::from_secs(3));
            }
        }
        drop(p);
    }
    if let Some(dir) = TEMP_DIR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Reads gunicorn's "Listening at: http://127.0.0.1:PORT (PID)" from its stderr.
fn gunicorn_addr(g: &mut Proc) -> SocketAddr {
    let deadline = Instant::now() + STARTUP;
    loop {
        let log = g.stderr();
        if let Some(rest) = log.split("Listening at: http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            return addr
                .parse()
                .unwrap_or_else(|e| panic!("gunicorn's listen address {addr:?}: {e}\n{log}"));
        }
        if let Some(status) = g.try_wait() {
            panic!(
                "gunicorn exited ({status}) before listening; is httpbin installed in its \
                 environment (`make setup`)?\nstderr:\n{log}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "gunicorn printed no 'Listening at' within {STARTUP:?}\nstderr:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The scripted upstream
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 upstream that answers by path (keep-alive, Content-Length request bodies only):
/// - `/hop...`: a response full of hop-by-hop headers, body `ok`;
/// - `/slow-chunked...`: five 1-byte chunks over 2 s;
/// - `/close-delimited...`: an HTTP/1.0-style body ended by closing the connection;
/// - anything else: the request head exactly as received, as the body.
struct RawUpstream;

/// The body `/close-delimited` sends before it closes.
const CLOSE_DELIMITED_BODY: &[u8] = b"a body that ends when the connection closes\n";

impl RawUpstream {
    fn start() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the scripted upstream");
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || RawUpstream::serve(s));
            }
        });
        addr
    }

    fn serve(mut s: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let end = loop {
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    break end + 4;
                }
                let mut tmp = [0u8; 16 * 1024];
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            };
            let head: Vec<u8> = buf.drain(..end).collect();
            let text = String::from_utf8_lossy(&head).into_owned();
            let body_len = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < body_len {
                let mut tmp = [0u8; 16 * 1024];
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            buf.drain(..body_len);
            let path = text.split(' ').nth(1).unwrap_or("");
            let path = path
                .find("://")
                .and_then(|i| path[i + 3..].find('/').map(|j| &path[i + 3 + j..]))
                .unwrap_or(path);
            let out: Vec<u8> = if path.starts_with("/hop") {
                b"HTTP/1.1 200 OK\r\n\
                  Content-Type: text/plain\r\n\
                  Content-Length: 2\r\n\
                  Connection: keep-alive, X-Secret, x-other-secret\r\n\
                  X-Secret: 1\r\n\
                  X-Other-Secret: 2\r\n\
                  Keep-Alive: timeout=5, max=100\r\n\
                  Proxy-Connection: keep-alive\r\n\
                  X-Kept: yes\r\n\
                  \r\n\
                  ok"
                .to_vec()
            } else if path.starts_with("/slow-chunked") {
                // Like /drip, chunked: one byte every 400 ms, each its own chunk.
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                for i in 0..5 {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(400));
                    }
                    if s.write_all(b"1\r\n*\r\n").is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(400));
                b"0\r\n\r\n".to_vec()
            } else if path.starts_with("/close-delimited") {
                let mut out =
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                        .to_vec();
                out.extend_from_slice(CLOSE_DELIMITED_BODY);
                let _ = s.write_all(&out);
                return;
            } else {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    head.len()
                )
                .into_bytes();
                out.extend_from_slice(&head);
                out
            };
            if s.write_all(&out).is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A wire-level HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One response, read by its framing.
#[derive(Debug)]
struct Resp {
    status: u16,
    /// Informational responses (1xx) read before this one.
    interim: Vec<u16>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// When the first body byte arrived (`None`: no body).
    first_body_at: Option<Instant>,
    /// When the whole response had arrived.
    done_at: Instant,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {:.300}",
                self.status,
                self.text()
            )
        })
    }

    /// Whether the connection stays open after this response, by its Connection header.
    fn keeps_alive(&self) -> bool {
        !self
            .header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// A client connection that writes raw bytes and reads responses by their framing.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    label: String,
    last_fill: Instant,
}

impl Conn {
    fn open(t: Target) -> Conn {
        let s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{}: connect {}: {e}", t.label, t.addr));
        s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            s,
            buf: Vec::new(),
            label: t.label.to_owned(),
            last_fill: Instant::now(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.label));
    }

    /// Reads more bytes; false at end of stream.
    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 64 * 1024];
        match self.s.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                self.last_fill = Instant::now();
                true
            }
            Err(e) => panic!(
                "{}: read: {e}; unparsed bytes so far: {:?}",
                self.label,
                String::from_utf8_lossy(&self.buf[..self.buf.len().min(300)])
            ),
        }
    }

    fn need(&mut self, n: usize, what: &str) {
        while self.buf.len() < n {
            assert!(
                self.fill(),
                "{}: connection closed in the middle of {what} ({} of {n} bytes)",
                self.label,
                self.buf.len()
            );
        }
    }

    fn line(&mut self, what: &str) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8_lossy(&l[..i]).into_owned();
            }
            assert!(
                self.fill(),
                "{}: connection closed in the middle of {what}",
                self.label
            );
        }
    }

    /// Reads one status line and header block.
    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            assert!(
                self.fill(),
                "{}: connection closed before a complete response head; got {:?}",
                self.label,
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head: Vec<u8> = self.buf.drain(..end + 4).collect();
        let head = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{}: not a status line: {status_line:?} (a body where none belongs, or \
                     misframed bytes?)",
                    self.label
                )
            });
        let headers = lines
            .map(|l| {
                let (k, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{}: bad header line {l:?}", self.label));
                (k.to_owned(), v.trim().to_owned())
            })
            .collect();
        (status, headers)
    }

    /// Reads the response to a request with `method`: 1xx responses first, then the final one
    /// and its body by its framing (RFC 9112 section 6.3).
    fn response(&mut self, method: &str) -> Resp {
        let mut interim = Vec::new();
        let (status, headers) = loop {
            let (status, headers) = self.head();
            if (100..200).contains(&status) && status != 101 {
                interim.push(status);
                continue;
            }
            break (status, headers);
        };
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let te = get("transfer-encoding");
        let cl = get("content-length");
        assert!(
            !(te.is_some() && cl.is_some()),
            "{}: response {status} carries both Transfer-Encoding and Content-Length: {headers:?}",
            self.label
        );
        let mut first = (!self.buf.is_empty()).then_some(self.last_fill);
        let no_body = method == "HEAD" || status == 204 || status == 304;
        let body = if no_body {
            first = None;
            Vec::new()
        } else if let Some(te) = te {
            assert!(
                te.eq_ignore_ascii_case("chunked"),
                "{}: unexpected Transfer-Encoding {te:?}",
                self.label
            );
            let mut body = Vec::new();
            loop {
                let size_line = self.line("a chunk size line");
                if first.is_none() {
                    first = Some(self.last_fill);
                }
                let size = usize::from_str_radix(
                    size_line.split(';').next().unwrap_or_default().trim(),
                    16,
                )
                .unwrap_or_else(|e| panic!("{}: chunk size {size_line:?}: {e}", self.label));
                if size == 0 {
                    // Trailer section, then the empty line.
                    while !self.line("the trailer section").is_empty() {}
                    break;
                }
                self.need(size + 2, "a chunk");
                body.extend_from_slice(&self.buf[..size]);
                assert_eq!(
                    &self.buf[size..size + 2],
                    b"\r\n",
                    "{}: chunk data not followed by CRLF",
                    self.label
                );
                self.buf.drain(..size + 2);
            }
            body
        } else if let Some(cl) = cl {
            let n: usize = cl
                .parse()
                .unwrap_or_else(|e| panic!("{}: Content-Length {cl:?}: {e}", self.label));
            if n > 0 && self.buf.is_empty() {
                assert!(self.fill(), "{}: closed before the body", self.label);
                first = Some(self.last_fill);
            }
            self.need(n, "a Content-Length body");
            self.buf.drain(..n).collect()
        } else {
            // Close-delimited.
            while self.fill() {
                if first.is_none() {
                    first = Some(self.last_fill);
                }
            }
            std::mem::take(&mut self.buf)
        };
        Resp {
            status,
            interim,
            headers,
            body,
            first_body_at: first,
            done_at: Instant::now(),
        }
    }

    /// Sends one request and reads its response.
    fn exchange(&mut self, req: &[u8], method: &str) -> Resp {
        self.send(req);
        self.response(method)
    }

    /// Asserts nothing more was sent after the last response (no stray body bytes).
    fn assert_no_stray_bytes(&mut self, after: &str) {
        assert!(
            self.buf.is_empty(),
            "{}: stray bytes after {after}: {:?}",
            self.label,
            String::from_utf8_lossy(&self.buf)
        );
        self.s
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut tmp = [0u8; 1024];
        match self.s.read(&mut tmp) {
            Ok(0) => panic!("{}: connection closed after {after}", self.label),
            Ok(n) => panic!(
                "{}: stray bytes after {after}: {:?}",
                self.label,
                String::from_utf8_lossy(&tmp[..n])
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{}: read after {after}: {e}",
                self.label
            ),
        }
        self.s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    }

    /// Asserts the peer closes the connection within `within`, sending nothing more.
    fn assert_closed(&mut self, within: Duration, after: &str) {
        assert!(
            self.buf.is_empty(),
            "{}: stray bytes after {after}: {:?}",
            self.label,
            String::from_utf8_lossy(&self.buf)
        );
        self.s.set_read_timeout(Some(within)).unwrap();
        let mut tmp = [0u8; 1024];
        match self.s.read(&mut tmp) {
            Ok(0) => {}
            Ok(n) => panic!(
                "{}: bytes after {after} instead of a close: {:?}",
                self.label,
                String::from_utf8_lossy(&tmp[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "{}: connection still open {within:?} after {after} ({e})",
                self.label
            ),
        }
    }
}

/// A request's bytes: request line, Host, `headers`, then Content-Length for a body unless the
/// caller frames it (a Content-Length or Transfer-Encoding among `headers`).
fn request(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    let framed = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !framed && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `body` in chunked encoding, `size` bytes a chunk.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// One request on a fresh connection.
fn call(t: Target, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut c = Conn::open(t);
    c.exchange(&request(method, path, t.host, headers, body), method)
}

/// `n` printable pseudo-random bytes (so httpbin echoes them as text, not base64).
fn payload(n: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize]
        })
        .collect()
}

/// Where two byte strings differ, for assertion messages that do not print a megabyte.
fn diff(got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    Some(format!(
        "got {} bytes, want {}; first difference at {}",
        got.len(),
        want.len(),
        at.map_or("the end of the shorter".to_owned(), |i| format!("byte {i}"))
    ))
}

/// A header as httpbin's /headers or /anything reports it (httpbin title-cases names).
fn seen_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"]
        .as_object()
        .expect("httpbin reports headers")
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// The header lines of a request head the scripted upstream echoed.
fn echoed_lines(r: &Resp) -> Vec<String> {
    r.text().split("\r\n").map(str::to_owned).collect()
}

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

#[test]
fn methods_reach_the_app_as_sent() {
    let (h, _logs) = harness();
    for t in h.httpbin() {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let body = if method == "GET" {
                Vec::new()
            } else {
                format!("a {method} body").into_bytes()
            };
            let r = call(
                t,
                method,
                "/anything",
                &[("Content-Type", "text/plain")],
                &body,
            );
            assert_eq!(
                r.status,
                200,
                "{}: {method} /anything: {}",
                t.label,
                r.text()
            );
            let echo = r.json();
            assert_eq!(
                echo["method"], method,
                "{}: method seen by the app",
                t.label
            );
            assert_eq!(
                echo["data"].as_str().unwrap_or_default().as_bytes(),
                &body[..],
                "{}: {method} body seen by the app",
                t.label
            );
        }
        let r = call(t, "OPTIONS", "/anything", &[], b"");
        assert_eq!(r.status, 200, "{}: OPTIONS /anything", t.label);
        let allow = r.header("allow").unwrap_or_default();
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            assert!(
                allow.contains(m),
                "{}: OPTIONS answers Allow with {m}: {allow:?}",
                t.label
            );
        }
        assert!(
            r.body.is_empty(),
            "{}: OPTIONS body: {:?}",
            t.label,
            r.text()
        );
    }
}

#[test]
fn query_strings_reach_the_app_unchanged() {
    let (h, _logs) = harness();
    let query = "a=1&b=%20x&a=2&c=%2F%3F%26%3D&d=&e=caf%C3%A9+au+lait";
    for t in h.httpbin() {
        let r = call(t, "GET", &format!("/anything?{query}"), &[], b"");
        assert_eq!(r.status, 200, "{}: {}", t.label, r.text());
        assert_eq!(
            r.json()["args"],
            json!({"a": ["1", "2"], "b": " x", "c": "/?&=", "d": "", "e": "café au lait"}),
            "{}: query arguments the app parsed",
            t.label
        );
    }
    // Byte for byte: the scripted upstream echoes the request line it received.
    for t in h.raw() {
        let r = call(t, "GET", &format!("/echo?{query}"), &[], b"");
        let lines = echoed_lines(&r);
        assert_eq!(
            lines[0],
            format!("GET /echo?{query} HTTP/1.1"),
            "{}: request line at the upstream",
            t.label
        );
    }
}

#[test]
fn repeated_request_headers_all_arrive() {
    let (h, _logs) = harness();
    let dup = [("X-Dup", "one"), ("X-Dup", "two")];
    for t in h.httpbin() {
        let r = call(t, "GET", "/headers", &dup, b"");
        assert_eq!(r.status, 200, "{}", t.label);
        let seen = r.json();
        let v = seen_header(&seen, "x-dup")
            .unwrap_or_default()
            .replace(' ', "");
        assert_eq!(
            v, "one,two",
            "{}: httpbin joins repeated headers in order",
            t.label
        );
    }
    for t in h.raw() {
        let r = call(t, "GET", "/echo", &dup, b"");
        let lines: Vec<String> = echoed_lines(&r)
            .into_iter()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-dup:"))
            .collect();
        assert_eq!(
            lines.len(),
            2,
            "{}: both X-Dup lines reach the upstream: {}",
            t.label,
            r.text()
        );
        assert!(
            lines[0].ends_with("one") && lines[1].ends_with("two"),
            "{}: in order: {lines:?}",
            t.label
        );
    }
}

#[test]
fn large_request_bodies_arrive_whole_with_content_length_and_chunked() {
    let (h, _logs) = harness();
    let body = payload(1 << 20, 1);
    for t in h.httpbin() {
        let ct = [("Content-Type", "text/plain")];
        let r = call(t, "POST", "/anything", &ct, &body);
        assert_eq!(r.status, 200, "{}: 1 MiB POST: {:.200}", t.label, r.text());
        assert!(
            r.body.len() > body.len(),
            "{}: the echo (a response over 1 MiB) arrives whole: {} bytes",
            t.label,
            r.body.len()
        );
        let echo = r.json();
        let data = echo["data"].as_str().unwrap_or_default().as_bytes();
        assert_eq!(
            diff(data, &body),
            None,
            "{}: 1 MiB Content-Length body",
            t.label
        );

        let framed = [
            ("Content-Type", "text/plain"),
            ("Transfer-Encoding", "chunked"),
        ];
        for size in [65_536, 1_000] {
            let r = call(t, "POST", "/anything", &framed, &chunked(&body, size));
            assert_eq!(
                r.status,
                200,
                "{}: chunked POST: {:.200}",
                t.label,
                r.text()
            );
            let echo = r.json();
            let data = echo["data"].as_str().unwrap_or_default().as_bytes();
            assert_eq!(
                diff(data, &body),
                None,
                "{}: 1 MiB chunked body in {size}-byte chunks",
                t.label
            );
        }
    }
}

#[test]
fn large_and_chunked_responses_arrive_whole() {
    let (h, _logs) = harness();
    // httpbin caps /bytes and /stream-bytes at 100 KiB; seeded, so every path gets the same
    // bytes. The seed is Python's process-wide `random`, advanced while the body streams: no
    // other test may call an httpbin endpoint that uses it (/bytes, /stream-bytes) meanwhile.
    let paths = [
        "/bytes/102400?seed=7",
        "/stream-bytes/102400?seed=7&chunk_size=1000",
        "/stream-bytes/102400?seed=7",
    ];
    for path in paths {
        let want = call(h.direct(), "GET", path, &[], b"");
        assert_eq!(want.status, 200, "direct {path}");
        assert_eq!(want.body.len(), 102_400, "direct {path} length");
        for t in h.httpbin() {
            let r = call(t, "GET", path, &[], b"");
            assert_eq!(r.status, 200, "{}: {path}", t.label);
            assert_eq!(diff(&r.body, &want.body), None, "{}: {path}", t.label);
        }
    }
    for t in h.httpbin() {
        let r = call(t, "GET", "/stream/20", &[], b"");
        assert_eq!(r.status, 200, "{}: /stream/20", t.label);
        assert_eq!(
            r.header("transfer-encoding"),
            Some("chunked"),
            "{}: /stream/20 stays chunked",
            t.label
        );
        let text = r.text();
        let ids: Vec<i64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .unwrap_or_else(|e| panic!("{}: /stream line {l:?}: {e}", t.label))["id"]
                    .as_i64()
                    .expect("an id")
            })
            .collect();
        assert_eq!(
            ids,
            (0..20).collect::<Vec<_>>(),
            "{}: all 20 streamed objects, in order",
            t.label
        );
    }
}

/// Sends each GET at once, each on its own connection; returns the responses with their send
/// times.
fn timed_gets(gets: &[(Target, &'static str)]) -> Vec<(Target, &'static str, Instant, Resp)> {
    let threads: Vec<_> = gets
        .iter()
        .map(|&(t, path)| {
            std::thread::spawn(move || {
                let mut c = Conn::open(t);
                let sent = Instant::now();
                let r = c.exchange(&request("GET", path, t.host, &[], b""), "GET");
                (t, path, sent, r)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|th| th.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        .collect()
}

/// Asserts the response took about `upstream` (the time the upstream spends producing it) and
/// its first body bytes came at least `lead` before its end.
fn assert_streamed(got: &[(Target, &str, Instant, Resp)], upstream: Duration, lead: Duration) {
    for (t, path, sent, r) in got {
        assert_eq!(r.status, 200, "{}: {path}", t.label);
        let first = r.first_body_at.expect("a body") - *sent;
        let total = r.done_at - *sent;
        assert!(
            total >= upstream.mul_f32(0.75),
            "{}: {path}: the upstream takes ~{upstream:?}, the response took {total:?}",
            t.label
        );
        assert!(
            total.saturating_sub(first) >= lead,
            "{}: {path}: the first body bytes must arrive well before the upstream finishes: \
             first at {first:?}, last at {total:?} (the proxy holds the body back)",
            t.label
        );
    }
}

#[test]
fn streamed_responses_reach_the_client_as_they_are_produced() {
    let (h, _logs) = harness();
    // httpbin: 100 KiB in ten 10 KiB pieces over 2 s (Content-Length framed).
    let range = "/range/102400?duration=2&chunk_size=10240";
    // The scripted upstream: five 1-byte chunks over 2 s (httpbin's slow streams all carry a
    // Content-Length).
    let chunks = "/slow-chunked";
    let mut gets: Vec<(Target, &'static str)> = h.httpbin().map(|t| (t, range)).to_vec();
    gets.extend(h.raw().map(|t| (t, chunks)));
    let got = timed_gets(&gets);
    assert_streamed(&got, Duration::from_secs(2), Duration::from_secs(1));
    let letters: Vec<u8> = (0..102_400u32).map(|i| b'a' + (i % 26) as u8).collect();
    for (t, path, _, r) in &got {
        let want: &[u8] = if *path == range { &letters } else { b"*****" };
        assert_eq!(diff(&r.body, want), None, "{}: {path} body", t.label);
    }
}

/// A small Content-Length body that arrives slowly reaches the client as it arrives: the
/// header and each piece are written at once, never held back until a buffer fills or the body
/// ends (Pingora 0.9.1's server session held them in its 1460-byte write buffer).
#[test]
fn small_slow_content_length_bodies_stream() {
    let (h, _logs) = harness();
    // 5 bytes over 2 s: the first at once, one every 400 ms.
    let drip = "/drip?duration=2&numbytes=5&delay=0";
    let got = timed_gets(&h.httpbin().map(|t| (t, drip)));
    assert_streamed(&got, Duration::from_secs(2), Duration::from_secs(1));
}

#[test]
fn expect_100_continue_gets_an_interim_response_then_the_body_is_accepted() {
    let (h, _logs) = harness();
    let body = b"hello world";
    for t in h.httpbin() {
        let mut c = Conn::open(t);
        c.send(&request(
            "POST",
            "/anything",
            t.host,
            &[
                ("Content-Type", "text/plain"),
                ("Expect", "100-continue"),
                ("Content-Length", "11"),
            ],
            b"",
        ));
        // A client waits for 100 Continue (curl: 1 s) before sending the body; read the head
        // that comes first.
        c.s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let (status, _) = c.head();
        c.s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        assert_eq!(
            status, 100,
            "{}: the first response to Expect: 100-continue",
            t.label
        );
        c.send(body);
        let r = c.response("POST");
        assert_eq!(r.status, 200, "{}: final response: {}", t.label, r.text());
        assert!(
            r.interim.is_empty(),
            "{}: one 100 Continue only: {:?}",
            t.label,
            r.interim
        );
        assert_eq!(
            r.json()["data"],
            "hello world",
            "{}: the body sent after 100 Continue",
            t.label
        );
        // Pingora ends the connection after forwarding a 100 Continue (it disables keep-alive
        // when a response header, the 1xx included, is written before the request body is
        // read), and says so: either way client and proxy stay in step.
        if r.keeps_alive() {
            let r = c.exchange(&request("GET", "/get", t.host, &[], b""), "GET");
            assert_eq!(r.status, 200, "{}: next request on the connection", t.label);
        } else {
            c.assert_closed(
                Duration::from_secs(2),
                "a final response with Connection: close",
            );
        }
    }
}

#[test]
fn head_has_no_body_and_the_connection_stays_usable() {
    let (h, _logs) = harness();
    for t in h.httpbin() {
        let mut c = Conn::open(t);
        for path in ["/get", "/stream/3", "/range/1000"] {
            let r = c.exchange(&request("HEAD", path, t.host, &[], b""), "HEAD");
            assert_eq!(r.status, 200, "{}: HEAD {path}", t.label);
            assert!(
                r.keeps_alive(),
                "{}: HEAD {path} keeps the connection",
                t.label
            );
            c.assert_no_stray_bytes(&format!("HEAD {path}"));
        }
        let r = c.exchange(&request("GET", "/get", t.host, &[], b""), "GET");
        assert_eq!(r.status, 200, "{}: GET after HEADs", t.label);
        assert_eq!(r.json()["url"], "http://httpbin/get", "{}", t.label);
    }
}

#[test]
fn no_body_statuses_keep_framing() {
    let (h, _logs) = harness();
    for t in h.httpbin() {
        let mut c = Conn::open(t);
        for (method, path, status) in [
            ("GET", "/status/204", 204),
            ("GET", "/status/304", 304),
            ("POST", "/status/204", 204),
        ] {
            let r = c.exchange(&request(method, path, t.host, &[], b""), method);
            assert_eq!(r.status, status, "{}: {method} {path}", t.label);
            assert!(
                !r.has("transfer-encoding"),
                "{}: {status} must not be chunked: {:?}",
                t.label,
                r.headers
            );
            c.assert_no_stray_bytes(&format!("{method} {path}"));
        }
        let r = c.exchange(&request("GET", "/get", t.host, &[], b""), "GET");
        assert_eq!(r.status, 200, "{}: GET after 204/304", t.label);
        r.json();
    }
}

#[test]
fn redirects_pass_through_untouched() {
    let (h, _logs) = harness();
    let cases = [
        ("/redirect-to?url=/get&status_code=302", 302, "/get"),
        ("/redirect/1", 302, "/get"),
        (
            "/redirect-to?url=http%3A%2F%2Fexample.com%2Fx%3Fy%3D1&status_code=307",
            307,
            "http://example.com/x?y=1",
        ),
    ];
    for (path, status, location) in cases {
        let want = call(h.direct(), "GET", path, &[], b"");
        assert_eq!(want.status, status, "direct {path}");
        assert_eq!(want.header("location"), Some(location), "direct {path}");
        for t in h.httpbin() {
            let r = call(t, "GET", path, &[], b"");
            assert_eq!(r.status, status, "{}: {path} is not followed", t.label);
            assert_eq!(
                r.header("location"),
                Some(location),
                "{}: {path} Location unchanged",
                t.label
            );
        }
    }
}

const REQUEST_HOP_HEADERS: [(&str, &str); 6] = [
    ("Connection", "keep-alive, X-Secret"),
    ("X-Secret", "1"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "trailers"),
    ("X-Kept", "yes"),
];

#[test]
fn request_hop_by_hop_headers_are_dropped() {
    let (h, _logs) = harness();
    // Control: without a proxy, the app sees them all (so their absence below means something).
    let direct = call(h.direct(), "GET", "/headers", &REQUEST_HOP_HEADERS, b"").json();
    for name in ["X-Secret", "Keep-Alive", "Proxy-Connection", "TE", "X-Kept"] {
        assert!(
            seen_header(&direct, name).is_some(),
            "control: gunicorn passes {name} to the app: {direct}"
        );
    }
    for t in h.httpbin() {
        let seen = call(t, "GET", "/headers", &REQUEST_HOP_HEADERS, b"").json();
        for name in ["X-Secret", "Keep-Alive", "Proxy-Connection", "TE"] {
            assert_eq!(
                seen_header(&seen, name),
                None,
                "{}: hop-by-hop {name} must not reach the app: {seen}",
                t.label
            );
        }
        assert_eq!(seen_header(&seen, "X-Kept"), Some("yes"), "{}", t.label);
    }
    for t in h.raw() {
        let r = call(t, "GET", "/echo", &REQUEST_HOP_HEADERS, b"");
        for line in echoed_lines(&r).iter().skip(1) {
            let name = line
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            assert!(
                !matches!(
                    name.as_str(),
                    "x-secret" | "keep-alive" | "proxy-connection" | "te"
                ),
                "{}: hop-by-hop {line:?} reached the upstream:\n{}",
                t.label,
                r.text()
            );
            if name == "connection" {
                assert!(
                    !line.to_ascii_lowercase().contains("x-secret"),
                    "{}: the client's Connection options reached the upstream: {line:?}",
                    t.label
                );
            }
        }
        // End-to-end fields go on as the client sent them, in its case and order.
        assert!(
            r.text().contains("\r\nX-Kept: yes\r\n"),
            "{}: end-to-end X-Kept arrives: {}",
            t.label,
            r.text()
        );
    }
}

#[test]
fn response_hop_by_hop_headers_are_dropped() {
    let (h, _logs) = harness();
    // gunicorn drops most hop-by-hop headers an app sets, but not Proxy-Connection.
    let path = "/response-headers?Proxy-Connection=keep-alive&X-Kept=yes";
    let direct = call(h.direct(), "GET", path, &[], b"");
    assert_eq!(
        direct.header("proxy-connection"),
        Some("keep-alive"),
        "control: gunicorn sends what the app set: {:?}",
        direct.headers
    );
    for t in h.httpbin() {
        let r = call(t, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "{}", t.label);
        assert_eq!(
            r.header("proxy-connection"),
            None,
            "{}: hop-by-hop Proxy-Connection from the app reached the client: {:?}",
            t.label,
            r.headers
        );
        assert_eq!(r.header("x-kept"), Some("yes"), "{}", t.label);
    }
    // The scripted upstream sends Connection-nominated fields and Keep-Alive as well.
    for t in h.raw() {
        let mut c = Conn::open(t);
        for round in 0..2 {
            let r = c.exchange(&request("GET", "/hop", t.host, &[], b""), "GET");
            assert_eq!(r.status, 200, "{}: /hop", t.label);
            assert_eq!(r.body, b"ok", "{}: /hop body", t.label);
            for name in [
                "x-secret",
                "x-other-secret",
                "keep-alive",
                "proxy-connection",
            ] {
                assert_eq!(
                    r.header(name),
                    None,
                    "{}: hop-by-hop {name} from the upstream reached the client: {:?}",
                    t.label,
                    r.headers
                );
            }
            let connection = r
                .header("connection")
                .unwrap_or_default()
                .to_ascii_lowercase();
            assert!(
                !connection.contains("secret"),
                "{}: the upstream's Connection options reached the client: {connection:?}",
                t.label
            );
            assert_eq!(
                r.header("x-kept"),
                Some("yes"),
                "{}: round {round}",
                t.label
            );
        }
    }
}

#[test]
fn keep_alive_carries_many_requests_and_survives_the_app_closing_idle_connections() {
    let (h, _logs) = harness();
    let threads: Vec<_> = h
        .httpbin()
        .into_iter()
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Conn::open(t);
                let round = |c: &mut Conn, when: &str| {
                    let steps: [(&str, &str, &[u8], u16); 7] = [
                        ("GET", "/get?n=1", b"", 200),
                        ("POST", "/anything", b"some body", 200),
                        ("GET", "/stream/3", b"", 200),
                        ("HEAD", "/get", b"", 200),
                        ("GET", "/status/204", b"", 204),
                        ("GET", "/range/100", b"", 200),
                        ("DELETE", "/anything", b"", 200),
                    ];
                    for (method, path, body, status) in steps {
                        let r = c.exchange(&request(method, path, t.host, &[], body), method);
                        assert_eq!(r.status, status, "{}: {when}: {method} {path}", t.label);
                        assert!(
                            r.keeps_alive(),
                            "{}: {when}: {method} {path} closes the connection: {:?}",
                            t.label,
                            r.headers
                        );
                    }
                };
                round(&mut c, "first round");
                // gunicorn closes idle keep-alive connections after 1 s (`--keep-alive 1`): the
                // sidecar must not hand a request to a pooled connection the app already
                // closed (or must retry it).
                std::thread::sleep(Duration::from_millis(1500));
                round(&mut c, "after the app closed its idle connections");
            })
        })
        .collect();
    for th in threads {
        if let Err(panic) = th.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn connection_close_from_the_client_closes_after_the_response() {
    let (h, _logs) = harness();
    for t in h.httpbin() {
        let mut c = Conn::open(t);
        let r = c.exchange(
            &request("GET", "/get", t.host, &[("Connection", "close")], b""),
            "GET",
        );
        assert_eq!(r.status, 200, "{}", t.label);
        r.json();
        assert!(
            !r.keeps_alive(),
            "{}: the response announces Connection: close: {:?}",
            t.label,
            r.headers
        );
        c.assert_closed(Duration::from_secs(2), "a Connection: close exchange");

        // HTTP/1.0 without keep-alive closes too.
        let mut c = Conn::open(t);
        c.send(format!("GET /get HTTP/1.0\r\nHost: {}\r\n\r\n", t.host).as_bytes());
        let r = c.response("GET");
        assert_eq!(r.status, 200, "{}: HTTP/1.0", t.label);
        r.json();
        c.assert_closed(Duration::from_secs(2), "an HTTP/1.0 exchange");
    }
}

#[test]
fn absolute_form_reaches_the_app_as_origin_form() {
    let (h, _logs) = harness();
    // An HTTP proxy client (curl -x, mesh-service) sends the target's authority as Host too
    // (RFC 9112 3.2: a client MUST).
    let [outbound, _] = h.httpbin();
    let r = call(outbound, "GET", "http://httpbin/get?x=1", &[], b"");
    assert_eq!(r.status, 200, "absolute-form GET: {}", r.text());
    let echo = r.json();
    assert_eq!(echo["args"], json!({"x": "1"}), "args: {echo}");
    assert_eq!(seen_header(&echo, "host"), Some("httpbin"), "Host: {echo}");
    assert_eq!(echo["url"], "http://httpbin/get?x=1", "url: {echo}");

    // Byte for byte at the scripted upstream: origin-form, one Host.
    let [raw_out, _] = h.raw();
    let r = call(raw_out, "GET", "http://raw/echo?x=1", &[], b"");
    let lines = echoed_lines(&r);
    assert_eq!(
        lines[0], "GET /echo?x=1 HTTP/1.1",
        "origin-form request line"
    );
    let hosts: Vec<&String> = lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
        .collect();
    assert_eq!(hosts.len(), 1, "exactly one Host: {}", r.text());
    assert_eq!(hosts[0].split_once(':').unwrap().1.trim(), "raw", "Host");
}

/// RFC 9112 3.2.2 says a proxy replaces a Host that differs from the absolute-form authority;
/// Pingora 0.9.1 rejects the request with 400 while reading it, before any phase runs
/// (pingora-core `protocols/http/authority.rs`, `validate_request_authority`: "stricter than
/// RFC 9112 section 3.2.2"). Pinned here so a change in Pingora shows up.
#[test]
fn absolute_form_with_a_different_host_is_rejected_by_pingora() {
    let (h, _logs) = harness();
    let [outbound, _] = h.httpbin();
    let r = call(
        Target {
            host: "other.example",
            ..outbound
        },
        "GET",
        "http://httpbin/get?x=1",
        &[],
        b"",
    );
    assert_eq!(
        r.status,
        400,
        "absolute-form with a Host that differs: {:?} {}",
        r.headers,
        r.text()
    );
}

/// Host names are case-insensitive (RFC 4343): `Host: HTTPBIN` routes to service httpbin.
#[test]
fn the_host_routes_in_any_case() {
    let (h, _logs) = harness();
    let [outbound, _] = h.httpbin();
    for host in ["HTTPBIN", "HttpBin"] {
        let r = call(Target { host, ..outbound }, "GET", "/get", &[], b"");
        assert_eq!(r.status, 200, "Host: {host}: {}", r.text());
    }
}

/// A request line with a space inside its target is malformed (RFC 9112 3): refused with the
/// sidecar's own 400, naming the reason, never repaired into another target and forwarded
/// (Pingora 0.9.1's server session rewrote `/m 4` to `/m%204`). The connection closes after it.
#[test]
fn a_malformed_request_line_is_refused_not_repaired() {
    let (h, _logs) = harness();
    for t in h.raw() {
        let mut c = Conn::open(t);
        c.send(format!("GET /m 4 HTTP/1.1\r\nHost: {}\r\n\r\n", t.host).as_bytes());
        let r = c.response("GET");
        assert_eq!(r.status, 400, "{}: {}", t.label, r.text());
        assert_eq!(r.header("x-mesh-error"), Some("bad-request"), "{}", t.label);
        assert!(r.header("proxy-status").is_some(), "{}", t.label);
        assert!(
            r.text().contains("malformed request"),
            "{}: {}",
            t.label,
            r.text()
        );
        c.assert_closed(Duration::from_secs(2), "after a malformed request");
    }
}

#[test]
fn close_delimited_upstream_bodies_arrive_whole() {
    let (h, _logs) = harness();
    for t in h.raw() {
        let mut c = Conn::open(t);
        let r = c.exchange(&request("GET", "/close-delimited", t.host, &[], b""), "GET");
        assert_eq!(r.status, 200, "{}", t.label);
        assert_eq!(r.body, CLOSE_DELIMITED_BODY, "{}: body", t.label);
        if r.keeps_alive() && r.has("transfer-encoding") {
            // Reframed as chunked: the connection must still be in step.
            let r = c.exchange(&request("GET", "/echo", t.host, &[], b""), "GET");
            assert_eq!(
                r.status, 200,
                "{}: next request after a reframed body",
                t.label
            );
        }
    }
}
