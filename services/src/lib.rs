//! `mesh-service`: the demo microservice of meshlab.
//!
//! It answers any method on any path with JSON naming itself, after a configurable delay,
//! sometimes with an injected error, and after calling other services through its sidecar:
//!
//! ```text
//! client ──▶ mesh-service b ──(HTTP proxy: GET http://c/x)──▶ b's sidecar ──▶ … ──▶ c
//! ```
//!
//! The interface (flags, JSON shapes, reserved paths, the `LISTENING` line) is specified in
//! `docs/CONTRACTS.md` under "mesh-service".
//!
//! # Request handling
//! For each non-reserved request, in this order:
//! 1. the request body is read to its end and counted (`body_bytes`, shown for `POST` and for
//!    any non-empty body);
//! 2. one [`Decision`](behaviour::Decision) is drawn: a delay of `latency_ms ± jitter_ms`
//!    (uniform, never below zero) and whether to inject an error (`error_rate`);
//! 3. after the delay, an injected error is answered with `error_status` and
//!    `{"service","instance","error":"injected error"}`;
//! 4. otherwise every service in `calls` is called concurrently through the sidecar, with the
//!    same method, path and query, no body, and the forwarded trace/deadline headers
//!    ([`downstream::FORWARDED_HEADERS`]); 10 s timeout per call;
//! 5. the answer is `200 {"service","instance","method","path","calls":[…]}`, or `502` with an
//!    added `"error"` naming the first failed call in `calls` order.
//!
//! # Randomness
//! All randomness comes from **one** `SmallRng` seeded from `--seed` (random and logged when
//! absent), kept behind a `Mutex` in [`AppState`]. The lock is taken only when the behaviour needs
//! a draw (`jitter_ms > 0` or `0 < error_rate < 1`) and held for at most two draws, never across
//! an `.await`. The same seed gives the same sequence of decisions; which concurrent request gets
//! which decision depends on arrival order.
//!
//! # Run-time changes
//! `PUT /behaviour` replaces the behaviour atomically (an `ArcSwap`, read lock-free on the hot
//! path); a request in flight keeps the snapshot it started with.
//!
//! # Layout
//! - [`behaviour`]: the [`Behaviour`](behaviour::Behaviour) knobs, validation, the
//!   `PUT /behaviour` patch format and the pure per-request decision logic (unit-tested with
//!   seeded generators).
//! - [`downstream`]: the proxied HTTP client, header forwarding and concurrent calls.
//! - [`metrics`]: the Prometheus metrics, registered into a caller-owned `Registry`.
//! - [`server`]: [`AppState`], [`app`] (the router) and [`run`] (serve with graceful shutdown).
//! - [`trace`]: the service's spans (server span per request, client span per call).
//! - [`cli`]: flags and `MESH_*` environment variables, validated into a [`Config`].
//! - `src/main.rs`: the binary: logging, binding, the `LISTENING` line, signals.
//! - `tests/`: integration tests that start the real binary, and in-process router tests.

pub mod behaviour;
pub mod cli;
pub mod downstream;
pub mod metrics;
pub mod server;
pub mod trace;

pub use server::{app, run, AppState, Config, SetupError};
