//! Message bodies on the wire: how much of a body is left to read ([`Reader`], a pure state
//! machine over the bytes read so far), and how a body is framed as it is written
//! ([`Writer`], [`write_piece`]), on both sides of an exchange.

use bytes::{Buf, BytesMut};

/// The longest chunk-size line, and the longest trailer field line (bytes).
pub const MAX_LINE: usize = 4096;
/// The most trailer bytes a chunked body may carry (they are read and dropped).
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Where a body ends, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// This many bytes more.
    Length(u64),
    /// Chunked transfer coding, at this point of it.
    Chunked(Chunk),
    /// Everything until the connection closes.
    Close,
    /// The body is complete.
    Done,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section, this many bytes of it read.
    Trailers(usize),
}

/// What the bytes read so far hold, from a [`Reader::step`] over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `buf[skip..skip + len]` is body; `skip + len` bytes are consumed once it has been used.
    Data { skip: usize, len: usize },
    /// More bytes are needed; the first `consume` bytes were framing and are consumed.
    More { consume: usize },
    /// The body ended; the first `consume` bytes were its last framing and are consumed.
    End { consume: usize },
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("malformed chunk size line")]
    ChunkSize,
    #[error("chunk size line or trailer field longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("trailer section longer than {MAX_TRAILERS} bytes")]
    TrailersTooLong,
}

impl Reader {
    /// A chunked body, at its first chunk-size line.
    pub const fn chunked() -> Reader {
        Reader::Chunked(Chunk::Size)
    }

    /// A body of `n` bytes.
    pub const fn length(n: u64) -> Reader {
        if n == 0 {
            Reader::Done
        } else {
            Reader::Length(n)
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Reader::Done)
    }

    /// The next piece of body in `buf` (the bytes read and not yet consumed), advancing the
    /// reader past it: the caller consumes what the step says before the next step.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, Malformed> {
        match self {
            Reader::Done => Ok(Step::End { consume: 0 }),
            Reader::Close if buf.is_empty() => Ok(Step::More { consume: 0 }),
            Reader::Close => Ok(Step::Data {
                skip: 0,
                len: buf.len(),
            }),
            Reader::Length(_) if buf.is_empty() => Ok(Step::More { consume: 0 }),
            Reader::Length(left) => {
                let len = (*left).min(buf.len() as u64);
                *left -= len;
                if *left == 0 {
                    *self = Reader::Done;
                }
                Ok(Step::Data {
                    skip: 0,
                    len: len as usize,
                })
            }
            Reader::Chunked(chunk) => {
                let (step, done) = chunk.step(buf)?;
                if done {
                    *self = Reader::Done;
                }
                Ok(step)
            }
        }
    }
}

impl Chunk {
    /// One step of the chunked coding over `buf`; `true` when the body has ended.
    fn step(&mut self, buf: &[u8]) -> Result<(Step, bool), Malformed> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match *self {
                Chunk::Size => {
                    let Some(eol) = line_end(rest)? else {
                        return Ok((Step::More { consume: pos }, false));
                    };
                    let size = chunk_size(&rest[..eol])?;
                    *self = if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    };
                    pos += eol + 1;
                }
                Chunk::Data(_) if rest.is_empty() => {
                    return Ok((Step::More { consume: pos }, false));
                }
                Chunk::Data(left) => {
                    let len = left.min(rest.len() as u64);
                    *self = if len == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - len)
                    };
                    let step = Step::Data {
                        skip: pos,
                        len: len as usize,
                    };
                    return Ok((step, false));
                }
                Chunk::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        *self = Chunk::Size;
                    }
                    [] | [b'\r'] => return Ok((Step::More { consume: pos }, false)),
                    _ => return Err(Malformed::ChunkEnd),
                },
                Chunk::Trailers(read) => {
                    let Some(eol) = line_end(rest)? else {
                        return Ok((Step::More { consume: pos }, false));
                    };
                    if eol == 1 {
                        // The empty line: the end of the body.
                        return Ok((Step::End { consume: pos + 2 }, true));
                    }
                    let read = read + eol + 1;
                    if read > MAX_TRAILERS {
                        return Err(Malformed::TrailersTooLong);
                    }
                    *self = Chunk::Trailers(read);
                    pos += eol + 1;
                }
            }
        }
    }
}

/// The index of the LF that ends a CRLF-terminated line at the start of `buf`, `None` when the
/// line is not complete yet. A bare LF, or a line longer than [`MAX_LINE`], is refused.
fn line_end(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    let window = &buf[..buf.len().min(MAX_LINE + 1)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(Malformed::ChunkSize),
        Some(i) if buf[i - 1] != b'\r' => Err(Malformed::ChunkSize),
        Some(i) => Ok(Some(i)),
        None if window.len() > MAX_LINE => Err(Malformed::LineTooLong),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (`line` with its CR, without its LF): hex digits, then
/// nothing or chunk extensions (`;`, after optional whitespace), which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let line = &line[..line.len() - 1];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Malformed::ChunkSize);
    }
    let ext = line[digits..].trim_ascii_start();
    if !(ext.is_empty() || ext[0] == b';') || ext.iter().any(|&b| b < b' ' && b != b'\t') {
        return Err(Malformed::ChunkSize);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).expect("a hex digit") as u64;
        size = size.checked_mul(16).ok_or(Malformed::ChunkSize)? | d;
    }
    Ok(size)
}

