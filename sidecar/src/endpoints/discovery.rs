//! Endpoint discovery: turns a service's `endpoints` from the table (a static list of addresses
//! or names, or `dns:HOST:PORT` for a headless Kubernetes Service) into socket addresses, and
//! remembers how the last resolution went for the admin port's `/endpoints`.
//!
//! Off the hot path: it runs when a table is built and on every DNS refresh, never per request.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use mesh_table::Endpoints;
use serde::Serialize;

/// Resolves a service's endpoints; remembers the last resolution error for `/endpoints`.
pub struct MeshDiscovery {
    endpoints: Endpoints,
    last: Mutex<DiscoveryStatus>,
}

/// What the last discovery found, for the admin port.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscoveryStatus {
    pub last_error: Option<String>,
    #[serde(with = "opt_time")]
    pub last_resolved: Option<SystemTime>,
}

mod opt_time {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
            None => s.serialize_none(),
        }
    }
}

impl MeshDiscovery {
    pub fn new(endpoints: Endpoints) -> Self {
        MeshDiscovery {
            endpoints,
            last: Mutex::new(DiscoveryStatus::default()),
        }
    }

    /// Resolves the endpoints to addresses (sorted, no duplicates) and records how it went;
    /// an error leaves the caller's current endpoints in place.
    pub async fn discover(&self) -> std::result::Result<Vec<SocketAddr>, String> {
        let res = self.resolve().await;
        let mut last = self.last.lock().expect("discovery status lock");
        match &res {
            Ok(_) => {
                last.last_error = None;
                last.last_resolved = Some(SystemTime::now());
            }
            Err(e) => last.last_error = Some(e.clone()),
        }
        res
    }

    /// What the last discovery found.
    pub fn status(&self) -> DiscoveryStatus {
        self.last.lock().expect("discovery status lock").clone()
    }

    async fn resolve(&self) -> std::result::Result<Vec<SocketAddr>, String> {
        let mut out = Vec::new();
        match &self.endpoints {
            Endpoints::Static(list) => {
                for addr in list {
                    if let Ok(sa) = addr.parse::<SocketAddr>() {
                        out.push(sa);
                        continue;
                    }
                    let found = tokio::net::lookup_host(addr.as_str())
                        .await
                        .map_err(|e| format!("resolving {addr}: {e}"))?;
                    out.extend(found);
                }
            }
            Endpoints::Dns { host, port } => {
                let found = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("resolving {host}: {e}"))?;
                out.extend(found);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}
