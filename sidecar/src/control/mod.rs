//! The sidecar's control side, off the request path: where routing tables come from, the admin
//! port, and the listening ports.
//!
//! - `source`: the table source (control-plane poller or a file) and the DNS refresh, which
//!   build and install new routes in the mesh state;
//! - `admin`: the admin HTTP server (`/live`, `/ready`, `/config`, `/endpoints`, `/breakers`,
//!   `/metrics`, `POST /drain`);
//! - `ports`: binding listeners on port 0 and announcing the real ports (the `LISTENING` line).

pub mod admin;
pub mod ports;
pub mod source;
