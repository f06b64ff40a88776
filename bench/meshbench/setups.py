"""The seven setups: what each is, and the `Lab` that starts the backend and the proxies of
each (pinned, optionally with its allocation counter or wrapped in valgrind) and waits until
they answer.

    direct    client -> backend
    sidecar   client -> sidecar outbound -> backend            (no policies)
    mesh      client -> sidecar outbound -> sidecar inbound -> backend
    nginx     client -> nginx (upstream keepalive) -> backend
    haproxy   client -> HAProxy (http-reuse always) -> backend
    policies  client -> sidecar outbound with every policy on -> backend
    pingora   client -> a bare Pingora proxy (sidecar/examples/bare_proxy.rs) -> backend
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from .allocs import RUST_COUNTER, RUST_SETUPS, SHIM_COUNTER
from .common import CPU_LOAD, CPU_PROXY, free_port, http_status, log, wait_for
from .configs import (haproxy_conf, nginx_backend_conf, nginx_proxy_conf, table_plain,
                      table_policies)
from .processes import Proc, wait_listening

# The dump signal of malloc_count.so: SIGUSR2 for the sidecar; nginx (binary upgrade) and
# HAProxy (ignores it) take SIGUSR2 for themselves, so they get a real-time signal instead.
RT_DUMP_SIGNAL = signal.SIGRTMIN + 6

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


class Setup:
    def __init__(self, key: str, addr: str, procs: list[Proc], config: str, host: str = "b"):
        self.key = key
        self.addr = addr
        self.procs = procs  # the proxy processes (empty for direct)
        self.config = config
        self.host = host
        # Started for the allocation pass: which counter counts it (allocs.py); else None.
        self.counter: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def pids(self) -> list[int]:
        return [pid for p in self.procs for pid in p.pids()]


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
        # The sidecar and bare proxy built with `--features alloc-count` (bench/run.sh copies
        # them there) for the allocation pass; None when missing: the shim counts them then.
        self.counting_bins = counting_build(Path(args.alloc_bin_dir))
        # A command prefix for every proxy started (valgrind for the instruction pass).
        self.wrap: list[str] = []

    def rust_counted(self, alloc: bool) -> bool:
        """Whether a Rust proxy started for the allocation pass counts at its own allocator."""
        return alloc and self.counting_bins is not None

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
                      alloc: bool, listener: str, flags: list[str] = (),
                      env: dict | None = None) -> tuple[Proc, str]:
        table_path = self.run_dir / f"{name}.toml"
        table_path.write_text(table)
        rust = self.rust_counted(alloc)
        binary = (self.counting_bins if rust else self.bin_dir) / "sidecar"
        argv = [*self.wrap, str(binary), "--service", "b" if listener == "inbound" else "client",
                "--table", str(table_path), "--outbound", "127.0.0.1:0", "--inbound", "127.0.0.1:0",
                "--admin", "127.0.0.1:0", "--app", app, "--threads", str(threads),
                "--shutdown-grace-s", "1", *flags]
        env = {"RUST_LOG": os.environ.get("BENCH_RUST_LOG", "info"), **(env or {})}
        env.update(self.shim_env(alloc and not rust, signal.SIGUSR2))
        p = Proc(name, argv, cpus, self.run_dir, env=env, dump_signal=signal.SIGUSR2)
        slow = 4 if self.wrap else 1  # under valgrind everything starts slower
        wait_listening([p], 30 * slow)
        found = p.announced

        def ready():
            if not p.alive():
                raise RuntimeError(f"{name} exited: {p.tail()}")
            return http_status(found["admin"], "/ready") == 200

        wait_for(ready, 30 * slow, f"{name} /ready")
        if rust:
            p.counts_addr = found["admin"]
        return p, found[listener]

    def start_setups(self, threads: int, alloc: bool = False, only: list[str] | None = None,
                     failed: dict | None = None) -> dict:
        """Starts the setups; one that fails to start is logged, left out and named in failed.
        `alloc`: each with its allocation counter (allocs.py), for the allocation pass."""
        cpus = CPU_PROXY[threads]
        suffix = f"-t{threads}" + ("-alloc" if alloc else "")
        setups: dict[str, Setup] = {}
        for key in only or SETUPS:
            try:
                s = self.start_setup(key, threads, cpus, suffix, alloc)
                if s is None:
                    continue
                if alloc:
                    rust = key in RUST_SETUPS and self.rust_counted(alloc)
                    s.counter = RUST_COUNTER if rust else SHIM_COUNTER
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

    def start_setup(self, key: str, threads: int, cpus: str, suffix: str, alloc: bool):
        backend = self.backend_addr()
        if key == "direct":
            return None if alloc else Setup("direct", backend, [], self.backend_conf)
        if key == "sidecar":
            table = table_plain(backend)
            p, addr = self.start_sidecar(f"sidecar{suffix}", table, threads, cpus, backend,
                                         alloc, "outbound", SIDECAR_FLAGS_NONE)
            return Setup("sidecar", addr, [p],
                         f"# sidecar --threads {threads} {' '.join(SIDECAR_FLAGS_NONE)}\n{table}")
        if key == "mesh":
            table_in = table_plain(backend)
            pin, in_addr = self.start_sidecar(f"mesh-inbound{suffix}", table_in, threads, cpus,
                                              backend, alloc, "inbound", SIDECAR_FLAGS_NONE)
            table_out = table_plain(in_addr)
            pout, out_addr = self.start_sidecar(f"mesh-outbound{suffix}", table_out, threads,
                                                cpus, backend, alloc, "outbound",
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
            p = self.start_nginx(name, conf, cpus, alloc)
            return Setup("nginx", f"127.0.0.1:{port}", [p], conf)
        if key == "haproxy":
            port = free_port()
            conf = haproxy_conf(port, self.backend_ports[0], threads)
            path = self.run_dir / f"haproxy{suffix}.cfg"
            path.write_text(conf)
            p = Proc(f"haproxy{suffix}", [*self.wrap, "haproxy", "-db", "-f", str(path)], cpus,
                     self.run_dir,
                     env=self.shim_env(alloc, RT_DUMP_SIGNAL), dump_signal=RT_DUMP_SIGNAL)
            return Setup("haproxy", f"127.0.0.1:{port}", [p], conf)
        if key == "policies":
            table = table_policies([self.backend_addr(0), self.backend_addr(1)])
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp.url,
                   "OTEL_SERVICE_NAME": "bench-client",
                   "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                   "OTEL_TRACES_SAMPLER_ARG": TRACE_SAMPLE}
            p, addr = self.start_sidecar(f"policies{suffix}", table, threads, cpus, backend,
                                         alloc, "outbound", env=env)
            envs = " ".join(f"{k}={v}" for k, v in env.items())
            return Setup("policies", addr, [p],
                         f"# {envs} sidecar --threads {threads}\n{table}")
        if key == "pingora":
            port = free_port()
            rust = self.rust_counted(alloc)
            binary = (self.counting_bins if rust else self.bin_dir / "examples") / "bare_proxy"
            counts = ["--alloc-count", f"127.0.0.1:{free_port()}"] if rust else []
            argv = [*self.wrap, str(binary), f"127.0.0.1:{port}", backend,
                    "--threads", str(threads), *counts]
            env = self.shim_env(alloc and not rust, signal.SIGUSR2)
            p = Proc(f"pingora{suffix}", argv, cpus, self.run_dir, env=env,
                     dump_signal=signal.SIGUSR2)
            if rust:
                p.counts_addr = counts[1]
            return Setup("pingora", f"127.0.0.1:{port}", [p],
                         f"# {' '.join(argv[len(self.wrap):])}\n"
                         "# sidecar/examples/bare_proxy.rs: HttpPeer to the backend, no timeouts")
        raise ValueError(key)


def counting_build(d: Path) -> Path | None:
    """`d` when it holds the sidecar and bare_proxy built with `--features alloc-count`."""
    ok = all(os.access(d / b, os.X_OK) for b in ("sidecar", "bare_proxy"))
    return d if ok else None
