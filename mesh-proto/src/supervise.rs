//! Child processes that keep the `LISTENING` contract: start one, wait for its line, stop it.
//!
//! Used by the lab (`meshlab up` runs every binary as a child) and by the integration tests
//! (`testkit`, the demo service's tests). A [`Child`]:
//! - is spawned with stdin closed, stdout piped and stderr appended to a log file; a thread
//!   reads stdout to its end (so the child never blocks on a full pipe), copies each line into
//!   the log when asked, keeps the lines when asked, and hands over the first `LISTENING` line;
//! - is spawned with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when the parent dies,
//!   even by `kill -9`. The signal fires when the *thread* that forked the child exits, so
//!   spawn from a thread that lives as long as the child should (the main thread, a runtime
//!   worker), never from a short-lived one;
//! - [`Child::wait_listening`] waits for that line until a deadline; if the child exits first,
//!   or prints nothing in time, the error carries its exit status and the tail of its log;
//! - [`stop_all`] / [`Child::stop`] are the orderly end: SIGTERM, a grace period, SIGKILL;
//! - dropping a `Child` SIGKILLs it (the error and panic paths).
//!
//! A child is only ever reaped under its own lock, and signals are sent under that lock after
//! checking it is unreaped, so a pid is never signalled after it could have been reused.
//!
//! Everything here blocks (threads, not tasks): it runs a handful of processes, not a hot path.
//! Async callers wrap the waits in `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::listening::{Listening, ListeningError, PREFIX};

/// How often exits are polled while waiting for one.
const POLL: Duration = Duration::from_millis(10);

/// How long a child whose stdout closed without a `LISTENING` line gets to be reaped, so the
/// error can say how it ended.
const REAP_GRACE: Duration = Duration::from_secs(2);

/// Lines of the log shown in an error.
const TAIL_LINES: usize = 20;

/// How to run a child: where its output goes, and what it shares with the parent.
#[derive(Debug, Clone)]
pub struct Options {
    log: PathBuf,
    stdout_to_log: bool,
    keep_stdout: bool,
    own_group: bool,
    scrub_env: bool,
}

impl Options {
    /// stderr appended to `log` (created if missing); stdout read but not kept.
    pub fn new(log: impl Into<PathBuf>) -> Options {
        Options {
            log: log.into(),
            stdout_to_log: false,
            keep_stdout: false,
            own_group: false,
            scrub_env: false,
        }
    }

    /// Copies every stdout line into the log as well (one file with everything the child
    /// printed, as the lab keeps per child).
    pub fn stdout_to_log(mut self) -> Options {
        self.stdout_to_log = true;
        self
    }

    /// Keeps every stdout line for [`Child::stdout_lines`] (tests of what a binary prints).
    pub fn keep_stdout(mut self) -> Options {
        self.keep_stdout = true;
        self
    }

    /// Runs the child in a process group of its own: a Ctrl-C in the terminal then reaches
    /// the parent only (which stops its children in order), and signals sent to the child
    /// reach the processes it started too.
    pub fn own_group(mut self) -> Options {
        self.own_group = true;
        self
    }

    /// Does not pass on the parent's `MESH_*` and proxy variables ([`is_scrubbed_env`]),
    /// unless the command sets them itself: the child is configured by its flags alone.
    pub fn scrub_env(mut self) -> Options {
        self.scrub_env = true;
        self
    }
}

