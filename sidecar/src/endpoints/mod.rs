//! The endpoints of each upstream service: where they are, which one an attempt goes to, and
//! whether they are healthy.
//!
//! - `discovery`: a service's `endpoints` (static list or DNS name) resolved to addresses;
//! - `balancer`: the endpoint set with its breakers, and the pick of one endpoint per attempt
//!   (on `mesh_policy::select` and `mesh_policy::breaker`);
//! - `health`: active health checks, which take failing endpoints out of the candidates.

pub mod balancer;
pub mod discovery;
pub mod health;
