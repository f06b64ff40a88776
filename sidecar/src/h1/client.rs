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

use super::body::{Reader, Step, Writer};
use super::response::{self, Response};

/// The buffer an exchange starts with: a request header and a small body piece going out, then
/// a response header and the start of its body coming in.
const START: usize = 4096;
/// The largest a body read grows the buffer to.
const MAX_READ: usize = 64 * 1024;
/// A body piece up to this size is copied behind the request header and sent with it; a larger
/// one goes out in a write of its own.
const COALESCE: usize = 16 * 1024;

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
    #[error(transparent)]
    TooLong(#[from] super::body::TooLong),
}

/// An upstream connection in an exchange.
pub struct Client {
    stream: Stream,
    /// Bytes to write (a request header not sent yet, framing), then bytes read and not yet
    /// consumed.
    buf: BytesMut,
    writer: Writer,
    /// Some of the request has been written to the connection.
    wrote: bool,
    /// Bytes at the start of `buf` handed out by the last [`Client::read_body`].
    handed: usize,
    reader: Reader,
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
            buf: BytesMut::new(),
            writer: Writer::Done,
            wrote: false,
            handed: 0,
            reader: Reader::Done,
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
        self.buf.reserve(START);
        self.head_request = head;
        self.writer = write(&mut self.buf);
    }

    /// Whether any of the request has been written to the connection (a failure before that
    /// means nothing reached the upstream).
    pub fn wrote(&self) -> bool {
        self.wrote
    }

    /// Sends a piece of the request body (with the header, when it has not gone yet).
    pub async fn write_body(&mut self, piece: &[u8]) -> Result<(), Error> {
        self.writer.before(piece.len(), &mut self.buf)?;
        if piece.is_empty() {
            return Ok(());
        }
        if piece.len() <= COALESCE {
            self.buf.extend_from_slice(piece);
            self.writer.after(piece.len(), &mut self.buf);
            return Ok(self.flush().await?);
        }
        self.flush().await?;
        self.stream.write_all(piece).await?;
        self.writer.after(piece.len(), &mut self.buf);
        Ok(())
    }

    /// Ends the request body (the last chunk, when chunked) and sends what is buffered.
    pub async fn finish_body(&mut self) -> Result<(), Error> {
        if !self.writer.finish(&mut self.buf) {
            return Err(Error::Closed("before the request body was whole"));
        }
        self.flush().await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.wrote = true;
        self.stream.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }

    /// Reads the response header, skipping interim responses other than `101` (the sidecar
    /// answers `100 Continue` itself; `103` hints are dropped). Call after
    /// [`Client::finish_body`].
    pub async fn read_response(&mut self) -> Result<&Response, Error> {
        loop {
            let parsed = if self.buf.is_empty() {
                None
            } else {
                Response::parse(&self.buf)?
            };
            let Some((resp, len)) = parsed else {
                if self.read_more().await? == 0 {
                    return Err(Error::Closed(if self.buf.is_empty() {
                        "before a response"
                    } else {
                        "in the response header"
                    }));
                }
                continue;
            };
            self.buf.advance(len);
            if (100..200).contains(&resp.status) && resp.status != 101 {
                continue;
            }
            self.reader = self.body_of(&resp);
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
        // A step on a copy of the reader: bytes of framing alone are not a piece.
        let mut reader = self.reader;
        self.eof || !matches!(reader.step(&self.buf[self.handed..]), Ok(Step::More { .. }))
    }

    /// The next piece of the response body, `None` at its end; each read waits up to `idle`.
    pub async fn read_body(&mut self, idle: Duration) -> Result<Option<&[u8]>, Error> {
        self.buf.advance(std::mem::take(&mut self.handed));
        loop {
            match self.reader.step(&self.buf)? {
                Step::Data { skip, len } => {
                    self.handed = skip + len;
                    return Ok(Some(&self.buf[skip..skip + len]));
                }
                Step::End { consume } => {
                    self.buf.advance(consume);
                    return Ok(None);
                }
                Step::More { consume } => {
                    self.buf.advance(consume);
                    if self.eof {
                        return match self.reader {
                            Reader::Close => {
                                self.reader = Reader::Done;
                                Ok(None)
                            }
                            _ => Err(Error::Closed("in the response body")),
                        };
                    }
                    match tokio::time::timeout(idle, self.read_more()).await {
                        Ok(r) => r?,
                        Err(_) => return Err(Error::BodyTimeout(idle)),
                    };
                }
            }
        }
    }

    /// Reads what the upstream has sent into the buffer; 0 at its end. A read that fills the
    /// room it was given doubles the room the next one gets, up to [`MAX_READ`]: a large body
    /// is read in large pieces, a small response never costs more than [`START`].
    async fn read_more(&mut self) -> Result<usize, Error> {
        self.buf.reserve(self.read_size);
        let room = self.buf.capacity() - self.buf.len();
        let n = self.stream.read_buf(&mut self.buf).await?;
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
        self.buf.advance(std::mem::take(&mut self.handed));
        let resp = self.response.as_ref()?;
        let f = &resp.framing;
        let keep_alive = match f.keep_alive {
            Some(k) => k,
            None => !resp.http10,
        } && !(resp.http10 && f.transfer_encoding)
            && resp.status != 101;
        (keep_alive
            && self.reader.is_done()
            && self.writer == Writer::Done
            && self.buf.is_empty()
            && !self.eof)
            .then_some(self.stream)
    }
}
