"""Where the allocations per request come from: two counters, each read before and after a GET
run, and the figures per request from the difference.

- `rust-global-allocator`: the sidecar and the bare Pingora proxy built with `--features
  alloc-count` count at their Rust global allocator (sidecar/src/alloc_count.rs): every alloc,
  alloc_zeroed, dealloc and realloc call and its bytes, whatever allocator sits underneath.
  Read as JSON over HTTP: the sidecar's admin `GET /debug/allocations`, the bare proxy's
  `--alloc-count ADDR` listener (`Proc.counts_addr`).
- `malloc_count.so`: nginx and HAProxy (C programs) under LD_PRELOAD of bench/malloc_count.c,
  which counts malloc, calloc, realloc, free and posix_memalign and writes them to a file on a
  signal. The Rust proxies too when their counting build is missing.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path

from .common import http_get

RUST_COUNTER = "rust-global-allocator"
SHIM_COUNTER = "malloc_count.so"
# The setups whose proxies are Rust programs: counted at their allocator when they can be.
RUST_SETUPS = ("sidecar", "mesh", "policies", "pingora")


def read_counts(setup, run_dir: Path) -> dict | None:
    """The counters of every process of the setup, summed; None when one did not answer."""
    if setup.counter == RUST_COUNTER:
        return rust_counts(setup)
    return shim_counts(setup, run_dir)


def rust_counts(setup) -> dict | None:
    """GET each process's counters (the JSON of sidecar::alloc_count::Snapshot) and sum them."""
    total: dict = {}
    for proc in setup.procs:
        try:
            status, _, body = http_get(proc.counts_addr, "/debug/allocations", timeout=5)
            snap = json.loads(body) if status == 200 else None
        except (OSError, http.client.HTTPException, json.JSONDecodeError):
            return None
        if not isinstance(snap, dict):  # `null`: a build without the feature
            return None
        total["allocator"] = snap.get("allocator")
        for k, v in snap.items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    return total


def shim_counts(setup, run_dir: Path) -> dict | None:
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


def per_request(counter: str, before: dict, after: dict, reqs: int) -> dict:
    """Allocations, frees and reallocs per request (and bytes, where the counter knows them)."""
    d = {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int)}
    res = {"counter": counter, "requests": reqs, "delta": d}
    if counter == RUST_COUNTER:
        res.update({
            "allocator": after.get("allocator"),
            "allocs_per_req": round(d["allocs"] / reqs, 2),
            "frees_per_req": round(d["deallocs"] / reqs, 2),
            "reallocs_per_req": round(d["reallocs"] / reqs, 2),
            "alloc_bytes_per_req": round(d["alloc_bytes"] / reqs, 1),
        })
    else:
        res.update({
            "allocs_per_req": round((d["malloc"] + d["calloc"] + d["memalign"]) / reqs, 2),
            "frees_per_req": round(d["free"] / reqs, 2),
            "reallocs_per_req": round(d["realloc"] / reqs, 2),
        })
    return res