/// Environment variables [`Options::scrub_env`] does not pass on: the binaries' own `MESH_*`
/// settings (a flag given by the parent must not meet a conflicting variable of the caller's
/// shell) and HTTP proxies (the children's traffic is loopback only).
pub fn is_scrubbed_env(key: &str) -> bool {
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
    #[error("{name} printed no LISTENING line within {waited:?}; its log {}:\n{tail}", log.display())]
    Timeout {
        name: String,
        waited: Duration,
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
    /// Whether the child failed because a port it was given was taken: it exited saying so.
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

/// How a child ended when stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited within the grace period (or before the stop).
    Exited(ExitStatus),
    /// It was still running at the end of the grace period and was SIGKILLed.
    Killed,
}

/// The child process and its exit, once reaped.
struct Process {
    child: std::process::Child,
    exit: Option<ExitStatus>,
}

/// What the stdout reader has seen so far.
#[derive(Default)]
struct Stdout {
    listening: Option<String>,
    kept: Vec<String>,
    closed: bool,
}

/// The stdout state and the condition the reader signals on each change.
#[derive(Default)]
struct StdoutShared {
    state: Mutex<Stdout>,
    changed: Condvar,
}

/// A running (or exited, not yet dropped) child process; SIGKILLed when dropped.
pub struct Child {
    name: String,
    pid: u32,
    log: PathBuf,
    own_group: bool,
    started: Instant,
    process: Mutex<Process>,
    stdout: Arc<StdoutShared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Child {
    /// Starts `cmd` as child `name` (its stdin, stdout and stderr are set here).
    pub fn spawn(name: &str, cmd: &mut Command, options: &Options) -> Result<Child, ChildError> {
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&options.log)
                .map_err(|source| ChildError::Log {
                    log: options.log.clone(),
                    source,
                })
        };
        let stderr = open()?;
        let stdout_log = if options.stdout_to_log {
            Some(open()?)
        } else {
            None
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if options.own_group {
            cmd.process_group(0);
        }
        if options.scrub_env {
            let set: Vec<_> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
            for (key, _) in std::env::vars_os() {
                if key.to_str().is_some_and(is_scrubbed_env) && !set.contains(&key) {
                    cmd.env_remove(key);
                }
            }
        }
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // calls (prctl, getppid) without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died between fork and prctl: the signal will never come.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| ChildError::Spawn {
            name: name.to_owned(),
            program: PathBuf::from(cmd.get_program()),
            source,
        })?;
        let pid = child.id();
        let pipe = child.stdout.take().expect("stdout is piped");
        let stdout = Arc::new(StdoutShared::default());
        let shared = stdout.clone();
        let keep = options.keep_stdout;
        let reader = std::thread::Builder::new()
            .name(format!("stdout of {pid}"))
            .spawn(move || read_stdout(pipe, stdout_log, keep, &shared));
        if let Err(source) = reader {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ChildError::Spawn {
                name: name.to_owned(),
                program: PathBuf::from(cmd.get_program()),
                source,
            });
        }
        Ok(Child {
            name: name.to_owned(),
            pid,
            log: options.log.clone(),
            own_group: options.own_group,
            started: Instant::now(),
            process: Mutex::new(Process { child, exit: None }),
            stdout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The file its stderr (and, with [`Options::stdout_to_log`], its stdout) goes to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// Waits until `deadline` for the `LISTENING` line and parses it. Fails if the child
    /// exits (closes stdout) first, prints no line in time, or prints a bad one. The line
    /// stays available: a second call returns it again.
    pub fn wait_listening(&self, deadline: Instant) -> Result<Listening, ChildError> {
        let line = {
            let mut s = lock(&self.stdout.state);
            loop {
                if let Some(line) = &s.listening {
                    break Some(line.clone());
                }
                if s.closed {
                    break None;
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(ChildError::Timeout {
                        name: self.name.clone(),
                        waited: deadline.saturating_duration_since(self.started),
                        log: self.log.clone(),
                        tail: self.log_tail(TAIL_LINES),
                    });
                }
                s = self
                    .stdout
                    .changed
                    .wait_timeout(s, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        match line {
            Some(line) => Listening::parse(&line).map_err(|source| ChildError::BadListening {
                name: self.name.clone(),
                source,
                log: self.log.clone(),
            }),
            None => {
                // stdout closed without the line: the child is exiting.
                let status = self.wait_timeout(REAP_GRACE);
                Err(ChildError::ExitedEarly {
                    name: self.name.clone(),
                    status: status.map_or("still running, stdout closed".into(), describe_status),
                    log: self.log.clone(),
                    tail: self.log_tail(TAIL_LINES),
                })
            }
        }
    }

    /// Reaps the child if it has exited; its exit status once it has.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        let mut p = lock(&self.process);
        if p.exit.is_none() {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.exit = Some(status);
            }
        }
        p.exit
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends `sig` (to its process group with [`Options::own_group`]) unless the child has
    /// already been reaped. Returns whether it was sent.
    pub fn signal(&self, sig: i32) -> bool {
        let mut p = lock(&self.process);
        self.signal_locked(&mut p, sig)
    }

    fn signal_locked(&self, p: &mut Process, sig: i32) -> bool {
        if p.exit.is_some() {
            return false;
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            p.exit = Some(status);
            return false;
        }
        let pid = self.pid as libc::pid_t;
        let target = if self.own_group { -pid } else { pid };
        // SAFETY: kill(2) on our own unreaped child (or the group it leads): the pid cannot
        // have been reused while we hold the lock that every reap goes through.
        unsafe { libc::kill(target, sig) == 0 }
    }

    /// SIGKILLs the child (and its group with [`Options::own_group`]) and reaps it.
    pub fn kill(&self) {
        let mut p = lock(&self.process);
        if self.signal_locked(&mut p, libc::SIGKILL) {
            // SIGKILL cannot be caught: the wait is short.
            if let Ok(status) = p.child.wait() {
                p.exit = Some(status);
            }
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL: [`stop_all`] for one child.
    pub fn stop(&self, grace: Duration) -> Stopped {
        stop_all(&[self], grace)[0]
    }

    /// The stdout lines read so far (with [`Options::keep_stdout`]; else none).
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.stdout.state).kept.clone()
    }

    /// With [`Options::keep_stdout`]: waits until `deadline` for a stdout line starting with
    /// `prefix` (the first one, from the start of the output) and returns it whole; `None` if
    /// stdout closes or the deadline passes first.
    pub fn wait_stdout_line(&self, prefix: &str, deadline: Instant) -> Option<String> {
        let mut s = lock(&self.stdout.state);
        loop {
            if let Some(line) = s.kept.iter().find(|l| l.starts_with(prefix)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if s.closed || now >= deadline {
                return None;
            }
            s = self
                .stdout
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until `deadline` for stdout to be read to its end (the child and anything it
    /// started have closed it); whether it was.
    pub fn wait_stdout_closed(&self, deadline: Instant) -> bool {
        let mut s = lock(&self.stdout.state);
        while !s.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .stdout
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl Drop for Child {
    /// The guard of the error and panic paths: a child still running is SIGKILLed.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops `children` together: SIGTERM to each still running, up to `grace` for all of them to
/// exit, SIGKILL for the rest. Returns how each ended, in order.
pub fn stop_all(children: &[&Child], grace: Duration) -> Vec<Stopped> {
    for c in children {
        c.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while children.iter().any(|c| c.try_wait().is_none()) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    children
        .iter()
        .map(|c| match c.try_wait() {
            Some(status) => Stopped::Exited(status),
            None => {
                c.kill();
                Stopped::Killed
            }
        })
        .collect()
}

/// Reads a child's stdout to its end: each line into `log` when given, into the kept lines
/// when `keep`, the first `LISTENING` line into the shared state.
fn read_stdout(
    pipe: std::process::ChildStdout,
    mut log: Option<File>,
    keep: bool,
    shared: &StdoutShared,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        if let Some(log) = &mut log {
            let _ = writeln!(log, "{line}");
        }
        let listening = line.starts_with(PREFIX);
        if keep || listening {
            let mut s = lock(&shared.state);
            if keep {
                s.kept.push(line.to_owned());
            }
            if listening && s.listening.is_none() {
                s.listening = Some(line.to_owned());
            }
            shared.changed.notify_all();
        }
    }
    lock(&shared.state).closed = true;
    shared.changed.notify_all();
}

/// The last `n` lines of a file, `(empty)`, or a note that it cannot be read.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A log file of this test run, removed when dropped.
    struct TmpLog(PathBuf);
    impl Drop for TmpLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    fn tmp(name: &str) -> TmpLog {
        TmpLog(std::env::temp_dir().join(format!(
            "mesh-proto-supervise-{}-{name}",
            std::process::id()
        )))
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        cmd
    }

    fn soon(d: Duration) -> Instant {
        Instant::now() + d
    }

    /// Whether `pid` is gone (or a zombie nobody reaped).
    fn gone(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }

    #[test]
    fn the_listening_line_is_read_and_everything_lands_in_the_log() {
        let log = tmp("listen.log");
        let c = Child::spawn(
            "echoer",
            &mut sh(r#"echo hello; echo 'LISTENING {"app":"127.0.0.1:4242"}'; echo oops >&2; exec sleep 30"#),
            &Options::new(&log.0).stdout_to_log().keep_stdout(),
        )
        .expect("spawn sh");
        let l = c
            .wait_listening(soon(Duration::from_secs(10)))
            .expect("LISTENING is read");
        assert_eq!(
            l.addr("app").expect("app"),
            "127.0.0.1:4242".parse().expect("addr"),
            "the address from the line"
        );
        assert_eq!(
            c.wait_listening(soon(Duration::ZERO)).expect("again"),
            l,
            "the line stays available"
        );
        assert_eq!(
            c.stop(Duration::from_secs(5)),
            Stopped::Exited(ExitStatus::from_raw(libc::SIGTERM)),
            "sh dies of the SIGTERM it does not handle"
        );
        assert!(
            c.wait_stdout_closed(soon(Duration::from_secs(5))),
            "stdout is read to its end"
        );
        let text = std::fs::read_to_string(&log.0).expect("log");
        assert!(
            text.contains("hello") && text.contains("oops") && text.contains("LISTENING"),
            "stdout and stderr both land in the log: {text}"
        );
        assert_eq!(
            c.stdout_lines(),
            vec!["hello", r#"LISTENING {"app":"127.0.0.1:4242"}"#],
            "stdout lines are kept"
        );
        assert_eq!(
            c.wait_stdout_line("hel", soon(Duration::ZERO)).as_deref(),
            Some("hello"),
            "a kept line is found by its prefix"
        );
        assert_eq!(
            c.wait_stdout_line("bye", soon(Duration::from_secs(5))),
            None,
            "and a line never printed is not waited for once stdout is closed"
        );
    }

    #[test]
    fn an_early_exit_is_reported_with_its_status_and_log_tail() {
        let log = tmp("quit.log");
        let c = Child::spawn(
            "quitter",
            &mut sh("echo 'bind: Address already in use (os error 98)' >&2; exit 3"),
            &Options::new(&log.0),
        )
        .expect("spawn sh");
        let err = c
            .wait_listening(soon(Duration::from_secs(10)))
            .expect_err("a child that exits without LISTENING is an error");
        let msg = err.to_string();
        assert!(
            msg.contains("quitter exited (exit code 3)") && msg.contains("Address already in use"),
            "the error gives the status and the log tail: {msg}"
        );
        assert!(err.is_addr_in_use(), "a taken port is recognised: {msg}");
    }

    #[test]
    fn a_silent_child_times_out() {
        let log = tmp("mute.log");
        let c = Child::spawn("mute", &mut sh("exec sleep 30"), &Options::new(&log.0))
            .expect("spawn sh");
        let err = c
            .wait_listening(soon(Duration::from_millis(200)))
            .expect_err("no line");
        assert!(
            matches!(err, ChildError::Timeout { .. }),
            "no line before the deadline is a timeout: {err}"
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        let log = tmp("bad.log");
        let c = Child::spawn(
            "garbler",
            &mut sh("echo 'LISTENING {\"app\":\"nowhere\"}'; exec sleep 30"),
            &Options::new(&log.0),
        )
        .expect("spawn sh");
        let msg = c
            .wait_listening(soon(Duration::from_secs(10)))
            .expect_err("not an address")
            .to_string();
        assert!(
            msg.starts_with("garbler: ") && msg.contains("\"nowhere\", not as IP:PORT"),
            "{msg}"
        );
    }

    #[test]
    fn stop_kills_children_that_ignore_sigterm() {
        let log = tmp("stubborn.log");
        let c = Child::spawn(
            "stubborn",
            &mut sh("trap '' TERM; echo 'LISTENING {}'; while true; do sleep 0.05; done"),
            &Options::new(&log.0).own_group(),
        )
        .expect("spawn sh");
        c.wait_listening(soon(Duration::from_secs(10)))
            .expect("the trap is set before LISTENING");
        assert_eq!(
            c.stop(Duration::from_millis(300)),
            Stopped::Killed,
            "killed after the grace period"
        );
        assert!(c.try_wait().is_some(), "and reaped");
        assert!(!c.signal(libc::SIGTERM), "a reaped child is not signalled");
    }

    #[test]
    fn dropping_a_child_kills_it() {
        let log = tmp("sleeper.log");
        let c = Child::spawn("sleeper", &mut sh("exec sleep 30"), &Options::new(&log.0))
            .expect("spawn sh");
        let pid = c.pid();
        assert!(!gone(pid), "running at first");
        drop(c);
        assert!(gone(pid), "child {pid} is dead once dropped");
    }

    #[test]
    fn scrubbing_keeps_what_the_command_sets() {
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
        // The test's own environment is not changed (tests run in parallel): MESH_ENV is set
        // on the command, which wins over scrubbing.
        let log = tmp("env.log");
        let mut cmd = sh("echo \"LISTENING {\\\"x\\\":\\\"127.0.0.1:${MESH_PORT:-9}\\\"}\"");
        cmd.env("MESH_PORT", "7");
        let c = Child::spawn("env", &mut cmd, &Options::new(&log.0).scrub_env()).expect("spawn");
        let l = c
            .wait_listening(soon(Duration::from_secs(10)))
            .expect("line");
        assert_eq!(
            l.get("x").map(|a| a.port()),
            Some(7),
            "MESH_PORT set on the command is kept"
        );
    }

    #[test]
    fn statuses_are_described() {
        assert_eq!(describe_status(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(
            describe_status(ExitStatus::from_raw(libc::SIGKILL)),
            "signal 9 (SIGKILL)"
        );
    }
}
