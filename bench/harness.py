#!/usr/bin/env python3
"""meshlab benchmark harness: the sidecar against direct, nginx and HAProxy, in one run.

Run by bench/run.sh (`make bench`, `make bench QUICK=1`), which installs the tools and builds
the binaries first. Python 3.11 standard library only.

What it does, in order (every figure comes from this one run):
  1. starts one backend (nginx, one worker, a fixed ~100-byte body) pinned with the load
     generator on CPU 0, and the six setups, each proxy pinned to CPU 1 (CPUs 0-1 with 2 threads):
       direct    client -> backend
       sidecar   client -> sidecar outbound -> backend            (no policies)
       mesh      client -> sidecar outbound -> sidecar inbound -> backend
       nginx     client -> nginx (upstream keepalive) -> backend
       haproxy   client -> HAProxy (http-reuse always) -> backend
       policies  client -> sidecar outbound with every policy on -> backend
       pingora   client -> a bare Pingora proxy (sidecar/examples/bare_proxy.rs) -> backend
  2. reads each proxy's RSS idle, warms every setup up, then measures saturation throughput with
     wrk (-t1 -c50), interleaved: A B C D E F, A B C D E F, ... and reports medians; CPU per
     request = the proxy processes' utime+stime (/proc/PID/stat) over the requests served;
  3. POST 4 KiB and a header mix for the sidecar against nginx (and more in full mode);
  4. latency at a fixed rate (half the slowest setup's saturation) with oha, open loop with
     latency correction: p50 / p90 / p99 / p99.9 and the latency added over direct;
  5. RSS with 1,000 idle keep-alive client connections;
  6. allocations per request with a second set of proxies under bench/.tools/malloc_count.so;
  7. instructions per request under callgrind (deterministic: the ratios a rerun reproduces
     to about 1%, whatever else the machine does);
  8. the control-plane figures from bench/cp_bench.py, when it exists;
  9. writes bench/results/<date>-<sha>.{md,json} and <date>-<sha>-latency.png.

It exits non-zero only when it could not measure at all (no backend, no setup measured).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WRK_DIR = BENCH / "wrk"
CLK_TCK = os.sysconf("SC_CLK_TCK")

CPU_LOAD = "0"  # load generator and backend
CPU_PROXY = {1: "1", 2: "0,1"}  # the proxy under test, by worker threads
CONNECTIONS = 50
IDLE_CONNECTIONS = 1000
# The dump signal of malloc_count.so: SIGUSR2 for the sidecar; nginx (binary upgrade) and
# HAProxy (ignores it) take SIGUSR2 for themselves, so they get a real-time signal instead.
RT_DUMP_SIGNAL = signal.SIGRTMIN + 6
BODY = ("meshlab-bench " * 7)[:97] + "\n"  # 98 bytes

SETUPS = ["direct", "sidecar", "mesh", "nginx", "haproxy", "policies", "pingora"]
TITLES = {
    "direct": "1 direct",
    "sidecar": "2 sidecar",
    "mesh": "3 mesh hop",
    "nginx": "4 nginx",
    "haproxy": "5 HAProxy",
    "policies": "6 sidecar+policies",
    "pingora": "7 bare Pingora",
}
DESCRIPTIONS = {
    "direct": "wrk -> backend (the limit)",
    "sidecar": "wrk -> sidecar outbound (Host: b, no policies) -> backend",
    "mesh": "wrk -> sidecar outbound -> sidecar inbound (--app backend) -> backend",
    "nginx": "wrk -> nginx reverse proxy (upstream keepalive) -> backend",
    "haproxy": "wrk -> HAProxy (http-reuse always) -> backend",
    "policies": "wrk -> sidecar outbound with retries, budget, breaker, p2c-ewma over 2 "
    "endpoints, health checks every 1 s, concurrency limit, metrics on, tracing at 1% -> backend",
    "pingora": "wrk -> bare Pingora proxy (same Pingora, server config and build profile as the "
    "sidecar, nothing in any phase but upstream_peer) -> backend: the floor for any "
    "Pingora-based proxy",
}
# Extra sidecar flags per setup: setups 2 and 3 are the sidecar with everything off.
SIDECAR_FLAGS_NONE = ["--metrics", "off"]
# Setup 6's tracing: parent-based 1% sampling, exported to the harness's own OTLP/HTTP sink.
TRACE_SAMPLE = "0.01"
# The setups measured under callgrind (instructions per request) and the requests each gets.
INSTR_SETUPS = ["sidecar", "mesh", "nginx", "haproxy", "policies", "pingora"]


class Mode:
    def __init__(self, quick: bool):
        self.quick = quick
        self.name = "quick" if quick else "full"
        self.reps = 3 if quick else 5
        self.duration = 2 if quick else 15
        # Quick mode: no warm-up run; of its 3 repetitions the median is not the cold first.
        self.warmup = 0 if quick else 3
        self.extra_reps = 1 if quick else 3
        self.extra_duration = 3 if quick else 10
        # POST and the header mix: full mode only (quick mode stays under 2 minutes).
        self.extra_setups = [] if quick else ["direct", "sidecar", "mesh", "nginx", "haproxy",
                                              "policies", "pingora"]
        self.latency_reps = 1 if quick else 3
        self.latency_duration = 2 if quick else 10
        self.alloc_duration = 1 if quick else 5
        self.instr_requests = 1000 if quick else 10000
        # The mesh hop is two sidecars: about twice setup 2, and slow to start under valgrind.
        self.instr_setups = [k for k in INSTR_SETUPS if not (quick and k == "mesh")]
        self.threads = [1] if quick else [1, 2]
        self.profile = not quick


# --------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run_text(argv: list[str], timeout: float = 30) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({e})"
    return (p.stdout + p.stderr).strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(addr: str, path: str = "/bench", host: str = "b", timeout: float = 2.0):
    ip, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((ip, int(port)), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


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


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


# --------------------------------------------------------------------------------------------
# processes


class Proc:
    """A child process pinned with taskset, in its own process group, logs in the run dir."""

    def __init__(self, name: str, argv: list[str], cpus: str, run_dir: Path,
                 env: dict | None = None, dump_signal: int = signal.SIGUSR2):
        self.name = name
        self.dump_signal = dump_signal
        self.stdout_path = run_dir / f"{name}.out"
        self.stderr_path = run_dir / f"{name}.err"
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                ["taskset", "-c", cpus, *argv], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env=full_env, start_new_session=True)
        self.pid = self.popen.pid
        RUNNING.append(self)

    def pids(self) -> list[int]:
        """The process and its children (nginx: the master and its workers)."""
        return [self.pid, *children_of(self.pid)]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self) -> None:
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except OSError:
                pass

    def stop(self) -> None:
        self.terminate()
        if self.popen.poll() is None:
            try:
                self.popen.wait(timeout=6)
            except subprocess.TimeoutExpired:
                pass
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
            self.popen.wait()
        if self in RUNNING:
            RUNNING.remove(self)

    def tail(self, n: int = 5) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])


RUNNING: list[Proc] = []


def stop_many(procs: list[Proc]) -> None:
    """SIGTERM to all first, then wait for each: the sidecars' grace periods overlap."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.stop()


def stop_all() -> None:
    stop_many(list(reversed(RUNNING)))


class Setup:
    def __init__(self, key: str, addr: str, procs: list[Proc], config: str, host: str = "b"):
        self.key = key
        self.addr = addr
        self.procs = procs  # the proxy processes (empty for direct)
        self.config = config
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def pids(self) -> list[int]:
        return [pid for p in self.procs for pid in p.pids()]


# --------------------------------------------------------------------------------------------
# configurations


def nginx_backend_conf(run_dir: Path, ports: list[int]) -> str:
    listens = "\n".join(f"    listen 127.0.0.1:{p} backlog=4096;" for p in ports)
    return f"""# backend: one worker, a fixed body, no logs; the same for every setup
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {run_dir}/backend.pid;
error_log {run_dir}/backend.error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  client_body_buffer_size 64k;
  server {{
{listens}
    location = /healthz {{ default_type text/plain; return 200 "ok\\n"; }}
    location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }}
  }}
}}
"""


def nginx_proxy_conf(run_dir: Path, name: str, port: int, backend: int, threads: int,
                     master: bool = True) -> str:
    return f"""# nginx reverse proxy: {threads} worker(s), upstream keepalive, no access log
daemon off;
master_process {"on" if master else "off"};
worker_processes {threads};
worker_rlimit_nofile 16384;
pid {run_dir}/{name}.pid;
error_log {run_dir}/{name}.error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  upstream backend {{
    server 127.0.0.1:{backend};
    keepalive 128;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def haproxy_conf(port: int, backend: int, threads: int) -> str:
    return f"""# HAProxy: {threads} thread(s), connection reuse, no logs
global
  nbthread {threads}
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout http-keep-alive 600s
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server backend 127.0.0.1:{backend}
"""


def table_plain(endpoint: str) -> str:
    return f"""# setup 2/3: no policies (what the table allows): one try, round-robin over one
