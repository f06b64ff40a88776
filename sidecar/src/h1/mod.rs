//! HTTP/1.1 on the wire, written for the sidecar's hot path: the upstream side of an exchange
//! ([`client`]), over pingora-core's connected `Stream`s (its connectors and socket layer).
//!
//! Why not pingora-core's client session: it rebuilds every response header as two maps (the
//! values and a case-preserving copy of the names), keeps a 64 KiB body buffer per response,
//! makes three more allocations per session, and writes the request header and each body
//! piece separately (an unbuffered upstream stream: two `write`s for the smallest POST).
//! Here a response header is parsed once into its bytes and an index of its fields
//! ([`response::Response`]), the read buffer starts small and grows only for bodies that fill
//! it, and a request header goes out with the first body bytes in one write.
//!
//! Strict where a proxy must be (RFC 9112): a response's framing is its `Transfer-Encoding`,
//! else a `Content-Length` whose values all agree, else the end of the connection; a chunk
//! line must end in CRLF and fit in [`body::MAX_LINE`]; a connection is reused only when its
//! response ended exactly where its framing said, nothing more was read, and both sides said
//! keep-alive.

pub mod body;
pub mod client;
pub mod response;

#[cfg(test)]
mod tests;
