"""The measuring passes, each a function of the lab and the mode: saturation, POST and the
header mix, latency, memory and the perf profile for one thread count (`measure_threads`);
allocations per request under the counters (`alloc_pass`); instructions per request under
callgrind (`instructions_pass`); and the control plane's own bench (`control_plane`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .allocs import per_request, read_counts
from .common import BENCH, CPU_LOAD, ROOT, http_status, log, median, run_text
from .load import IDLE_CONNECTIONS, idle_connections_rss, run_oha, run_wrk, summarize
from .processes import rss_kib, stop_many
from .setups import SETUPS, Lab, Setup

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
    counting = [p.name for s in setups.values() for p in s.procs
                if (p.announced or {}).get("admin")
                and http_status(p.announced["admin"], "/debug/allocations") == 200]
    if counting:
        log(f"warning: {', '.join(counting)} count allocations: not the build to time")
        out["notes"].append(
            f"{threads} thread(s): {', '.join(counting)} answered /debug/allocations, so the "
            "timed sidecar was a build with the counting allocator (--features alloc-count) "
            "and its figures include the counting; bench/run.sh builds the plain one last.")
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

    log("allocations per request (proxies restarted with their allocation counters)")
    t["allocs"] = alloc_pass(lab, threads, mode.alloc_duration)
    mark("allocs")


def alloc_pass(lab: Lab, threads: int, duration: float) -> dict:
    """Allocations per request, in proxies started again with their counter (allocs.py): the
    Rust ones from the counting build, nginx and HAProxy under malloc_count.so."""
    results = {}
    failed: dict = {}
    setups = lab.start_setups(threads, alloc=True, only=[s for s in SETUPS if s != "direct"],
                              failed=failed)
    for key, why in failed.items():
        results[key] = {"error": f"did not start with its allocation counter: {why}"}
    try:
        for key, s in setups.items():
            # No warm-up: each wrk run opens its 50 connections anew anyway; their set-up,
            # spread over the run, is well under one allocation per request.
            before = read_counts(s, lab.run_dir)
            r = run_wrk(s, "get.lua", duration, [])
            after = read_counts(s, lab.run_dir)
            if before is None or after is None or "error" in r:
                results[key] = {"counter": s.counter,
                                "error": r.get("error", f"{s.counter} gave no counters")}
                continue
            results[key] = per_request(s.counter, before, after, r["requests"])
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
