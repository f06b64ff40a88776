//! The lab's child processes: spawning, their `LISTENING` line, watching them, stopping them.
//!
//! The process handling itself is `mesh_proto::supervise`, shared with the integration tests:
//! parent-death signal, stdout read for the `LISTENING` line, SIGTERM then SIGKILL, a kill when
//! a child's last handle drops. This module adds what only the lab needs:
//! - one log file per child in the run dir, with the command line on top and both stdout and
//!   stderr in it;
//! - each child in its own process group, so a Ctrl-C in the terminal reaches meshlab only:
//!   meshlab first stops the load, then stops the children, instead of every process tearing
//!   down at once under in-flight requests;
//! - the caller's `MESH_*` and proxy variables are not passed on (every setting is a flag);
//! - [`Supervisor`] owns every child: its `Drop` SIGKILLs those still running (error paths
//!   and panics), [`Supervisor::stop`] stops them all together;
//! - a watchdog task polls every child; one that exits while the lab is running (not
//!   stopping) is logged with its log file and recorded as a [`Crash`] for the summary, unless
//!   the lab ended it on purpose ([`Supervisor::retire`]).
//!
//! Children are spawned from the `block_on` future on the main thread (or a tokio worker,
//! which lives as long as the runtime), never from a short-lived blocking-pool thread: the
//! parent-death signal fires when the thread that forked the child exits.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mesh_proto::supervise::{self, Child, Options, Stopped};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use mesh_proto::supervise::{describe_status, log_tail, ChildError};

/// How often the watchdog looks at the children.
const WATCH_EVERY: Duration = Duration::from_millis(100);

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

/// One spawned child.
pub struct ChildEntry {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    child: Child,
    /// Set when the lab ends this child on purpose (a retried start), so it is no crash.
    expected_exit: AtomicBool,
    /// Set once its exit has been looked at by [`sweep`].
    swept: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChildEntry {
    /// Reaps the child if it has exited; its exit status once it has.
    pub fn poll_exit(&self) -> Option<ExitStatus> {
        self.child.try_wait()
    }

    /// The last `n` lines of the child's log.
    pub fn log_tail(&self, n: usize) -> String {
        self.child.log_tail(n)
    }
}

/// Runs a blocking wait of `mesh_proto::supervise` off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("a wait on the children was cancelled: {e}"),
        },
    }
}

/// A started child whose `LISTENING` line has not been read yet.
pub struct Pending {
    pub entry: Arc<ChildEntry>,
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
        let entry = self.entry;
        let waiting = entry.clone();
        let deadline = deadline.into_std();
        let addrs = blocking(move || waiting.child.wait_listening(deadline)).await?;
        Ok(Listening { entry, addrs })
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
        let mut header = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| ChildError::Log {
                log: log.to_owned(),
                source,
            })?;
        let _ = writeln!(
            header,
            "# meshlab: {} {}",
            program.display(),
            args.join(" ")
        );
        drop(header);

        let mut cmd = std::process::Command::new(program);
        cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
        let options = Options::new(log).stdout_to_log().own_group().scrub_env();
        let child = Child::spawn(name, &mut cmd, &options)?;
        let entry = Arc::new(ChildEntry {
            name: name.to_owned(),
            pid: child.pid(),
            log: log.to_owned(),
            child,
            expected_exit: AtomicBool::new(false),
            swept: AtomicBool::new(false),
        });
        lock(&self.children).push(entry.clone());
        tracing::debug!(name, pid = entry.pid, log = %log.display(), "started");
        Ok(Pending { entry })
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
        entry.child.signal(libc::SIGKILL);
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
        let live: Vec<Arc<ChildEntry>> = lock(&self.children)
            .iter()
            .filter(|e| e.poll_exit().is_none())
            .cloned()
            .collect();
        let stopping = live.clone();
        let ends = blocking(move || {
            let children: Vec<&Child> = stopping.iter().map(|e| &e.child).collect();
            supervise::stop_all(&children, grace)
        })
        .await;
        live.iter()
            .zip(ends)
            .filter_map(|(e, end)| match end {
                Stopped::Exited(s) if s.success() => None,
                Stopped::Exited(s) => Some(UncleanStop {
                    name: e.name.clone(),
                    status: describe_status(s),
                }),
                Stopped::Killed => {
                    tracing::warn!(
                        "{} (pid {}) did not exit within {grace:?} of SIGTERM: killed it; log: {}",
                        e.name,
                        e.pid,
                        e.log.display()
                    );
                    Some(UncleanStop {
                        name: e.name.clone(),
                        status: format!("killed after {grace:?}"),
                    })
                }
            })
            .collect()
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
            e.child.kill();
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
}
