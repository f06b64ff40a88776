//! Prometheus for the lab: the scrape config every run writes, and `--prometheus`, which runs
//! a real Prometheus server (Debian's `prometheus`, installed by `make setup`) against it.
//!
//! `<run_dir>/prometheus.yml` scrapes every process the lab started, every second, at
//! `/metrics`, one job per kind:
//! - `sidecar`: every replica's sidecar and the client sidecar, at their admin ports, labelled
//!   `service` and `replica` (`lab-client` for the client). `honor_labels` keeps a sidecar's
//!   own `service` label (the local service: the same value) instead of renaming it to
//!   `exported_service`;
//! - `mesh-service`: every app, at its app port, labelled `service` and `replica`. The app's
//!   `mesh_service_downstream_calls_total` names the *called* service in its own `service`
//!   label; the target's `service` wins and the called one is renamed `downstream`;
//! - `control-plane`: the control plane, labelled `service: control-plane`.
//!
//! Prometheus' own `instance` label stays the scraped address, as in the start-up table.
//!
//! With `--prometheus` the server is one more child of the [`Supervisor`] (parent-death signal,
//! SIGTERM then SIGKILL on stop, its log in `logs/prometheus.log`), its data in
//! `<run_dir>/prometheus-data` (kept after the run), on a free loopback port. Start-up waits
//! until its `/-/ready` answers 200 and then until it has scraped every target once (about
//! 6 s: Prometheus hands targets to its scrapers every 5 s), so the load is observed from its
//! first request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::children::{describe_status, ChildEntry, ChildError, Supervisor};
use crate::mesh::{error_chain, Mesh, RunDir};
use crate::plan::CLIENT_SERVICE;

/// The program `--prometheus` runs, looked up on `PATH`.
pub const PROGRAM: &str = "prometheus";

/// Scrape (and rule evaluation) interval: lab speed, so a 5 s `rate()` has samples.
pub const SCRAPE_INTERVAL: &str = "1s";

/// Name of the child in the `CHILDREN` line and of its log (`logs/prometheus.log`).
pub const CHILD_NAME: &str = "prometheus";

/// Times Prometheus is started again when the free port picked for it was taken meanwhile.
const ADDR_IN_USE_ATTEMPTS: u32 = 3;

/// How often `/-/ready` is polled.
const POLL: Duration = Duration::from_millis(50);

/// Why the scrape config or the Prometheus server failed.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error(
        "--prometheus needs Debian's `prometheus` server, and no `prometheus` is on PATH: run \
         `make setup` (it installs it)"
    )]
    NotInstalled,
    #[error("cannot write the Prometheus scrape config {}: {source}", path.display())]
    Config {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot pick a free port for Prometheus: {0}")]
    Port(std::io::Error),
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error("prometheus exited during start-up ({status}); its log {}:\n{tail}", log.display())]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "prometheus was not ready within {timeout:?} ({last}); its log {}:\n{tail}",
        log.display()
    )]
    NotReady {
        timeout: Duration,
        last: String,
        log: PathBuf,
        tail: String,
    },
}

/// The scrape jobs, one per kind of process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    Sidecar,
    MeshService,
    ControlPlane,
}

impl Job {
    pub const ALL: [Job; 3] = [Job::Sidecar, Job::MeshService, Job::ControlPlane];

    /// The `job` label.
    pub fn name(self) -> &'static str {
        match self {
            Job::Sidecar => "sidecar",
            Job::MeshService => "mesh-service",
            Job::ControlPlane => "control-plane",
        }
    }
}

/// One process to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub job: Job,
    /// Where its `/metrics` is.
    pub addr: SocketAddr,
    /// The `service` label.
    pub service: String,
    /// The `replica` label (`b-1`), if any.
    pub replica: Option<String>,
}

/// Every process of a running mesh, as scrape targets.
pub fn targets(mesh: &Mesh) -> Vec<Target> {
    let mut t = Vec::new();
    for r in &mesh.replicas {
        t.push(Target {
            job: Job::Sidecar,
            addr: r.sidecar.admin,
            service: r.plan.service.clone(),
            replica: Some(r.plan.instance.clone()),
        });
    }
    t.push(Target {
        job: Job::Sidecar,
        addr: mesh.client.admin,
        service: CLIENT_SERVICE.into(),
        replica: Some(CLIENT_SERVICE.into()),
    });
    for r in &mesh.replicas {
        t.push(Target {
            job: Job::MeshService,
            addr: r.app,
            service: r.plan.service.clone(),
            replica: Some(r.plan.instance.clone()),
        });
    }
    t.push(Target {
        job: Job::ControlPlane,
        addr: mesh.control_plane,
        service: "control-plane".into(),
        replica: None,
    });
    t
}

