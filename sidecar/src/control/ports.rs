//! Listening on port 0 with Pingora, and announcing the real ports.
//!
//! Pingora binds its listeners itself, inside the server, so it cannot hand back the port of a
//! `:0` address. For those we bind a socket with `SO_REUSEPORT` to port 0 first, read the port
//! the kernel chose, and give Pingora that exact address with `SO_REUSEPORT` too. The reserving
//! socket never listens, so it receives no connections, and it is kept for the life of the
//! process so no other program can take the port in between. Fixed ports (15001, 15006 in a pod)
//! are passed through untouched and conflict loudly as usual.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::listeners::TcpSocketOptions;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use socket2::{Domain, Socket, Type};

/// An address for Pingora to bind, and the socket that holds its port when it was `:0`.
pub struct Reserved {
    pub addr: SocketAddr,
    pub options: Option<TcpSocketOptions>,
    _holder: Option<Socket>,
}

/// Resolves port 0 to a real port held by a non-listening `SO_REUSEPORT` socket.
pub fn reserve(addr: SocketAddr) -> std::io::Result<Reserved> {
    if addr.port() != 0 {
        return Ok(Reserved {
            addr,
            options: None,
            _holder: None,
        });
    }
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    let bound = s
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("bound address is not an inet address"))?;
    let mut options = TcpSocketOptions::default();
    options.so_reuseport = Some(true);
    Ok(Reserved {
        addr: bound,
        options: Some(options),
        _holder: Some(s),
    })
}

/// Prints `LISTENING {json}` once every proxy listener accepts connections, and raises the
/// flag `/ready` checks.
pub struct Announcer {
    pub listeners: Vec<(&'static str, SocketAddr)>,
    pub up: Arc<AtomicBool>,
}

fn connectable(addr: SocketAddr) -> SocketAddr {
    // A wildcard listener is reached through loopback.
    if addr.ip().is_unspecified() {
        let ip = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

#[async_trait]
impl BackgroundService for Announcer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for (name, addr) in &self.listeners {
            let target = connectable(*addr);
            loop {
                let ok = tokio::task::spawn_blocking(move || {
                    TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
                })
                .await
                .unwrap_or(false);
                if ok {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = shutdown.changed() => return,
                }
            }
            tracing::debug!(listener = name, %addr, "accepting");
        }
        self.up.store(true, Ordering::Release);
        if let Err(e) = mesh_proto::listening::announce(self.listeners.iter().copied()) {
            tracing::warn!("cannot print the LISTENING line on stdout: {e}");
        }
    }
}
