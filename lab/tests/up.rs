//! `meshlab up` end to end, with the real `control-plane`, `sidecar` and `mesh-service`.
//!
//! The mesh tests find those binaries next to this test (`cargo build --workspace --bins`
//! first, as `make test` does), or in `$MESHLAB_TEST_BIN_DIR` when set (to try the lab
//! against other builds of them). The table tests need only meshlab itself.
//!
//! Scenarios:
//! - a 5 s dev run at 100 rps completes with at least 99 % success and a JSON summary;
//! - SIGKILL of meshlab takes every child with it (parent-death signal);
//! - SIGTERM ends an endless run: load stops, children stop, the summary says interrupted;
//! - a replica killed mid-run is reported as crashed, and the run still completes;
//! - bad tables are refused with the offending field named, before anything starts;
//! - `--dry-run` prints the plan without starting anything;
//! - `--prometheus` runs a real Prometheus (Debian's, from `make setup`; the test fails without
//!   it) that scrapes every sidecar and answers a PromQL success rate per called service;
//!   without `prometheus` on PATH, `--prometheus` fails before anything starts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mesh_proto::supervise::{Child, Options};

/// A lab runs a dozen processes; on a small machine two at once would skew each other's
/// latencies, so the mesh tests take turns.
static LAB: Mutex<()> = Mutex::new(());

fn lab_turn() -> std::sync::MutexGuard<'static, ()> {
    LAB.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lab/ is inside the repository")
        .to_owned()
}

/// Where the three mesh binaries are.
fn mesh_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MESHLAB_TEST_BIN_DIR") {
        return PathBuf::from(d);
    }
    for name in ["control-plane", "sidecar", "mesh-service"] {
        testkit::bin(name); // asserts it is built, saying how to build it
    }
    testkit::bin("sidecar")
        .parent()
        .expect("binaries live in a folder")
        .to_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshlab-uptest-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch folder");
    d
}

/// A small table of our own: `front` calls `back`, which has two replicas.
const SMALL_TABLE: &str = r#"
version = 1

[services.front]
endpoints = "dns:front.mesh-dev.svc.cluster.local:15006"
timeouts = { connect_ms = 100, per_try_ms = 1000, request_ms = 2000 }
retries = { attempts = 2, on = ["connect-failure", "reset"], backoff_ms = [10, 100] }

[services.back]
endpoints = "dns:back.mesh-dev.svc.cluster.local:15006"
timeouts = { connect_ms = 100, per_try_ms = 500, request_ms = 1000 }
retries = { attempts = 3, on = ["connect-failure", "reset", "gateway-error"], backoff_ms = [5, 50] }
breaker = { consecutive_failures = 2, base_ejection_ms = 5000, max_ejected_percent = 50 }

[lab]
entry = "front"

[lab.services.front]
calls = ["back"]
latency_ms = 1

[lab.services.back]
replicas = 2
latency_ms = 1
"#;

/// The tables folder for env `dev`: the repository's, or our small table when the repository
/// has none yet.
fn dev_tables() -> PathBuf {
    let repo = repo_root().join("k8s/overlays");
    if repo.join("dev/table.toml").is_file() {
        return repo;
    }
    small_tables("dev-fallback")
}

fn small_tables(name: &str) -> PathBuf {
    let d = scratch(name);
    std::fs::write(d.join("dev.toml"), SMALL_TABLE).expect("write the small table");
    d
}

/// A running meshlab (`mesh_proto::supervise`): stdout kept line by line, stderr in a file.
struct Meshlab {
    child: Child,
    stderr_path: PathBuf,
}