# endpoint, no health checks, breaker and concurrency limit out of reach
version = 1
[services.b]
endpoints = ["{endpoint}"]
lb = "round-robin"
timeouts = {{ connect_ms = 1000, request_ms = 15000 }}
retries = {{ attempts = 1, on = ["connect-failure"] }}
breaker = {{ consecutive_failures = 1000, max_ejected_percent = 0, max_concurrent = 1000000, max_pending = 0 }}
"""


def table_policies(endpoints: list[str]) -> str:
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return f"""# setup 6: every policy on. Two endpoints (two listening ports of the same backend
# process) so p2c-ewma has a choice and the breaker something to eject. Metrics on and
# tracing at 1% (OTEL_* variables).
version = 1
[services.b]
endpoints = [{eps}]
lb = "p2c-ewma"
health_check = {{ kind = "http", path = "/healthz", interval_ms = 1000, timeout_ms = 500, healthy = 2, unhealthy = 3 }}
timeouts = {{ connect_ms = 250, per_try_ms = 1000, request_ms = 5000 }}
retries = {{ attempts = 3, on = ["connect-failure", "reset", "5xx", "gateway-error"], backoff_ms = [25, 250], budget = {{ ratio = 0.2, min_per_s = 10, window_ms = 10000 }}, max_body_bytes = 65536 }}
breaker = {{ consecutive_failures = 5, base_ejection_ms = 30000, max_ejection_ms = 300000, max_ejected_percent = 50, max_concurrent = 1024, max_pending = 1024 }}
"""


# --------------------------------------------------------------------------------------------
# starting things


class OtlpSink:
    """An OTLP/HTTP endpoint that accepts span exports and counts them: setup 6's tracing
    exports somewhere real, and the report says how much arrived. It does not decode them
    (the sidecar's tests do that); an empty body is a valid ExportTraceServiceResponse."""

    def __init__(self):
        import http.server
        sink = self
        self.requests = 0
        self.bytes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                self.rfile.read(n)
                sink.requests += 1
                sink.bytes += n
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Lab:
    def __init__(self, args, run_dir: Path):
        self.args = args
        self.run_dir = run_dir
        self.bin_dir = Path(args.bin_dir)
        self.mc_dir = run_dir / "malloc"
        self.mc_dir.mkdir(mode=0o777, exist_ok=True)
        os.chmod(self.mc_dir, 0o777)  # nginx workers run as nobody
        self.backend_ports: list[int] = []
        self.backend: Proc | None = None
        self.features: dict = {}
        self.otlp = OtlpSink()
        # A command prefix for every proxy started (valgrind for the instruction pass).
        self.wrap: list[str] = []

    def shim_env(self, on: bool, dump_signal: int) -> dict:
        if not on:
            return {}
        return {"LD_PRELOAD": str(self.args.shim),
                "MALLOC_COUNT_FILE": str(self.mc_dir / "mc.%p"),
                "MALLOC_COUNT_SIGNAL": str(int(dump_signal))}

    def start_nginx(self, name: str, conf: str, cpus: str, shim: bool = False) -> Proc:
        path = self.run_dir / f"{name}.conf"
        path.write_text(conf)
        return Proc(name, [*self.wrap, "nginx", "-p", str(self.run_dir), "-e",
                           str(self.run_dir / f"{name}.error.log"), "-c", str(path)],
                    cpus, self.run_dir,
                    env=self.shim_env(shim, RT_DUMP_SIGNAL), dump_signal=RT_DUMP_SIGNAL)

    def start_backend(self) -> str:
        self.backend_ports = [free_port(), free_port()]
        conf = nginx_backend_conf(self.run_dir, self.backend_ports)
        self.backend = self.start_nginx("backend", conf, CPU_LOAD)
        self.backend_conf = conf
        addr = f"127.0.0.1:{self.backend_ports[0]}"
        wait_for(lambda: http_status(addr) == 200, 10, f"the backend on {addr}")
        return addr

    def backend_addr(self, i: int = 0) -> str:
        return f"127.0.0.1:{self.backend_ports[i]}"

    def start_sidecar(self, name: str, table: str, threads: int, cpus: str, app: str,
                      shim: bool, listener: str, flags: list[str] = (),
                      env: dict | None = None) -> tuple[Proc, str]:
        table_path = self.run_dir / f"{name}.toml"
        table_path.write_text(table)
        argv = [*self.wrap, str(self.bin_dir / "sidecar"), "--service", "b" if listener == "inbound" else "client",
                "--table", str(table_path), "--outbound", "127.0.0.1:0", "--inbound", "127.0.0.1:0",
                "--admin", "127.0.0.1:0", "--app", app, "--threads", str(threads),
                "--shutdown-grace-s", "1", *flags]
        env = {"RUST_LOG": os.environ.get("BENCH_RUST_LOG", "info"), **(env or {})}
        env.update(self.shim_env(shim, signal.SIGUSR2))
        p = Proc(name, argv, cpus, self.run_dir, env=env, dump_signal=signal.SIGUSR2)
        found = {}

        def listening():
            if not p.alive():
                raise RuntimeError(f"{name} exited: {p.tail()}")
            for line in p.stdout_path.read_text(errors="replace").splitlines():
                if line.startswith("LISTENING "):
                    found.update(json.loads(line[len("LISTENING "):]))
                    return True
            return False

        slow = 4 if self.wrap else 1  # under valgrind everything starts slower
        wait_for(listening, 30 * slow, f"{name}'s LISTENING line")
        wait_for(lambda: http_status(found["admin"], "/ready") == 200, 30 * slow, f"{name} /ready")
        return p, found[listener]

    def start_setups(self, threads: int, shim: bool = False, only: list[str] | None = None,
                     failed: dict | None = None) -> dict:
        """Starts the setups; one that fails to start is logged, left out and named in failed."""
        cpus = CPU_PROXY[threads]
        suffix = f"-t{threads}" + ("-shim" if shim else "")
        setups: dict[str, Setup] = {}
        for key in only or SETUPS:
            try:
                s = self.start_setup(key, threads, cpus, suffix, shim)
                if s is None:
                    continue
                wait_for(lambda s=s: http_status(s.addr) == 200, 60 if self.wrap else 15,
                         f"setup {key} on {s.addr}")
                setups[key] = s
            except (RuntimeError, OSError) as e:
                log(f"setup {key} did not start: {e}")
                if failed is not None:
                    failed[key] = str(e)
        # nginx forks its workers after it listens: give them a moment to exist.
        time.sleep(0.3)
        return setups

    def start_setup(self, key: str, threads: int, cpus: str, suffix: str, shim: bool):
        backend = self.backend_addr()
        if key == "direct":
            return None if shim else Setup("direct", backend, [], self.backend_conf)
        if key == "sidecar":
            table = table_plain(backend)
            p, addr = self.start_sidecar(f"sidecar{suffix}", table, threads, cpus, backend,
                                         shim, "outbound", SIDECAR_FLAGS_NONE)
            return Setup("sidecar", addr, [p],
                         f"# sidecar --threads {threads} {' '.join(SIDECAR_FLAGS_NONE)}\n{table}")
        if key == "mesh":
            table_in = table_plain(backend)
            pin, in_addr = self.start_sidecar(f"mesh-inbound{suffix}", table_in, threads, cpus,
                                              backend, shim, "inbound", SIDECAR_FLAGS_NONE)
            table_out = table_plain(in_addr)
            pout, out_addr = self.start_sidecar(f"mesh-outbound{suffix}", table_out, threads,
                                                cpus, backend, shim, "outbound",
                                                SIDECAR_FLAGS_NONE)
            none = " ".join(SIDECAR_FLAGS_NONE)
            return Setup("mesh", out_addr, [pout, pin],
                         f"# outbound sidecar (--threads {threads} {none})\n{table_out}\n"
                         f"# inbound sidecar (--threads {threads} --app {backend} {none})\n"
                         f"{table_in}")
        if key == "nginx":
            port = free_port()
            name = f"nginx{suffix}"
            conf = nginx_proxy_conf(self.run_dir, name, port, self.backend_ports[0], threads,
                                    master=not self.wrap)
            p = self.start_nginx(name, conf, cpus, shim)
            return Setup("nginx", f"127.0.0.1:{port}", [p], conf)
        if key == "haproxy":
            port = free_port()
            conf = haproxy_conf(port, self.backend_ports[0], threads)
            path = self.run_dir / f"haproxy{suffix}.cfg"
            path.write_text(conf)
            p = Proc(f"haproxy{suffix}", [*self.wrap, "haproxy", "-db", "-f", str(path)], cpus,
                     self.run_dir,
                     env=self.shim_env(shim, RT_DUMP_SIGNAL), dump_signal=RT_DUMP_SIGNAL)
            return Setup("haproxy", f"127.0.0.1:{port}", [p], conf)
        if key == "policies":
            table = table_policies([self.backend_addr(0), self.backend_addr(1)])
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp.url,
                   "OTEL_SERVICE_NAME": "bench-client",
                   "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                   "OTEL_TRACES_SAMPLER_ARG": TRACE_SAMPLE}
            p, addr = self.start_sidecar(f"policies{suffix}", table, threads, cpus, backend,
                                         shim, "outbound", env=env)
            envs = " ".join(f"{k}={v}" for k, v in env.items())
            return Setup("policies", addr, [p],
                         f"# {envs} sidecar --threads {threads}\n{table}")
        if key == "pingora":
            port = free_port()
            argv = [*self.wrap, str(self.bin_dir / "examples" / "bare_proxy"),
                    f"127.0.0.1:{port}", backend, "--threads", str(threads)]
            env = self.shim_env(shim, signal.SIGUSR2)
            p = Proc(f"pingora{suffix}", argv, cpus, self.run_dir, env=env,
                     dump_signal=signal.SIGUSR2)
            return Setup("pingora", f"127.0.0.1:{port}", [p],
                         f"# {' '.join(argv[len(self.wrap):])}\n"
                         "# sidecar/examples/bare_proxy.rs: HttpPeer to the backend, no timeouts")
        raise ValueError(key)


# --------------------------------------------------------------------------------------------
# measuring


def run_wrk(setup: Setup, script: str, duration: float, backend_pids: list[int]) -> dict:
    """One closed-loop saturation run; CPU of the proxy and of the backend over the run."""
    duration = max(1, round(duration))  # wrk takes whole seconds
    pids = setup.pids()
    argv = ["taskset", "-c", CPU_LOAD, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s",
            "--timeout", "5s", "-s", str(WRK_DIR / script), setup.url, "--", setup.host]
    rss_peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.wait(duration * 0.3):
            rss_peak[0] = max(rss_peak[0], rss_kib(pids))

    sampler = threading.Thread(target=sample, daemon=True)
    (u0, s0), b0 = cpu_ticks_split(pids), cpu_ticks(backend_pids)
    t0, p0 = time.monotonic(), u0 + s0
    all0, gen0 = cpu_busy_jiffies(), children_cpu_s()
    sampler.start()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        stop.set()
        return {"error": "wrk timed out"}
    finally:
        stop.set()
    (u1, s1), b1 = cpu_ticks_split(pids), cpu_ticks(backend_pids)
    t1, p1 = time.monotonic(), u1 + s1
    all1, gen1 = cpu_busy_jiffies(), children_cpu_s()
    ours = (p1 - p0 + b1 - b0) / CLK_TCK + (gen1 - gen0)
    other_share = max(0.0, ((all1 - all0) / CLK_TCK - ours) / ((t1 - t0) * (os.cpu_count() or 1)))
    m = re.search(r"^WRK_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        why = (out.stderr.strip() or out.stdout.strip())[-300:]
        return {"error": f"wrk failed ({out.returncode}): {why}"}
    w = json.loads(m.group(1))
    reqs = w["requests"]
    secs = w["duration_us"] / 1e6
    errors = sum(w["errors"].values())
    res = {
        "requests": reqs,
        "seconds": round(secs, 3),
        "rps": round(reqs / secs, 1) if secs else None,
        "errors": w["errors"],
        "error_share": round(errors / reqs, 5) if reqs else None,
        "wrk_latency_us": w["latency_us"],
        "proxy_cpu_s": round((p1 - p0) / CLK_TCK, 3) if pids else None,
        "proxy_cpu_util": round((p1 - p0) / CLK_TCK / (t1 - t0), 3) if pids else None,
        "cpu_us_per_req": round((p1 - p0) / CLK_TCK * 1e6 / reqs, 2) if pids and reqs else None,
        "user_us_per_req": round((u1 - u0) / CLK_TCK * 1e6 / reqs, 2) if pids and reqs else None,
        "sys_us_per_req": round((s1 - s0) / CLK_TCK * 1e6 / reqs, 2) if pids and reqs else None,
        "backend_cpu_us_per_req": round((b1 - b0) / CLK_TCK * 1e6 / reqs, 2) if reqs else None,
        "rss_load_kib": rss_peak[0] or None,
        "generator_cpu_s": round(gen1 - gen0, 3),
        "other_load_share": round(other_share, 3),
    }
    if reqs == 0:
        res["error"] = "no request completed"
    return res


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    keys = ["rps", "cpu_us_per_req", "user_us_per_req", "sys_us_per_req",
            "backend_cpu_us_per_req", "proxy_cpu_util", "error_share", "rss_load_kib",
            "other_load_share"]
    out = {k: median([r.get(k) for r in ok]) for k in keys}
    rps = [r["rps"] for r in ok]
    out["rps_min"] = min(rps) if rps else None
    out["rps_max"] = max(rps) if rps else None
    out["runs_ok"] = len(ok)
    out["runs_failed"] = len(runs) - len(ok)
    if len(ok) < len(runs):
        out["failures"] = [r["error"] for r in runs if "error" in r]
    return out


def run_oha(oha: str, setup: Setup, rate: int, duration: float) -> dict:
    argv = ["taskset", "-c", CPU_LOAD, oha, "-z", f"{duration}s", "-q", str(rate),
            "-c", str(CONNECTIONS), "--latency-correction", "--no-tui", "--output-format", "json",
            "-H", f"Host: {setup.host}", f"{setup.url}/bench"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        return {"error": "oha timed out"}
    if out.returncode != 0:
        return {"error": f"oha failed ({out.returncode}): {out.stderr.strip()[-300:]}"}
    try:
        j = json.loads(out.stdout)
    except json.JSONDecodeError as e:
        return {"error": f"oha printed no JSON: {e}"}
    pct = j.get("latencyPercentiles", {})
    summ = j.get("summary", {})
    codes = j.get("statusCodeDistribution", {})
    total = sum(int(v) for v in codes.values())
    ok = int(codes.get("200", 0))
    res = {f"p{k}": round(pct[f"p{k}"] * 1e6, 1) if pct.get(f"p{k}") is not None else None
           for k in ("50", "90", "99", "99.9")}
    res.update({"achieved_rps": round(summ.get("requestsPerSec") or 0, 1),
                "requests": total, "ok_share": round(ok / total, 5) if total else None})
    if not total:
        res["error"] = "no response"
    return res


def idle_connections_rss(setup: Setup, n: int) -> dict:
    """RSS with n idle keep-alive client connections, each having sent one request."""
    before = rss_kib(setup.pids())
    socks = []
    ok = 0
    req = f"GET /bench HTTP/1.1\r\nHost: {setup.host}\r\n\r\n".encode()
    ip, port = setup.addr.rsplit(":", 1)
    try:
        for _ in range(n):
            s = socket.create_connection((ip, int(port)), timeout=5)
            s.sendall(req)
            socks.append(s)
        for s in socks:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"HTTP/1.1 200"):
                ok += 1
        time.sleep(0.5)
        with_conns = rss_kib(setup.pids())
        still_open = sum(1 for s in socks if _still_open(s))
    except OSError as e:
        for s in socks:
            s.close()
        return {"error": f"{type(e).__name__}: {e} after {len(socks)} connections"}
    for s in socks:
        s.close()
    return {"connections": len(socks), "answered": ok, "still_open": still_open,
            "rss_before_kib": before, "rss_kib": with_conns,
            "kib_per_connection": round((with_conns - before) / n, 2)}


def _still_open(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def malloc_counts(setup: Setup, run_dir: Path) -> dict | None:
    """Signals every process of the setup and sums the counters its shim writes."""
    total: dict[str, int] = {}
    for proc in setup.procs:
        for pid in proc.pids():
            path = run_dir / "malloc" / f"mc.{pid}"
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            try:
                os.kill(pid, proc.dump_signal)
            except OSError:
                continue
            deadline = time.monotonic() + 3
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not path.exists():
                return None
            for line in path.read_text().splitlines():
                k, v = line.split()
                if k != "pid":
                    total[k] = total.get(k, 0) + int(v)
    return total


def alloc_pass(lab: Lab, threads: int, duration: float) -> dict:
    results = {}
    failed: dict = {}
    setups = lab.start_setups(threads, shim=True, only=[s for s in SETUPS if s != "direct"],
                              failed=failed)
    for key, why in failed.items():
        results[key] = {"error": f"did not start under the shim: {why}"}
    try:
        for key, s in setups.items():
            # No warm-up: each wrk run opens its 50 connections anew anyway; their set-up,
            # spread over the run, is well under one allocation per request.
            before = malloc_counts(s, lab.run_dir)
            r = run_wrk(s, "get.lua", duration, [])
            after = malloc_counts(s, lab.run_dir)
            if before is None or after is None or "error" in r:
                results[key] = {"error": r.get("error", "the shim wrote no counters")}
                continue
            d = {k: after[k] - before.get(k, 0) for k in after}
            reqs = r["requests"]
            results[key] = {
                "requests": reqs,
                "delta": d,
                "allocs_per_req": round((d["malloc"] + d["calloc"] + d["memalign"]) / reqs, 2),
                "frees_per_req": round(d["free"] / reqs, 2),
                "reallocs_per_req": round(d["realloc"] / reqs, 2),
            }
    finally:
        stop_many([p for s in setups.values() for p in s.procs])
    return results


def callgrind_total(path: Path) -> int | None:
    """The event total of one callgrind dump (its `summary:` or `totals:` line)."""
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def instructions_pass(lab: Lab, oha: str | None, requests: int, keys: list[str]) -> dict:
    """Instructions per request under callgrind, one setup at a time, 1 thread.

    Each proxy runs under `valgrind --tool=callgrind`; after a warm-up its counters are zeroed
    (callgrind_control -z), oha sends exactly `requests` GETs over 10 connections, and the
    counters are dumped (-d). The count is every instruction the proxy's threads executed in
    user space (background tasks included), divided by the requests: deterministic for a
    binary and its inputs, so it reproduces to about 1% whatever else the machine does,
    unlike CPU time. Kernel time is not in it: the syscalls are the same few per request for
    every proxy here (see the CPU split above)."""
    if not oha:
        return {"error": "oha is missing: no fixed-count load generator"}
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        return {"error": "valgrind is not installed"}
    cg_dir = lab.run_dir / "callgrind"
    cg_dir.mkdir(exist_ok=True)
    results: dict = {}
    for key in keys:
        lab.wrap = ["valgrind", "--tool=callgrind", "--quiet",
                    f"--callgrind-out-file={cg_dir}/{key}.%p"]
        failed: dict = {}
        try:
            setups = lab.start_setups(1, only=[key], failed=failed)
        finally:
            lab.wrap = []
        if key not in setups:
            results[key] = {"error": f"did not start under valgrind: {failed.get(key, '?')}"}
            continue
        s = setups[key]
        pids = [p.pid for p in s.procs]
        try:
            load = ["taskset", "-c", CPU_LOAD, oha, "-c", "10", "--no-tui", "-H", f"Host: {s.host}"]
            subprocess.run([*load, "-n", str(max(200, requests // 5)), s.url + "/warm"],
                           capture_output=True, timeout=300)
            for pid in pids:
                subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True,
                               timeout=60)
            t0 = time.monotonic()
            r = subprocess.run([*load, "-n", str(requests), "--output-format", "json",
                                s.url + "/bench"], capture_output=True, text=True, timeout=600)
            took = time.monotonic() - t0
            ok = None
            try:
                codes = json.loads(r.stdout).get("statusCodeDistribution") or {}
                ok = int(codes.get("200", 0))
            except (json.JSONDecodeError, ValueError):
                pass
            totals = []
            for pid in pids:
                subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True,
                               timeout=60)
                dumps = sorted(cg_dir.glob(f"{key}.{pid}.*"))
                totals.append(callgrind_total(dumps[-1]) if dumps else None)
            if any(t is None for t in totals) or not ok:
                results[key] = {"error": f"no callgrind dump or no 200s (200s: {ok})"}
                continue
            results[key] = {
                "requests": requests,
                "ok": ok,
                "instructions": sum(totals),
                "per_request": round(sum(totals) / requests),
                "per_process": [round(t / requests) for t in totals],
                "seconds": round(took, 1),
            }
            log(f"instructions {key}: {results[key]['per_request']:,} per request "
                f"({ok}/{requests} ok, {took:.1f} s)")
        finally:
            stop_many(s.procs)
    return results


def tidy(line: str) -> str:
    """A perf report line without its padding and empty trailing columns."""
    parts = [p for p in re.split(r"\s{2,}", line.strip()) if p not in ("-", "")]
    return "  ".join(parts)[:160]


def profile_sidecar(setup: Setup, duration: float, run_dir: Path) -> dict:
    """perf (software clock, the only kind here) on the sidecar while wrk saturates it."""
    if not shutil.which("perf"):
        return {"error": "perf not installed"}
    data = run_dir / "perf.data"
    pid = setup.procs[0].pid
    perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-o",
                             str(data), "-p", str(pid), "--", "sleep", str(duration)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)
    run_wrk(setup, "get.lua", duration, [])
    _, err = perf.communicate(timeout=duration + 30)
    if perf.returncode != 0:
        return {"error": f"perf record failed: {err.strip()[-300:]}"}
    rep = run_text(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                    "--sort", "dso,symbol", "--percent-limit", "0.7", "-g", "none"], timeout=120)
    top = [tidy(ln) for ln in rep.splitlines() if re.match(r"^\s+\d+\.\d+%", ln)][:30]
    dsos = run_text(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                     "--sort", "dso", "-g", "none"], timeout=120)
    by_dso = [tidy(ln) for ln in dsos.splitlines() if re.match(r"^\s+\d+\.\d+%", ln)][:8]
    return {"top_symbols": top, "by_dso": by_dso}


# --------------------------------------------------------------------------------------------
# machine, versions, load


def machine_info() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": os.uname().release,
            "mem_mib": mem, "hostname": socket.gethostname()}


