"""Child processes and what they cost: starting one pinned with taskset, reading its
`LISTENING {...}` line, stopping many at once, and CPU and memory from /proc.

Every child runs in its own process group with its stdout and stderr in files of the run dir,
and is listed in `RUNNING` until stopped, so `stop_all()` (on a signal, at exit) leaves nothing
behind."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
from pathlib import Path

from .common import log, wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when this process dies (even by SIGKILL)."""
    _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


class Proc:
    """A child process pinned with taskset (unless `cpus` is None), in its own process group,
    logs in the run dir. `die_with_parent`: it gets SIGKILL when this process dies."""

    def __init__(self, name: str, argv: list[str], cpus: str | None, run_dir: Path,
                 env: dict | None = None, dump_signal: int = signal.SIGUSR2,
                 die_with_parent: bool = False):
        self.name = name
        self.dump_signal = dump_signal
        self.stdout_path = run_dir / f"{name}.out"
        self.stderr_path = run_dir / f"{name}.err"
        self.announced: dict | None = None
        # Where it serves its allocation counters as JSON (a Rust counting build), if it does.
        self.counts_addr: str | None = None
        full_env = dict(os.environ)
        full_env.update(env or {})
        pin = ["taskset", "-c", cpus] if cpus is not None else []  # taskset execs: same PID
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                [*pin, *argv], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=full_env, start_new_session=True,
                preexec_fn=_die_with_parent if die_with_parent else None)
        self.pid = self.popen.pid
        RUNNING.append(self)

    def pids(self) -> list[int]:
        """The process and its children (nginx: the master and its workers)."""
        return [self.pid, *children_of(self.pid)]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def listening(self) -> dict | None:
        """The JSON of its `LISTENING {...}` stdout line once printed, else None; raises
        RuntimeError when the process exited without printing it."""
        if self.announced is None:
            for line in self.stdout_path.read_text(errors="replace").splitlines():
                if line.startswith("LISTENING "):
                    self.announced = json.loads(line[len("LISTENING "):])
                    break
        if self.announced is None and not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode} before its "
                               f"LISTENING line: {self.tail()}")
        return self.announced

    def terminate(self) -> None:
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except OSError:
                pass

    def stop(self, grace: float = 6.0) -> None:
        """SIGTERM, then SIGKILL to its process group after `grace` seconds."""
        self.terminate()
        if self.popen.poll() is None:
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if self.popen.poll() is None:
            log(f"{self.name} (pid {self.pid}) ignored SIGTERM for {grace:.0f}s: SIGKILL")
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
            self.popen.wait()
        if self in RUNNING:
            RUNNING.remove(self)

    def tail(self, n: int = 5, sep: str = " | ") -> str:
        """The last n lines of its stderr."""
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return sep.join(lines[-n:])


RUNNING: list[Proc] = []


def stop_many(procs: list[Proc], grace: float = 6.0) -> None:
    """SIGTERM to all first, then wait for each: the sidecars' grace periods overlap."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.stop(grace)


def stop_all(grace: float = 6.0) -> None:
    """Stops every child still running, the last started first."""
    stop_many(list(reversed(RUNNING)), grace)


def wait_listening(procs: list[Proc], timeout: float) -> None:
    """Until every process has printed its LISTENING line; RuntimeError when one exits first
    or the time runs out."""
    names = ", ".join(p.name for p in procs)
    wait_for(lambda: all(p.listening() is not None for p in procs), timeout,
             f"the LISTENING line of {names}")


# --------------------------------------------------------------------------------------------
# CPU and memory from /proc


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def cpu_ticks(pids: list[int]) -> int:
    return sum(cpu_ticks_split(pids))


def cpu_ticks_split(pids: list[int]) -> tuple[int, int]:
    """(utime, stime) summed over the processes, in clock ticks."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        user += int(fields[11])  # utime (field 14 of /proc/PID/stat)
        system += int(fields[12])  # stime (field 15)
    return user, system


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime summed over the processes, in seconds."""
    return cpu_ticks(pids) / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def cpu_busy_jiffies() -> int:
    """All CPUs' user+nice+system time from /proc/stat: what processes are charged with.
    (irq and softirq time, e.g. loopback packet delivery, is charged to no process.)"""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2]


def cpu_busy_per_cpu() -> dict[str, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat; busy is everything but idle and iowait."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                idle = v[3] + v[4]
                out[name[3:]] = (sum(v) - idle, sum(v))
    return out


def cpu_busy_share(before: dict, after: dict) -> dict[str, float]:
    """Share of each CPU that was busy (any process) between two cpu_busy_per_cpu()."""
    res = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (0, 0))
        res[cpu] = round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else None
    return res


def children_cpu_s() -> float:
    """utime+stime of every child this process has reaped (the load generators)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
