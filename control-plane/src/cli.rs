//! The command-line flags, and the parser of `--watch-interval` durations.

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
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub watch_interval: Duration,
}

/// Parses a positive whole number followed by a unit: `ms`, `s`, `m` or `h` (`500ms`, `2s`, `1m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let expected = "expected a whole number and a unit (ms, s, m or h), e.g. 500ms, 2s, 1m";
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: {expected}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "" => return Err(format!("{s:?} has no unit: {expected}")),
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; {expected}")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: the interval must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_each_unit_parse() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            (" 200ms ", Duration::from_millis(200)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "parsing {text:?}");
        }
    }

    #[test]
    fn bad_durations_say_what_is_expected() {
        for text in ["", "5", "ms", "1.5s", "-1s", "3d", "0s", "10 s"] {
            let err = parse_duration(text).expect_err(text);
            assert!(
                err.contains("unit") || err.contains("greater than zero"),
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