def versions(oha: str | None) -> dict:
    wrk = run_text(["wrk", "-v"]).splitlines()
    return {
        "rustc": run_text(["rustc", "--version"]),
        "nginx": run_text(["nginx", "-v"]).replace("nginx version: ", ""),
        "haproxy": run_text(["haproxy", "-v"]).splitlines()[0],
        "wrk": wrk[0] if wrk else "unknown",
        "oha": run_text([oha, "--version"]) if oha else "not installed",
        "python": sys.version.split()[0],
        "sidecar": run_text([str(ROOT / "target/release/sidecar"), "--version"]),
    }


def busy_processes(seconds: float = 0.5) -> list[dict]:
    """Processes (not ours) that used more than 10% of a CPU over a short sample."""
    def snap():
        out = {}
        for e in os.listdir("/proc"):
            if not e.isdigit():
                continue
            try:
                with open(f"/proc/{e}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            name = st[st.find("(") + 1:st.rfind(")")]
            fields = st[st.rfind(")") + 2:].split()
            out[int(e)] = (name, int(fields[11]) + int(fields[12]))
        return out
    a = snap()
    time.sleep(seconds)
    b = snap()
    busy = []
    for pid, (name, t) in b.items():
        if pid in a and pid != os.getpid():
            share = (t - a[pid][1]) / CLK_TCK / seconds
            if share > 0.10:
                busy.append({"pid": pid, "name": name, "cpu": round(share, 2)})
    return sorted(busy, key=lambda x: -x["cpu"])


def git_info() -> dict:
    sha = run_text(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = run_text(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {"sha": sha if re.fullmatch(r"[0-9a-f]{4,40}", sha) else "nogit",
            "dirty": bool(dirty.strip())}


# --------------------------------------------------------------------------------------------
# control plane


def control_plane(args, mode: Mode) -> dict:
    script = BENCH / "cp_bench.py"
    if not script.exists():
        return {"error": "bench/cp_bench.py does not exist yet"}
    argv = [sys.executable, str(script), *(["--quick"] if mode.quick else []),
            "--bin-dir", str(args.bin_dir)]
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                           timeout=240 if mode.quick else 1800)
    except subprocess.TimeoutExpired:
        return {"error": "cp_bench.py timed out"}
    took = round(time.monotonic() - t0, 1)
    text = p.stdout.strip()
    data = None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                try:
                    data = json.loads(line)
                    break
                except json.JSONDecodeError:
                    pass
    if p.returncode != 0 or not isinstance(data, dict):
        why = (p.stderr.strip() or text)[-400:]
        return {"error": f"cp_bench.py exited {p.returncode}: {why}", "seconds": took}
    return {"result": data, "seconds": took}


# --------------------------------------------------------------------------------------------
# the run


def measure_threads(lab: Lab, mode: Mode, threads: int, oha: str | None, out: dict) -> None:
    log(f"--- {threads} worker thread(s) per proxy: starting the setups")
    failed: dict = {}
    setups = lab.start_setups(threads, failed=failed)
    t = out.setdefault("threads", {}).setdefault(str(threads), {})
    if failed:
        t["failed_to_start"] = failed
        out["notes"].append(f"{threads} thread(s): setups that did not start: "
                            + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    if not setups:
        raise RuntimeError("no setup started")
    t["configs"] = {k: s.config for k, s in setups.items()}
    t["addresses"] = {k: s.addr for k, s in setups.items()}
    backend_pids = lab.backend.pids()
    phase_start = [time.monotonic()]
    timings = t.setdefault("timings_s", {})

    def mark(name: str) -> None:
        now = time.monotonic()
        timings[name] = round(now - phase_start[0], 1)
        phase_start[0] = now
    try:
        time.sleep(0.5)
        t["rss_idle_kib"] = {k: rss_kib(s.pids()) for k, s in setups.items() if s.procs}
        t["rss_idle_kib"]["backend"] = rss_kib(backend_pids)
        for key, s in setups.items() if mode.warmup else ():
            log(f"warm-up {key}")
            run_wrk(s, "get.lua", mode.warmup, backend_pids)

        sat: dict[str, list] = {k: [] for k in setups}
        for rep in range(mode.reps):
            for key, s in setups.items():
                r = run_wrk(s, "get.lua", mode.duration, backend_pids)
                sat[key].append(r)
                log(f"GET rep {rep + 1}/{mode.reps} {key}: {r.get('rps', 0):.0f} req/s, "
                    f"{r.get('cpu_us_per_req') or '-'} us CPU/req {r.get('error', '')}")
        t["get"] = {k: {"runs": v, "median": summarize(v)} for k, v in sat.items()}
        mark("start_warmup_get")

        if threads != 1:
            return
        for script in ("post.lua", "headers.lua"):
            runs: dict[str, list] = {k: [] for k in mode.extra_setups if k in setups}
            for rep in range(mode.extra_reps):
                for key in runs:
                    r = run_wrk(setups[key], script, mode.extra_duration, backend_pids)
                    runs[key].append(r)
                    log(f"{script} rep {rep + 1} {key}: {r.get('rps', 0):.0f} req/s "
                        f"{r.get('error', '')}")
            if runs:
                t[script.removesuffix(".lua")] = {k: {"runs": v, "median": summarize(v)}
                                                  for k, v in runs.items()}
        mark("post_headers")

        rates = [t["get"][k]["median"]["rps"] for k in setups if t["get"][k]["median"]["rps"]]
        if oha and rates:
            rate = max(500, int(min(rates) / 2 // 500 * 500))
            out["latency_rate"] = rate
            lat: dict[str, list] = {k: [] for k in setups}
            for rep in range(mode.latency_reps):
                for key, s in setups.items():
                    r = run_oha(oha, s, rate, mode.latency_duration)
                    lat[key].append(r)
                    log(f"latency rep {rep + 1} {key} at {rate}/s: p50 {r.get('p50')} us "
                        f"p99 {r.get('p99')} us {r.get('error', '')}")
            t["latency"] = {}
            for key, runs in lat.items():
                ok = [r for r in runs if "error" not in r]
                t["latency"][key] = {
                    "runs": runs,
                    "median": {p: median([r[p] for r in ok]) for p in
                               ("p50", "p90", "p99", "p99.9", "achieved_rps", "ok_share")},
                }
            t["latency_source"] = "oha"
        else:
            t["latency_source"] = "wrk"
            t["latency"] = {
                k: {"median": {p: median([r["wrk_latency_us"][p] for r in v["runs"]
                                          if "error" not in r])
                               for p in ("p50", "p90", "p99", "p99.9")}}
                for k, v in t["get"].items()}

        mark("latency")
        t["idle_connections"] = {}
        for key, s in setups.items():
            target = s if s.procs else Setup("direct", s.addr, [lab.backend], "")
            r = idle_connections_rss(target, IDLE_CONNECTIONS)
            t["idle_connections"][key] = r
            log(f"{IDLE_CONNECTIONS} idle connections {key}: {r}")

        mark("idle_connections")
        if mode.profile or lab.args.profile:
            log("profiling the sidecar (setup 2) with perf")
            if "sidecar" in setups:
                t["profile"] = profile_sidecar(setups["sidecar"], 5, lab.run_dir)
    finally:
        stop_many([p for s in setups.values() for p in s.procs])

    log("allocations per request (proxies restarted under malloc_count.so)")
    t["allocs"] = alloc_pass(lab, threads, mode.alloc_duration)
    mark("allocs")


def compute_ratios(out: dict) -> dict:
    ratios = {}
    for th, t in out.get("threads", {}).items():
        get = {k: v["median"] for k, v in t.get("get", {}).items()}
        if not get:
            continue

        def g(key, field):
            return (get.get(key) or {}).get(field)

        def paired(a, b, field):
            """The median over repetitions of a/b within each repetition: A and B ran
            seconds apart, so drift of the machine between repetitions cancels."""
            ra = (t["get"].get(a) or {}).get("runs") or []
            rb = (t["get"].get(b) or {}).get("runs") or []
            vals = [x[field] / y[field] for x, y in zip(ra, rb)
                    if "error" not in x and "error" not in y and x.get(field) and y.get(field)]
            return median(vals) if vals else ratio(g(a, field), g(b, field))
        direct_cpu = g("direct", "backend_cpu_us_per_req")
        r = {}
        for name, key in (("sidecar", "sidecar"), ("mesh", "mesh"), ("policies", "policies")):
            r[name] = {
                "rps_vs_nginx": paired(key, "nginx", "rps"),
                "rps_vs_haproxy": paired(key, "haproxy", "rps"),
                "rps_vs_direct": paired(key, "direct", "rps"),
                "cpu_vs_nginx": paired(key, "nginx", "cpu_us_per_req"),
                "cpu_vs_haproxy": paired(key, "haproxy", "cpu_us_per_req"),
                "cpu_vs_direct": ratio(g(key, "cpu_us_per_req"), direct_cpu),
                "cpu_vs_pingora": paired(key, "pingora", "cpu_us_per_req"),
            }
        r["pingora"] = {
            "rps_vs_nginx": paired("pingora", "nginx", "rps"),
            "cpu_vs_nginx": paired("pingora", "nginx", "cpu_us_per_req"),
        }
        r["policies_vs_sidecar"] = {
            "rps": paired("policies", "sidecar", "rps"),
            "cpu": paired("policies", "sidecar", "cpu_us_per_req"),
        }
        for k in r:
            r[k] = {a: (round(b, 3) if b is not None else None) for a, b in r[k].items()}
        ratios[th] = r
    ins = {k: v.get("per_request") for k, v in (out.get("instructions") or {}).items()
           if isinstance(v, dict)}
    if any(ins.values()):
        r = {}
        for key in ("sidecar", "mesh", "policies", "pingora"):
            r[key] = {f"vs_{o}": ratio(ins.get(key), ins.get(o))
                      for o in ("nginx", "haproxy", "pingora") if o != key}
        r["policies_vs_sidecar"] = {"instr": ratio(ins.get("policies"), ins.get("sidecar"))}
        for k in r:
            r[k] = {a: (round(b, 3) if b is not None else None) for a, b in r[k].items()}
        ratios["instructions"] = r
    return ratios


# --------------------------------------------------------------------------------------------
# output


def fmt(x, nd=1, dash="-"):
    if x is None:
        return dash
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def fx(x):
    return "-" if x is None else f"{x:.2f}x"


def cpu_cell(md: dict) -> str:
    if md.get("cpu_us_per_req") is None:
        return "-"
    if md.get("user_us_per_req") is None or md.get("sys_us_per_req") is None:
        return fmt(md["cpu_us_per_req"], 1)
    return (f"{md['cpu_us_per_req']:.1f} ({md['user_us_per_req']:.1f} + "
            f"{md['sys_us_per_req']:.1f})")


def pct(x, nd=2):
    return "-" if x is None else f"{x:.{nd}%}"


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def chart(out: dict, png: Path, run_dir: Path) -> str | None:
    t = out.get("threads", {}).get("1", {})
    lat = t.get("latency")
    if not lat or not shutil.which("gnuplot"):
        return "no latency figures" if not lat else "gnuplot not installed"
    data = run_dir / "latency.dat"
    rows = []
    for key in SETUPS:
        m = (lat.get(key) or {}).get("median") or {}
        vals = [m.get(p) for p in ("p50", "p90", "p99", "p99.9")]
        if any(v is None for v in vals):
            continue
        rows.append(f'"{TITLES[key]}" ' + " ".join(f"{v / 1000:.4f}" for v in vals))
    if not rows:
        return "no complete latency row"
    data.write_text("\n".join(rows) + "\n")
    src = t.get("latency_source", "oha")
    rate = out.get("latency_rate")
    title = (f"Latency at {rate} req/s (open loop, {src}, corrected), 1 thread per proxy"
             if src == "oha" else "Latency (wrk closed loop at saturation), 1 thread per proxy")
    script = f"""
set terminal pngcairo size 1100,560 font "sans,10"
set output "{png}"
set title "{title}\\n{out['date']} {out['git']['sha']} ({out['mode']})"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set ylabel "latency (ms, log scale)"
set grid ytics mytics
set key top left
set xtics nomirror
plot "{data}" using 2:xtic(1) title "p50", '' using 3 title "p90", '' using 4 title "p99", '' using 5 title "p99.9"
"""
    p = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
    if p.returncode != 0:
        return f"gnuplot failed: {p.stderr.strip()[-300:]}"
    return None


def control_plane_lines(r: dict) -> list[str]:
    """The headline figures of cp_bench.py's object, whatever of them it has."""
    lines = []
    p = r.get("poll_304") or {}
    if p:
        lines.append(
            f"304 polls: {fmt(p.get('polls_per_s'), 0)}/s served with the control plane pinned "
            f"to one core ({fmt(p.get('cp_core_utilisation'), 2)} of it busy, limited by "
            f"{p.get('limited_by', '?')}); {fmt(p.get('cp_cpu_us_per_poll'), 1)} us CPU per poll, "
            f"so about {fmt(p.get('cp_polls_per_cpu_s'), 0)} polls per CPU-second; "
            f"{pct(p.get('share_304'), 1)} answered 304.")
    g = r.get("propagation") or {}
    sim, sc = g.get("simulated") or {}, g.get("sidecars") or {}
    if sim or sc:
        lines.append(
            f"table change to {sim.get('pollers', '?')} simulated pollers: p50 "
            f"{fmt(sim.get('p50_ms'), 0)} ms, p99 {fmt(sim.get('p99_ms'), 0)} ms, max "
            f"{fmt(sim.get('max_ms'), 0)} ms; to {sc.get('count', '?')} real sidecars: p50 "
            f"{fmt(sc.get('p50_ms'), 0)} ms, max {fmt(sc.get('max_ms'), 0)} ms (file watch "
            f"{g.get('watch_interval', '?')}, poll interval {g.get('poll_interval', '?')}; the "
            f"control plane's reload took {fmt(g.get('cp_reload_ms_median'), 0)} ms of it).")
    if not lines:
        lines.append("figures: `" + json.dumps(r)[:1500] + "`")
    return lines


def loss_notes(out: dict) -> list[str]:
    notes = []
    threads = out.get("threads", {})
    t = threads.get("1") or next(iter(threads.values()), {})
    get = {k: v["median"] for k, v in t.get("get", {}).items()}
    allocs = t.get("allocs", {})
    lat = t.get("latency", {})
    s = get.get("sidecar", {})
    for other in ("nginx", "haproxy"):
        o = get.get(other, {})
        name = TITLES[other].split(" ", 1)[1]
        if s.get("rps") and o.get("rps") and s["rps"] < o["rps"]:
            notes.append(f"requests/s: the sidecar serves {s['rps']:,.0f}/s, {name} "
                         f"{o['rps']:,.0f}/s: {100 * (1 - s['rps'] / o['rps']):.0f}% fewer.")
        if s.get("cpu_us_per_req") and o.get("cpu_us_per_req") and \
                s["cpu_us_per_req"] > o["cpu_us_per_req"]:
            d = s["cpu_us_per_req"] - o["cpu_us_per_req"]
            notes.append(f"CPU per request: {s['cpu_us_per_req']:.1f} us against {name}'s "
                         f"{o['cpu_us_per_req']:.1f} us (+{d:.1f} us, "
                         f"{s['cpu_us_per_req'] / o['cpu_us_per_req']:.2f}x).")
        sa = (allocs.get("sidecar") or {}).get("allocs_per_req")
        oa = (allocs.get(other) or {}).get("allocs_per_req")
        if sa is not None and oa is not None and sa > oa:
            notes.append(f"allocations per request: {sa:.1f} against {name}'s {oa:.1f}.")
        sl = ((lat.get("sidecar") or {}).get("median") or {})
        ol = ((lat.get(other) or {}).get("median") or {})
        for p in ("p50", "p99"):
            if sl.get(p) and ol.get(p) and sl[p] > ol[p]:
                notes.append(f"latency {p}: {sl[p]:.0f} us against {name}'s {ol[p]:.0f} us "
                             f"(+{sl[p] - ol[p]:.0f} us).")
    m, n = get.get("mesh", {}), get.get("nginx", {})
    if m.get("cpu_us_per_req") and n.get("cpu_us_per_req"):
        notes.append(f"a full mesh hop (outbound + inbound sidecar) costs "
                     f"{m['cpu_us_per_req']:.1f} us CPU per request, "
                     f"{m['cpu_us_per_req'] / n['cpu_us_per_req']:.1f}x one nginx hop.")
    b = get.get("pingora", {})
    if b.get("cpu_us_per_req") and s.get("cpu_us_per_req") and n.get("cpu_us_per_req"):
        notes.append(f"of the sidecar's {s['cpu_us_per_req']:.1f} us, a bare Pingora proxy "
                     f"already costs {b['cpu_us_per_req']:.1f} us "
                     f"({b['cpu_us_per_req'] / n['cpu_us_per_req']:.2f}x nginx): the sidecar's "
                     f"own work is {s['cpu_us_per_req'] - b['cpu_us_per_req']:+.1f} us, Pingora's "
                     f"{b['cpu_us_per_req'] - n['cpu_us_per_req']:+.1f} us over nginx.")
    ins = {k: v.get("per_request") for k, v in (out.get("instructions") or {}).items()
           if isinstance(v, dict)}
    if ins.get("sidecar") and ins.get("pingora") and ins.get("nginx"):
        notes.append(f"instructions per request: sidecar {ins['sidecar']:,}, bare Pingora "
                     f"{ins['pingora']:,}, nginx {ins['nginx']:,}"
                     + (f", HAProxy {ins['haproxy']:,}" if ins.get("haproxy") else "") + ".")
    pol = get.get("policies", {})
    if pol.get("cpu_us_per_req") and s.get("cpu_us_per_req"):
        d = pol["cpu_us_per_req"] - s["cpu_us_per_req"]
        notes.append(f"every policy on costs {d:+.1f} us CPU per request over none "
                     f"({pol['cpu_us_per_req'] / s['cpu_us_per_req']:.2f}x).")
    return notes


def write_markdown(out: dict, path: Path, png_name: str | None) -> None:
    L: list[str] = []
    a = L.append
    g = out["git"]
    a(f"# meshlab benchmark: {out['date']}, {g['sha']}{' (dirty work tree)' if g['dirty'] else ''}, {out['mode']} mode")
    a("")
    a(f"Generated by `make bench{' QUICK=1' if out['mode'] == 'quick' else ''}` (bench/harness.py) "
      f"in {out['elapsed_s']:.0f} s. Ratios are what to read: absolute figures drift by "
      f"10-20% between runs on this machine.")
    a("")
    m = out["machine"]
    a("## Machine and versions")
    a("")
    a(f"- {m['nproc']} CPUs, {m['cpu_model']}, kernel {m['kernel']}, {m['mem_mib']} MiB")
    ld = out["load"]
    a(f"- load average (1/5/15 min) at start {ld['loadavg_start']}, at end {ld['loadavg_end']}")
    if ld.get("busy_at_start"):
        a("- other busy processes at start: " + ", ".join(
            f"{b['name']} ({b['pid']}, {b['cpu']:.0%} CPU)" for b in ld["busy_at_start"]))
    else:
        a("- no other process used over 10% of a CPU at start")
    v = out["versions"]
    a(f"- {v['rustc']}; sidecar {v['sidecar']}; nginx {v['nginx']}; {v['haproxy']}; "
      f"{v['wrk']}; oha {v['oha']}; Python {v['python']}")
    a("")
    a("## How it was measured")
    a("")
    for line in out["method"]:
        a(f"- {line}")
    a("")

    for th, t in out.get("threads", {}).items():
        a(f"## {th} worker thread{'s' if th != '1' else ''} per proxy")
        a("")
        a(f"### Saturation, GET (wrk -t1 -c{CONNECTIONS}; median of {out['reps']} x "
          f"{out['duration_s']} s, interleaved)")
        a("")
        a("| setup | req/s (median) | min-max | proxy CPU busy | proxy CPU us/req (user+sys) "
          "| allocs/req | backend CPU us/req | other load | errors |")
        a("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        allocs = t.get("allocs", {})
        for key in SETUPS:
            if key not in t.get("get", {}):
                continue
            md = t["get"][key]["median"]
            al = allocs.get(key) or {}
            al_s = fmt(al.get("allocs_per_req"), 1) if "error" not in al else "n/a"
            if key == "direct":
                al_s = "-"
            err = md.get("error_share")
            a(f"| {TITLES[key]} | {fmt(md['rps'], 0)} | {fmt(md['rps_min'], 0)}-{fmt(md['rps_max'], 0)} "
              f"| {fmt(md['proxy_cpu_util'], 2)} | {cpu_cell(md)} | {al_s} "
              f"| {fmt(md['backend_cpu_us_per_req'], 1)} "
              f"| {pct(md.get('other_load_share'), 0)} | "
              f"{'-' if err is None else f'{err:.2%}'}{' (' + str(md['runs_failed']) + ' failed runs)' if md['runs_failed'] else ''} |")
        a("")
        a("proxy CPU busy: the proxy's CPU time over wall time (1.00 = one core). other load: "
          "the share of all CPUs that processes outside this benchmark used during the run "
          "(someone compiling or testing); above a few percent the figures are disturbed.")
        a("")
        if allocs and "error" not in allocs:
            a("Allocations per request = (malloc + calloc + posix_memalign) calls / requests, "
              "from malloc_count.so in separate proxy instances "
              f"({out['alloc_duration_s']} s GET each); frees and reallocs per request:")
            a("")
            a("| setup | allocs/req | frees/req | reallocs/req |")
            a("| --- | ---: | ---: | ---: |")
            for key in SETUPS:
                al = allocs.get(key)
                if not al:
                    continue
                if "error" in al:
                    a(f"| {TITLES[key]} | n/a: {al['error']} | | |")
                else:
                    a(f"| {TITLES[key]} | {al['allocs_per_req']:.1f} | {al['frees_per_req']:.1f} "
                      f"| {al['reallocs_per_req']:.2f} |")
            a("")
        elif isinstance(allocs, dict) and "error" in allocs:
            a(f"Allocations: not measured ({allocs['error']}).")
            a("")
        for script, label in (("post", "POST 4 KiB body"), ("headers", "GET with a 1 KiB header mix")):
            if script not in t:
                continue
            a(f"### Saturation, {label} (bench/wrk/{script}.lua; median of {out['extra_reps']} x "
              f"{out['extra_duration_s']} s)")
            a("")
            a("| setup | req/s | proxy CPU us/req | errors |")
            a("| --- | ---: | ---: | ---: |")
            for key in SETUPS:
                if key in t[script]:
                    md = t[script][key]["median"]
                    err = md.get("error_share")
                    a(f"| {TITLES[key]} | {fmt(md['rps'], 0)} | {fmt(md['cpu_us_per_req'], 1)} "
                      f"| {'-' if err is None else f'{err:.2%}'} |")
            a("")
        if "latency" in t:
            lat = t["latency"]
            d = (lat.get("direct") or {}).get("median") or {}
            if t.get("latency_source") == "oha":
                a(f"### Latency at a fixed {out.get('latency_rate')} req/s (oha, open loop, "
                  f"--latency-correction, {CONNECTIONS} keep-alive connections; median of "
                  f"{out['latency_reps']} x {out['latency_duration_s']} s)")
            else:
                a("### Latency (NOT open loop: oha is missing, so these are wrk's closed-loop "
                  "figures at saturation, which hide queueing: coordinated omission)")
            a("")
            a("| setup | p50 us | p90 us | p99 us | p99.9 us | added p50 | added p99 | added p99.9 "
              "| achieved req/s | 200s |")
            a("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for key in SETUPS:
                if key not in lat:
                    continue
                md = lat[key]["median"]

                def added(p, md=md):
                    if md.get(p) is None or d.get(p) is None:
                        return "-"
                    return f"{md[p] - d[p]:+,.0f}"
                ok = md.get("ok_share")
                a(f"| {TITLES[key]} | {fmt(md.get('p50'), 0)} | {fmt(md.get('p90'), 0)} "
                  f"| {fmt(md.get('p99'), 0)} | {fmt(md.get('p99.9'), 0)} | {added('p50')} "
                  f"| {added('p99')} | {added('p99.9')} | {fmt(md.get('achieved_rps'), 0)} "
                  f"| {'-' if ok is None else f'{ok:.2%}'} |")
            a("")
            if png_name and th == "1":
                a(f"![latency percentiles per setup]({png_name})")
                a("")
        if "rss_idle_kib" in t:
            a(f"### Memory (VmRSS, MiB; summed over the setup's processes)")
            a("")
            a(f"| setup | idle | under load (peak) | {IDLE_CONNECTIONS} idle keep-alive "
              "clients | KiB per idle client |")
            a("| --- | ---: | ---: | ---: | ---: |")
            ic = t.get("idle_connections", {})
            for key in SETUPS:
                if key not in t.get("get", {}):
                    continue
                idle = t["rss_idle_kib"].get(key if key != "direct" else "backend")
                load = t["get"][key]["median"].get("rss_load_kib")
                c = ic.get(key) or {}
                if "error" in c:
                    conn, per = f"n/a ({c['error']})", "-"
                else:
                    conn, per = mib(c.get("rss_kib")), fmt(c.get("kib_per_connection"), 1)
                label = TITLES[key] + (" (the backend itself)" if key == "direct" else "")
                a(f"| {label} | {mib(idle)} | {mib(load) if key != 'direct' else '-'} "
                  f"| {conn} | {per} |")
            a("")
        if t.get("profile"):
            pr = t["profile"]
            a("### Where the sidecar's CPU goes (perf, cpu-clock, setup 2 under wrk)")
            a("")
            if "error" in pr:
                a(f"Not profiled: {pr['error']}")
            else:
                a("```")
                a("\n".join(pr["by_dso"]))
                a("")
                a("\n".join(pr["top_symbols"]))
                a("```")
            a("")

    a("## Ratios (this run: medians over repetitions of the ratio within each repetition)")
    a("")
    a("| threads | | req/s vs nginx | vs HAProxy | vs direct | CPU/req vs nginx | vs HAProxy "
      "| vs backend (direct) |")
    a("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for th, r in out.get("ratios", {}).items():
        if th == "instructions":
            continue
        for key in ("sidecar", "mesh", "policies"):
            x = r[key]
            a(f"| {th} | {TITLES[key]} | {fx(x['rps_vs_nginx'])} | {fx(x['rps_vs_haproxy'])} "
              f"| {fx(x['rps_vs_direct'])} | {fx(x['cpu_vs_nginx'])} | {fx(x['cpu_vs_haproxy'])} "
              f"| {fx(x['cpu_vs_direct'])} |")
        p = r["policies_vs_sidecar"]
        a(f"| {th} | policies / no policies | {fx(p['rps'])} (req/s) | | | {fx(p['cpu'])} (CPU/req) | | |")
    a("")
    a("CPU/req vs backend: the proxy's CPU per request over the backend nginx's own CPU per "
      "request in the direct setup (what serving the 100-byte answer costs).")
    a("")
    for th, r in out.get("ratios", {}).items():
        if th == "instructions" or "pingora" not in r:
            continue
        a(f"Against the bare Pingora proxy ({th} thread(s)): CPU/req sidecar "
          f"{fx(r['sidecar'].get('cpu_vs_pingora'))}, mesh hop {fx(r['mesh'].get('cpu_vs_pingora'))}, "
          f"sidecar+policies {fx(r['policies'].get('cpu_vs_pingora'))}; bare Pingora against "
          f"nginx: {fx(r['pingora']['cpu_vs_nginx'])} CPU/req, {fx(r['pingora']['rps_vs_nginx'])} req/s.")
        a("")
    ins = out.get("instructions") or {}
    if ins:
        a("### Instructions per request (callgrind; repeatable to about 1%)")
        a("")
        if "error" in ins:
            a(f"Not measured: {ins['error']}")
        else:
            n = next((v["requests"] for v in ins.values() if "requests" in v), "?")
            a(f"Each setup alone under `valgrind --tool=callgrind`, 1 thread, counters zeroed "
              f"after a warm-up, then {n} GETs from oha over 10 connections; user-space "
              "instructions of every thread of the proxy over the requests. Time-based ratios "
              "above move with the machine's other load; these do not.")
            a("")
            a("| setup | instructions/request | per process | vs nginx | vs HAProxy | vs bare Pingora |")
            a("| --- | ---: | ---: | ---: | ---: | ---: |")
            ir = (out.get("ratios") or {}).get("instructions") or {}
            base = {k: (ins.get(k) or {}).get("per_request") for k in ("nginx", "haproxy", "pingora")}
            for key in SETUPS:
                v = ins.get(key)
                if v is None:
                    continue
                if "error" in v:
                    a(f"| {TITLES[key]} | n/a: {v['error']} | | | | |")
                    continue
                pr = v["per_request"]
                rel = [fx(ratio(pr, base[o])) if base[o] else "-" for o in
                       ("nginx", "haproxy", "pingora")]
                a(f"| {TITLES[key]} | {pr:,} | {' + '.join(f'{x:,}' for x in v['per_process'])} "
                  f"| {rel[0]} | {rel[1]} | {rel[2]} |")
            p = (ir.get("policies_vs_sidecar") or {}).get("instr")
            if p:
                a("")
                a(f"Every policy on (metrics, tracing at {float(TRACE_SAMPLE):.0%}, retries, "
                  f"breaker, p2c-ewma, health checks) against none: {fx(p)} the instructions "
                  f"per request ({100 * (p - 1):+.1f}%).")
        a("")
    if out.get("previous"):
        pv = out["previous"]
        a(f"### Against the previous run of this commit ({pv['date_time']})")
        a("")
        a("| ratio | previous | this run | change |")
        a("| --- | ---: | ---: | ---: |")
        for row in pv["rows"]:
            a(f"| {row['name']} | {row['previous']:.3f} | {row['now']:.3f} | {row['change']:+.1%} |")
        a("")

    a("## Control plane (bench/cp_bench.py)")
    a("")
    cp = out.get("control_plane") or {}
    if "error" in cp:
        a(f"Not measured: {cp['error']}")
    else:
        a(f"From `bench/cp_bench.py{' --quick' if out['mode'] == 'quick' else ''}` "
          f"({cp.get('seconds')} s); the whole "
          "object is in the JSON report under `control_plane`.")
        a("")
        for line in control_plane_lines(cp["result"]):
            a(f"- {line}")
    a("")
    a("## Where the sidecar loses (1 thread)")
    a("")
    notes = loss_notes(out)
    for n in notes or ["Nowhere in this run."]:
        a(f"- {n}")
    a("")
    if out.get("notes"):
        a("## Notes")
        a("")
        for n in out["notes"]:
            a(f"- {n}")
        a("")
    a("## Setups and their configurations")
    a("")
    t1 = out.get("threads", {}).get("1", {})
    for key in SETUPS:
        cfg = t1.get("configs", {}).get(key)
        if cfg is None:
            continue
        a(f"<details><summary>{TITLES[key]}: {DESCRIPTIONS[key]}</summary>")
        a("")
        a("```")
        a(cfg.strip())
        a("```")
        a("</details>")
        a("")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(L))
    tmp.replace(path)


def compare_previous(prev: dict, out: dict) -> dict | None:
    rows = []
    for th, r in out.get("ratios", {}).items():
        pr = (prev.get("ratios") or {}).get(th)
        if not pr:
            continue
        for key, vals in r.items():
            for k, v in vals.items():
                p = (pr.get(key) or {}).get(k)
                if v is None or p is None or p == 0:
                    continue
                label = "instructions" if th == "instructions" else f"t{th}"
                rows.append({"name": f"{label} {key} {k}", "previous": p, "now": v,
                             "change": v / p - 1})
    if not rows:
        return None
    return {"date_time": prev.get("started", "?"), "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"))
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    ap.add_argument("--tools", default=str(BENCH / ".tools"))
    ap.add_argument("--out-dir", default=str(BENCH / "results"))
    ap.add_argument("--profile", action="store_true", default=os.environ.get("BENCH_PROFILE", "") not in ("", "0"),
                    help="perf-profile the sidecar in quick mode too (env BENCH_PROFILE=1)")
    ap.add_argument("--keep-run-dir", action="store_true")
    ap.add_argument("--instructions-only", action="store_true",
                    help="only the callgrind pass (instructions per request), a minute or two")
    ap.add_argument("--threads", help="override the thread counts, e.g. 1,2")
    ap.add_argument("--reps", type=int, help="override the GET repetitions")
    ap.add_argument("--duration", type=int, help="override the seconds of each GET run")
    args = ap.parse_args()
    args.shim = Path(args.tools) / "malloc_count.so"
    mode = Mode(args.quick)
    if args.threads:
        mode.threads = [int(x) for x in args.threads.split(",")]
        if any(t not in CPU_PROXY for t in mode.threads):
            ap.error(f"--threads: each of {sorted(CPU_PROXY)}")
    if args.reps:
        mode.reps = args.reps
    if args.duration:
        mode.duration = args.duration
    oha = str(Path(args.tools) / "bin" / "oha")
    if not os.access(oha, os.X_OK):
        oha = shutil.which("oha")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    def on_signal(sig, _frame):
        stop_all()
        sys.exit(128 + sig)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="meshlab-bench-"))
    os.chmod(run_dir, 0o755)
    log(f"mode {mode.name}; run dir {run_dir}; load average {os.getloadavg()}")
    out: dict = {
        "schema": 1,
        "date": started.strftime("%Y-%m-%d"),
        "started": started.isoformat(timespec="seconds"),
        "mode": mode.name,
        "git": git_info(),
        "machine": machine_info(),
        "load": {"loadavg_start": [round(x, 2) for x in os.getloadavg()],
                 "busy_at_start": busy_processes()},
        "versions": versions(oha),
        "reps": mode.reps, "duration_s": mode.duration,
        "extra_reps": mode.extra_reps, "extra_duration_s": mode.extra_duration,
        "latency_reps": mode.latency_reps, "latency_duration_s": mode.latency_duration,
        "alloc_duration_s": mode.alloc_duration,
        "setups": {k: {"title": TITLES[k], "description": DESCRIPTIONS[k]} for k in SETUPS},
        "notes": [],
    }
    out["method"] = [
        f"Backend: nginx with one worker pinned to CPU {CPU_LOAD}, answering every path with a "
        f"fixed {len(BODY)}-byte body (`return 200`), no access log, on two ports of the same "
        "process (the second one only for setup 6). The same backend for every setup: it is "
        "fast (a few us per request), constant (no allocation, no jitter of its own) and not our "
        "code, so what differs between setups is the proxy alone.",
        f"Pinning (taskset): the load generator (wrk, oha) and the backend on CPU {CPU_LOAD}; "
        f"the proxy under test on CPU 1 with 1 thread (CPUs 0-1 with 2 threads, sharing CPU 0 "
        "with the generator: there CPU per request is the comparable figure). "
        "Every proxy gets the same worker threads: sidecar `--threads N` (per listener; a mesh "
        "hop runs two sidecars), nginx `worker_processes N`, HAProxy `nbthread N`.",
        f"Saturation: wrk -t1 -c{CONNECTIONS} (closed loop, keep-alive), the setups interleaved "
        f"(1 2 3 4 5 6 7, 1 2 3 ...), {mode.reps} repetition(s) of {mode.duration} s"
        + (f" after a {mode.warmup} s warm-up of each" if mode.warmup else ", no warm-up")
        + "; medians reported, and ratios as the median of the ratio within each repetition.",
        "CPU per request: utime+stime of every process of the proxy (/proc/PID/stat: nginx "
        "master and workers, both sidecars of the mesh hop) over the run, divided by the "
        "requests wrk completed. 'proxy CPU busy' is that CPU time over the wall time (1.00 = "
        "one core saturated): only near 1.00 is the proxy, not the generator, the limit.",
        "Allocations per request: the proxies are started a second time under "
        "bench/.tools/malloc_count.so (LD_PRELOAD; counts malloc/calloc/realloc/free and "
        "posix_memalign), counters dumped on a signal before and after a GET run. Kept out of "
        "the throughput runs because its atomic counters cost the heavy allocator more. nginx "
        "allocates from per-connection and per-request pools (one posix_memalign per pool, "
        "then bump allocation), so its count is pool blocks, not objects; HAProxy recycles "
        "objects through its own pools; the sidecar (Rust's System allocator = glibc malloc) "
        "shows every object.",
        ("Latency: oha at a fixed rate of half the slowest setup's median saturation, open "
         f"loop with --latency-correction (coordinated omission corrected), {CONNECTIONS} "
         "keep-alive connections, JSON output; medians of the percentiles over repetitions; "
         "'added' = this setup minus direct."
         if oha else
         "Latency: oha could not be installed, so latency is wrk's closed-loop figure from the "
         "saturation runs (it hides queueing delay: coordinated omission)."),
        f"Memory: VmRSS from /proc/PID/status, idle after start, peak sampled during the GET "
        f"runs, and with {IDLE_CONNECTIONS} client connections opened from Python, each after "
        "one request answered, held idle for 0.5 s.",
        "Setup 6 turns every policy the sidecar has on. Setup 2 is the same sidecar with every "
        "policy off as far as the table allows (one try, round-robin over one endpoint, no "
        "health check, breaker and limit out of reach): the breaker, limit and budget "
        "bookkeeping still run per request.",
        "No proxy writes an access log (nginx access_log off, HAProxy no log, the sidecar "
        "without --access-log and RUST_LOG=info, which logs no request line).",
    ]
    if not oha:
        out["notes"].append("oha (open-loop generator) is missing: `cargo install oha` failed "
                            "or was skipped, so latency figures are closed-loop (wrk).")
    if mode.quick:
        out["notes"].append(f"QUICK mode: {mode.reps} x {mode.duration} s per setup, 1 thread "
                            "only, no POST or header-mix runs, no mesh hop under callgrind; "
                            "time-based ratios move by 10-30% between quick runs on this "
                            "machine (the instruction counts do not). Use `make bench` for "
                            "5 x 15 s, 2 threads and every setup.")

    lab = Lab(args, run_dir)
    code = 0
    try:
        try:
            lab.start_backend()
        except RuntimeError as e:
            log(f"cannot measure: the backend did not start: {e}")
            return 2
        out["backend_config"] = lab.backend_conf
        for th in [] if args.instructions_only else mode.threads:
            try:
                measure_threads(lab, mode, th, oha, out)
            except RuntimeError as e:
                log(f"{th} thread(s): could not measure: {e}")
                out["notes"].append(f"{th} thread(s): could not measure: {e}")
        log(f"instructions per request (callgrind, {mode.instr_requests} requests per setup)")
        out["instructions"] = instructions_pass(lab, oha, mode.instr_requests, mode.instr_setups)
        stop_all()
        out["trace_exports"] = {"requests": lab.otlp.requests, "bytes": lab.otlp.bytes}
        out["method"].append(
            "Sidecar metrics and tracing: setups 2 and 3 run with `--metrics off` and no "
            "OTEL_* variables (nothing counted, no span); setup 6 with metrics on and "
            f"OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG={TRACE_SAMPLE}, "
            "exporting over OTLP/HTTP to a sink in the harness, which received "
            f"{lab.otlp.requests} export request(s), {lab.otlp.bytes:,} bytes, over the run"
            + (" (none: this sidecar does not export traces, so no tracing cost is in setup 6)."
               if not lab.otlp.requests else "."))

        if args.instructions_only:
            out["control_plane"] = {"error": "not measured (--instructions-only)"}
        else:
            log("control plane: bench/cp_bench.py")
            out["control_plane"] = control_plane(args, mode)
    finally:
        stop_all()

    measured = any(v["median"]["runs_ok"] for t in out.get("threads", {}).values()
                   for v in t.get("get", {}).values()) or (
        args.instructions_only and any("per_request" in v for v in out["instructions"].values()
                                       if isinstance(v, dict)))
    if not measured:
        log("cannot measure: no setup completed a run")
        code = 2
    out["load"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["ratios"] = compute_ratios(out)
    out["elapsed_s"] = round(time.monotonic() - t_start, 1)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{out['date']}-{out['git']['sha']}" + ("-instructions" if args.instructions_only else "")
    json_path, md_path, png_path = (out_dir / f"{stem}.json", out_dir / f"{stem}.md",
                                    out_dir / f"{stem}-latency.png")
    if json_path.exists():
        try:
            prev = compare_previous(json.loads(json_path.read_text()), out)
            if prev:
                out["previous"] = prev
        except (OSError, json.JSONDecodeError):
            pass
    png_err = chart(out, png_path, run_dir)
    if png_err:
        out["notes"].append(f"no latency chart: {png_err}")
    out["loss_notes"] = loss_notes(out)
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(json_path)
    write_markdown(out, md_path, None if png_err else png_path.name)
    log(f"wrote {md_path.relative_to(ROOT) if md_path.is_relative_to(ROOT) else md_path}, "
        f"{json_path.name}{'' if png_err else ', ' + png_path.name} in {out['elapsed_s']:.0f} s")
    print_summary(out)
    if not args.keep_run_dir and code == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
    return code


def print_summary(out: dict) -> None:
    for th, t in out.get("threads", {}).items():
        print(f"threads={th}")
        for key in SETUPS:
            g = (t.get("get", {}).get(key) or {}).get("median")
            if not g:
                continue
            al = (t.get("allocs", {}) or {}).get(key) or {}
            lat = ((t.get("latency", {}).get(key) or {}).get("median") or {})
            print(f"  {TITLES[key]:<20} {fmt(g['rps'], 0):>9} req/s  "
                  f"{fmt(g['cpu_us_per_req'], 1):>6} us CPU/req  "
                  f"{fmt(al.get('allocs_per_req'), 1):>6} allocs/req  "
                  f"p50 {fmt(lat.get('p50'), 0):>6} us  p99 {fmt(lat.get('p99'), 0):>6} us")
    for th, r in out.get("ratios", {}).items():
        if th == "instructions":
            print("instruction ratios: " + "; ".join(
                f"{k} {o.removeprefix('vs_')} {fx(x)}" for k, v in r.items() for o, x in v.items()))
            continue
        s = r["sidecar"]
        print(f"ratios t{th}: sidecar/nginx rps {fx(s['rps_vs_nginx'])} cpu {fx(s['cpu_vs_nginx'])}; "
              f"sidecar/haproxy rps {fx(s['rps_vs_haproxy'])} cpu {fx(s['cpu_vs_haproxy'])}; "
              f"sidecar/direct rps {fx(s['rps_vs_direct'])}")
    cp = out.get("control_plane") or {}
    print("control plane: " + ("not measured: " + cp["error"] if "error" in cp else "measured"))


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
