//! One client connection: the loop that reads its requests one after another and hands each to
//! a listener's [`Handler`], each on an [`h1::server::Server`](crate::h1::server::Server).
//!
//! One task per connection (the listening service spawns it), no task or channel per request;
//! each request's session and serving future are one allocation, freed when the response is
//! done, and a connection waiting for its next request holds no read buffer
//! ([`first_bytes`]): an idle connection holds its socket and little else.
//! Pipelined requests are answered in order (RFC 9112 9.3.2): bytes read past one request are
//! the start of the next. An Upgrade request (WebSocket) is handed over, still unanswered, to
//! pingora-proxy's `HttpProxy` with a slim `ProxyHttp` of its own (`tunnel`): the request's
//! bytes are given back to a fresh session as its pipelined prefix, so pingora-proxy reads the
//! request as if it had just arrived and runs the tunnel with its duplex loop.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::h1::server::{ReadError, Server};
use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncRead, ReadBuf};

use crate::reason::Reason;
use crate::tunnel::Tunnel;

/// How long a kept-alive client connection may sit idle between requests (seconds).
pub const CLIENT_KEEPALIVE_S: u64 = 60;

/// What a listener does with each request read from a connection.
pub trait Handler: Send + Sync + 'static {
    /// Serves one request whose header has been read: by the time it returns, the response
    /// has been written whole (or the connection is known to be unusable).
    fn serve<'a>(&'a self, s: &'a mut Server) -> impl Future<Output = ()> + Send + 'a;

    /// Answers a request that could not be read (malformed header).
    fn bad_request(&self) -> (&'static str, &str);
}

/// A listener: the request loop over each connection, with `H` serving the requests and
/// pingora-proxy serving the upgrades.
pub struct Listener<H> {
    handler: H,
    tunnel: Arc<HttpProxy<Tunnel>>,
}

impl<H: Handler> Listener<H> {
    pub fn new(handler: H, tunnel: Arc<HttpProxy<Tunnel>>) -> Self {
        Listener { handler, tunnel }
    }
}

#[async_trait]
impl<H: Handler> ServerApp for Listener<H> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut shutdown = shutdown.clone();
        let mut stream = stream;
        let mut prefix: Option<BytesMut> = None;
        loop {
            // Between requests the connection holds no buffer: the next request's first bytes
            // are awaited here and become the start of its buffer (pipelined bytes already are).
            let first = match prefix.take() {
                Some(p) => p,
                None => {
                    let idle = Duration::from_secs(CLIENT_KEEPALIVE_S);
                    let read = tokio::select! {
                        biased;
                        r = tokio::time::timeout(idle, first_bytes(&mut stream)) => r,
                        _ = shutdown.changed() => return None,
                    };
                    match read {
                        Ok(Ok(Some(bytes))) => bytes,
                        // Closed, broken, or idle past the keep-alive timeout.
                        _ => return None,
                    }
                }
            };
            // Boxed: one request's server state and serving future (every await of the attempt
            // loop and of the h1 server and client) are large, and inline they would be part of
            // this connection's task, held while the connection sits idle between requests
            // (measured: ~80 KiB of RSS per idle client connection with the serving future
            // inline). Boxed, they live for one request: one allocation per request.
            // Allocated before the future is made, so it can be made in place: `Box::pin(f)`
            // makes it on the stack and copies all of it (~6 KB) into the allocation.
            let request = Box::write(
                Box::new_uninit(),
                self.request(stream, first, &mut shutdown),
            );
            match Box::into_pin(request).await {
                Some((next, more)) => (stream, prefix) = (next, more),
                None => return None,
            }
        }
    }
}

/// The first bytes of a connection's next request, read without holding a buffer while the
/// connection waits: the read goes to the stack within one poll, and only bytes that arrived
/// are copied into the buffer the request is parsed from (at least [`HEADER_ROOM`], so a
/// header that arrives in pieces usually fits, and grown for a longer one). `None`: the
/// client closed the connection.
async fn first_bytes(stream: &mut Stream) -> std::io::Result<Option<BytesMut>> {
    std::future::poll_fn(|cx| {
        let mut tmp = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut tmp);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(None)),
            Poll::Ready(Ok(())) => {
                let got = buf.filled();
                let mut bytes = BytesMut::with_capacity(HEADER_ROOM.max(got.len()));
                bytes.extend_from_slice(got);
                Poll::Ready(Ok(Some(bytes)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The largest first read of a request: a header and a small body that arrived together are
/// read at once (a 4 KiB POST in one `recv`, and then sent on in one `send`), on the stack.
const FIRST_READ: usize = 16 * 1024;
/// The least room of the buffer a request is parsed from.
const HEADER_ROOM: usize = 4096;

impl<H: Handler> Listener<H> {
    /// One request, from its first bytes: read its header, serve it (or hand it over to the
    /// tunnel), and give back the connection with any bytes read past the request when it can
    /// take another one.
    async fn request(
        &self,
        stream: Stream,
        first: BytesMut,
        shutdown: &mut ShutdownWatch,
    ) -> Option<(Stream, Option<BytesMut>)> {
        let mut s = Server::new(stream, first);
        let closing = *shutdown.borrow();
        let read = tokio::select! {
            biased;
            r = s.read_request(!closing) => r,
            _ = shutdown.changed() => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(ReadError::Malformed(why)) => {
                let (hop, service) = self.handler.bad_request();
                let detail = format!("malformed request: {why}");
                crate::reason::answer(&mut s, Reason::BadRequest, hop, service, &detail, 0).await;
                return None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "no request read");
                return None;
            }
        }
        if s.is_upgrade_req() {
            self.hand_over(s, shutdown).await;
            return None;
        }
        self.handler.serve(&mut s).await;
        s.into_next()
    }

    /// Gives an Upgrade request to pingora-proxy: the request's bytes become the pipelined
    /// prefix of a new session on the same connection.
    async fn hand_over(&self, s: Server, shutdown: &ShutdownWatch) {
        let (stream, bytes) = s.into_hand_over();
        let mut session = ServerSession::new_http1(stream);
        session.set_pipelined_prefix(bytes);
        session.set_keepalive(None);
        let _ = self.tunnel.process_new_http(session, shutdown).await;
    }
}
