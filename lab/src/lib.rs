//! meshlab's local lab: `meshlab up --env dev` runs one environment's mesh on loopback (the
//! control plane, every replica of every demo service with its sidecar, and a client sidecar),
//! drives open-loop load at the entry service through the client sidecar, prints a live line
//! each second and a summary at the end, and leaves no process behind.
//!
//! The table is the environment's own (`k8s/overlays/<env>/table.toml`, or `<env>.toml`),
//! with its `[lab]` section saying which services run, how many replicas, what they call and
//! how they misbehave. The lab serves a copy whose endpoints are its sidecars' loopback inbound
//! listeners and whose version is one higher; everything else is the operator's policy.
//!
//! # What meshlab prints (a contract, like docs/CONTRACTS.md's `LISTENING` line)
//! - stdout, once the mesh is ready and before load starts, exactly one line
//!   `CHILDREN {"pids":[...],"children":[{"name":"sidecar b-1","pid":123},...],"run_dir":"..."}`
//!   naming every child process it runs (names: `control-plane`, `mesh-service <instance>`,
//!   `sidecar <instance>`, `sidecar lab-client`, and `prometheus` with `--prometheus`), plus
//!   `"prometheus_config"` (the scrape config's path) and, with `--prometheus`,
//!   `"prometheus":"http://127.0.0.1:<port>"`;
//! - stdout, at the end: the summary; with `--json`, one JSON object on one line (at least
//!   `env`, `duration_s`, `rps`, `requests`, `ok`, `failed`, `errors`, `p50_ms`, `p90_ms`,
//!   `p99_ms`, `max_ms`, `crashed`, `traces`), which is then the last line of stdout:
//!   `| tail -n1 | jq`; without `--json` the text summary ends with the slowest trace's
//!   waterfall;
//! - the start-up table (service, replica, app, outbound, inbound, admin; control plane URL;
//!   run dir; the Prometheus scrape config, and the Prometheus URL with `--prometheus`) on
//!   stdout, or on stderr with `--json`;
//! - stderr: logs, and one live line per second: `t=5s rps=200 ok=100.0% p50=2.1ms p99=8.3ms`.
//!
//! Exit status: 0 when the run completed (failed requests and crashed replicas included; they
//! are in the summary), 1 when the table is unusable or the mesh did not start (the error
//! names what was not ready and the log file to read), 2 for bad flags.
//!
//! The run dir, `<temp>/meshlab-<env>-<pid>`, keeps one log per child (stdout and stderr)
//! under `logs/`, the served table under `tables/`, the scrape config `prometheus.yml` and,
//! with `--prometheus`, the server's data in `prometheus-data/`; it is left in place for
//! inspection.
//!
//! # Layout
//! - [`cli`]: the flags (durations in `mesh_proto::duration`'s syntax);
//! - [`labtable`]: finding and validating the environment's table, and rewriting it with the
//!   lab's endpoints;
//! - [`plan`]: the replicas, their seeds and the argument lists of the three binaries (pure);
//! - [`children`]: the lab's children on `mesh_proto::supervise` (log file, parent-death
//!   signal, own process group, their `LISTENING` line, stopping), plus the watchdog;
//! - [`mesh`]: the start-up order, port reservation, readiness and table propagation;
//! - [`prometheus`]: the scrape config of every run, and the `--prometheus` server;
//! - [`load`]: the open-loop pacer and the load driver;
//! - [`stats`]: tallies, percentiles, the live line and the summary;
//! - [`traces`]: the lab's OTLP/HTTP receiver, the children's `OTEL_*` variables and the
//!   slowest trace as a waterfall;
//! - [`up`]: `meshlab up` from start to summary.

pub mod children;
pub mod cli;
pub mod labtable;
pub mod load;
pub mod mesh;
pub mod plan;
pub mod prometheus;
pub mod stats;
pub mod traces;
pub mod up;
