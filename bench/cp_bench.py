#!/usr/bin/env python3
"""Control-plane benchmark for `make bench` (issue 6): prints ONE JSON object on stdout.

    python3 bench/cp_bench.py [--quick] [--bin-dir target/release]

Two figures (logs go to stderr):

1. `poll_304`: how many `304 Not Modified` polls per second the control plane answers on one
   core. `control-plane --watch-interval 1s` is pinned to `--cp-cpu` (1) with `taskset`; the load
   generator runs on `--load-cpu` (0): wrk (`-t1 -c50`, a Lua script setting `If-None-Match`) when
   it is installed, else a Python raw-socket keep-alive client (one epoll loop, 50 connections, no
   pipelining). The 304 share and the polls counted by the control plane come from its own
   `/metrics` (`meshlab_cp_table_requests_total`), its CPU from `/proc/PID/stat` (utime+stime).
   When the generator's core is busier than the control plane's, the rate is generator-bound and
   `cpu_us_per_poll` is the figure to compare.

2. `propagation`: the time from a table change (write + rename of `dev.toml` with version+1)
   until each poller holds the new version, with `--watch-interval 200ms` on the control plane
   (so up to 200 ms of it is the file watch) and a 1 s poll interval everywhere:
   (a) 200 simulated pollers (asyncio tasks, one keep-alive connection each, random start
       phase, fixed-rate 1 s conditional GETs), and
   (b) 10 real `sidecar` processes, whose admin `/config` `version` is read every 20 ms.
   Both run at the same time against one control plane (210 pollers). Quick: one change; full:
   three changes, medians of the per-change figures.

Python 3.11, standard library only. Children, CPU accounting, logging and the HTTP GET are the
harness's (bench/meshbench); every child gets PR_SET_PDEATHSIG and is stopped with SIGTERM then
SIGKILL, also on errors; the temp dir is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import random
import resource
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshbench.common import http_get, log, set_log_name
from meshbench.processes import (Proc, cpu_busy_per_cpu, cpu_busy_share, cpu_seconds, stop_all,
                                 stop_many, wait_listening)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE_SRC = os.path.join(ROOT, "k8s", "overlays", "dev", "table.toml")
ENV = "dev"
TABLE_PATH = f"/v1/envs/{ENV}/table"


set_log_name("cp_bench")

# Children: meshbench's Proc, with SIGKILL when this process dies (PR_SET_PDEATHSIG), logs in
# the temp dir, stopped with SIGTERM then SIGKILL after 5 s.
GRACE_S = 5.0


def start(tmp: str, name: str, argv: list[str], cpu: int | None = None,
          env: dict | None = None) -> Proc:
    return Proc(name, argv, None if cpu is None else str(cpu), Path(tmp), env=env,
                die_with_parent=True)


# ---------------------------------------------------------------------------------------------
# The control plane's own figures (its /metrics)

METRIC_RE = re.compile(
    r'^meshlab_cp_table_requests_total\{([^}]*)\}\s+([0-9.eE+]+)\s*$', re.M)


def table_request_counts(addr: str) -> dict[str, int]:
    """`meshlab_cp_table_requests_total{env="dev"}` by result, from the control plane."""
    _, _, body = http_get(addr, "/metrics")
    out: dict[str, int] = collections.Counter()
    for labels, value in METRIC_RE.findall(body.decode()):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if lab.get("env") == ENV:
            out[lab.get("result", "?")] += int(float(value))
    return out


def cp_loaded_timestamp(addr: str) -> float | None:
    _, _, body = http_get(addr, "/metrics")
    m = re.search(
        r'^meshlab_cp_table_loaded_timestamp_seconds\{[^}]*env="%s"[^}]*\}\s+(\S+)' % ENV,
        body.decode(), re.M)
    return float(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# Part 1: 304 polls per second on one core

WRK_SUMMARY = {
    "requests": re.compile(r"^\s*(\d+) requests in ([\d.]+)(\w+)", re.M),
    "rps": re.compile(r"^Requests/sec:\s+([\d.]+)", re.M),
    "non_2xx_3xx": re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.M),
    "socket_errors": re.compile(r"^\s*Socket errors:(.*)$", re.M),
}
WRK_LAT = re.compile(r"^\s+(50|75|90|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def run_wrk(addr: str, etag: str, conns: int, duration: int, cpu: int | None,
            tmp: str) -> dict:
    lua = os.path.join(tmp, "if_none_match.lua")
    with open(lua, "w") as f:
        f.write(
            "-- conditional GETs of the dev table: every answer should be 304\n"
            f'wrk.method = "GET"\n'
            f'wrk.path = "{TABLE_PATH}"\n'
            f"wrk.headers[\"If-None-Match\"] = [[{etag}]]\n"
        )
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "-s", lua,
            f"http://{addr}"]
    name = f"wrk-{len(os.listdir(tmp))}"
    c = start(tmp, name, argv, cpu=cpu)
    t0 = time.monotonic()
    try:
        c.popen.wait(duration + 30)
    except subprocess.TimeoutExpired:
        raise RuntimeError("wrk did not finish")
    wall = time.monotonic() - t0
    stop_many([c], GRACE_S)
    text = c.stdout_path.read_text()
    if c.popen.returncode != 0:
        err = c.tail(15, "\n")
        raise RuntimeError(f"wrk failed ({c.popen.returncode}): {text}\n{err}")
    res: dict = {"raw": text}
    m = WRK_SUMMARY["requests"].search(text)
    res["requests"] = int(m.group(1)) if m else None
    m = WRK_SUMMARY["rps"].search(text)
    res["rps"] = float(m.group(1)) if m else None
    m = WRK_SUMMARY["non_2xx_3xx"].search(text)
    res["non_2xx_3xx"] = int(m.group(1)) if m else 0
    m = WRK_SUMMARY["socket_errors"].search(text)
    res["socket_errors"] = m.group(1).strip() if m else None
    res["latency_ms"] = {f"p{p}": round(float(v) * UNIT[u], 3)
                         for p, v, u in WRK_LAT.findall(text)}
    res["wall_s"] = wall
    return res


CL_RE = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


def python_client(addr: str, etag: str, conns: int, duration: float) -> dict:
    """Closed-loop keep-alive GETs with If-None-Match on `conns` connections, one epoll loop.

    Raw non-blocking sockets rather than asyncio streams: the loop does nothing but send one
    request per connection, parse the response head (and skip any body), and send the next, so
    this Python client gets as close as it can to the control plane's rate.
    """
    host, port = addr.rsplit(":", 1)
    req = (f"GET {TABLE_PATH} HTTP/1.1\r\nHost: {addr}\r\n"
           f"If-None-Match: {etag}\r\n\r\n").encode()
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    bufs: dict[int, bytes] = {}
    try:
        for _ in range(conns):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            socks[s.fileno()] = s
            bufs[s.fileno()] = b""
            ep.register(s.fileno(), select.EPOLLIN)
        counts: collections.Counter = collections.Counter()
        errors = 0
        cpu0 = os.times()
        start = time.perf_counter()
        end = start + duration
        for s in socks.values():
            s.send(req)
        while True:
            events = ep.poll(0.05)
            if time.perf_counter() >= end:
                break
            for fd, _ev in events:
                s = socks[fd]
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    errors += 1
                    raise RuntimeError("the control plane closed a keep-alive connection")
                buf = bufs[fd] + data if bufs[fd] else data
                while True:
                    i = buf.find(b"\r\n\r\n")
                    if i < 0:
                        break
                    head = buf[:i]
                    m = CL_RE.search(head)
                    blen = int(m.group(1)) if m else 0
                    if len(buf) < i + 4 + blen:
                        break
                    counts[head[9:12].decode()] += 1
                    buf = buf[i + 4 + blen:]
                    s.send(req)
                bufs[fd] = buf
        elapsed = time.perf_counter() - start
        cpu1 = os.times()
    finally:
        for s in socks.values():
            s.close()
        ep.close()
    total = sum(counts.values())
    return {
        "requests": total,
        "rps": total / elapsed,
        "by_status": dict(counts),
        "errors": errors,
        "elapsed_s": elapsed,
        "client_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
    }


def bench_304(bins: str, tmp: str, quick: bool, cp_cpu: int | None,
              load_cpu: int | None, conns: int, force_python: bool) -> dict:
    tables = os.path.join(tmp, "tables-304")
    os.makedirs(tables)
    shutil.copy(TABLE_SRC, os.path.join(tables, f"{ENV}.toml"))
    cp = start(tmp, "cp-304", [os.path.join(bins, "control-plane"), "--tables", tables,
                                   "--listen", "127.0.0.1:0", "--watch-interval", "1s"],
                        cpu=cp_cpu)
    wait_listening([cp], 20)
    addr = cp.announced["control_plane"]
    status, headers, _ = http_get(addr, TABLE_PATH)
    if status != 200 or "etag" not in headers:
        raise RuntimeError(f"GET {TABLE_PATH}: {status} {headers}")
    etag = headers["etag"]
    status, _, _ = http_get(addr, TABLE_PATH, {"If-None-Match": etag})
    if status != 304:
        raise RuntimeError(f"a conditional GET with the current ETag got {status}, not 304")
    log(f"304 bench: control-plane pid {cp.pid} on {addr} (cpu {cp_cpu}), etag {etag}")

    duration = 5 if quick else 15
    warmup = 1 if quick else 2
    use_wrk = shutil.which("wrk") is not None and not force_python
    generator = "wrk" if use_wrk else "python-epoll"
    log(f"generator: {generator}, {conns} connections, {warmup}s warm-up + {duration}s")

    saved_affinity = os.sched_getaffinity(0)

    def run(d: int) -> dict:
        if use_wrk:
            return run_wrk(addr, etag, conns, d, load_cpu, tmp)
        if load_cpu is not None:
            os.sched_setaffinity(0, {load_cpu})
        try:
            return python_client(addr, etag, conns, d)
        finally:
            os.sched_setaffinity(0, saved_affinity)

    run(warmup)
    before = table_request_counts(addr)
    cpu_before = cpu_seconds([cp.pid])
    busy_before = cpu_busy_per_cpu()
    ru_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    gen = run(duration)
    wall = time.monotonic() - t0
    ru_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the one child reaped
    busy_after = cpu_busy_per_cpu()
    cpu_after = cpu_seconds([cp.pid])
    after = table_request_counts(addr)
    stop_many([cp], GRACE_S)

    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    cp_total = sum(delta.values())
    cp_304 = delta.get("304", 0)
    cp_cpu_s = cpu_after - cpu_before
    gen_elapsed = gen.get("elapsed_s") or duration
    out = {
        "generator": generator,
        "generator_desc": (
            f"wrk -t1 -c{conns} -d{duration}s, Lua script setting If-None-Match"
            if use_wrk else
            f"Python raw-socket keep-alive client: one epoll loop, {conns} connections, "
            "closed loop, no pipelining (wrk not installed)"),
        "connections": conns,
        "generator_threads": 1,
        "duration_s": duration,
        "warmup_s": warmup,
        "control_plane_cpu": cp_cpu,
        "load_cpu": load_cpu,
        "watch_interval": "1s",
        "polls_per_s": round(gen["rps"], 1) if gen.get("rps") else None,
        "polls_304_per_s_cp_counted": round(cp_304 / wall, 1),
        "polls_counted_by_cp": cp_total,
        "polls_by_result_cp": dict(sorted(delta.items())),
        "share_304": round(cp_304 / cp_total, 6) if cp_total else None,
        "cp_cpu_s": round(cp_cpu_s, 3),
        "cp_core_utilisation": round(cp_cpu_s / wall, 3),
        "cp_cpu_us_per_poll": round(cp_cpu_s / cp_total * 1e6, 3) if cp_total else None,
        "cp_polls_per_cpu_s": round(cp_total / cp_cpu_s, 1) if cp_cpu_s > 0 else None,
    }
    if use_wrk:
        out["wrk_requests"] = gen["requests"]
        out["wrk_non_2xx_3xx"] = gen["non_2xx_3xx"]
        out["wrk_socket_errors"] = gen["socket_errors"]
        out["latency_ms"] = gen["latency_ms"]
        wrk_cpu = (ru_after.ru_utime - ru_before.ru_utime) + (ru_after.ru_stime - ru_before.ru_stime)
        out["generator_core_utilisation"] = round(wrk_cpu / gen["wall_s"], 3)
    else:
        out["generator_core_utilisation"] = round(gen["client_cpu_s"] / gen_elapsed, 3)
        out["generator_status_counts"] = gen["by_status"]
    busy = cpu_busy_share(busy_before, busy_after)
    out["cpu_busy_share_all_processes"] = busy
    cp_util, gen_util = out["cp_core_utilisation"], out["generator_core_utilisation"]
    other = {}
    if cp_cpu is not None:
        other["control_plane_core"] = round(max(0.0, busy.get(str(cp_cpu), 0) - cp_util), 3)
        other["load_core"] = round(max(0.0, busy.get(str(load_cpu), 0) - gen_util), 3)
    out["other_load_share"] = other
    if cp_util >= 0.9:
        limited = "control_plane"
    elif gen_util >= 0.9:
        limited = "generator"
    elif any(v > 0.1 for v in other.values()):
        limited = "other_load"
    else:
        limited = "neither_core_saturated"
    out["limited_by"] = limited
    out.pop("generator_bound", None)
    out["note"] = (
        "polls_per_s is the generator's rate; share_304, polls_counted_by_cp and cpu per poll "
        "come from the control plane's /metrics and /proc/PID/stat over the measured run; "
        "cp_polls_per_cpu_s = polls / control-plane CPU seconds, the one-core capacity "
        "estimate. limited_by: " + {
            "control_plane": "the control plane's core was saturated: polls_per_s is its "
                             "one-core rate.",
            "generator": "the load generator's core was saturated, not the control plane's: "
                         "polls_per_s is a lower bound; use cp_polls_per_cpu_s.",
            "other_load": "other processes on the machine took a share of the pinned cores "
                          "(other_load_share): polls_per_s is depressed; cp_cpu_us_per_poll "
                          "is the figure to trust.",
            "neither_core_saturated": "neither core was saturated: the rate was latency-bound "
                                      "at this connection count.",
        }[limited]
    )
    log(f"304 bench: {out['polls_per_s']} polls/s, share_304 {out['share_304']}, "
        f"{out['cp_cpu_us_per_poll']} us CPU/poll, cp core {out['cp_core_utilisation']}")
    return out


# ---------------------------------------------------------------------------------------------
# Part 2: propagation of a table change

async def read_response(r: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await r.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await r.readuntil(b"\r\n")  # no trailers expected
                break
            parts.append(await r.readexactly(size))
            await r.readexactly(2)
        body = b"".join(parts)
    else:
        body = b""
    return status, headers, body


class KeepAlive:
    """One keep-alive HTTP/1.1 connection that reconnects once on a closed socket."""

    def __init__(self, addr: str):
        self.addr = addr
        self.host, port = addr.rsplit(":", 1)
        self.port = int(port)
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        req = f"GET {path} HTTP/1.1\r\nHost: {self.addr}\r\n{extra}\r\n".encode()
        for attempt in (0, 1):
            if self.w is None:
                self.r, self.w = await asyncio.open_connection(self.host, self.port)
            try:
                self.w.write(req)
                return await asyncio.wait_for(read_response(self.r), 5)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                self.close()
                if attempt:
                    raise
                self.reconnects += 1
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.w is not None:
            self.w.close()
        self.r = self.w = None


def percentile(sorted_xs: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(1, math.ceil(p / 100 * len(sorted_xs)))
    return sorted_xs[k - 1]


def bump_version(path: str) -> int:
    """Rewrites the table with version+1 (write to a temp file, fsync, rename); the new version."""
    with open(path) as f:
        text = f.read()
    m = re.search(r"^version\s*=\s*(\d+)\s*$", text, re.M)
    if not m:
        raise RuntimeError(f"no `version = N` line in {path}")
    new = int(m.group(1)) + 1
    text = text[:m.start()] + f"version = {new}" + text[m.end():]
    tmp = os.path.join(os.path.dirname(path), f".{ENV}.next")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return new


async def propagation(cp_addr: str, admins: list[str], table: str, n_pollers: int,
                      n_changes: int, poll_interval: float, admin_every: float) -> dict:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    seen: list[dict[int, float]] = [dict() for _ in range(n_pollers)]  # poller -> version -> t
    sc_seen: list[dict[int, float]] = [dict() for _ in admins]
    poll_errors = collections.Counter()
    statuses = collections.Counter()
    watch_admin = asyncio.Event()  # admin /config read fast only around a change

    async def poller(i: int) -> None:
        await asyncio.sleep(random.uniform(0, poll_interval))  # random start phase
        conn = KeepAlive(cp_addr)
        etag = None
        next_t = loop.time()
        try:
            while not stop.is_set():
                try:
                    st, h, body = await conn.get(
                        TABLE_PATH, {"If-None-Match": etag} if etag else None)
                    statuses[st] += 1
                    if st == 200:
                        now = time.monotonic()
                        etag = h.get("etag")
                        v = json.loads(body)["version"]
                        seen[i].setdefault(v, now)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                    poll_errors[type(e).__name__] += 1
                next_t += poll_interval  # fixed rate, like a tokio interval
                await asyncio.sleep(max(0.0, next_t - loop.time()))
        finally:
            conn.close()

    async def admin_watch(j: int) -> None:
        conn = KeepAlive(admins[j])
        try:
            while not stop.is_set():
                try:
                    st, _, body = await conn.get("/config")
                    now = time.monotonic()
                    if st == 200:
                        v = json.loads(body).get("version")
                        if v is not None:
                            sc_seen[j].setdefault(v, now)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                    poll_errors["admin " + type(e).__name__] += 1
                if watch_admin.is_set():
                    await asyncio.sleep(admin_every)
                else:
                    try:
                        await asyncio.wait_for(watch_admin.wait(), 0.25)
                    except asyncio.TimeoutError:
                        pass
        finally:
            conn.close()

    async def wait_all(version: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(version in s for s in seen) and all(version in s for s in sc_seen):
                return True
            await asyncio.sleep(0.02)
        return False

    def missing(v: int) -> str:
        pollers = [i for i, s in enumerate(seen) if v not in s]
        sidecars = [(admins[j], sorted(s)) for j, s in enumerate(sc_seen) if v not in s]
        return (f"pollers without it: {pollers[:10]} ({len(pollers)}), sidecars without it "
                f"(admin, versions seen): {sidecars}, poll errors {dict(poll_errors)}")

    with open(table) as f:
        v0 = int(re.search(r"^version\s*=\s*(\d+)", f.read(), re.M).group(1))
    tasks = [asyncio.create_task(poller(i)) for i in range(n_pollers)]
    tasks += [asyncio.create_task(admin_watch(j)) for j in range(len(admins))]
    changes = []
    try:
        if not await wait_all(v0, 10 + poll_interval):
            raise RuntimeError(f"not everyone got version {v0}: {missing(v0)}")
        log(f"propagation: {n_pollers} pollers and {len(admins)} sidecars hold version {v0}")
        for c in range(n_changes):
            # a random gap so the change lands at a different phase of every poll cycle
            await asyncio.sleep(random.uniform(0.2, poll_interval))
            watch_admin.set()
            await asyncio.sleep(0.1)  # every admin watcher back on its fast cadence
            wall0 = time.time()
            v = bump_version(table)
            t0 = time.monotonic()
            ok = await wait_all(v, 5 + 2 * poll_interval)
            watch_admin.clear()
            if not ok:
                raise RuntimeError(f"not everyone got version {v}: {missing(v)}")
            sim = sorted((s[v] - t0) * 1e3 for s in seen)
            real = sorted((s[v] - t0) * 1e3 for s in sc_seen)
            loaded = cp_loaded_timestamp_async_safe(cp_addr)
            ch = {
                "version": v,
                "cp_reload_ms": round((loaded - wall0) * 1e3, 1) if loaded else None,
                "simulated_ms": {"p50": round(percentile(sim, 50), 1),
                                 "p99": round(percentile(sim, 99), 1),
                                 "max": round(sim[-1], 1), "min": round(sim[0], 1)},
                "sidecars_ms": {"p50": round(percentile(real, 50), 1),
                                "max": round(real[-1], 1), "min": round(real[0], 1),
                                "each": [round(x, 1) for x in real]},
            }
            log(f"change to version {v}: cp reload {ch['cp_reload_ms']} ms, "
                f"simulated {ch['simulated_ms']}, sidecars p50 {ch['sidecars_ms']['p50']} "
                f"max {ch['sidecars_ms']['max']}")
            changes.append(ch)
    finally:
        stop.set()
        watch_admin.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def med(key: str, sub: str) -> float:
        return round(statistics.median(ch[key][sub] for ch in changes), 1)

    reloads = [ch["cp_reload_ms"] for ch in changes if ch["cp_reload_ms"] is not None]
    return {
        "changes": n_changes,
        "simulated": {"pollers": n_pollers,
                      "p50_ms": med("simulated_ms", "p50"),
                      "p99_ms": med("simulated_ms", "p99"),
                      "max_ms": med("simulated_ms", "max")},
        "sidecars": {"count": len(admins),
                     "p50_ms": med("sidecars_ms", "p50"),
                     "max_ms": med("sidecars_ms", "max"),
                     "admin_read_every_ms": round(admin_every * 1e3)},
        "cp_reload_ms_median": round(statistics.median(reloads), 1) if reloads else None,
        "per_change": changes,
        "poll_statuses": dict(statuses),
        "poll_errors": dict(poll_errors),
    }


def cp_loaded_timestamp_async_safe(addr: str) -> float | None:
    # one blocking scrape on loopback right after convergence: a few ms, nothing is timed then
    try:
        return cp_loaded_timestamp(addr)
    except OSError:
        return None


DNS_ENDPOINTS = re.compile(r'^(\s*endpoints\s*=\s*)"dns:[^"]*:(\d+)"', re.M)


def bench_propagation(bins: str, tmp: str, quick: bool,
                      cp_cpu: int | None, n_pollers: int, n_sidecars: int,
                      keep_dns: bool) -> dict:
    tables = os.path.join(tmp, "tables-prop")
    os.makedirs(tables)
    table = os.path.join(tables, f"{ENV}.toml")
    with open(TABLE_SRC) as f:
        text = f.read()
    replaced = 0
    if not keep_dns:
        # A sidecar resolves every `dns:` endpoint before it installs a table, and its DNS
        # refresh shares the poll loop: with the dev table's cluster names (NXDOMAIN here, at
        # times after a 5 s resolver timeout) that would measure the resolver, not propagation.
        text, replaced = DNS_ENDPOINTS.subn(r'\1["127.0.0.1:\2"]', text)
    with open(table, "w") as f:
        f.write(text)
    cp = start(tmp, "cp-prop", [os.path.join(bins, "control-plane"), "--tables", tables,
                                    "--listen", "127.0.0.1:0", "--watch-interval", "200ms"],
                        cpu=cp_cpu)
    wait_listening([cp], 20)
    addr = cp.announced["control_plane"]
    log(f"propagation: control-plane pid {cp.pid} on {addr}, watch interval 200ms")
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "warn")
    # Started 1/n s apart: a sidecar polls on a fixed-rate timer from its start, so this spreads
    # their poll phases evenly over the 1 s interval (started together they would poll in step).
    sidecars = []
    for n in range(n_sidecars):
        if n:
            time.sleep(1.0 / n_sidecars)
        sidecars.append(start(tmp, f"sidecar-{n}", [
            os.path.join(bins, "sidecar"), "--service", f"lab-bench-{n}",
            "--control-plane", f"http://{addr}", "--env", ENV,
            "--outbound", "127.0.0.1:0", "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0",
            "--app", "127.0.0.1:9", "--poll-interval", "1s"], env=env))
    t = time.monotonic()
    wait_listening(sidecars, 30)
    log(f"propagation: {n_sidecars} sidecars listening after {time.monotonic() - t:.2f}s")
    admins = [s.announced["admin"] for s in sidecars]
    res = asyncio.run(propagation(addr, admins, table, n_pollers, 1 if quick else 3,
                                  poll_interval=1.0, admin_every=0.02))
    stop_many(sidecars + [cp], GRACE_S)
    res.update({
        "watch_interval": "200ms",
        "poll_interval": "1s",
        "control_plane_cpu": cp_cpu,
        "dns_endpoints_replaced": replaced,
        "note": (
            "Time from the rename of the rewritten table file (version+1) until each poller "
            "holds the new version; it includes the control plane's file watch (--watch-interval "
            "200ms, cp_reload_ms) and up to one 1 s poll interval. Simulated pollers: asyncio "
            "tasks, one keep-alive connection each, random start phase, fixed-rate conditional "
            "GETs. Real sidecars: `sidecar --poll-interval 1s`, started 1/N s apart to spread their "
            "poll phases, their admin /config version read "
            "every 20 ms around a change (that resolution is in their figures). Both sets poll "
            "one control plane at the same time. Full mode: median over 3 changes. The table is the "
            "dev one with its `dns:` endpoints replaced by static 127.0.0.1 ones "
            "(dns_endpoints_replaced; --keep-dns keeps them), since sidecars resolve them "
            "before installing a table and that would time the resolver."
        ),
    })
    return res


# ---------------------------------------------------------------------------------------------

def ensure_binaries(bins: str) -> None:
    need = [os.path.join(bins, b) for b in ("control-plane", "sidecar")]
    if all(os.access(p, os.X_OK) for p in need):
        return
    log("release binaries missing: cargo build --release --workspace --bins "
        "(waits on the build lock if another build holds it)")
    r = subprocess.run(["cargo", "build", "--release", "--workspace", "--bins"], cwd=ROOT,
                       stdout=sys.stderr, stderr=sys.stderr)
    if r.returncode != 0 or not all(os.access(p, os.X_OK) for p in need):
        raise RuntimeError("cargo build --release failed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 s poll run, one table change")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--cp-cpu", type=int, default=1, help="CPU for the control plane")
    ap.add_argument("--load-cpu", type=int, default=0, help="CPU for the load generator")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--pollers", type=int, default=200)
    ap.add_argument("--sidecars", type=int, default=10)
    ap.add_argument("--keep-dns", action="store_true",
                    help="propagation: keep the dev table's dns: endpoints as they are")
    ap.add_argument("--keep-tmp", action="store_true",
                    help="keep the temp dir (children's stdout/stderr) for a post-mortem")
    ap.add_argument("--python-client", action="store_true",
                    help="use the Python client even when wrk is installed")
    args = ap.parse_args()

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    started = time.monotonic()
    bins = os.path.abspath(args.bin_dir)
    ensure_binaries(bins)

    cpus = os.sched_getaffinity(0)
    pin = shutil.which("taskset") is not None and {args.cp_cpu, args.load_cpu} <= cpus \
        and args.cp_cpu != args.load_cpu
    cp_cpu = args.cp_cpu if pin else None
    load_cpu = args.load_cpu if pin else None
    if not pin:
        log(f"not pinning: taskset missing or CPUs {args.cp_cpu}/{args.load_cpu} not in {cpus}")

    tmp = tempfile.mkdtemp(prefix="cp_bench.")
    result: dict = {
        "bench": "control-plane",
        "mode": "quick" if args.quick else "full",
        "bin_dir": bins,
        "table": os.path.relpath(TABLE_SRC, ROOT),
        "cpus_online": os.cpu_count(),
        "pinned": pin,
    }
    try:
        result["poll_304"] = bench_304(bins, tmp, args.quick, cp_cpu, load_cpu,
                                       args.connections, args.python_client)
        result["propagation"] = bench_propagation(bins, tmp, args.quick, cp_cpu,
                                                  args.pollers, args.sidecars,
                                                  args.keep_dns)
    finally:
        stop_all(GRACE_S)
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - one readable line, the children are already gone
        import traceback
        traceback.print_exc(file=sys.stderr)
        log(f"error: {e}")
        sys.exit(1)
