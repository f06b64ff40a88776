//! The command line: `meshlab up ...`. Durations take the syntax every binary's flags share
//! (`500ms`, `1.5s`, `20s`, `2m`, `1h`: `mesh_proto::duration`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mesh_proto::duration;

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
    #[arg(long, value_parser = duration::parse)]
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
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    pub request_timeout: Duration,

    /// Print the summary as one JSON object on stdout (the start-up table then goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Where `control-plane`, `sidecar` and `mesh-service` are; default: meshlab's own folder.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,

    /// How often every sidecar polls the control plane.
    #[arg(long, default_value = "1s", value_parser = duration::parse_positive)]
    pub poll_interval: Duration,

    /// Deadline for the whole start-up: every child listening, the lab's table propagated to
    /// every sidecar, every sidecar ready and every app healthy.
    #[arg(long, default_value = "60s", value_parser = duration::parse)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_flags_take_the_shared_syntax() {
        let cli = Cli::try_parse_from([
            "meshlab",
            "up",
            "--env",
            "dev",
            "--duration",
            "1.5s",
            "--poll-interval",
            "500ms",
            "--startup-timeout",
            "2m",
        ])
        .expect("durations in ms, s and m parse");
        let Command::Up(a) = cli.command;
        assert_eq!(a.duration, Some(Duration::from_millis(1_500)), "--duration");
        assert_eq!(
            a.poll_interval,
            Duration::from_millis(500),
            "--poll-interval"
        );
        assert_eq!(
            a.startup_timeout,
            Duration::from_secs(120),
            "--startup-timeout"
        );
        for (flag, bad, why) in [
            ("--duration", "7", "has no unit"),
            ("--request-timeout", "10x", "unknown unit"),
            ("--poll-interval", "0s", "greater than zero"),
        ] {
            let err = Cli::try_parse_from(["meshlab", "up", "--env", "dev", flag, bad])
                .expect_err(bad)
                .to_string();
            assert!(
                err.contains(&format!("invalid duration {bad:?}")) && err.contains(why),
                "{flag} {bad} is refused with the reason: {err}"
            );
        }
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
