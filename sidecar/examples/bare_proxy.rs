//! A bare Pingora reverse proxy: the floor the sidecar is measured against in `make bench`.
//!
//! One listener, one upstream, nothing in any phase but `upstream_peer`, the same Pingora
//! version, server configuration and build profile as the sidecar. What the sidecar costs above
//! this is ours; what this costs above nginx is Pingora's.
//!
//! ```text
//! bare_proxy LISTEN UPSTREAM [--threads N] [--timeouts] [--alloc-count ADDR]
//! ```
//! `--timeouts` sets the connect, read, write and idle timeouts on the peer as the sidecar does
//! (each read and write then arms a timer), to price them separately.
//!
//! Built with `--features alloc-count`, it counts allocations like the sidecar does (the
//! sidecar crate's counting global allocator, `sidecar::alloc_count`), and `--alloc-count ADDR`
//! answers every GET on ADDR (loopback) with the counters as JSON, the same object as the
//! sidecar's admin `GET /debug/allocations`: it has no admin port of its own. It links the
//! sidecar's allocator, mimalloc, either way.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_proxy::{http_proxy_service_with_name, ProxyHttp, Session};

/// The sidecar's allocator (see its `main.rs`), so the two differ only in what they do.
#[cfg(not(feature = "alloc-count"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
    timeouts: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.timeouts {
            peer.options.connection_timeout = Some(Duration::from_secs(1));
            peer.options.read_timeout = Some(Duration::from_secs(15));
            peer.options.write_timeout = Some(Duration::from_secs(15));
            peer.options.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bare_proxy LISTEN_ADDR UPSTREAM_ADDR [--threads N] [--timeouts] \
         [--alloc-count ADDR]"
    );
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        usage()
    };
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|e| {
        eprintln!("bare_proxy: upstream {upstream:?}: {e}");
        std::process::exit(2)
    });
    let (mut threads, mut timeouts, mut counts_on) = (1, false, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--timeouts" => timeouts = true,
            "--alloc-count" => counts_on = Some(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    if let Some(addr) = counts_on {
        serve_alloc_counts(&addr);
    }
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc =
        http_proxy_service_with_name(&server.configuration, Bare { upstream, timeouts }, "bare");
    svc.add_tcp(&listen);
    server.add_service(svc);
    let addr: std::net::SocketAddr = listen.parse().unwrap_or_else(|_| usage());
    mesh_proto::listening::announce([("proxy", addr)]).expect("printing the LISTENING line");
    server.run_forever()
}

/// `--alloc-count ADDR`: the counters on a loopback listener, or exit 2 when this build does
/// not count (no `alloc-count` feature) or ADDR cannot be bound.
fn serve_alloc_counts(addr: &str) {
    if sidecar::alloc_count::global().is_none() {
        eprintln!("bare_proxy: --alloc-count: built without the alloc-count feature");
        std::process::exit(2);
    }
    let served = std::net::TcpListener::bind(addr).and_then(sidecar::alloc_count::serve);
    if let Err(e) = served {
        eprintln!("bare_proxy: --alloc-count {addr}: {e}");
        std::process::exit(2);
    }
}
