//! Helpers shared by the integration tests: the real binary as a child process, a fake sidecar
//! (a plain HTTP proxy that answers by itself), and an HTTP client that never uses a proxy.
#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proto::listening::PREFIX;
use mesh_proto::supervise::{Child, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How long any single wait in these tests may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A client for talking to the service directly (system proxy settings ignored).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("building the test client")
}

/// A running `mesh-service` binary (`mesh_proto::supervise`); killed (if still running) when
/// dropped.
pub struct Service {
    child: Child,
    pub addr: SocketAddr,
    stderr_path: PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Service {
    /// Starts the binary with `--listen 127.0.0.1:0` plus `args`, waits for its LISTENING line,
    /// then for `/healthz` to answer 200.
    pub async fn start(args: &[&str]) -> Service {
        let mut service = Self::spawn(args);
        service.wait_healthy().await;
        service
    }

    fn spawn(args: &[&str]) -> Service {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-service"));
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info");
        let stderr_path = std::env::temp_dir().join(format!(
            "mesh-service-test-{}-{}.stderr",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let options = Options::new(&stderr_path).keep_stdout().scrub_env();
        let child =
            Child::spawn("mesh-service", &mut cmd, &options).unwrap_or_else(|e| panic!("{e}"));
        let listening = child
            .wait_listening(Instant::now() + WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
        let first = child.stdout_lines().into_iter().next().unwrap_or_default();
        assert!(
            first.starts_with(PREFIX),
            "the first stdout line should be the LISTENING line, got {first:?}"
        );
        let addr = listening.addr("app").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(
            addr.port(),
            0,
            "the LISTENING line must carry the real port"
        );
        Service {
            child,
            addr,
            stderr_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    async fn wait_healthy(&mut self) {
        let client = client();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait() {
                panic!(
                    "mesh-service exited with {status} before becoming healthy; stderr:\n{}",
                    self.stderr()
                );
            }
            if let Ok(response) = client.get(self.url("/healthz")).send().await {
                if response.status() == reqwest::StatusCode::OK {
                    let body = response.text().await.expect("healthz body");
                    assert_eq!(body, "ok", "/healthz body");
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "/healthz did not answer 200 within {WAIT:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        assert!(
            self.child.signal(libc::SIGTERM),
            "kill(SIGTERM) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits (polling) for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mesh-service did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().is_none()
    }

    /// All stdout lines; call after the process exited.
    pub fn stdout_lines(&mut self) -> Vec<String> {
        assert!(
            self.child.wait_stdout_closed(Instant::now() + WAIT),
            "mesh-service's stdout is still open"
        );
        self.child.stdout_lines()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // The child itself is SIGKILLed when `self.child` drops.
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// A stand-in for the sidecar's outbound listener: a plain HTTP/1.1 server that records each
/// request head it receives and answers by itself (`503` for authority `bad`, else `200`).
pub struct FakeSidecar {
    pub addr: SocketAddr,
    heads: tokio::sync::mpsc::UnboundedReceiver<String>,
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSidecar {
    /// Answers every request at once.
    pub async fn start() -> FakeSidecar {
        Self::with_gate(Semaphore::MAX_PERMITS).await
    }

    /// Holds every answer until [`FakeSidecar::release`] is called.
    pub async fn held() -> FakeSidecar {
        Self::with_gate(0).await
    }

    async fn with_gate(permits: usize) -> FakeSidecar {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake sidecar");
        let addr = listener.local_addr().expect("fake sidecar address");
        let (tx, heads) = tokio::sync::mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(permits));
        let conn_gate = Arc::clone(&gate);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_proxy_conn(stream, tx.clone(), Arc::clone(&conn_gate)));
            }
        });
        FakeSidecar {
            addr,
            heads,
            gate,
            task,
        }
    }

    /// Lets held answers go.
    pub fn release(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// The next request head received (request line and headers), waiting at most [`WAIT`].
    pub async fn next_head(&mut self) -> String {
        tokio::time::timeout(WAIT, self.heads.recv())
            .await
            .expect("the fake sidecar received no request in time")
            .expect("the fake sidecar is running")
    }
}

impl Drop for FakeSidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_proxy_conn(
    mut stream: TcpStream,
    heads: tokio::sync::mpsc::UnboundedSender<String>,
    gate: Arc<Semaphore>,
) {
    let mut buf = Vec::new();
    loop {
        // Read one request head; downstream calls carry no body.
        let end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let bad = head
            .split_whitespace()
            .nth(1)
            .is_some_and(|target| target.starts_with("http://bad/"));
        let _ = heads.send(head);
        let Ok(permit) = gate.acquire().await else {
            return;
        };
        permit.forget();
        let response: &[u8] = if bad {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nbusy"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
        };
        if stream.write_all(response).await.is_err() {
            return;
        }
    }
}

/// An address where nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a probe port");
    listener.local_addr().expect("probe address")
}

/// The value of header `name` (case-insensitive) in a raw request head.
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
