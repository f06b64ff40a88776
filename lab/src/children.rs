//! The lab's child processes: spawning, their `LISTENING` line, watching them, stopping them.
//!
//! No child outlives meshlab:
//! - each is spawned with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when meshlab dies,
//!   even by `kill -9`. The signal fires when the *thread* that forked the child exits, so
//!   children are spawned from the `block_on` future on the main thread (or a tokio worker,
//!   which lives as long as the runtime), never from a short-lived blocking-pool thread;
//! - [`Supervisor`]'s `Drop` SIGKILLs every child still running (error paths and panics);
//! - [`Supervisor::stop`] is the orderly path: SIGTERM, a grace period, SIGKILL for leftovers.
//!
//! Each child runs in its own process group, so a Ctrl-C in the terminal reaches meshlab only:
//! meshlab first stops the load, then stops the children, instead of every process tearing
//! down at once under in-flight requests.
//!
//! A watchdog task polls every child; one that exits while the lab is running (not stopping)
//! is logged with its log file and recorded as a [`Crash`] for the summary. Children are only
//! ever reaped under their entry's lock, and signals are sent under that lock after checking
//! the child is unreaped, so a pid is never signalled after it could have been reused.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mesh_proto::listening::{ListeningError, PREFIX};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often the watchdog looks at the children.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Environment variables not passed to children: the lab gives every setting as a flag, so a
/// `MESH_*` variable of the caller's shell must not override or conflict with them, and the
/// lab's traffic is loopback only, so no proxy applies.
fn is_scrubbed_env(key: &str) -> bool {
    key.starts_with("MESH_")
        || matches!(
            key.to_ascii_lowercase().as_str(),
            "http_proxy" | "https_proxy" | "all_proxy"
        )
}

/// What went wrong with one child.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot start {name} ({}): {source}", program.display())]
    Spawn {
        name: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the log file {}: {source}", log.display())]
    Log {
        log: PathBuf,
        source: std::io::Error,
    },
    #[error("{name} exited ({status}) before printing its LISTENING line; its log {}:\n{tail}", log.display())]
    ExitedEarly {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} printed no LISTENING line in time; its log {}:\n{tail}", log.display())]
    Timeout {
        name: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{name}: {source}; its log: {}", log.display())]
    BadListening {
        name: String,
        source: ListeningError,
        log: PathBuf,
    },
}

impl ChildError {
    /// Whether the child failed because a port it was given was taken (see `mesh::reserve`).
    pub fn is_addr_in_use(&self) -> bool {
        match self {
            ChildError::ExitedEarly { tail, .. } => {
                let t = tail.to_ascii_lowercase();
                t.contains("address already in use") || t.contains("addrinuse")
            }
            _ => false,
        }
    }
}

/// A child that exited on its own while the lab was running.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Crash {
    pub name: String,
    pub pid: u32,
    pub status: String,
    pub log: PathBuf,
}

/// A child that did not exit cleanly when stopped.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UncleanStop {
    pub name: String,
    /// How it ended: an exit status, or `killed after <grace>`.
    pub status: String,
}

struct State {
    child: tokio::process::Child,
    exit: Option<ExitStatus>,
}

/// One spawned child.
pub struct ChildEntry {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    /// Set when the lab ends this child on purpose (a retried start), so it is no crash.
    expected_exit: AtomicBool,
    /// Set once its exit has been looked at by [`sweep`].
    swept: AtomicBool,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChildEntry {
    /// Reaps the child if it has exited; its exit status once it has.
    pub fn poll_exit(&self) -> Option<ExitStatus> {
        let mut s = lock(&self.state);
        if s.exit.is_none() {
            if let Ok(Some(status)) = s.child.try_wait() {
                s.exit = Some(status);
            }
        }
        s.exit
    }

    /// Sends `sig` to the child's process group unless the child has already been reaped.
    fn signal(&self, sig: i32) {
        let mut s = lock(&self.state);
        if s.exit.is_none() {
            if let Ok(Some(status)) = s.child.try_wait() {
                s.exit = Some(status);
                return;
            }
            // SAFETY: kill(2) on the process group our own unreaped child leads (it was
            // spawned with `process_group(0)`): the pid cannot have been reused while we hold
            // the lock that every reap goes through. The group also reaches any process the
            // child started itself.
            unsafe {
                libc::kill(-(self.pid as libc::pid_t), sig);
            }
        }
    }

    /// The last `n` lines of the child's log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

/// The last `n` lines of a file, or a note that it cannot be read.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            let tail = lines[from..].join("\n");
            if tail.is_empty() {
                "(empty)".into()
            } else {
                tail
            }
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// Formats an exit status as `exit code N` or `signal N (NAME)`.
pub fn describe_status(s: ExitStatus) -> String {
    if let Some(code) = s.code() {
        return format!("exit code {code}");
    }
    match s.signal() {
        Some(sig) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGINT => " (SIGINT)",
                _ => "",
            };
            format!("signal {sig}{name}")
        }
        None => format!("{s}"),
    }
}

