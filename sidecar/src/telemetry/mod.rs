//! What the sidecar tells about the requests it carries.
//!
//! - `access`: the access-log line of a request, the same on both listeners;
//! - `metrics`: the Prometheus families (one registry made in `main`), resolved per route so
//!   the hot path only touches atomics;
//! - `trace`: the spans of both hops and the `traceparent` each sends on (OpenTelemetry).

pub mod access;
pub mod metrics;
pub mod trace;
