//! What the lab runs, as pure data: the replicas of each service with their behaviour and
//! seeds, and the argument lists of the three binaries (docs/CONTRACTS.md). Nothing here
//! starts a process, so `--dry-run` and the unit tests use it as it is.

use std::path::Path;
use std::time::Duration;

use mesh_table::Lab;

use mesh_proto::duration;

/// Name the client sidecar gives itself; the load enters the mesh through its outbound port.
pub const CLIENT_SERVICE: &str = "lab-client";

/// `--app` of the client sidecar, which fronts no app: the discard port, never called because
/// nothing routes to `lab-client`.
pub const CLIENT_APP: &str = "127.0.0.1:9";

/// How often the lab's control plane checks its table file for changes.
pub const CP_WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// One replica of a demo service.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaPlan {
    pub service: String,
    /// 1-based within its service.
    pub index: u32,
    /// `<service>-<index>`, the app's `--instance`.
    pub instance: String,
    pub calls: Vec<String>,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub error_rate: f64,
    pub error_status: u16,
    pub seed: u64,
}

/// Every replica of every `[lab.services]` entry, in service-name order, with
/// `replicas_override` (from `--replicas`) replacing each service's count when given.
pub fn replicas(lab: &Lab, replicas_override: Option<u32>, lab_seed: u64) -> Vec<ReplicaPlan> {
    let mut out = Vec::new();
    for (name, s) in &lab.services {
        let count = replicas_override.unwrap_or(s.replicas);
        for index in 1..=count {
            let instance = format!("{name}-{index}");
            out.push(ReplicaPlan {
                seed: replica_seed(lab_seed, &instance),
                service: name.clone(),
                index,
                instance,
                calls: s.calls.clone(),
                latency_ms: s.latency_ms,
                jitter_ms: s.jitter_ms,
                error_rate: s.error_rate,
                error_status: s.error_status,
            });
        }
    }
    out
}

/// A replica's seed: the lab seed mixed with the instance name (FNV-1a, then splitmix64), so
/// replicas differ from each other and a given `--seed` replays the same run.
pub fn replica_seed(lab_seed: u64, instance: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = (lab_seed ^ h).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `mesh-service` arguments for a replica whose sidecar's outbound listener is `sidecar`.
pub fn service_args(r: &ReplicaPlan, sidecar: &str) -> Vec<String> {
    let mut a = vec![
        "--name".into(),
        r.service.clone(),
        "--instance".into(),
        r.instance.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--sidecar".into(),
        sidecar.into(),
    ];
    if !r.calls.is_empty() {
        a.extend(["--calls".into(), r.calls.join(",")]);
    }
    a.extend([
        "--latency-ms".into(),
        r.latency_ms.to_string(),
        "--jitter-ms".into(),
        r.jitter_ms.to_string(),
        "--error-rate".into(),
        r.error_rate.to_string(),
        "--error-status".into(),
        r.error_status.to_string(),
        "--seed".into(),
        r.seed.to_string(),
    ]);
    a
}

/// `sidecar` arguments: control-plane mode, loopback listeners, inbound and admin on port 0.
pub fn sidecar_args(
    service: &str,
    control_plane_url: &str,
    env: &str,
    outbound: &str,
    app: &str,
    poll_interval: Duration,
) -> Vec<String> {
    [
        "--service",
        service,
        "--control-plane",
        control_plane_url,
        "--env",
        env,
        "--outbound",
        outbound,
        "--inbound",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--app",
        app,
        "--poll-interval",
        &duration::format(poll_interval),
    ]
    .map(String::from)
    .to_vec()
}

/// `control-plane` arguments serving the lab's own tables folder.
pub fn control_plane_args(tables_dir: &Path) -> Vec<String> {
    vec![
        "--tables".into(),
        tables_dir.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--watch-interval".into(),
        duration::format(CP_WATCH_INTERVAL),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_table::Table;

    const TABLE: &str = r#"
version = 1
[services.a]
endpoints = ["x:1"]
[services.b]
endpoints = ["x:1"]
[lab]
entry = "a"
[lab.services.a]
calls = ["b"]
latency_ms = 3
[lab.services.b]
replicas = 2
error_rate = 0.25
error_status = 500
"#;

    fn lab() -> Lab {
        Table::from_toml_str(TABLE)
            .expect("fixture validates")
            .lab
            .expect("fixture has [lab]")
    }

    #[test]
    fn replicas_follow_the_table_or_the_override() {
        let names: Vec<String> = replicas(&lab(), None, 1)
            .into_iter()
            .map(|r| r.instance)
            .collect();
        assert_eq!(names, ["a-1", "b-1", "b-2"], "the table's replica counts");
        let names: Vec<String> = replicas(&lab(), Some(3), 1)
            .into_iter()
            .map(|r| r.instance)
            .collect();
        assert_eq!(
            names,
            ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"],
            "--replicas 3 applies to every service"
        );
    }

    #[test]
    fn seeds_differ_per_replica_and_repeat_per_lab_seed() {
        let one = replicas(&lab(), None, 1);
        let again = replicas(&lab(), None, 1);
        let other = replicas(&lab(), None, 2);
        assert_eq!(one, again, "the same lab seed gives the same replicas");
        assert_ne!(one[1].seed, one[2].seed, "b-1 and b-2 get different seeds");
        assert_ne!(
            one[0].seed, other[0].seed,
            "another lab seed changes the seeds"
        );
    }

    #[test]
    fn service_args_carry_the_behaviour() {
        let r = &replicas(&lab(), None, 1)[0];
        let a = service_args(r, "127.0.0.1:5000").join(" ");
        let want = format!(
            "--name a --instance a-1 --listen 127.0.0.1:0 --sidecar 127.0.0.1:5000 --calls b \
             --latency-ms 3 --jitter-ms 0 --error-rate 0 --error-status 503 --seed {}",
            r.seed
        );
        assert_eq!(a, want, "mesh-service arguments of a-1");
        let b = service_args(&replicas(&lab(), None, 1)[1], "127.0.0.1:5001").join(" ");
        assert!(
            !b.contains("--calls"),
            "a service that calls nobody gets no --calls: {b}"
        );
        assert!(
            b.contains("--error-rate 0.25 --error-status 500"),
            "error settings are passed: {b}"
        );
    }

    #[test]
    fn sidecar_and_control_plane_args() {
        let a = sidecar_args(
            "b",
            "http://127.0.0.1:8500",
            "dev",
            "127.0.0.1:5001",
            "127.0.0.1:6001",
            Duration::from_millis(500),
        )
        .join(" ");
        assert_eq!(
            a,
            "--service b --control-plane http://127.0.0.1:8500 --env dev --outbound 127.0.0.1:5001 \
             --inbound 127.0.0.1:0 --admin 127.0.0.1:0 --app 127.0.0.1:6001 --poll-interval 500ms",
            "sidecar arguments"
        );
        let c = control_plane_args(Path::new("/tmp/run/tables")).join(" ");
        assert_eq!(
            c, "--tables /tmp/run/tables --listen 127.0.0.1:0 --watch-interval 200ms",
            "control-plane arguments"
        );
    }
}
