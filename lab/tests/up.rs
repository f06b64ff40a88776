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
//! - `--dry-run` prints the plan without starting anything.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// A running meshlab: stdout collected line by line, stderr in a file.
struct Meshlab {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
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
        let stderr = std::fs::File::create(&stderr_path).expect("create the stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshlab"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: prctl only sets a flag on the child; a failing test kills meshlab with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn meshlab");
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Meshlab {
            child,
            lines,
            stdout: Vec::new(),
            stderr_path,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Reads stdout until a line starting with `prefix`; returns the rest of it.
    fn line_starting(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(e) => {
                    let status = self.child.try_wait();
                    panic!(
                        "no stdout line starting {prefix:?} within {timeout:?} ({e}); exit: \
                         {status:?}\nstdout so far:\n{}\nstderr:\n{}",
                        self.stdout.join("\n"),
                        self.stderr()
                    )
                }
            }
        }
    }

    /// Waits for the exit and the rest of stdout.
    fn finish(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "meshlab did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout.join("\n"),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.stdout.push(line);
        }
        status
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// The last stdout line, parsed as the JSON summary.
    fn summary(&self) -> serde_json::Value {
        let last = self.stdout.last().cloned().unwrap_or_default();
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
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    ] {
        assert!(stdout.contains(want), "the plan has {want:?}:\n{stdout}");
    }
    assert!(
        !stdout.contains("back-4"),
        "--replicas 3 means three per service:\n{stdout}"
    );
    std::fs::remove_dir_all(&tables).ok();
}