/// A YAML double-quoted scalar (JSON's string syntax is a subset of YAML's).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The scrape config (YAML) for `targets`; `run_dir` only goes into the header comment.
pub fn render_config(targets: &[Target], run_dir: &Path) -> String {
    let mut y = format!(
        "# Written by meshlab for the run in {dir}: every process it started, scraped every \
         {SCRAPE_INTERVAL}.\n\
         # meshlab up --prometheus runs: prometheus --config.file={dir}/prometheus.yml \
         --storage.tsdb.path={dir}/prometheus-data\n\
         global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: {SCRAPE_INTERVAL}\n  \
         evaluation_interval: {SCRAPE_INTERVAL}\n\
         scrape_configs:\n",
        dir = run_dir.display()
    );
    for job in Job::ALL {
        let of_job: Vec<&Target> = targets.iter().filter(|t| t.job == job).collect();
        if of_job.is_empty() {
            continue;
        }
        y.push_str(&format!(
            "  - job_name: {}\n    metrics_path: /metrics\n    scheme: http\n",
            quote(job.name())
        ));
        match job {
            Job::Sidecar => y.push_str(
                "    # A sidecar's own `service` label (its local service) equals the target's: \
                 keep it as it is.\n    honor_labels: true\n",
            ),
            Job::MeshService => y.push_str(
                "    # mesh_service_downstream_calls_total names the called service in its own \
                 `service` label,\n    # which Prometheus renames exported_service (the \
                 target's `service` wins): call it `downstream`.\n    \
                 metric_relabel_configs:\n      - source_labels: [exported_service]\n        \
                 regex: \"(.+)\"\n        target_label: downstream\n      - regex: \
                 exported_service\n        action: labeldrop\n",
            ),
            Job::ControlPlane => {}
        }
        y.push_str("    static_configs:\n");
        for t in of_job {
            y.push_str(&format!(
                "      - targets: [{}]\n        labels: {{service: {}",
                quote(&t.addr.to_string()),
                quote(&t.service)
            ));
            if let Some(r) = &t.replica {
                y.push_str(&format!(", replica: {}", quote(r)));
            }
            y.push_str("}\n");
        }
    }
    y
}

/// `<run_dir>/prometheus.yml`.
pub fn config_path(run_dir: &RunDir) -> PathBuf {
    run_dir.root.join("prometheus.yml")
}

/// `<run_dir>/prometheus-data`.
pub fn data_path(run_dir: &RunDir) -> PathBuf {
    run_dir.root.join("prometheus-data")
}

