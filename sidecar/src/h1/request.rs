//! A request header as it came off the wire: its bytes, an index of its fields, and what its
//! framing fields say, found in one pass when it is parsed; and, once prepared for an upstream,
//! which of its fields go on and what the sidecar writes in their place.
//!
//! No field map: a field is found by scanning the index (a request has a dozen fields or so;
//! a scan compares lengths before bytes), and a try's request header is written from the
//! bytes as they came.

use std::mem::MaybeUninit;

use bytes::Bytes;

use super::head::{Head, Span};
use super::response::{Framing, Lengths, MAX_FIELDS};

/// A parsed request header.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: http::Method,
    /// HTTP/1.0 (else HTTP/1.1).
    pub http10: bool,
    /// The header's bytes, from the request line to the empty line, and its fields.
    head: Head,
    target: Span,
    /// Its framing fields (the length `None` when a `Transfer-Encoding` overrides it).
    pub framing: Framing,
    /// Both a `Transfer-Encoding` and a `Content-Length` came.
    pub both_framings: bool,
    /// What goes upstream, once prepared.
    up: Upstream,
}

/// How a prepared request differs from the one that came: fields that stay on this hop, the
/// target in origin form, and the Host an absolute-form target names.
#[derive(Debug, Clone, Default)]
struct Upstream {
    dropped: [u64; MAX_FIELDS / 64],
    target: Option<Span>,
    host: Option<Span>,
}

/// Why a request header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("malformed request header: {0}")]
    Syntax(httparse::Error),
    #[error("more than {MAX_FIELDS} header fields")]
    TooManyFields,
    #[error("invalid method")]
    Method,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("HTTP/1.0 requests cannot include Transfer-Encoding")]
    TransferEncodingOn10,
    #[error("non-chunked final Transfer-Encoding")]
    NotChunked,
    #[error("multiple Host header fields")]
    MultipleHosts,
    #[error("userinfo in Host header")]
    HostUserinfo,
    #[error("{0}")]
    Authority(String),
}

impl Request {
    /// Parses the request header at the start of `buf`: the request and the header's length,
    /// or `None` when it is not complete yet.
    pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, Malformed> {
        // Uninitialised: the parser writes only the fields it finds.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut r = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut r,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Malformed::TooManyFields),
            Err(e) => return Err(Malformed::Syntax(e)),
        };
        let mut framing = Framing::default();
        let mut lengths = Lengths::default();
        let (mut hosts, mut userinfo) = (0, false);
        let head = Head::new(buf, len, r.headers, |name, value| {
            framing.note(name, value, &mut lengths);
            if name.len() == 4 && name.eq_ignore_ascii_case(b"host") {
                hosts += 1;
                userinfo |= value.contains(&b'@');
            }
        });
        if userinfo {
            return Err(Malformed::HostUserinfo);
        }
        if hosts > 1 {
            return Err(Malformed::MultipleHosts);
        }
        let http10 = r.version == Some(0);
        let method = http::Method::from_bytes(r.method.unwrap_or("").as_bytes())
            .map_err(|_| Malformed::Method)?;
        let both_framings = framing.transfer_encoding && lengths.seen;
        if framing.transfer_encoding {
            if http10 {
                return Err(Malformed::TransferEncodingOn10);
            }
            if !framing.chunked {
                return Err(Malformed::NotChunked);
            }
        } else {
            framing.content_length = lengths.value().map_err(|_| Malformed::ContentLength)?;
        }
        let target = r.path.unwrap_or("").as_bytes();
        let request = Request {
            method,
            http10,
            target: Span::of(buf, target),
            head,
            framing,
            both_framings,
            up: Upstream::default(),
        };
        if !target.starts_with(b"/") {
            // Absolute-form, authority-form (CONNECT) or asterisk-form: checked as pingora-core
            // checks them (one authority, no userinfo), on a header made for the check.
            request.check_target()?;
        }
        Ok(Some((request, len)))
    }

    fn check_target(&self) -> Result<(), Malformed> {
        let mut h =
            pingora_http::RequestHeader::build_no_case(self.method.clone(), self.target(), None)
                .map_err(|e| Malformed::Authority(e.reason_str().to_string()))?;
        if let Some(host) = self.get("host") {
            let host = http::HeaderValue::from_bytes(host)
                .map_err(|_| Malformed::Authority("invalid Host header".into()))?;
            let _ = h.insert_header(http::header::HOST, host);
        }
        pingora_core::protocols::http::authority::validate_request_authority(&h)
            .map_err(|e| Malformed::Authority(e.reason_str().to_string()))
    }

    /// The header's bytes as they came.
    pub fn head(&self) -> &Bytes {
        self.head.as_bytes()
    }

    /// The request target as it came.
    pub fn target(&self) -> &[u8] {
        self.bytes(self.target)
    }

    /// The target's path, without its query (origin-form or absolute-form target).
    pub fn path(&self) -> &[u8] {
        let t = self.upstream_target();
        let end = t.iter().position(|&b| b == b'?').unwrap_or(t.len());
        &t[..end]
    }

    /// The first value of the field `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.head.get(name)
    }

    /// Every value of the field `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.head.get_all(name)
    }

    fn bytes(&self, s: Span) -> &[u8] {
        self.head.bytes(s)
    }

    /// The span of `len` bytes at `start` in the target.
    fn in_target(&self, start: usize, len: usize) -> Span {
        let start = self.target.start + start as u32;
        Span {
            start,
            end: start + len as u32,
        }
    }

    /// Keeps field `i` on this hop.
    pub(crate) fn drop_field(&mut self, i: usize) {
        self.up.dropped[i / 64] |= 1 << (i % 64);
    }

    fn is_dropped(&self, i: usize) -> bool {
        self.up.dropped[i / 64] & (1 << (i % 64)) != 0
    }

    /// Sends the `len` bytes at `start` of the target upstream instead of the target (empty:
    /// `/`).
    pub(crate) fn set_upstream_target(&mut self, start: usize, len: usize) {
        self.up.target = Some(self.in_target(start, len));
    }

    /// Sends the `len` bytes at `start` of the target upstream as the Host, in place of any
    /// Host field.
    pub(crate) fn set_upstream_host(&mut self, start: usize, len: usize) {
        self.up.host = Some(self.in_target(start, len));
        for i in 0..self.head.len() {
            if self.field_name(i).eq_ignore_ascii_case(b"host") {
                self.drop_field(i);
            }
        }
    }

    pub(crate) fn field_name(&self, i: usize) -> &[u8] {
        self.head.name(i)
    }

    pub(crate) fn field_count(&self) -> usize {
        self.head.len()
    }

    /// The target that goes upstream.
    pub fn upstream_target(&self) -> &[u8] {
        match self.up.target {
            // An absolute-form target without a path.
            Some(s) if s.start == s.end => b"/",
            Some(s) => self.bytes(s),
            None => self.target(),
        }
    }

    /// The Host that goes upstream in place of the Host field, if any.
    pub fn upstream_host(&self) -> Option<&[u8]> {
        self.up.host.map(|s| self.bytes(s))
    }

    /// The fields that go upstream, in the order they came.
    pub fn upstream_fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.head
            .fields()
            .enumerate()
            .filter(|(i, _)| !self.is_dropped(*i))
            .map(|(_, f)| f)
    }
}
