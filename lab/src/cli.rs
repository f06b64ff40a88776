//! The command line: `meshlab up ...`, and the duration syntax its flags share with the other
//! binaries (`500ms`, `20s`, `2m`, `1h`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// meshlab: run the service mesh on loopback and drive load through it.
#[derive(Debug, Parser)]
#[command(name = "meshlab", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the control plane, every service replica with its sidecar and a client sidecar,
    /// drive load at the entry service, then stop everything and print a summary.
    Up(UpArgs),
}

/// Flags of `meshlab up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Environment: the table is `<tables>/<env>/table.toml` or `<tables>/<env>.toml`.
    #[arg(long)]
    pub env: String,

    /// Folder of the routing tables.
    #[arg(long, default_value = "k8s/overlays")]
    pub tables: PathBuf,

    /// Run this many replicas of every service instead of the table's `[lab.services.*]` counts.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub replicas: Option<u32>,

    /// How long to drive load (e.g. `20s`, `2m`); without it, until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Requests per second sent to the entry service (open loop: paced by the clock, not by
    /// responses).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rps: u32,

    /// Most requests in flight at once; a request due while this many are in flight is not sent
    /// and counts as failed with reason `overload-local`.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Timeout of one load request, end to end.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Print the summary as one JSON object on stdout (the start-up table then goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Where `control-plane`, `sidecar` and `mesh-service` are; default: meshlab's own folder.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,

    /// How often every sidecar polls the control plane.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Deadline for the whole start-up: every child listening, the lab's table propagated to
    /// every sidecar, every sidecar ready and every app healthy.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub startup_timeout: Duration,

    /// Seed from which each replica's `--seed` is derived (same seed, same fault sequence).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Validate the table and print the commands the lab would run, without starting anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Also run a Prometheus server (Debian's `prometheus`, installed by `make setup`) on a free
    /// loopback port, scraping every process of the lab through `<run dir>/prometheus.yml`
    /// (written on every run); its URL is in the start-up table and the CHILDREN line.
    #[arg(long)]
    pub prometheus: bool,

    /// Trace this fraction of the load's requests (`parentbased_traceidratio`; `1` traces every
    /// request). Spans go to the lab's own OTLP/HTTP receiver; the summary shows the slowest
    /// trace. The default keeps a debug build on two cores within the dev run's latency: every
    /// request traced at 100 rps is about 3000 spans/s across the lab's processes.
    #[arg(long, default_value_t = 0.1, value_parser = parse_ratio)]
    pub trace_sample: f64,
}

/// A sampling ratio between 0 and 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1, e.g. 0.01")),
    }
}

/// Parses `500ms`, `20s`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 20s, 2m or 1h"))?;
    let secs = match unit.trim() {
        "ms" => value / 1_000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3_600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || secs > 365.0 * 86_400.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration for another binary's flag: whole seconds as `Ns`, anything else as `Nms`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("20s", Duration::from_secs(20)),
            ("1.5s", Duration::from_millis(1_500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3_600)),
            ("7", Duration::from_secs(7)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "parse_duration({text:?})");
        }
    }

    #[test]
    fn bad_durations_are_rejected_with_a_reason() {
        for text in ["", "s", "10x", "-1s", "1e99h"] {
            let err = parse_duration(text).expect_err(text);
            assert!(!err.is_empty(), "the error for {text:?} says something");
        }
    }

    #[test]
    fn durations_format_for_other_binaries() {
        assert_eq!(
            format_duration(Duration::from_secs(1)),
            "1s",
            "whole seconds"
        );
        assert_eq!(
            format_duration(Duration::from_millis(200)),
            "200ms",
            "sub-second"
        );
        assert_eq!(
            format_duration(Duration::from_millis(1_500)),
            "1500ms",
            "fractional seconds go to ms"
        );
    }

    #[test]
    fn up_parses_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "meshlab",
            "up",
            "--env",
            "dev",
            "--duration",
            "5s",
            "--rps",
            "100",
            "--json",
        ])
        .expect("documented flags parse");
        let Command::Up(a) = cli.command;
        assert_eq!(a.env, "dev", "env");
        assert_eq!(
            a.tables,
            PathBuf::from("k8s/overlays"),
            "default tables dir"
        );
        assert_eq!(a.duration, Some(Duration::from_secs(5)), "duration");
        assert_eq!(a.rps, 100, "rps");
        assert_eq!(a.concurrency, 64, "default concurrency");
        assert!(a.json, "json");
        assert_eq!(a.replicas, None, "no replica override by default");
        assert!(!a.prometheus, "no Prometheus server by default");
    }

    #[test]
    fn trace_sample_is_a_ratio() {
        let cli = Cli::try_parse_from(["meshlab", "up", "--env", "dev", "--trace-sample", "0.1"])
            .expect("a ratio parses");
        let Command::Up(a) = cli.command;
        assert_eq!(a.trace_sample, 0.1);
        for bad in ["1.5", "-0.1", "x"] {
            let r = Cli::try_parse_from(["meshlab", "up", "--env", "dev", "--trace-sample", bad]);
            assert!(r.is_err(), "--trace-sample {bad} must be refused");
        }
    }

    #[test]
    fn zero_replicas_or_rps_are_refused() {
        for flag in [["--replicas", "0"], ["--rps", "0"]] {
            let r = Cli::try_parse_from(["meshlab", "up", "--env", "dev", flag[0], flag[1]]);
            assert!(r.is_err(), "{} 0 must be refused", flag[0]);
        }
    }
}