/// A started child whose `LISTENING` line has not been read yet.
pub struct Pending {
    pub entry: Arc<ChildEntry>,
    listening: oneshot::Receiver<String>,
}

/// A child whose `LISTENING` line was read: the addresses it bound, by listener name.
#[derive(Clone)]
pub struct Listening {
    pub entry: Arc<ChildEntry>,
    pub addrs: mesh_proto::listening::Listening,
}

impl Listening {
    /// The address of listener `key` (e.g. `outbound`).
    pub fn addr(&self, key: &str) -> Result<SocketAddr, ChildError> {
        self.addrs
            .addr(key)
            .map_err(|source| ChildError::BadListening {
                name: self.entry.name.clone(),
                source,
                log: self.entry.log.clone(),
            })
    }
}

impl Pending {
    /// Waits for the `LISTENING {json}` line until `deadline`.
    pub async fn listening(self, deadline: Instant) -> Result<Listening, ChildError> {
        let e = self.entry;
        let line = match tokio::time::timeout_at(deadline, self.listening).await {
            Ok(Ok(line)) => line,
            Ok(Err(_closed)) => {
                // stdout closed without the line: the child is exiting; give it a moment to
                // be reaped so the error can say how it ended.
                let until = Instant::now() + Duration::from_secs(2);
                let mut status = e.poll_exit();
                while status.is_none() && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    status = e.poll_exit();
                }
                return Err(ChildError::ExitedEarly {
                    name: e.name.clone(),
                    status: status.map_or("still running, stdout closed".into(), describe_status),
                    log: e.log.clone(),
                    tail: e.log_tail(20),
                });
            }
            Err(_elapsed) => {
                return Err(ChildError::Timeout {
                    name: e.name.clone(),
                    log: e.log.clone(),
                    tail: e.log_tail(20),
                })
            }
        };
        let addrs = mesh_proto::listening::Listening::parse(&line).map_err(|source| {
            ChildError::BadListening {
                name: e.name.clone(),
                source,
                log: e.log.clone(),
            }
        })?;
        Ok(Listening { entry: e, addrs })
    }
}

/// Owns every child of the lab.
pub struct Supervisor {
    children: Arc<Mutex<Vec<Arc<ChildEntry>>>>,
    crashed: Arc<Mutex<Vec<Crash>>>,
    /// Exits count as crashes only while running: during start-up the start code reports
    /// them (it fails), while stopping they are expected.
    running: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    watchdog: JoinHandle<()>,
}

impl Supervisor {
    /// A supervisor with its watchdog running (needs a tokio runtime).
    pub fn new() -> Supervisor {
        let children: Arc<Mutex<Vec<Arc<ChildEntry>>>> = Arc::default();
        let crashed: Arc<Mutex<Vec<Crash>>> = Arc::default();
        let running = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let watchdog = tokio::spawn(watch(
            children.clone(),
            crashed.clone(),
            running.clone(),
            stopping.clone(),
        ));
        Supervisor {
            children,
            crashed,
            running,
            stopping,
            watchdog,
        }
    }

