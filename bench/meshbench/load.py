"""The load generators: wrk at saturation (closed loop, with the CPU of the proxy, the backend
and everything else over the run), oha at a fixed rate (open loop, corrected latency), and idle
keep-alive client connections opened from Python."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time

from .common import CPU_LOAD, WRK_DIR, median
from .processes import (CLK_TCK, children_cpu_s, cpu_busy_jiffies, cpu_ticks, cpu_ticks_split,
                        rss_kib)
from .setups import Setup

CONNECTIONS = 50
IDLE_CONNECTIONS = 1000


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
    """RSS with n, then 2n idle keep-alive client connections, each having sent one request.

    The cost of an idle client is the growth over all 2n, per client. RSS grows in steps (an
    allocator commits a region of several MiB at once, which the next clients then fill), so
    the growth over n clients alone depends on where the steps fall: over 2n the steps are
    spread over more clients. The first and second n are reported too."""
    before = rss_kib(setup.pids())
    socks: list[socket.socket] = []
    req = f"GET /bench HTTP/1.1\r\nHost: {setup.host}\r\n\r\n".encode()
    ip, port = setup.addr.rsplit(":", 1)

    def open_batch() -> int:
        batch = []
        for _ in range(n):
            s = socket.create_connection((ip, int(port)), timeout=5)
            s.sendall(req)
            batch.append(s)
            socks.append(s)
        ok = 0
        for s in batch:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"HTTP/1.1 200"):
                ok += 1
        time.sleep(0.5)
        return ok

    try:
        ok = open_batch()
        first = rss_kib(setup.pids())
        ok += open_batch()
        second = rss_kib(setup.pids())
        still_open = sum(1 for s in socks if _still_open(s))
    except OSError as e:
        for s in socks:
            s.close()
        return {"error": f"{type(e).__name__}: {e} after {len(socks)} connections"}
    for s in socks:
        s.close()
    return {"connections": len(socks), "answered": ok, "still_open": still_open,
            "rss_before_kib": before, "rss_kib": first, "rss_2n_kib": second,
            "first_kib_per_connection": round((first - before) / n, 2),
            "second_kib_per_connection": round((second - first) / n, 2),
            "kib_per_connection": round((second - before) / (2 * n), 2)}


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