impl Meshlab {
    fn start(args: &[&str]) -> Meshlab {
        let stderr_path = std::env::temp_dir().join(format!(
            "meshlab-uptest-{}-{}.stderr",
            std::process::id(),
            args.join("_")
                .replace(['/', ' '], "_")
                .chars()
                .take(60)
                .collect::<String>()
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshlab"));
        cmd.args(args);
        let child = Child::spawn(
            "meshlab",
            &mut cmd,
            &Options::new(&stderr_path).keep_stdout(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Meshlab { child, stderr_path }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn stdout(&self) -> Vec<String> {
        self.child.stdout_lines()
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest of it.
    fn line_starting(&mut self, prefix: &str, timeout: Duration) -> String {
        match self
            .child
            .wait_stdout_line(prefix, Instant::now() + timeout)
        {
            Some(line) => line[prefix.len()..].to_owned(),
            None => panic!(
                "no stdout line starting {prefix:?} within {timeout:?}; exit: {:?}\nstdout so \
                 far:\n{}\nstderr:\n{}",
                self.child.try_wait(),
                self.stdout().join("\n"),
                self.stderr()
            ),
        }
    }

    /// Waits for the exit and the rest of stdout.
    fn finish(&mut self, timeout: Duration) -> ExitStatus {
        let status = self.child.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "meshlab did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout().join("\n"),
                self.stderr()
            )
        });
        self.child
            .wait_stdout_closed(Instant::now() + Duration::from_secs(2));
        status
    }

    fn signal(&self, sig: i32) {
        self.child.signal(sig);
    }

    /// The last stdout line, parsed as the JSON summary.
    fn summary(&self) -> serde_json::Value {
        let last = self.stdout().last().cloned().unwrap_or_default();
        serde_json::from_str(&last).unwrap_or_else(|e| {
            panic!(
                "the last stdout line is not the JSON summary ({e}): {last}\nstderr:\n{}",
                self.stderr()
            )
        })
    }

    /// The `CHILDREN` line's JSON.
    fn children(&mut self) -> serde_json::Value {
        let line = self.line_starting("CHILDREN ", Duration::from_secs(90));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the CHILDREN line is not JSON ({e}): {line}"))
    }
}

impl Drop for Meshlab {
    fn drop(&mut self) {
        // meshlab itself is SIGKILLed when `self.child` drops.
        if std::thread::panicking() {
            eprintln!("---- meshlab stderr ----\n{}", self.stderr());
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// Whether `pid` is gone (or a zombie waiting for its new parent to reap it: dead all the same).
fn is_dead(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn pids_of(children: &serde_json::Value) -> Vec<u64> {
    children["pids"]
        .as_array()
        .unwrap_or_else(|| panic!("CHILDREN has a pids list: {children}"))
        .iter()
        .map(|p| p.as_u64().expect("pids are numbers"))
        .collect()
}

fn assert_all_dead(pids: &[u64], within: Duration, after: &str) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|p| !is_dead(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive: Vec<&u64> = pids.iter().filter(|p| !is_dead(**p)).collect();
    assert!(
        alive.is_empty(),
        "children {alive:?} still run {within:?} after {after}"
    );
}

fn cleanup(summary: &serde_json::Value) {
    if let Some(d) = summary["run_dir"].as_str() {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_dev_run_completes_with_99_percent_success() {
    let _turn = lab_turn();
    let bins = mesh_bin_dir();
    let tables = dev_tables();
    let mut m = Meshlab::start(&[
        "up",
        "--env",
        "dev",
        "--tables",
        tables.to_str().expect("utf-8 path"),
        "--duration",
        "5s",
        "--rps",
        "100",
        "--json",
        "--bin-dir",
        bins.to_str().expect("utf-8 path"),
    ]);
    let children = m.children();
    assert!(
        pids_of(&children).len() >= 4,
        "at least a control plane, an app and two sidecars run: {children}"
    );
    let status = m.finish(Duration::from_secs(60));
    assert!(
        status.success(),
        "a completed run exits 0, got {status}\nstderr:\n{}",
        m.stderr()
    );
    let s = m.summary();
    let requests = s["requests"].as_u64().expect("requests is a number");
    let ok = s["ok"].as_u64().expect("ok is a number");
    assert_eq!(requests, 500, "100 rps for 5 s are 500 requests: {s}");
    assert!(
        ok as f64 / requests as f64 >= 0.99,
        "at least 99% succeed in dev: {s}\nstderr:\n{}",
        m.stderr()
    );
    assert_eq!(
        s["failed"].as_u64(),
        Some(requests - ok),
        "failed = requests - ok: {s}"
    );
    for key in ["p50_ms", "p99_ms"] {
        assert!(s[key].as_f64().is_some(), "{key} is a number: {s}");
    }
    assert_eq!(s["env"], "dev", "the summary names the env: {s}");
    // The lab's own receiver got the traces (10% of roots by default) and laid out the slowest.
    let t = &s["traces"];
    assert!(
        t["spans"].as_u64().unwrap_or(0) > 0,
        "spans were received: {t}"
    );
    let rows = t["slowest"]["rows"].as_array().expect("a slowest trace");
    assert_eq!(
        rows[0]["hop"], "outbound",
        "its root is the client sidecar's outbound: {t}"
    );
    assert!(
        rows.iter()
            .any(|r| r["hop"] == "inbound" && r["service"] == "c-sidecar"),
        "the slowest trace reaches c's inbound sidecar: {t}"
    );
    assert_eq!(
        s["crashed"].as_array().map(Vec::len),
        Some(0),
        "nothing crashed: {s}"
    );
    assert_all_dead(
        &pids_of(&children),
        Duration::from_secs(1),
        "meshlab exited",
    );
    cleanup(&s);
}

#[test]
fn killing_meshlab_with_sigkill_leaves_no_child() {
    let _turn = lab_turn();
    let bins = mesh_bin_dir();
    let tables = dev_tables();
    let mut m = Meshlab::start(&[
        "up",
        "--env",
        "dev",
        "--tables",
        tables.to_str().expect("utf-8 path"),
        "--rps",
        "20",
        "--bin-dir",
        bins.to_str().expect("utf-8 path"),
    ]);
    let children = m.children();
    let pids = pids_of(&children);
    assert!(!pids.is_empty(), "meshlab runs children: {children}");
    for p in &pids {
        assert!(!is_dead(*p), "child {p} runs before meshlab is killed");
    }
    m.signal(libc::SIGKILL);
    let status = m.finish(Duration::from_secs(5));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "meshlab died of SIGKILL"
    );
    assert_all_dead(&pids, Duration::from_secs(5), "meshlab was SIGKILLed");
    if let Some(d) = children["run_dir"].as_str() {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn sigterm_ends_an_endless_run_cleanly() {
    let _turn = lab_turn();
    let bins = mesh_bin_dir();
    let tables = dev_tables();
    let mut m = Meshlab::start(&[
        "up",
        "--env",
        "dev",
        "--tables",
        tables.to_str().expect("utf-8 path"),
        "--rps",
        "50",
        "--json",
        "--bin-dir",
        bins.to_str().expect("utf-8 path"),
    ]);
    let children = m.children();
    std::thread::sleep(Duration::from_secs(2));
    m.signal(libc::SIGTERM);
    let status = m.finish(Duration::from_secs(30));
    assert!(
        status.success(),
        "a run ended by SIGTERM completed: exit 0, got {status}\nstderr:\n{}",
        m.stderr()
    );
    let s = m.summary();
    assert_eq!(s["interrupted"], true, "the summary says so: {s}");
    assert!(
        s["requests"].as_u64().unwrap_or(0) >= 50,
        "about 2 s of 50 rps were sent: {s}"
    );
    assert_eq!(
        s["unclean_stop"].as_array().map(Vec::len),
        Some(0),
        "every child exits 0 on SIGTERM within the grace period (docs/CONTRACTS.md): {s}"
    );
    assert_all_dead(
        &pids_of(&children),
        Duration::from_secs(1),
        "meshlab exited",
    );
    cleanup(&s);
}

#[test]
fn a_replica_killed_mid_run_is_reported_and_the_run_completes() {
    let _turn = lab_turn();
    let bins = mesh_bin_dir();
    let tables = small_tables("crash");
    let mut m = Meshlab::start(&[
        "up",
        "--env",
        "dev",
        "--tables",
        tables.to_str().expect("utf-8 path"),
        "--duration",
        "4s",
        "--rps",
        "50",
        "--json",
        "--bin-dir",
        bins.to_str().expect("utf-8 path"),
    ]);
    let children = m.children();
    let victim = children["children"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "mesh-service back-2"))
        .and_then(|c| c["pid"].as_u64())
        .unwrap_or_else(|| panic!("CHILDREN names mesh-service back-2: {children}"));
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) on a grandchild whose pid meshlab just reported.
    unsafe {
        libc::kill(victim as libc::pid_t, libc::SIGKILL);
    }
    let status = m.finish(Duration::from_secs(60));
    assert!(
        status.success(),
        "a run with a crashed replica still completes: exit 0, got {status}\nstderr:\n{}",
        m.stderr()
    );
    let s = m.summary();
    let crashed = s["crashed"].as_array().expect("crashed is a list");
    assert_eq!(crashed.len(), 1, "one crash is reported: {s}");
    assert_eq!(crashed[0]["name"], "mesh-service back-2", "the victim: {s}");
    assert_eq!(
        crashed[0]["pid"].as_u64(),
        Some(victim),
        "with its pid: {s}"
    );
    assert!(
        crashed[0]["log"]
            .as_str()
            .is_some_and(|l| l.ends_with("mesh-service-back-2.log")),
        "and its log file: {s}"
    );
    assert_eq!(s["requests"], 200, "the load went on to the end: {s}");
    std::fs::remove_dir_all(&tables).ok();
    cleanup(&s);
}

#[test]
fn bad_tables_are_refused_with_the_reason() {
    let dir = scratch("bad");
    let bad = SMALL_TABLE
        .replace("[services.back]", "[services.back]\nlb = \"fastest\"")
        .replace("attempts = 3", "attempts = 0");
    std::fs::write(dir.join("bad.toml"), bad).expect("write");
    let nolab = SMALL_TABLE
        .split("[lab]")
        .next()
        .expect("the table has a [lab]");
    std::fs::write(dir.join("nolab.toml"), nolab).expect("write");
    std::fs::write(dir.join("broken.toml"), "version = \n").expect("write");

    let cases: [(&str, &[&str]); 4] = [
        (
            "bad",
            &["services.back.lb", "services.back.retries.attempts"],
        ),
        ("nolab", &["[lab]"]),
        ("broken", &["broken.toml", "TOML"]),
        ("absent", &["absent/table.toml", "absent.toml"]),
    ];
    for (env, words) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_meshlab"))
            .args(["up", "--env", env, "--duration", "1s", "--tables"])
            .arg(&dir)
            .output()
            .expect("run meshlab");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "env {env}: a bad table exits 1\nstderr:\n{stderr}"
        );
        for w in words {
            assert!(
                stderr.contains(w),
                "env {env}: the error names {w:?}:\n{stderr}"
            );
        }
        assert!(
            out.stdout.is_empty(),
            "env {env}: nothing on stdout (nothing started): {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn dry_run_prints_the_plan_without_starting_anything() {
    let tables = small_tables("dry");
    let out = Command::new(env!("CARGO_BIN_EXE_meshlab"))
        .args([
            "up",
            "--env",
            "dev",
            "--dry-run",
            "--replicas",
            "3",
            "--tables",
        ])
        .arg(&tables)
        .output()
        .expect("run meshlab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "a dry run of a good table exits 0: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "control-plane --tables",
        "mesh-service --name front --instance front-3",
        "mesh-service --name back --instance back-3",
        "sidecar --service back",
        "sidecar --service lab-client",
        "GET http://front/",
        "prometheus.yml",
    ] {
        assert!(stdout.contains(want), "the plan has {want:?}:\n{stdout}");
    }
    assert!(
        !stdout.contains("back-4"),
        "--replicas 3 means three per service:\n{stdout}"
    );
    std::fs::remove_dir_all(&tables).ok();
}

/// Polls `f` until it gives a value; after `timeout` panics with `what` and the last thing `f`
/// saw (like `testkit::wait_until`, with the reason).
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last seen: {seen}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Percent-encodes a URL query value (everything but RFC 3986 unreserved characters).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` on Prometheus' HTTP API: the `data` of a `"status":"success"` answer.
fn prom_api(addr: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let r = testkit::get(addr, path).map_err(|e| format!("GET {path}: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET {path} answered {}: {}", r.status, r.body));
    }
    let v: serde_json::Value =
        serde_json::from_str(&r.body).map_err(|e| format!("GET {path}: not JSON ({e})"))?;
    if v["status"] != "success" {
        return Err(format!("GET {path}: {v}"));
    }
    Ok(v["data"].clone())
}

/// The success-rate query of the README: per upstream service, the share of 2xx among the
/// requests sidecars sent to it over the last 5 s.
const SUCCESS_RATE: &str = r#"sum by (upstream) (rate(meshlab_requests_total{direction="outbound",class="2xx"}[5s])) / sum by (upstream) (rate(meshlab_requests_total{direction="outbound"}[5s]))"#;

#[test]
fn prometheus_scrapes_every_sidecar_and_answers_a_success_rate_per_service() {
    if let Err(e) = lab::prometheus::locate() {
        panic!(
            "prometheus is not installed on this machine: run make setup (scripts/setup.sh \
             installs Debian's `prometheus` package; CI runs it). meshlab says: {e}"
        );
    }
    let _turn = lab_turn();
    let bins = mesh_bin_dir();
    let tables = dev_tables();
    // The services the load reaches: the entry and everything called (a, b, c in dev).
    let table = lab::labtable::load(&tables, "dev").expect("the dev table loads");
    let lab = table.lab();
    let mut called: BTreeSet<String> = lab
        .services
        .values()
        .flat_map(|s| s.calls.iter().cloned())
        .collect();
    called.insert(lab.entry.clone());

    let started = Instant::now();
    let mut m = Meshlab::start(&[
        "up",
        "--env",
        "dev",
        "--tables",
        tables.to_str().expect("utf-8 path"),
        "--prometheus",
        "--duration",
        "8s",
        "--rps",
        "50",
        "--json",
        "--bin-dir",
        bins.to_str().expect("utf-8 path"),
    ]);
    let children = m.children();
    let up_after = started.elapsed();
    let url = children["prometheus"].as_str().unwrap_or_else(|| {
        panic!("CHILDREN gives the Prometheus URL as \"prometheus\": {children}")
    });
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the Prometheus URL is http://IP:PORT: {url}"));
    let named = |name: &str| {
        children["children"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == name && c["pid"].is_u64()))
    };
    assert!(
        named("prometheus"),
        "CHILDREN lists the prometheus child with its pid: {children}"
    );
    let config = children["prometheus_config"]
        .as_str()
        .unwrap_or_else(|| panic!("CHILDREN names the scrape config: {children}"));
    let config_text = std::fs::read_to_string(config)
        .unwrap_or_else(|e| panic!("the scrape config {config} can be read: {e}"));
    for job in ["sidecar", "mesh-service", "control-plane"] {
        assert!(
            config_text.contains(&format!("job_name: \"{job}\"")),
            "the scrape config has a {job} job:\n{config_text}"
        );
    }
    // Every sidecar meshlab runs, by replica (`sidecar b-1` -> `b-1`, `sidecar lab-client`).
    let sidecars: BTreeSet<String> = children["children"]
        .as_array()
        .expect("CHILDREN has a children list")
        .iter()
        .filter_map(|c| c["name"].as_str()?.strip_prefix("sidecar "))
        .map(String::from)
        .collect();
    assert!(
        sidecars.len() >= 2,
        "meshlab runs several sidecars: {children}"
    );

    // /api/v1/targets: every sidecar is a target of job "sidecar", scraped and up.
    let targets = wait_for(
        "Prometheus to report every sidecar target up",
        Duration::from_secs(20),
        || {
            let data = prom_api(addr, "/api/v1/targets?state=active")?;
            let active = data["activeTargets"]
                .as_array()
                .ok_or_else(|| format!("no activeTargets: {data}"))?
                .clone();
            let up: BTreeSet<String> = active
                .iter()
                .filter(|t| t["labels"]["job"] == "sidecar" && t["health"] == "up")
                .filter_map(|t| t["labels"]["replica"].as_str().map(String::from))
                .collect();
            if up == sidecars {
                Ok(active)
            } else {
                Err(format!(
                    "sidecar targets up: {up:?}; all targets: {active:?}"
                ))
            }
        },
    );
    let per_job = |job: &str| targets.iter().filter(|t| t["labels"]["job"] == job).count();
    assert_eq!(
        per_job("sidecar"),
        sidecars.len(),
        "one sidecar target per sidecar, no more: {targets:?}"
    );
    assert_eq!(
        per_job("control-plane"),
        1,
        "the control plane is a target: {targets:?}"
    );
    assert_eq!(
        per_job("mesh-service"),
        sidecars.len() - 1,
        "every app (one per sidecar but the client's) is a target: {targets:?}"
    );
    for t in &targets {
        assert_eq!(
            t["health"], "up",
            "every target of the lab is scraped successfully: {t}"
        );
        assert!(
            t["labels"]["service"].is_string(),
            "every target carries a service label: {t}"
        );
    }

    // The PromQL success rate per called service.
    let path = format!("/api/v1/query?query={}", url_encode(SUCCESS_RATE));
    let rates: BTreeMap<String, f64> = wait_for(
        &format!("a success rate for each of {called:?} from {SUCCESS_RATE}"),
        Duration::from_secs(20),
        || {
            let data = prom_api(addr, &path)?;
            let result = data["result"]
                .as_array()
                .ok_or_else(|| format!("no result: {data}"))?;
            let rates: BTreeMap<String, f64> = result
                .iter()
                .filter_map(|r| {
                    let upstream = r["metric"]["upstream"].as_str()?.to_owned();
                    let value: f64 = r["value"][1].as_str()?.parse().ok()?;
                    value.is_finite().then_some((upstream, value))
                })
                .collect();
            if called.iter().all(|s| rates.contains_key(s)) {
                Ok(rates)
            } else {
                Err(format!("finite rates so far: {rates:?}; answer: {data}"))
            }
        },
    );
    let answered_after = started.elapsed();
    for s in &called {
        let r = rates[s];
        assert!(
            (0.9..=1.0).contains(&r),
            "the success rate of {s} is a share, at least 0.9 in dev (no injected errors): \
             {r} ({rates:?})"
        );
    }

    let status = m.finish(Duration::from_secs(60));
    assert!(
        status.success(),
        "a run with --prometheus exits 0, got {status}\nstderr:\n{}",
        m.stderr()
    );
    let s = m.summary();
    assert_eq!(
        s["unclean_stop"].as_array().map(Vec::len),
        Some(0),
        "every child, Prometheus included, exits 0 on SIGTERM: {s}"
    );
    assert_eq!(
        s["crashed"].as_array().map(Vec::len),
        Some(0),
        "nothing crashed: {s}"
    );
    assert_all_dead(
        &pids_of(&children),
        Duration::from_secs(1),
        "meshlab exited (Prometheus included)",
    );
    eprintln!(
        "prometheus test: CHILDREN after {up_after:?}, every rate after {answered_after:?}, \
         run ended after {:?}",
        started.elapsed()
    );
    cleanup(&s);
}

#[test]
fn prometheus_flag_without_prometheus_installed_says_run_make_setup() {
    let bins = mesh_bin_dir();
    let tables = small_tables("noprom");
    let empty = scratch("noprom-path");
    let out = Command::new(env!("CARGO_BIN_EXE_meshlab"))
        .args(["up", "--env", "dev", "--prometheus", "--duration", "1s"])
        .arg("--tables")
        .arg(&tables)
        .arg("--bin-dir")
        .arg(&bins)
        .env("PATH", &empty)
        .output()
        .expect("run meshlab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--prometheus without prometheus exits 1\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("make setup") && stderr.contains("prometheus"),
        "the error says prometheus is missing and to run make setup:\n{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing started, nothing on stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_dir_all(&tables).ok();
    std::fs::remove_dir_all(&empty).ok();
}