    /// Starts `program args` as child `name`, its stdout and stderr appended to `log`.
    /// stdout is read line by line (into the log as well) for the `LISTENING` line.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Pending, ChildError> {
        self.spawn_with_env(name, program, args, &[], log)
    }

    /// [`Supervisor::spawn`] with extra environment variables for the child.
    pub fn spawn_with_env(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Pending, ChildError> {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| ChildError::Log {
                    log: log.to_owned(),
                    source,
                })
        };
        let stderr_file = open()?;
        let mut stdout_log = open()?;
        let _ = writeln!(
            stdout_log,
            "# meshlab: {} {}",
            program.display(),
            args.join(" ")
        );

        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .kill_on_drop(true)
            .process_group(0);
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(is_scrubbed_env) {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // calls (prctl, getppid) without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // meshlab died between fork and prctl: the signal will never come.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| ChildError::Spawn {
            name: name.to_owned(),
            program: program.to_owned(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = oneshot::channel();
        tokio::spawn(pump_stdout(stdout, stdout_log, tx));

        let entry = Arc::new(ChildEntry {
            name: name.to_owned(),
            pid,
            log: log.to_owned(),
            expected_exit: AtomicBool::new(false),
            swept: AtomicBool::new(false),
            state: Mutex::new(State { child, exit: None }),
        });
        lock(&self.children).push(entry.clone());
        tracing::debug!(name, pid, log = %log.display(), "started");
        Ok(Pending {
            entry,
            listening: rx,
        })
    }

    /// Ends a child on purpose (SIGKILL); its exit is not a crash.
    pub fn retire(&self, entry: &ChildEntry) {
        {
            // Under the crash list's lock, which the watchdog holds while it checks the flag
            // and records a crash: either it saw the flag, or its record is removed here.
            let mut crashed = lock(&self.crashed);
            entry.expected_exit.store(true, Ordering::SeqCst);
            crashed.retain(|c| c.pid != entry.pid);
        }
        entry.signal(libc::SIGKILL);
    }

    /// Marks the end of start-up: from now on a child that exits is a crash.
    pub fn set_running(&self) {
        self.running.store(true, Ordering::SeqCst);
    }

    /// Pids of the children still running.
    pub fn pids(&self) -> Vec<u32> {
        self.running().into_iter().map(|(_, pid)| pid).collect()
    }

    /// Name and pid of each child still running.
    pub fn running(&self) -> Vec<(String, u32)> {
        lock(&self.children)
            .iter()
            .filter(|e| e.poll_exit().is_none())
            .map(|e| (e.name.clone(), e.pid))
            .collect()
    }

    /// The first child (not retired) that has exited, if any.
    pub fn exited(&self) -> Option<(Arc<ChildEntry>, ExitStatus)> {
        lock(&self.children).iter().find_map(|e| {
            if e.expected_exit.load(Ordering::SeqCst) {
                return None;
            }
            e.poll_exit().map(|s| (e.clone(), s))
        })
    }

    /// Children that exited on their own while the lab ran.
    pub fn crashed(&self) -> Vec<Crash> {
        lock(&self.crashed).clone()
    }

    /// SIGTERM to every child, up to `grace` for them to exit, SIGKILL for the rest.
    /// Returns the children that did not exit with status 0 (crashes excluded: they are
    /// reported apart).
    pub async fn stop(&self, grace: Duration) -> Vec<UncleanStop> {
        // A child that died since the watchdog's last round is still a crash.
        sweep(&self.children, &self.crashed, &self.running, &self.stopping);
        self.stopping.store(true, Ordering::SeqCst);
        let entries: Vec<Arc<ChildEntry>> = lock(&self.children).clone();
        let live: Vec<&Arc<ChildEntry>> =
            entries.iter().filter(|e| e.poll_exit().is_none()).collect();
        for e in &live {
            e.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while live.iter().any(|e| e.poll_exit().is_none()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut unclean = Vec::new();
        for e in &live {
            match e.poll_exit() {
                Some(s) if s.success() => {}
                Some(s) => unclean.push(UncleanStop {
                    name: e.name.clone(),
                    status: describe_status(s),
                }),
                None => {
                    tracing::warn!(
                        "{} (pid {}) did not exit within {grace:?} of SIGTERM: killing it; log: {}",
                        e.name,
                        e.pid,
                        e.log.display()
                    );
                    e.signal(libc::SIGKILL);
                    unclean.push(UncleanStop {
                        name: e.name.clone(),
                        status: format!("killed after {grace:?}"),
                    });
                }
            }
        }
        // Reap the killed ones (SIGKILL cannot be ignored; this is quick).
        let until = Instant::now() + Duration::from_secs(2);
        while live.iter().any(|e| e.poll_exit().is_none()) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        unclean
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Drop for Supervisor {
    /// The guard of the error and panic paths: every child still running is SIGKILLed.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.watchdog.abort();
        for e in lock(&self.children).iter() {
            e.signal(libc::SIGKILL);
            let _ = e.poll_exit();
        }
    }
}

/// Copies a child's stdout into its log, handing the first `LISTENING` line to `tx`. Keeps
/// draining until EOF so the child never blocks on a full pipe.
async fn pump_stdout(
    stdout: tokio::process::ChildStdout,
    mut log: File,
    tx: oneshot::Sender<String>,
) {
    let mut tx = Some(tx);
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // A small append to a local file: not worth a blocking-pool hop.
        let _ = writeln!(log, "{line}");
        if line.starts_with(PREFIX) {
            if let Some(tx) = tx.take() {
                let _ = tx.send(line);
            }
        }
    }
}

/// The watchdog: reaps children as they exit and records unexpected exits.
async fn watch(
    children: Arc<Mutex<Vec<Arc<ChildEntry>>>>,
    crashed: Arc<Mutex<Vec<Crash>>>,
    running: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tick.tick().await;
        sweep(&children, &crashed, &running, &stopping);
    }
}

/// One look at every child not seen exited yet: an exit while the lab is running (not
/// starting, not stopping), of a child not retired, is a crash.
fn sweep(
    children: &Mutex<Vec<Arc<ChildEntry>>>,
    crashed: &Mutex<Vec<Crash>>,
    running: &AtomicBool,
    stopping: &AtomicBool,
) {
    if !running.load(Ordering::SeqCst) {
        return; // start-up: `Supervisor::exited` and the LISTENING waits report exits
    }
    let entries: Vec<Arc<ChildEntry>> = lock(children).clone();
    for e in entries {
        if e.swept.load(Ordering::SeqCst) {
            continue;
        }
        let Some(status) = e.poll_exit() else {
            continue;
        };
        let mut crashed = lock(crashed);
        if e.swept.swap(true, Ordering::SeqCst)
            || stopping.load(Ordering::SeqCst)
            || e.expected_exit.load(Ordering::SeqCst)
        {
            continue;
        }
        let status = describe_status(status);
        tracing::warn!(
            "{} (pid {}) exited unexpectedly ({status}); the lab keeps running; its log: {}",
            e.name,
            e.pid,
            e.log.display()
        );
        crashed.push(Crash {
            name: e.name.clone(),
            pid: e.pid,
            status,
            log: e.log.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log file of this test run, removed when the returned guard drops.
    struct TmpLog(PathBuf);
    impl Drop for TmpLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    impl std::ops::Deref for TmpLog {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }
    fn tmp(name: &str) -> TmpLog {
        TmpLog(std::env::temp_dir().join(format!("meshlab-children-{}-{name}", std::process::id())))
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn listening_line_is_read_and_logged() {
        let sup = Supervisor::new();
        let log = tmp("listen.log");
        let p = sup
            .spawn(
                "echoer",
                Path::new("/bin/sh"),
                &sh(r#"echo hello; echo 'LISTENING {"app":"127.0.0.1:4242"}'; echo oops >&2; exec sleep 30"#),
                &log,
            )
            .expect("spawn sh");
        let l = p
            .listening(Instant::now() + Duration::from_secs(10))
            .await
            .expect("LISTENING is read");
        assert_eq!(
            l.addr("app").expect("app address"),
            "127.0.0.1:4242".parse::<SocketAddr>().expect("addr"),
            "the address from the line"
        );
        assert!(l.addr("admin").is_err(), "a missing listener is an error");
        let unclean = sup.stop(Duration::from_secs(5)).await;
        assert_eq!(
            unclean,
            vec![UncleanStop {
                name: "echoer".into(),
                status: "signal 15 (SIGTERM)".into()
            }],
            "sh dies of the SIGTERM it does not handle, which is reported"
        );
        let text = std::fs::read_to_string(&*log).expect("log");
        assert!(
            text.contains("hello") && text.contains("oops") && text.contains("LISTENING"),
            "stdout and stderr both land in the log: {text}"
        );
    }

    #[tokio::test]
    async fn early_exit_is_reported_with_the_log_tail() {
        let log_quit = tmp("quit.log");
        let sup = Supervisor::new();
        let p = sup
            .spawn(
                "quitter",
                Path::new("/bin/sh"),
                &sh("echo 'bind: Address already in use (os error 98)' >&2; exit 3"),
                &log_quit,
            )
            .expect("spawn sh");
        let err = match p.listening(Instant::now() + Duration::from_secs(10)).await {
            Err(e) => e,
            Ok(_) => panic!("a child that exits without LISTENING is an error"),
        };
        let msg = err.to_string();
        assert!(
            msg.contains("exit code 3") && msg.contains("Address already in use"),
            "the error gives the status and the log tail: {msg}"
        );
        assert!(err.is_addr_in_use(), "a taken port is recognised: {msg}");
    }

    #[tokio::test]
    async fn silent_child_times_out() {
        let log_mute = tmp("mute.log");
        let sup = Supervisor::new();
        let p = sup
            .spawn(
                "mute",
                Path::new("/bin/sh"),
                &sh("exec sleep 30"),
                &log_mute,
            )
            .expect("spawn sh");
        let r = p
            .listening(Instant::now() + Duration::from_millis(200))
            .await;
        assert!(
            matches!(r, Err(ChildError::Timeout { .. })),
            "no line before the deadline is a timeout"
        );
    }

    #[tokio::test]
    async fn watchdog_records_crashes_but_not_retired_children() {
        let log_c = tmp("c.log");
        let log_r = tmp("r.log");
        let sup = Supervisor::new();
        sup.set_running();
        let crash = sup
            .spawn("crasher", Path::new("/bin/sh"), &sh("exit 7"), &log_c)
            .expect("spawn");
        let retired = sup
            .spawn(
                "retired",
                Path::new("/bin/sh"),
                &sh("exec sleep 30"),
                &log_r,
            )
            .expect("spawn");
        sup.retire(&retired.entry);
        let deadline = Instant::now() + Duration::from_secs(5);
        while sup.crashed().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One more watchdog round, so a wrongly recorded retired child would show up.
        tokio::time::sleep(WATCH_EVERY * 3).await;
        let crashed = sup.crashed();
        assert_eq!(crashed.len(), 1, "only the crasher is a crash: {crashed:?}");
        assert_eq!(crashed[0].name, "crasher", "named");
        assert_eq!(crashed[0].pid, crash.entry.pid, "with its pid");
        assert_eq!(crashed[0].status, "exit code 7", "and its status");
        assert!(sup.pids().is_empty(), "no child is left running");
    }

    #[tokio::test]
    async fn stop_kills_children_that_ignore_sigterm() {
        let log_s = tmp("s.log");
        let sup = Supervisor::new();
        let p = sup
            .spawn(
                "stubborn",
                Path::new("/bin/sh"),
                &sh("trap '' TERM; echo 'LISTENING {}'; while true; do sleep 0.05; done"),
                &log_s,
            )
            .expect("spawn");
        p.listening(Instant::now() + Duration::from_secs(10))
            .await
            .expect("the trap is set before LISTENING");
        let unclean = sup.stop(Duration::from_millis(300)).await;
        assert_eq!(
            unclean.len(),
            1,
            "the stubborn child is reported: {unclean:?}"
        );
        assert!(
            unclean[0].status.starts_with("killed after"),
            "as killed: {unclean:?}"
        );
        assert!(sup.pids().is_empty(), "and it is gone");
    }

    #[tokio::test]
    async fn dropping_the_supervisor_kills_its_children() {
        let log_d = tmp("d.log");
        let sup = Supervisor::new();
        let p = sup
            .spawn(
                "sleeper",
                Path::new("/bin/sh"),
                &sh("exec sleep 30"),
                &log_d,
            )
            .expect("spawn");
        let pid = p.entry.pid;
        drop(p);
        drop(sup);
        let gone = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            gone(pid),
            "child {pid} is dead after the supervisor is dropped"
        );
    }

    #[test]
    fn env_scrubbing() {
        for k in [
            "MESH_TABLE",
            "MESH_SERVICE",
            "HTTP_PROXY",
            "https_proxy",
            "ALL_PROXY",
        ] {
            assert!(is_scrubbed_env(k), "{k} is not passed to children");
        }
        for k in ["RUST_LOG", "PATH", "HOME"] {
            assert!(!is_scrubbed_env(k), "{k} is passed to children");
        }
    }
}
