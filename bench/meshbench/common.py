"""Paths, logging, and the small helpers every part of the bench uses: a free port, a plain
HTTP GET, waiting for a condition, medians and ratios that tolerate missing figures."""

from __future__ import annotations

import http.client
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "bench"
WRK_DIR = BENCH / "wrk"

# Pinning (taskset): the load generator and the backend on CPU 0, the proxy under test on
# CPU 1 (with 2 worker threads on both, sharing CPU 0 with the generator).
CPU_LOAD = "0"
CPU_PROXY = {1: "1", 2: "0,1"}  # by worker threads

_log_name = "bench"


def set_log_name(name: str) -> None:
    """The prefix of every log line (`bench` for the harness, `cp_bench` for the control plane's)."""
    global _log_name
    _log_name = name


def log(msg: str) -> None:
    print(f"{_log_name}: {msg}", file=sys.stderr, flush=True)


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


def http_get(addr: str, path: str, headers: dict | None = None,
             timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 GET on a new connection: (status, headers in lower case, body).
    Raises OSError or http.client.HTTPException."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


def http_status(addr: str, path: str = "/bench", host: str = "b", timeout: float = 2.0):
    """The status of one GET, or None when there was no answer."""
    try:
        status, _, _ = http_get(addr, path, {"Host": host, "Connection": "close"}, timeout)
    except (OSError, http.client.HTTPException):
        return None
    return status


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b
