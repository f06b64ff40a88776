//! The meshlab sidecar: a Pingora proxy that runs beside every service instance.
//!
//! Outbound, the local app sends plain HTTP to the sidecar, which reads the target service from
//! the request's authority, picks one of its endpoints and forwards the request under the
//! service's policy from the routing table. Inbound, the sidecar fronts the local app. An admin
//! port reports readiness, the active table and the endpoints.
//!
//! Layout:
//! - `config`: command-line flags and environment variables;
//! - `routes`: the active routing table compiled for serving, swapped atomically as a whole;
//! - `balancer`: endpoint discovery (static lists, DNS) and selection per service;
//! - `source`: where tables come from (control-plane poller, or a file) and the status of the
//!   last fetch;
//! - `outbound` / `inbound`: the two Pingora `ProxyHttp` implementations (wiring only);
//! - `reason`: the errors the sidecar answers itself, each with its `x-mesh-error` reason;
//! - `retry`, `breaker`, `limits`, `select`: the policies, pure state machines: retry decision,
//!   backoff and budget; per-endpoint ejection; concurrency limits; endpoint selection;
//! - `health`: active health checks;
//! - `hedge`: hedged requests, served with Pingora's connector outside the proxy loop;
//! - `metrics`: the Prometheus families, resolved per route so the hot path only touches atomics;
//! - `admin`: the admin HTTP server;
//! - `ports`: binding listeners on port 0 and announcing the real ports;
//! - `trace`: the spans of both hops and the `traceparent` each sends on (OpenTelemetry);
//! - `alloc_count`: with the `alloc-count` feature, a counting global allocator for the bench.

pub mod admin;
pub mod alloc_count;
pub mod balancer;
pub mod breaker;
pub mod config;
pub mod health;
pub mod hedge;
pub mod inbound;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod ports;
pub mod reason;
pub mod retry;
pub mod routes;
pub mod select;
pub mod source;
pub mod trace;
