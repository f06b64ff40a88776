//! HTTP/1.1 on the wire, written for the sidecar's hot path: the client's side of a request
//! ([`server`]) and the upstream's ([`client`]), over pingora-core's `Stream`s (its listeners,
//! connectors and socket layer).
//!
//! Why not pingora-core's HTTP/1 sessions: they rebuild every header as two maps (the values
//! and a case-preserving copy of the names) and serialize them again, keep a 64 KiB body buffer
//! per response, make several more allocations per session, write a request header and each
//! body piece separately (two `write`s for the smallest POST), and hold a small response body
//! in a 1460-byte write buffer until it fills or ends. Here a response header is parsed once
//! into its bytes and an index of its fields ([`response::Response`]) and forwarded from those
//! bytes, a request header is parsed once into a field map without a case map, read buffers
//! start small and grow only for bodies that fill them, and a header goes out with the first
//! body bytes in one write, each body piece as it comes.
//!
//! Strict where a proxy must be (RFC 9112): a response's framing is its `Transfer-Encoding`,
//! else a `Content-Length` whose values all agree, else the end of the connection; a chunk
//! line must end in CRLF and fit in [`body::MAX_LINE`]; a connection is reused only when its
//! response ended exactly where its framing said, nothing more was read, and both sides said
//! keep-alive.

pub mod body;
pub mod client;
pub mod head;
pub mod request;
pub mod response;
pub mod server;

#[cfg(test)]
mod tests;
