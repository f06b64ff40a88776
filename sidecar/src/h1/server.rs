//! One request on a client connection: its header read and checked, its body read, and the
//! response written.
//!
//! The request header is parsed once ([`Request`]) into its bytes and an index of its fields;
//! its framing and connection fields are found in the same pass. A response header is put in an output buffer and goes
//! out with the first body bytes; each body piece is written as it comes (a slow body is never
//! held back for more). Bytes read past the request are the start of the next one (pipelining),
//! handed back with the connection.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::body::{write_piece, Incoming, Piece, Reader, Writer};
use super::request::Request;

/// The longest request header (bytes), as pingora-core's own limit.
pub const MAX_HEAD: usize = 1024 * 1024;
/// The room a read of the request is given.
const READ: usize = 4096;

/// How a response's body is framed on the client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// No body (HEAD, 1xx, 204, 304): anything written is dropped.
    Empty,
    /// This many bytes (`Content-Length`).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the client closed the connection in the request header")]
    Closed,
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
    /// Answered with 400.
    #[error("{0}")]
    Malformed(String),
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client closed the connection in the request body")]
    Closed,
    #[error("reading the request body: {0}")]
    Io(#[from] io::Error),
    #[error("malformed request body: {0}")]
    Malformed(#[from] super::body::Malformed),
}

/// A request being served on a client connection.
pub struct Server {
    stream: Stream,
    /// Bytes read and not consumed: the request header until it is parsed, then its body, then
    /// whatever the client sent after it.
    inc: Incoming,
    req: Option<Request>,
    keep_alive: bool,
    /// The response: waiting output, how its body is framed, its status once begun.
    out: BytesMut,
    /// The response body's framing; `None`: it has none.
    writer: Option<Writer>,
    status: Option<u16>,
    finished: bool,
}

impl Server {
    /// A request to be read from `stream`, whose first bytes are `first`.
    pub fn new(stream: Stream, first: BytesMut) -> Server {
        Server {
            stream,
            inc: Incoming::new(first),
            req: None,
            keep_alive: false,
            out: BytesMut::new(),
            writer: None,
            status: None,
            finished: false,
        }
    }

    /// Reads and checks the request header. `Ok(false)`: the client closed the connection
    /// before sending anything. `keep_alive`: the connection may serve another request after
    /// this one (not while the listener shuts down).
    pub async fn read_request(&mut self, keep_alive: bool) -> Result<bool, ReadError> {
        loop {
            if !self.inc.buf.is_empty() {
                if let Some(len) = self.parse(keep_alive)? {
                    self.inc.buf.advance(len);
                    return Ok(true);
                }
                if self.inc.buf.len() > MAX_HEAD {
                    return Err(ReadError::Malformed(format!(
                        "request header larger than {MAX_HEAD} bytes"
                    )));
                }
            }
            self.inc.buf.reserve(READ);
            if self.stream.read_buf(&mut self.inc.buf).await? == 0 {
                return if self.inc.buf.is_empty() {
                    Ok(false)
                } else {
                    Err(ReadError::Closed)
                };
            }
        }
    }

    /// Parses the request header at the start of the buffer; its length when complete.
    fn parse(&mut self, keep_alive: bool) -> Result<Option<usize>, ReadError> {
        let Some((req, len)) =
            Request::parse(&self.inc.buf).map_err(|e| ReadError::Malformed(e.to_string()))?
        else {
            return Ok(None);
        };
        let f = &req.framing;
        self.inc.reader = if f.transfer_encoding {
            Reader::chunked()
        } else {
            Reader::length(f.content_length.unwrap_or(0))
        };
        // RFC 9112 6.1: a message with both framings may be an attempt at smuggling; the
        // connection closes after it.
        self.keep_alive = keep_alive
            && !req.both_framings
            && match f.keep_alive {
                Some(k) => k,
                None => !req.http10,
            };
        self.req = Some(req);
        Ok(Some(len))
    }

    pub fn req_header(&self) -> &Request {
        self.req.as_ref().expect("the request header was read")
    }

    /// The request header, when one was read (not for a malformed request).
    pub fn req_header_if_read(&self) -> Option<&Request> {
        self.req.as_ref()
    }

    pub fn req_header_mut(&mut self) -> &mut Request {
        self.req.as_mut().expect("the request header was read")
    }

    /// An HTTP/1.1 request with an `Upgrade` field.
    pub fn is_upgrade_req(&self) -> bool {
        let req = self.req_header();
        req.framing.upgrade && !req.http10
    }

    /// The client's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        let digest = self.stream.get_socket_digest()?;
        digest.peer_addr()?.as_inet().copied()
    }

    /// The connection, with the request's bytes as they came and everything read after them,
    /// for another server to read the request again.
    pub fn into_hand_over(mut self) -> (Stream, BytesMut) {
        let head = self.req.as_ref().map_or(&[][..], |r| &r.head()[..]);
        let rest = self.inc.rest();
        let mut bytes = BytesMut::with_capacity(head.len() + rest.len());
        bytes.extend_from_slice(head);
        bytes.extend_from_slice(rest);
        (self.stream, bytes)
    }

    /// Whether the connection will serve another request after this response.
    pub fn will_keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// Closes the connection after this response.
    pub fn set_keep_alive(&mut self, on: bool) {
        self.keep_alive &= on;
    }

    /// The next piece of the request body, `None` at its end.
    pub async fn read_body(&mut self) -> Result<Option<&[u8]>, BodyError> {
        loop {
            match self.inc.next_piece()? {
                Piece::Data(r) => return Ok(Some(&self.inc.buf[r])),
                Piece::End => return Ok(None),
                Piece::More => {
                    self.inc.buf.reserve(READ);
                    if self.stream.read_buf(&mut self.inc.buf).await? == 0 {
                        return Err(BodyError::Closed);
                    }
                }
            }
        }
    }

    /// Whether the whole request body has been read.
    pub fn body_done(&self) -> bool {
        self.inc.reader.is_done()
    }

    /// Answers `Expect: 100-continue`.
    pub async fn write_continue(&mut self) -> io::Result<()> {
        self.stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
        self.stream.flush().await
    }

    /// Starts the response: `fields` puts its header fields (framing fields included) in the
    /// output buffer, after the status line, and says whether they hold a `Date`; `Date` (when
    /// they do not) and `Connection` are the connection's own. The header goes out with the first body bytes, or at
    /// [`Server::finish`].
    pub fn begin_response(
        &mut self,
        status: u16,
        reason: &[u8],
        body: Out,
        fields: impl FnOnce(&mut BytesMut) -> bool,
    ) {
        if !self.inc.reader.is_done() || body == Out::Close || self.req.is_none() {
            // Answered before the request body was read (or the request was not even read):
            // what the client sends next cannot be told apart from a new request.
            self.keep_alive = false;
        }
        let out = &mut self.out;
        out.reserve(512);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(&itoa3(status));
        out.extend_from_slice(b" ");
        out.extend_from_slice(reason);
        out.extend_from_slice(b"\r\n");
        if !fields(out) {
            let date = pingora_core::protocols::http::date::get_cached_date();
            put_field(out, b"date", date.as_bytes());
        }
        let connection: &[u8] = if self.keep_alive {
            b"keep-alive"
        } else {
            b"close"
        };
        put_field(out, b"connection", connection);
        out.extend_from_slice(b"\r\n");
        self.writer = match body {
            Out::Empty => None,
            Out::Length(n) => Some(Writer::Length(n)),
            Out::Chunked => Some(Writer::Chunked),
            Out::Close => Some(Writer::Close),
        };
        self.status = Some(status);
    }

    /// The status of the response begun, if any.
    pub fn response_status(&self) -> Option<u16> {
        self.status
    }

    /// Writes a piece of the response body (with the header, when it has not gone yet).
    pub async fn write_body(&mut self, piece: &[u8]) -> io::Result<()> {
        let Some(writer) = &mut self.writer else {
            // No body (HEAD, 204, 304): nothing goes out.
            return Ok(());
        };
        write_piece(&mut self.stream, &mut self.out, writer, piece).await?;
        self.stream.flush().await
    }

    /// Sends what is waiting in the output buffer, now.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.send_out().await?;
        self.stream.flush().await
    }

    async fn send_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Ends the response: the last chunk (chunked), and everything sent. A body that ended
    /// short of its `Content-Length` closes the connection.
    pub async fn finish(&mut self) -> io::Result<()> {
        if let Some(w) = &mut self.writer {
            if !w.finish(&mut self.out) {
                self.keep_alive = false;
            }
        }
        self.flush().await?;
        self.finished = true;
        Ok(())
    }

    /// The connection, when it serves another request, with any bytes of that request read
    /// already. Else it is closed.
    pub fn into_next(mut self) -> Option<(Stream, Option<BytesMut>)> {
        if !(self.keep_alive && self.finished && self.inc.reader.is_done()) {
            return None;
        }
        self.inc.rest();
        let more = (!self.inc.buf.is_empty()).then_some(self.inc.buf);
        Some((self.stream, more))
    }
}

/// A status code's three digits.
fn itoa3(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// Puts `name: value` CRLF in `out`.
pub fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
