//! The meshlab sidecar: a Pingora proxy that runs beside every service instance.
//!
//! Outbound, the local app sends plain HTTP to the sidecar, which reads the target service from
//! the request's authority, picks one of its endpoints and forwards the request under the
//! service's policy from the routing table. Inbound, the sidecar fronts the local app. An admin
//! port reports readiness, the active table and the endpoints.
//!
//! Layout (a request flows listener -> route (`state`) -> attempt loop -> upstream):
//! - `config`: command-line flags and environment variables;
//! - `state`: the shared mesh state: the active routing table compiled for serving, one route
//!   per service with its policy state (swapped atomically as a whole), and the status of the
//!   table source; it imports nothing above it;
//! - `conn`: the request loop of one client connection, shared by both listeners; upgrades are
//!   handed to `tunnel` (pingora-proxy);
//! - `h1`: HTTP/1.1 on the wire, both sides of an exchange (`server`: the client's request and
//!   its response; `client`: the try's request to an upstream and its response), over
//!   pingora-core's streams, connectors and listeners;
//! - `outbound` (`attempt`, `hedge`) / `inbound`: what each listener does with a request: the
//!   attempt loop with its policies, and the inbound hop to the local app;
//! - `forward`: request bodies up and responses down, streamed;
//! - `upstream`: connecting to endpoints and the pool of idle connections;
//! - `http`: the `x-mesh-*` names, authority, hop-by-hop fields, the upstream request;
//! - `reason`: the errors the sidecar answers itself, each with its `x-mesh-error` reason;
//! - `limits`: the per-service concurrency limit, which waits for a slot on tokio's semaphore;
//!   the other policies are pure state machines in `mesh_policy`: `retry` (decision, backoff,
//!   budget), `breaker` (per-endpoint ejection), `select` (endpoint selection);
//! - `endpoints/`: per upstream service, `discovery` (static lists, DNS), the `balancer`
//!   (selection on `mesh_policy::select`, skipping endpoints their breakers ejected) and the
//!   active `health` checks;
//! - `control/`: the table `source` (control-plane poller, or a file) that installs new routes,
//!   the `admin` HTTP server, and the listening `ports` (port 0, the `LISTENING` line);
//! - `telemetry/`: the Prometheus `metrics`, resolved per route so the hot path only touches
//!   atomics, and the `trace` spans of both hops with the `traceparent` each sends on
//!   (OpenTelemetry);
//! - `alloc_count`: with the `alloc-count` feature, a counting global allocator for the bench.

pub mod alloc_count;
pub mod config;
pub mod conn;
pub mod control;
pub mod endpoints;
pub mod forward;
pub mod h1;
pub mod http;
pub mod inbound;
pub mod limits;
pub mod outbound;
pub mod reason;
pub mod state;
pub mod telemetry;
pub mod tunnel;
pub mod upstream;
