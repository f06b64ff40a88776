//! A response header as it came off the wire: its bytes, an index of its fields, and what its
//! framing fields say, found in one pass when it is parsed.

use super::head::{Head, Span};

/// The most fields a response header may have.
pub const MAX_FIELDS: usize = 256;
/// The longest response header (bytes), as pingora-core's own limit.
pub const MAX_HEAD: usize = 1024 * 1024;

/// A parsed response header.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// HTTP/1.0 (else HTTP/1.1).
    pub http10: bool,
    /// The header's bytes, from the status line to the empty line, and its fields.
    pub head: Head,
    reason: Span,
    /// Its framing fields.
    pub framing: Framing,
}

/// What a message's framing and connection fields say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Framing {
    /// A `Transfer-Encoding` was sent.
    pub transfer_encoding: bool,
    /// ... and its last coding is `chunked`.
    pub chunked: bool,
    /// The `Content-Length`, every value of it agreeing (`None` when there is none, or when a
    /// `Transfer-Encoding` overrides it).
    pub content_length: Option<u64>,
    /// `Connection: close` (`Some(false)`) or `keep-alive` (`Some(true)`).
    pub keep_alive: Option<bool>,
    /// An `Upgrade` field was sent.
    pub upgrade: bool,
}

/// Why a response header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("malformed response header: {0}")]
    Syntax(httparse::Error),
    #[error("response header larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
}

impl Response {
    /// Parses the response header at the start of `buf`: the response and the header's length,
    /// or `None` when it is not complete yet.
    pub fn parse(buf: &[u8]) -> Result<Option<(Response, usize)>, Malformed> {
        // Uninitialised: the parser writes only the fields it finds (an initialised array
        // would be 8 KiB written per parse).
        let mut fields =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut r = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut r,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(Malformed::TooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Malformed::TooLarge),
            Err(e) => return Err(Malformed::Syntax(e)),
        };
        let mut framing = Framing::default();
        let mut lengths = Lengths::default();
        let head = Head::new(buf, len, r.headers, |name, value| {
            framing.note(name, value, &mut lengths)
        });
        if framing.transfer_encoding {
            framing.content_length = None;
        } else {
            framing.content_length = lengths.value()?;
        }
        let response = Response {
            status: r.code.expect("a complete response has a status"),
            http10: r.version == Some(0),
            reason: Span::of(buf, r.reason.unwrap_or("").as_bytes()),
            head,
            framing,
        };
        Ok(Some((response, len)))
    }

    pub fn reason(&self) -> &[u8] {
        self.head.bytes(self.reason)
    }

    /// The first value of the field `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.head.get(name)
    }

    /// The fields in the order they came: name and value.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.head.fields()
    }
}

/// The `Content-Length` values of a message, which must all agree (RFC 9110 8.6).
#[derive(Default)]
pub(super) struct Lengths {
    value: Option<u64>,
    bad: bool,
    pub(super) seen: bool,
}

impl Lengths {
    pub(super) fn add(&mut self, v: &[u8]) {
        self.seen = true;
        for token in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            match parse_length(token) {
                Some(n) if self.value.is_none_or(|v| v == n) => self.value = Some(n),
                _ => self.bad = true,
            }
        }
    }

    pub(super) fn value(self) -> Result<Option<u64>, Malformed> {
        if self.bad {
            Err(Malformed::ContentLength)
        } else {
            Ok(self.value)
        }
    }
}

/// A `Content-Length` token: decimal digits only, within `u64`.
fn parse_length(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

impl Framing {
    pub(super) fn note(&mut self, name: &[u8], value: &[u8], lengths: &mut Lengths) {
        // Told apart by length first: most fields are none of these.
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => lengths.add(value),
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.transfer_encoding = true;
                let last = value
                    .rsplit(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .find(|t| !t.is_empty())
                    .unwrap_or(b"");
                self.chunked = last.eq_ignore_ascii_case(b"chunked");
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for t in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if t.eq_ignore_ascii_case(b"close") {
                        self.keep_alive = Some(false);
                    } else if t.eq_ignore_ascii_case(b"keep-alive") && self.keep_alive.is_none() {
                        self.keep_alive = Some(true);
                    }
                }
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => self.upgrade = true,
            _ => {}
        }
    }
}
