//! The wire contracts every meshlab binary shares: what one process writes and another reads.
//!
//! Each contract has exactly one writer and one reader here, so the two sides cannot drift
//! apart. Nothing in this crate knows Pingora, axum or tokio: it is plain `std` (threads, not
//! tasks), `http` types and small `thiserror` errors, cheap to depend on from every binary and test.
//!
//! Layout:
//! - [`listening`]: the `LISTENING {json}` line a binary prints once its sockets accept, and
//!   its parser (listener name -> socket address);
//! - [`headers`]: the `x-mesh-*` header names as ready-made [`http::HeaderName`]s, and the
//!   encodings of their values (`x-mesh-deadline-ms`, `x-mesh-attempts`);
//! - [`duration`]: the one duration syntax of every flag (`500ms`, `1.5s`, `2m`, `1h 30m`);
//! - [`supervise`]: a binary run as a child process: its `LISTENING` line awaited with a
//!   deadline, its stderr in a log file for error messages, a graceful stop (SIGTERM, then
//!   SIGKILL) and a kill on drop; shared by the lab and the integration tests.

pub mod duration;
pub mod headers;
pub mod listening;
pub mod supervise;
