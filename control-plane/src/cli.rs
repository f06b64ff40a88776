//! The command-line flags (durations in the syntax every binary shares: `mesh_proto::duration`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Serves meshlab's routing tables with ETags and reloads them when their files change.
#[derive(Debug, Clone, Parser)]
#[command(name = "control-plane", version)]
pub struct Cli {
    /// Directory of routing tables: one `DIR/<env>.toml` or `DIR/<env>/table.toml` per
    /// environment (e.g. `k8s/overlays`).
    #[arg(long, env = "MESH_TABLES", value_name = "DIR")]
    pub tables: PathBuf,

    /// Address to serve on; port 0 picks a free port (printed on the `LISTENING` line).
    #[arg(
        long,
        env = "MESH_CP_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8500"
    )]
    pub listen: SocketAddr,

    /// How often to look for changed, new or removed table files, e.g. `500ms`, `2s`, `1m`.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = mesh_proto::duration::parse_positive)]
    pub watch_interval: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_interval_takes_the_shared_duration_syntax() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            (" 200ms ", Duration::from_millis(200)),
        ] {
            let cli =
                Cli::try_parse_from(["control-plane", "--tables", "t", "--watch-interval", text])
                    .unwrap_or_else(|e| panic!("{text:?} parses: {e}"));
            assert_eq!(cli.watch_interval, want, "--watch-interval {text:?}");
        }
        for text in ["", "5", "ms", "-1s", "0s", "3x"] {
            // `--flag=value`, so that `-1s` is a value and not a flag.
            let flag = format!("--watch-interval={text}");
            let err = Cli::try_parse_from(["control-plane", "--tables", "t", &flag])
                .expect_err(text)
                .to_string();
            assert!(
                err.contains("expected a number and a unit") || err.contains("greater than zero"),
                "the error for {text:?} should explain the format, got {err:?}"
            );
        }
    }

    #[test]
    fn flags_take_defaults_and_env_style_values() {
        let cli = Cli::try_parse_from(["control-plane", "--tables", "k8s/overlays"])
            .expect("--tables alone is enough");
        assert_eq!(cli.tables, PathBuf::from("k8s/overlays"), "tables dir");
        assert_eq!(
            cli.listen,
            "127.0.0.1:8500".parse().unwrap(),
            "default listen address"
        );
        assert_eq!(
            cli.watch_interval,
            Duration::from_secs(1),
            "default watch interval"
        );
        let cli = Cli::try_parse_from([
            "control-plane",
            "--tables",
            "t",
            "--listen",
            "127.0.0.1:0",
            "--watch-interval",
            "200ms",
        ])
        .expect("every flag given");
        assert_eq!(cli.listen.port(), 0, "port 0 is allowed");
        assert_eq!(
            cli.watch_interval,
            Duration::from_millis(200),
            "watch interval flag"
        );
    }
}
