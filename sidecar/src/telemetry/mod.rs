//! What the sidecar tells about the requests it carries.
//!
//! - `metrics`: the Prometheus families (one registry made in `main`), resolved per route so
//!   the hot path only touches atomics;
//! - `trace`: the spans of both hops and the `traceparent` each sends on (OpenTelemetry).

pub mod metrics;
pub mod trace;
