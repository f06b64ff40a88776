//! Command-line flags; each also reads an environment variable, for Kubernetes manifests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// meshlab sidecar: routes the local app's outbound calls and fronts its inbound traffic.
#[derive(Debug, Clone, Parser)]
#[command(name = "sidecar", version, about)]
pub struct Args {
    /// Name of the local service (as in the routing table).
    #[arg(long, env = "MESH_SERVICE")]
    pub service: String,

    /// Base URL of the control plane, e.g. http://127.0.0.1:8500.
    #[arg(long, env = "MESH_CONTROL_PLANE", conflicts_with = "table")]
    pub control_plane: Option<String>,

    /// Environment whose table to poll (dev, staging, prod).
    #[arg(long, env = "MESH_ENV", default_value = "dev")]
    pub env: String,

    /// Run without a control plane, from this table file (TOML); reread when it changes.
    #[arg(long, env = "MESH_TABLE")]
    pub table: Option<PathBuf>,

    /// Outbound listener: the local app sends its calls here.
    #[arg(long, env = "MESH_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,

    /// Inbound listener: other services' sidecars call the local app through this.
    #[arg(long, env = "MESH_INBOUND", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,

    /// Address of the local app.
    #[arg(long, env = "MESH_APP", default_value = "127.0.0.1:8080")]
    pub app: SocketAddr,

    /// Admin listener (/ready, /live, /config, /endpoints).
    #[arg(long, env = "MESH_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// How often to poll the control plane (or stat the table file), e.g. 1s, 500ms.
    #[arg(long, env = "MESH_POLL_INTERVAL", default_value = "1s", value_parser = mesh_proto::duration::parse_positive)]
    pub poll_interval: Duration,

    /// How often to re-resolve DNS endpoints.
    #[arg(long, env = "MESH_DNS_REFRESH", default_value = "5s", value_parser = mesh_proto::duration::parse_positive)]
    pub dns_refresh: Duration,

    /// Worker threads per proxy listener.
    #[arg(long, env = "MESH_THREADS", default_value_t = 1)]
    pub threads: usize,

    /// Log one structured line per request (target `access`): trace id, direction, service,
    /// upstream, endpoint, status, attempts, reason, duration. Off by default: it is a log
    /// line on every request.
    #[arg(long, env = "MESH_ACCESS_LOG")]
    pub access_log: bool,

    /// Prometheus metrics on the admin port's /metrics: on, or off (no counting or timing on
    /// the request path; /metrics answers 404).
    #[arg(long, env = "MESH_METRICS", value_enum, default_value = "on")]
    pub metrics: Switch,

    /// Bearer token for the admin port's state-changing endpoints (POST /drain, /undrain);
    /// without one they answer 403. Prefer the environment variable: flags show in `ps`.
    #[arg(long, env = "MESH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Log format on stderr: text or json (one JSON object per line).
    #[arg(long, env = "MESH_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Seconds to keep serving in-flight requests after SIGTERM before exiting.
    #[arg(long, env = "MESH_SHUTDOWN_GRACE", default_value_t = 2)]
    pub shutdown_grace_s: u64,
}

impl Args {
    /// Checks what clap cannot: exactly one table source, sane values.
    pub fn check(&self) -> Result<(), String> {
        if self.control_plane.is_none() && self.table.is_none() {
            return Err(
                "no table source: pass --control-plane URL (with --env) or --table FILE".into(),
            );
        }
        if let Some(cp) = &self.control_plane {
            if !cp.starts_with("http://") {
                return Err(format!(
                    "--control-plane must be an http:// URL, got {cp:?}"
                ));
            }
        }
        if self.poll_interval < Duration::from_millis(10) {
            return Err(format!(
                "--poll-interval must be at least 10ms, got {:?}",
                self.poll_interval
            ));
        }
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err("--admin-token (MESH_ADMIN_TOKEN) is empty".into());
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