/// How a body is framed as it is written (a request's, or a response's), and how much of it is
/// left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// This many bytes more (`Content-Length`).
    Length(u64),
    /// Chunked: each piece is one chunk, and finishing sends the last chunk.
    Chunked,
    /// Until the connection closes: pieces as they are (a response to HTTP/1.0, length unknown).
    Close,
    /// No body, or all of it written.
    Done,
}

/// Writing more body than its `Content-Length` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("body longer than its Content-Length")]
pub struct TooLong;

/// A small piece is copied behind the bytes waiting to be written and goes out with them; a
/// larger one goes out in a write of its own, after them.
const COALESCE: usize = 16 * 1024;

/// Writes `piece`, framed by `writer`, on `stream`, with whatever waits in `out` (a header not
/// sent yet, framing) before it: one write for a small piece, two for a large one.
pub async fn write_piece<W: tokio::io::AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    out: &mut BytesMut,
    writer: &mut Writer,
    piece: &[u8],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    writer
        .before(piece.len(), out)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if piece.is_empty() {
        return Ok(());
    }
    if piece.len() <= COALESCE {
        out.extend_from_slice(piece);
        writer.after(piece.len(), out);
    } else {
        stream.write_all(out).await?;
        out.clear();
        stream.write_all(piece).await?;
        writer.after(piece.len(), out);
    }
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

impl Writer {
    /// Accounts for a piece of `len` bytes about to be written, and puts the framing that goes
    /// before it in `out` (a chunk-size line when chunked); [`Writer::after`] puts what goes
    /// after it. An empty piece frames nothing (it would be the last chunk).
    pub fn before(&mut self, len: usize, out: &mut bytes::BytesMut) -> Result<(), TooLong> {
        match self {
            Writer::Length(left) => {
                let n = len as u64;
                if n > *left {
                    return Err(TooLong);
                }
                *left -= n;
            }
            Writer::Chunked if len == 0 => {}
            Writer::Chunked => {
                use std::fmt::Write;
                let _ = write!(out, "{len:x}\r\n");
            }
            Writer::Close => {}
            Writer::Done if len == 0 => {}
            Writer::Done => return Err(TooLong),
        }
        Ok(())
    }

    /// The framing after a piece of `len` bytes: CRLF when chunked.
    pub fn after(&self, len: usize, out: &mut bytes::BytesMut) {
        if len > 0 && *self == Writer::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Ends the body: the last chunk (chunked). `false`: a `Content-Length` body ended short.
    pub fn finish(&mut self, out: &mut bytes::BytesMut) -> bool {
        let whole = match *self {
            Writer::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                true
            }
            Writer::Length(left) => left == 0,
            Writer::Close | Writer::Done => true,
        };
        *self = Writer::Done;
        whole
    }
}

/// A body's bytes read from a connection and not yet consumed, and where the body is in them:
/// what both sides of an exchange read a body with ([`Incoming::next_piece`] finds each piece in the
/// bytes read, the caller reads more when it says so).
pub struct Incoming {
    /// The bytes read and not consumed (the caller reads into it).
    pub buf: BytesMut,
    pub reader: Reader,
    /// Bytes at the start of `buf` handed out as the last piece.
    handed: usize,
}

/// What [`Incoming::next_piece`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A piece of the body: these bytes of `buf`.
    Data(std::ops::Range<usize>),
    /// The body ended.
    End,
    /// More bytes must be read first.
    More,
}

impl Incoming {
    pub fn new(buf: BytesMut) -> Incoming {
        Incoming {
            buf,
            reader: Reader::Done,
            handed: 0,
        }
    }

    /// Consumes the piece handed out last, then finds the next one in the bytes read.
    pub fn next_piece(&mut self) -> Result<Piece, Malformed> {
        self.buf.advance(std::mem::take(&mut self.handed));
        Ok(match self.reader.step(&self.buf)? {
            Step::Data { skip, len } => {
                self.handed = skip + len;
                Piece::Data(skip..skip + len)
            }
            Step::End { consume } => {
                self.buf.advance(consume);
                Piece::End
            }
            Step::More { consume } => {
                self.buf.advance(consume);
                Piece::More
            }
        })
    }

    /// Whether [`Incoming::next_piece`] would find a piece or the end without more bytes (framing
    /// bytes alone are not a piece).
    pub fn ready(&self) -> bool {
        let mut reader = self.reader;
        !matches!(reader.step(&self.buf[self.handed..]), Ok(Step::More { .. }))
    }

    /// The bytes read past the piece handed out last.
    pub fn rest(&mut self) -> &mut BytesMut {
        self.buf.advance(std::mem::take(&mut self.handed));
        &mut self.buf
    }
}