/// Writes `<run_dir>/prometheus.yml` for the running mesh (atomically); returns its path.
pub fn write_config(run_dir: &RunDir, mesh: &Mesh) -> Result<PathBuf, PrometheusError> {
    let path = config_path(run_dir);
    let tmp = run_dir.root.join(".prometheus.yml.tmp");
    std::fs::write(&tmp, render_config(&targets(mesh), &run_dir.root))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| PrometheusError::Config {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// The `prometheus` program on `PATH`.
pub fn locate() -> Result<PathBuf, PrometheusError> {
    find_in_path(PROGRAM, std::env::var_os("PATH").as_deref()).ok_or(PrometheusError::NotInstalled)
}

/// The first executable file `name` in the folders of `path` (a `PATH` value).
pub fn find_in_path(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The server's arguments (flag names of Prometheus 2.x, Debian's included).
pub fn args(config: &Path, data: &Path, listen: &str) -> Vec<String> {
    vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", data.display()),
        format!("--web.listen-address={listen}"),
        "--web.enable-lifecycle".into(),
    ]
}

/// A running Prometheus server.
pub struct Running {
    pub addr: SocketAddr,
    pub entry: Arc<ChildEntry>,
}

impl Running {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts `program` on the config of `run_dir` as a child of `sup`, on a free loopback port,
/// waits until `/-/ready` answers 200, then until it has scraped each of the `targets` once
/// (at most until `deadline`), so that the whole load is in its data.
///
/// That second wait is most of the start-up time: Prometheus hands discovered targets (static
/// ones included) to its scrapers every 5 s, the first time 5 s after it starts.
pub async fn start(
    program: &Path,
    run_dir: &RunDir,
    sup: &Supervisor,
    targets: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<Running, PrometheusError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a plain HTTP client builds");
    let running = launch(&client, program, run_dir, sup, deadline, timeout).await?;
    wait_scraping(&client, &running, targets, deadline, timeout).await?;
    Ok(running)
}

/// Spawns the server and waits for `/-/ready`.
async fn launch(
    client: &reqwest::Client,
    program: &Path,
    run_dir: &RunDir,
    sup: &Supervisor,
    deadline: Instant,
    timeout: Duration,
) -> Result<Running, PrometheusError> {
    let config = config_path(run_dir);
    let data = data_path(run_dir);
    let log = run_dir.log(CHILD_NAME);
    let mut attempt = 0;
    loop {
        attempt += 1;
        // Prometheus cannot listen on port 0 and say which port it got, so the lab picks a free
        // one (bind, read, release) just before it starts; if another process takes it in that
        // moment, Prometheus exits with "address already in use" and is started again.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(PrometheusError::Port)?;
        let entry = sup
            .spawn(
                CHILD_NAME,
                program,
                &args(&config, &data, &addr.to_string()),
                &log,
            )?
            .entry;
        let url = format!("http://{addr}/-/ready");
        loop {
            if let Some(status) = entry.poll_exit() {
                let tail = entry.log_tail(20);
                if attempt < ADDR_IN_USE_ATTEMPTS
                    && tail.to_ascii_lowercase().contains("address already in use")
                {
                    tracing::warn!("prometheus: port {addr} was taken; starting it again");
                    sup.retire(&entry);
                    break;
                }
                return Err(PrometheusError::Exited {
                    status: describe_status(status),
                    log,
                    tail,
                });
            }
            let last = match client.get(&url).send().await {
                Ok(r) if r.status().as_u16() == 200 => {
                    tracing::info!(
                        url = %format!("http://{addr}"),
                        "prometheus ready; waiting for its first scrape of every target"
                    );
                    return Ok(Running { addr, entry });
                }
                Ok(r) => format!("GET {url} answered {}", r.status().as_u16()),
                Err(e) => format!("GET {url}: {}", error_chain(&e)),
            };
            if Instant::now() >= deadline {
                return Err(PrometheusError::NotReady {
                    timeout,
                    last,
                    tail: entry.log_tail(20),
                    log,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Waits until `/api/v1/targets` lists `expected` active targets, each scraped at least once.
async fn wait_scraping(
    client: &reqwest::Client,
    p: &Running,
    expected: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), PrometheusError> {
    let url = format!("{}/api/v1/targets?state=active", p.url());
    loop {
        if let Some(status) = p.entry.poll_exit() {
            return Err(PrometheusError::Exited {
                status: describe_status(status),
                log: p.entry.log.clone(),
                tail: p.entry.log_tail(20),
            });
        }
        let last = match get_json(client, &url).await {
            Ok(v) => match scrape_progress(&v, expected) {
                Ok(down) => {
                    for d in down {
                        tracing::warn!("prometheus cannot scrape {d}");
                    }
                    tracing::info!(url = %p.url(), targets = expected, "prometheus scraping");
                    return Ok(());
                }
                Err(seen) => seen,
            },
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(PrometheusError::NotReady {
                timeout,
                last,
                log: p.entry.log.clone(),
                tail: p.entry.log_tail(20),
            });
        }
        tokio::time::sleep(POLL * 4).await;
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<serde_json::Value, String> {
    let (status, body) = crate::mesh::get(client, url).await?;
    if status != 200 {
        return Err(format!("GET {url} answered {status}: {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {url}: not JSON ({e})"))
}

/// Reads an `/api/v1/targets` answer: `Ok` with the targets that are down (`job instance:
/// error`) once `expected` targets are listed and each was scraped (health not `unknown`),
/// else what is still missing.
pub fn scrape_progress(v: &serde_json::Value, expected: usize) -> Result<Vec<String>, String> {
    let active = v
        .pointer("/data/activeTargets")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| format!("/api/v1/targets has no data.activeTargets: {v}"))?;
    if active.len() < expected {
        return Err(format!(
            "{} of {expected} targets discovered so far",
            active.len()
        ));
    }
    let field = |t: &serde_json::Value, k: &str| t[k].as_str().unwrap_or("").to_owned();
    let unscraped = active
        .iter()
        .filter(|t| !matches!(t["health"].as_str(), Some("up" | "down")))
        .count();
    if unscraped > 0 {
        return Err(format!("{unscraped} of {expected} targets not scraped yet"));
    }
    Ok(active
        .iter()
        .filter(|t| t["health"] == "down")
        .map(|t| {
            format!(
                "{} {}: {}",
                t["labels"]["job"].as_str().unwrap_or("?"),
                field(t, "scrapeUrl"),
                field(t, "lastError")
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<Target> {
        let t = |job, port: u16, service: &str, replica: Option<&str>| Target {
            job,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            service: service.into(),
            replica: replica.map(String::from),
        };
        vec![
            t(Job::Sidecar, 1001, "a", Some("a-1")),
            t(Job::Sidecar, 1002, "lab-client", Some("lab-client")),
            t(Job::MeshService, 2001, "a", Some("a-1")),
            t(Job::ControlPlane, 3001, "control-plane", None),
        ]
    }

    #[test]
    fn config_has_one_job_per_kind_with_labelled_targets() {
        let y = render_config(&fixture(), Path::new("/tmp/meshlab-dev-1"));
        for want in [
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
            "  - job_name: \"sidecar\"\n    metrics_path: /metrics\n",
            "      - targets: [\"127.0.0.1:1001\"]\n        labels: {service: \"a\", replica: \"a-1\"}\n",
            "      - targets: [\"127.0.0.1:1002\"]\n        labels: {service: \"lab-client\", replica: \"lab-client\"}\n",
            "  - job_name: \"mesh-service\"\n",
            "      - targets: [\"127.0.0.1:2001\"]\n",
            "  - job_name: \"control-plane\"\n",
            "      - targets: [\"127.0.0.1:3001\"]\n        labels: {service: \"control-plane\"}\n",
            "--storage.tsdb.path=/tmp/meshlab-dev-1/prometheus-data",
        ] {
            assert!(y.contains(want), "the config has {want:?}:\n{y}");
        }
        assert_eq!(y.matches("job_name").count(), 3, "one job per kind:\n{y}");
        assert_eq!(
            y.matches("honor_labels: true").count(),
            1,
            "only the sidecar job honours the target's labels:\n{y}"
        );
        assert!(
            !y.contains('\t'),
            "YAML indents with spaces, never tabs:\n{y}"
        );
    }

    #[test]
    fn jobs_without_targets_are_left_out() {
        let y = render_config(&fixture()[..2], Path::new("/tmp/x"));
        assert_eq!(
            y.matches("job_name").count(),
            1,
            "only the sidecar job:\n{y}"
        );
    }

    #[test]
    fn labels_are_quoted() {
        let t = [Target {
            job: Job::Sidecar,
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            service: "we\"ird: {x}".into(),
            replica: None,
        }];
        let y = render_config(&t, Path::new("/tmp/x"));
        assert!(
            y.contains(r#"labels: {service: "we\"ird: {x}"}"#),
            "a label value is one quoted scalar:\n{y}"
        );
    }

    #[test]
    fn server_flags() {
        let a = args(
            Path::new("/r/prometheus.yml"),
            Path::new("/r/prometheus-data"),
            "127.0.0.1:9999",
        );
        assert_eq!(
            a,
            [
                "--config.file=/r/prometheus.yml",
                "--storage.tsdb.path=/r/prometheus-data",
                "--web.listen-address=127.0.0.1:9999",
                "--web.enable-lifecycle",
            ],
            "prometheus arguments"
        );
    }

    #[test]
    fn program_is_found_on_path_only_when_executable() {
        let dir = std::env::temp_dir().join(format!("meshlab-prom-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a folder");
        let exe = dir.join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").expect("write");
        let path = std::env::join_paths([Path::new("/nonexistent"), &dir]).expect("join");
        let mode = |m| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(m)).expect("chmod");
        };
        mode(0o644);
        assert_eq!(
            find_in_path("tool", Some(&path)),
            None,
            "a file that is not executable is not the program"
        );
        mode(0o755);
        assert_eq!(
            find_in_path("tool", Some(&path)),
            Some(exe.clone()),
            "an executable file in a PATH folder is found"
        );
        assert_eq!(find_in_path("tool", None), None, "no PATH, no program");
        assert_eq!(
            find_in_path("absent", Some(&path)),
            None,
            "a name in no folder is not found"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn scrape_progress_waits_for_every_target_and_names_the_down_ones() {
        let answer = |healths: &[&str]| {
            let active: Vec<serde_json::Value> = healths
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    serde_json::json!({
                        "labels": {"job": "sidecar"},
                        "scrapeUrl": format!("http://127.0.0.1:{i}/metrics"),
                        "lastError": if *h == "down" { "connection refused" } else { "" },
                        "health": h,
                    })
                })
                .collect();
            serde_json::json!({"status": "success", "data": {"activeTargets": active}})
        };
        let e = scrape_progress(&answer(&[]), 2).expect_err("none discovered");
        assert!(e.contains("0 of 2"), "says how many are listed: {e}");
        let e = scrape_progress(&answer(&["up", "unknown"]), 2).expect_err("one unscraped");
        assert!(e.contains("1 of 2"), "says how many wait for a scrape: {e}");
        assert_eq!(
            scrape_progress(&answer(&["up", "up"]), 2),
            Ok(vec![]),
            "all scraped and up"
        );
        assert_eq!(
            scrape_progress(&answer(&["up", "down"]), 2),
            Ok(vec![
                "sidecar http://127.0.0.1:1/metrics: connection refused".to_owned()
            ]),
            "a target that is down is scraped (it counts) and named"
        );
        assert!(
            scrape_progress(&serde_json::json!({"status": "error"}), 1).is_err(),
            "an answer without targets is no progress"
        );
    }

    #[test]
    fn not_installed_says_to_run_make_setup() {
        let msg = PrometheusError::NotInstalled.to_string();
        assert!(
            msg.contains("make setup"),
            "the error says what to do: {msg}"
        );
    }
}
