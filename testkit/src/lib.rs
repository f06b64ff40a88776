//! Helpers for integration tests that start meshlab's real binaries on loopback.
//!
//! - [`bin`] finds a workspace binary in the same target directory as the running test
//!   (`make test` builds every binary first: `cargo build --workspace --bins`);
//! - [`Proc`] starts one, reads its `LISTENING {json}` line for the ports it bound (every test
//!   passes port 0), keeps its stderr in a file for failure messages, and kills it on drop;
//!   children also die with the test process (`PR_SET_PDEATHSIG`). The process handling is
//!   `mesh_proto::supervise`, the lab's own;
//! - [`http`] is a tiny blocking HTTP/1.1 client for readiness checks and admin calls;
//! - [`wait_until`] polls a condition with a deadline instead of sleeping a fixed time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use mesh_proto::listening::Listening;
use mesh_proto::supervise::{Child, Options};

/// How long a binary gets to print its `LISTENING` line.
const LISTENING_WITHIN: Duration = Duration::from_secs(60);

/// Path of a workspace binary built next to the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/test-binary -> target/<profile>/
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` (make test does) before the tests",
        p.display()
    );
    p
}

/// A running child process, killed when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    /// The listeners of its `LISTENING` line (empty until it is read).
    pub listening: Listening,
    stderr_path: PathBuf,
}

static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Proc {
    /// Starts `bin(name)` with `args` and waits (up to 60 s) for its `LISTENING` line.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Proc::start_with(Command::new(bin(name)).args(args), name)
    }

    /// Starts a prepared command (for env vars or other programs) and waits for `LISTENING`.
    pub fn start_with(cmd: &mut Command, name: &str) -> Proc {
        let mut p = Proc::spawn(cmd, name);
        p.listening = p
            .child()
            .wait_listening(Instant::now() + LISTENING_WITHIN)
            .unwrap_or_else(|e| panic!("{e}"));
        p
    }

    /// Starts a command without waiting for anything.
    pub fn spawn(cmd: &mut Command, name: &str) -> Proc {
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_path = std::env::temp_dir().join(format!(
            "meshlab-test-{}-{}-{n}.stderr",
            std::process::id(),
            name
        ));
        let child =
            Child::spawn(name, cmd, &Options::new(&stderr_path)).unwrap_or_else(|e| panic!("{e}"));
        Proc {
            name: name.to_owned(),
            child: Some(child),
            listening: Listening::default(),
            stderr_path,
        }
    }

    fn child(&self) -> &Child {
        self.child.as_ref().expect("the process was killed")
    }

    /// A socket address from the `LISTENING` line.
    pub fn addr(&self, key: &str) -> SocketAddr {
        self.listening
            .addr(key)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    pub fn pid(&self) -> i32 {
        self.child().pid() as i32
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_ref().and_then(Child::try_wait)
    }

    /// Sends a signal (e.g. `libc::SIGTERM`), unless the process has exited and been reaped.
    pub fn signal(&self, sig: i32) {
        self.child().signal(sig);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child().wait_timeout(timeout)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.take() {
            c.kill();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- stderr of {} ----\n{}", self.name, self.stderr());
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A response of [`http`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), with a 10 s timeout.
/// `extra` are additional header lines such as `("Host", "b")`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// Shorthand for a GET with no extra headers.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    http(addr, "GET", path, &[], b"")
}

fn parse_response(raw: &[u8], head: bool) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head_text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty response"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if head {
        body.clear();
    } else if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..nl]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Waits until `GET path` on `addr` answers 200.
pub fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) {
    wait_until(
        &format!("GET http://{addr}{path} to answer 200"),
        timeout,
        || matches!(get(addr, path), Ok(r) if r.status == 200),
    );
}

/// A sidecar command for `service` fronting `app`, every listener on an ephemeral loopback
/// port; the caller adds the table source (`--table` or `--control-plane`) and other flags.
pub fn sidecar_cmd(service: &str, app: SocketAddr) -> Command {
    let mut cmd = Command::new(bin("sidecar"));
    cmd.args(["--service", service, "--app", &app.to_string()]);
    cmd.args(["--outbound", "127.0.0.1:0", "--inbound", "127.0.0.1:0"]);
    cmd.args(["--admin", "127.0.0.1:0"]);
    cmd
}

/// Starts a sidecar command and waits (up to `timeout`) until its admin `/ready` answers 200.
pub fn start_ready_sidecar(cmd: &mut Command, name: &str, timeout: Duration) -> Proc {
    let p = Proc::start_with(cmd, name);
    wait_http_ok(p.addr("admin"), "/ready", timeout);
    p
}

/// A sidecar for `service` fronting `app` with the table file `table`, once it is ready.
pub fn table_sidecar(service: &str, app: SocketAddr, table: &std::path::Path) -> Proc {
    let mut cmd = sidecar_cmd(service, app);
    cmd.args(["--table", table.to_str().expect("a UTF-8 table path")]);
    start_ready_sidecar(&mut cmd, service, Duration::from_secs(30))
}

/// A free loopback port below the ephemeral range, for a process that must be told its address
/// before it starts (port 0 cannot be used there). The port is checked free by binding it and
/// the listener is dropped before the process binds it, so something else could take it in
/// between; to make that unlikely the port comes from below Linux's ephemeral range
/// (32768..=60999 by default), which port-0 binds and outgoing connections never use, and each
/// call of this process tries a different one.
pub fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id() % 1000 * 7;
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(20_000 + (offset + n * 13) % 12_000).expect("below 32000");
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("local addr");
        }
    }
    panic!("no free port in 20000..32000 on 127.0.0.1");
}
