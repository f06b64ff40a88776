//! Command-line flags (each also read from a `MESH_*` environment variable) and their
//! validation into a [`Config`].

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;

use axum::http::uri::Authority;
use clap::Parser;

use crate::behaviour::{parse_calls, Behaviour};
use crate::server::Config;

/// A demo microservice for the mesh: answers JSON naming itself after an optional delay, injects
/// errors at a configurable rate, and calls other services through its sidecar.
#[derive(Debug, Clone, Parser)]
#[command(name = "mesh-service", version, about)]
pub struct Args {
    /// Service name, e.g. `b`.
    #[arg(long, env = "MESH_NAME")]
    pub name: String,

    /// Instance name [default: NAME-PID, e.g. b-4242].
    #[arg(long, env = "MESH_INSTANCE")]
    pub instance: Option<String>,

    /// Address to listen on; port 0 picks a free port (the LISTENING line tells which).
    #[arg(long, env = "MESH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// host:port of the sidecar's outbound listener, used as the HTTP proxy for downstream calls.
    #[arg(long, env = "MESH_SIDECAR", default_value = "127.0.0.1:15001")]
    pub sidecar: String,

    /// Comma-separated services to call on each request, e.g. `c,d` (called concurrently).
    #[arg(long, env = "MESH_CALLS", default_value = "")]
    pub calls: String,

    /// Delay before answering, in milliseconds.
    #[arg(long, env = "MESH_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Uniform jitter: the delay is drawn from latency ± jitter (never below 0), in milliseconds.
    #[arg(long, env = "MESH_JITTER_MS", default_value_t = 0)]
    pub jitter_ms: u64,

    /// Probability (0..=1) of answering with --error-status instead.
    #[arg(long, env = "MESH_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,

    /// Status of injected errors (400..=599).
    #[arg(long, env = "MESH_ERROR_STATUS", default_value_t = 503)]
    pub error_status: u16,

    /// Seed of the random generator behind jitter and error injection [default: random, logged].
    #[arg(long, env = "MESH_SEED")]
    pub seed: Option<u64>,
}

/// A flag whose value is unusable; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Args {
    /// Validates the flags and fills in the defaults that depend on the process (instance name,
    /// random seed).
    pub fn into_config(self) -> Result<Config, ConfigError> {
        check_label("--name", &self.name)?;
        let instance = match self.instance {
            Some(instance) => {
                check_label("--instance", &instance)?;
                instance
            }
            None => format!("{}-{}", self.name, std::process::id()),
        };
        check_sidecar(&self.sidecar)?;
        let behaviour = Behaviour {
            latency_ms: self.latency_ms,
            jitter_ms: self.jitter_ms,
            error_rate: self.error_rate,
            error_status: self.error_status,
            calls: parse_calls(&self.calls).map_err(|e| ConfigError(e.for_flag()))?,
        };
        behaviour
            .validate()
            .map_err(|e| ConfigError(e.for_flag()))?;
        Ok(Config {
            service: self.name,
            instance,
            sidecar: self.sidecar,
            behaviour,
            seed: self.seed.unwrap_or_else(random_seed),
        })
    }
}

fn check_label(flag: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError(format!(
            "{flag} must be a non-empty name without spaces, got {value:?}"
        )));
    }
    Ok(())
}

fn check_sidecar(sidecar: &str) -> Result<(), ConfigError> {
    match sidecar.parse::<Authority>() {
        Ok(a) if a.port_u16().is_some_and(|p| p != 0) && !a.as_str().contains('@') => Ok(()),
        _ => Err(ConfigError(format!(
            "--sidecar must be host:port (e.g. 127.0.0.1:15001), got {sidecar:?}"
        ))),
    }
}

/// A random seed without an OS-randomness dependency: std's `RandomState` is keyed randomly per
/// process (and per instance), which is plenty for picking a seed.
fn random_seed() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let argv = ["mesh-service", "--name", "b"].iter().chain(extra);
        Args::try_parse_from(argv)
            .expect("flags parse")
            .into_config()
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).expect("defaults are valid");
        assert_eq!(c.service, "b", "name");
        assert_eq!(
            c.instance,
            format!("b-{}", std::process::id()),
            "instance defaults to name-pid"
        );
        assert_eq!(c.sidecar, "127.0.0.1:15001", "sidecar default");
        assert_eq!(c.behaviour, Behaviour::default(), "behaviour defaults");
    }

    #[test]
    fn full_flags() {
        let c = parse(&[
            "--instance",
            "b-1",
            "--sidecar",
            "localhost:15001",
            "--calls",
            "c,d",
            "--latency-ms",
            "20",
            "--jitter-ms",
            "5",
            "--error-rate",
            "0.25",
            "--error-status",
            "500",
            "--seed",
            "7",
        ])
        .expect("valid flags");
        assert_eq!(c.instance, "b-1", "instance");
        assert_eq!(c.seed, 7, "seed");
        assert_eq!(
            c.behaviour,
            Behaviour {
                latency_ms: 20,
                jitter_ms: 5,
                error_rate: 0.25,
                error_status: 500,
                calls: vec!["c".into(), "d".into()],
            },
            "behaviour from flags"
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cases: [(&[&str], &str); 7] = [
            (
                &["--error-rate", "1.5"],
                "--error-rate must be between 0 and 1, got 1.5",
            ),
            (
                &["--error-status", "302"],
                "--error-status must be between 400 and 599, got 302",
            ),
            (&["--calls", "c,,d"], "--calls entries must be"),
            (&["--jitter-ms", "3600001"], "--jitter-ms must be at most"),
            (&["--sidecar", "15001"], "--sidecar must be host:port"),
            (&["--sidecar", "http://x:1"], "--sidecar must be host:port"),
            (&["--instance", ""], "--instance must be a non-empty name"),
        ];
        for (flags, want) in cases {
            let err = parse(flags).expect_err(want);
            assert!(
                err.0.starts_with(want),
                "{flags:?} gave {err:?}, expected it to start with {want:?}"
            );
        }
    }

    #[test]
    fn random_seeds_differ() {
        assert_ne!(
            random_seed(),
            random_seed(),
            "two random seeds should not collide"
        );
    }
}
