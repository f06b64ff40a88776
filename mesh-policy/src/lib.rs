//! The sidecar's policies as pure decisions: whether to retry and when, which endpoints are
//! ejected, which endpoint takes the next attempt.
//!
//! Nothing here does I/O. No socket, no HTTP type, no async runtime and no clock or random source
//! of its own: every time-dependent call takes `now`, jitter comes in as a number in `[0, 1)` and
//! randomness as the caller's `rng`, so tests drive time by hand and are deterministic. Outcomes
//! arrive already classified (a status code, "connect failure", "reset"), never as responses.
//! The crate's dependencies keep it that way: no Pingora, `http`, `hyper`, socket or tokio crate
//! may be added. The sidecar's Pingora phases are the wiring: they classify what happened, ask
//! these policies, then sleep, send or answer.
//!
//! Layout:
//! - [`retry`]: the classification of an attempt ([`retry::Outcome`]), the retry decision
//!   ([`retry::decide`]), backoff with full jitter, `Retry-After` parsing, the per-service retry
//!   budget and the idempotent methods;
//! - [`addr_map`]: maps keyed by endpoint address with a cheap hash (keys come from the table,
//!   not from clients);
//! - [`breaker`]: per-endpoint outlier detection, one small state machine per endpoint (closed,
//!   open, half-open) and the set-level `max_ejected_percent` bound;
//! - [`fault`]: which request or try gets which of a service's faults (delay, abort), and
//!   the delay drawn from its distribution;
//! - [`select`]: one service's endpoints with their load (requests in flight, peak-EWMA
//!   latency, active health) and the balancing algorithms: round robin, random, ring hash, P2C
//!   on requests in flight and P2C on peak-EWMA load.

pub mod addr_map;
pub mod breaker;
pub mod fault;
pub mod retry;
pub mod select;
