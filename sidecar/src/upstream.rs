//! Connections to upstreams: connecting, and a pool of idle keep-alive connections per
//! endpoint address, shared by every request of a listener.
//!
//! The pool is a stack per address behind one mutex (taken twice per request: check out,
//! give back; never held across an await). No task watches an idle connection: a connection
//! the endpoint closed while it sat idle is found on checkout when it has been idle long enough
//! for that to be likely, or always for a request that could not be sent twice (one
//! non-blocking `recv(MSG_PEEK)`), and otherwise by the try that
//! uses it, which the caller then repeats once on a fresh connection (see
//! `outbound::attempt`). One background sweep closes connections idle past their timeout.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mesh_policy::addr_map::AddrMap;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::ErrorType;

use crate::h1::client::Client;

/// How long an idle upstream connection stays in the pool.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint; more are closed when given back.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// A connection idle for longer than this is checked for a close before it is reused.
const CHECK_AFTER_IDLE: Duration = Duration::from_millis(500);

/// A connection to an endpoint, ready for one request.
pub struct Conn {
    pub client: Client,
    /// It came from the pool (so a failure on it may be the endpoint closing an idle
    /// connection, not the endpoint failing).
    pub reused: bool,
}

/// Why no connection could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    TimedOut,
    Refused,
}

struct Idle {
    stream: Stream,
    since: Instant,
}

/// Connects to endpoints and keeps their idle connections.
pub struct Upstreams {
    connector: TransportConnector,
    idle: Mutex<AddrMap<Vec<Idle>>>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstreams {
    pub fn new() -> Self {
        Upstreams {
            connector: TransportConnector::new(None),
            idle: Mutex::new(AddrMap::default()),
        }
    }

    /// A pooled connection to `addr`, else a new one made within `connect_timeout`. `careful`:
    /// the request could not be sent again if the connection turned out closed (it is not
    /// idempotent), so any pooled connection is checked first, not only one idle for a while.
    pub async fn get(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        careful: bool,
    ) -> Result<Conn, ConnectError> {
        if let Some(stream) = self.checkout(addr, Instant::now(), careful) {
            return Ok(Conn {
                client: Client::new(stream),
                reused: true,
            });
        }
        self.fresh(addr, connect_timeout).await
    }

    /// A new connection to `addr`, never a pooled one.
    pub async fn fresh(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(connect_timeout);
        // Boxed: the connector's future is large (~2.6 KB in a debug build) and only a try
        // that finds no pooled connection awaits it; inline it would make every request's
        // serving future that much larger, and every request moves that future once into its
        // allocation.
        match Box::pin(self.connector.new_stream(&peer)).await {
            Ok(stream) => Ok(Conn {
                client: Client::new(stream),
                reused: false,
            }),
            Err(e) if matches!(e.etype(), ErrorType::ConnectTimedout) => {
                Err(ConnectError::TimedOut)
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "connect failed");
                Err(ConnectError::Refused)
            }
        }
    }

    /// Gives a connection whose exchange is complete back to the pool, or closes it when the
    /// endpoint will not keep it alive.
    pub fn put(&self, addr: SocketAddr, client: Client) {
        // Keep-alive as the response's version and `Connection` say (a close-delimited body
        // or bytes past the end never are).
        let Some(stream) = client.into_reusable() else {
            return;
        };
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }

    fn checkout(&self, addr: SocketAddr, now: Instant, careful: bool) -> Option<Stream> {
        loop {
            let idle = {
                let mut pool = self.idle.lock().expect("pool lock");
                pool.get_mut(&addr)?.pop()?
            };
            let idle_for = now.saturating_duration_since(idle.since);
            if idle_for >= IDLE_TIMEOUT {
                continue;
            }
            if (careful || idle_for >= CHECK_AFTER_IDLE) && !still_open(&idle.stream) {
                continue;
            }
            return Some(idle.stream);
        }
    }

    /// Closes connections idle past [`IDLE_TIMEOUT`]; run every few seconds.
    pub fn sweep(&self, now: Instant) {
        let mut pool = self.idle.lock().expect("pool lock");
        for list in pool.values_mut() {
            list.retain(|i| now.saturating_duration_since(i.since) < IDLE_TIMEOUT);
        }
        pool.retain(|_, list| !list.is_empty());
    }

    /// Idle connections now, for tests and the admin port.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .expect("pool lock")
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// Whether an idle connection is still usable: no end-of-stream and no unexpected bytes
/// waiting on it. One non-blocking `recv(MSG_PEEK)`.
fn still_open(stream: &Stream) -> bool {
    let fd = stream.id();
    let mut b = [0u8; 1];
    // SAFETY: `fd` is the socket `stream` owns and keeps open for this call; the buffer is
    // valid for one byte.
    let n = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// Closes idle connections past their timeout, every few seconds (a background service).
pub struct PoolSweeper {
    pub pools: Vec<std::sync::Arc<Upstreams>>,
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for PoolSweeper {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            for p in &self.pools {
                p.sweep(now);
            }
        }
    }
}
