//! One upstream connection during one exchange: the request written, the response read.
//!
//! A request header is put in the connection's output buffer ([`Client::begin`]) and goes out
//! with the first body bytes, or alone when the request has no body: one `write` for a small
//! request, body or not. The same buffer then reads the response: one allocation per
//! exchange, grown only while a body keeps filling it.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::body::{write_piece, Incoming, Piece, Reader, Writer};
use super::response::{self, Response};

/// The buffer an exchange starts with: a request header and a small body piece going out, then
/// a response header and the start of its body coming in.
const START: usize = 4096;
/// The largest a body read grows the buffer to.
const MAX_READ: usize = 64 * 1024;

/// How an exchange failed on the upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the connection closed {0}")]
    Closed(&'static str),
    #[error("the connection broke: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Header(#[from] response::Malformed),
    #[error("malformed response body: {0}")]
    Body(#[from] super::body::Malformed),
    #[error("no response body bytes for {0:?}")]
    BodyTimeout(Duration),
}

/// An upstream connection in an exchange.
pub struct Client {
    stream: Stream,
    /// Bytes to write (a request header not sent yet, framing) in its buffer, then the bytes
    /// of the response read and not yet consumed.
    inc: Incoming,
    writer: Writer,
    /// Some of the request has been written to the connection.
    wrote: bool,
    response: Option<Response>,
    head_request: bool,
    /// The upstream closed its side.
    eof: bool,
    /// The room the next read is given.
    read_size: usize,
}

impl Client {
    pub fn new(stream: Stream) -> Client {
        Client {
            stream,
            inc: Incoming::new(BytesMut::new()),
            writer: Writer::Done,
            wrote: false,
            response: None,
            head_request: false,
            eof: false,
            read_size: START,
        }
    }

    /// Starts a request: `write` puts its header (ending with the empty line) in the
    /// connection's buffer and says how its body is framed; `head`: a HEAD request (its
    /// response has no body). The header goes out with the first body bytes.
    pub fn begin(&mut self, head: bool, write: impl FnOnce(&mut BytesMut) -> Writer) {
        self.inc.buf.reserve(START);
        self.head_request = head;
        self.writer = write(&mut self.inc.buf);
    }

    /// Whether any of the request has been written to the connection (a failure before that
    /// means nothing reached the upstream).
    pub fn wrote(&self) -> bool {
        self.wrote
    }

    /// Sends a piece of the request body (with the header, when it has not gone yet).
    pub async fn write_body(&mut self, piece: &[u8]) -> Result<(), Error> {
        self.wrote |= !piece.is_empty();
        write_piece(&mut self.stream, &mut self.inc.buf, &mut self.writer, piece).await?;
        Ok(())
    }

    /// Ends the request body (the last chunk, when chunked) and sends what is buffered.
    pub async fn finish_body(&mut self) -> Result<(), Error> {
        if !self.writer.finish(&mut self.inc.buf) {
            return Err(Error::Closed("before the request body was whole"));
        }
        self.flush().await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.inc.buf.is_empty() {
            return Ok(());
        }
        self.wrote = true;
        self.stream.write_all(&self.inc.buf).await?;
        self.inc.buf.clear();
        Ok(())
    }

    /// Reads the response header, skipping interim responses other than `101` (the sidecar
    /// answers `100 Continue` itself; `103` hints are dropped). Call after
    /// [`Client::finish_body`].
    pub async fn read_response(&mut self) -> Result<&Response, Error> {
        loop {
            let parsed = if self.inc.buf.is_empty() {
                None
            } else {
                Response::parse(&self.inc.buf)?
            };
            let Some((resp, len)) = parsed else {
                if self.read_more().await? == 0 {
                    return Err(Error::Closed(if self.inc.buf.is_empty() {
                        "before a response"
                    } else {
                        "in the response header"
                    }));
                }
                continue;
            };
            self.inc.buf.advance(len);
            if (100..200).contains(&resp.status) && resp.status != 101 {
                continue;
            }
            self.inc.reader = self.body_of(&resp);
            return Ok(self.response.insert(resp));
        }
    }

    /// Where the response's body ends (RFC 9112 6.3).
    fn body_of(&self, resp: &Response) -> Reader {
        let f = &resp.framing;
        if self.head_request || matches!(resp.status, 204 | 304) {
            Reader::Done
        } else if resp.status == 101 || (f.transfer_encoding && !f.chunked) {
            Reader::Close
        } else if f.chunked {
            Reader::chunked()
        } else if let Some(n) = f.content_length {
            Reader::length(n)
        } else {
            Reader::Close
        }
    }

    /// The response header read.
    pub fn response(&self) -> Option<&Response> {
        self.response.as_ref()
    }

    pub fn status(&self) -> u16 {
        self.response.as_ref().map_or(0, |r| r.status)
    }

    /// Whether [`Client::read_body`] can answer without reading from the connection.
    pub fn body_ready(&self) -> bool {
        self.eof || self.inc.ready()
    }

    /// The next piece of the response body, `None` at its end; each read waits up to `idle`.
    pub async fn read_body(&mut self, idle: Duration) -> Result<Option<&[u8]>, Error> {
        loop {
            match self.inc.next_piece()? {
                Piece::Data(r) => return Ok(Some(&self.inc.buf[r])),
                Piece::End => return Ok(None),
                Piece::More if self.eof => {
                    return match self.inc.reader {
                        Reader::Close => {
                            self.inc.reader = Reader::Done;
                            Ok(None)
                        }
                        _ => Err(Error::Closed("in the response body")),
                    };
                }
                Piece::More => match tokio::time::timeout(idle, self.read_more()).await {
                    Ok(r) => r?,
                    Err(_) => return Err(Error::BodyTimeout(idle)),
                },
            };
        }
    }

    /// Reads what the upstream has sent into the buffer; 0 at its end. A read that fills the
    /// room it was given doubles the room the next one gets, up to [`MAX_READ`]: a large body
    /// is read in large pieces, a small response never costs more than [`START`].
    async fn read_more(&mut self) -> Result<usize, Error> {
        self.inc.buf.reserve(self.read_size);
        let room = self.inc.buf.capacity() - self.inc.buf.len();
        let n = self.stream.read_buf(&mut self.inc.buf).await?;
        if n == 0 {
            self.eof = true;
        } else if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Ok(n)
    }

    /// The connection, when it can carry another exchange: the request and the response were
    /// both whole, nothing was read past the response, and the upstream keeps it alive
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`, and
    /// never after a `Transfer-Encoding`, RFC 9112 6.1). Else it is closed.
    pub fn into_reusable(mut self) -> Option<Stream> {
        let rest_empty = self.inc.rest().is_empty();
        let resp = self.response.as_ref()?;
        let f = &resp.framing;
        let keep_alive = match f.keep_alive {
            Some(k) => k,
            None => !resp.http10,
        } && !(resp.http10 && f.transfer_encoding)
            && resp.status != 101;
        (keep_alive
            && self.inc.reader.is_done()
            && self.writer == Writer::Done
            && rest_empty
            && !self.eof)
            .then_some(self.stream)
    }
}
