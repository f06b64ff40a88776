"""One run of the benchmark, from the command line to the report: parse the flags, start the
backend, run the passes for each thread count, then callgrind and the control plane, and write
bench/results/<date>-<sha>.{md,json} and the latency chart. bench/harness.py calls `main`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .common import BENCH, CPU_PROXY, ROOT, log
from .machine import busy_processes, git_info, machine_info, versions
from .passes import Mode, control_plane, instructions_pass, measure_threads
from .processes import stop_all
from .ratios import compare_previous, compute_ratios
from .report import (chart, loss_notes, method_lines, print_summary, tracing_line, write_json,
                     write_markdown)
from .setups import DESCRIPTIONS, SETUPS, TITLES, Lab

DESCRIPTION = "meshlab benchmark harness: the sidecar against direct, nginx and HAProxy, in one run."


def parse_args() -> tuple[argparse.Namespace, Mode, str | None]:
    """The flags, the mode they make, and oha's path (None when it is missing)."""
    ap = argparse.ArgumentParser(description=DESCRIPTION)
    ap.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"))
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    ap.add_argument("--tools", default=str(BENCH / ".tools"))
    ap.add_argument("--alloc-bin-dir", default=str(BENCH / ".tools" / "alloc-count"),
                    help="the sidecar and bare_proxy built with --features alloc-count, for "
                    "the allocation pass (bench/run.sh puts them there)")
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
    return args, mode, oha


def new_report(mode: Mode, oha: str | None, started: dt.datetime) -> dict:
    """The report before any measurement: machine, versions, load, mode, method, notes."""
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
    out["method"] = method_lines(mode, oha)
    if not oha:
        out["notes"].append("oha (open-loop generator) is missing: `cargo install oha` failed "
                            "or was skipped, so latency figures are closed-loop (wrk).")
    if mode.quick:
        out["notes"].append(f"QUICK mode: {mode.reps} x {mode.duration} s per setup, 1 thread "
                            "only, no POST or header-mix runs, no mesh hop under callgrind; "
                            "time-based ratios move by 10-30% between quick runs on this "
                            "machine (the instruction counts do not). Use `make bench` for "
                            "5 x 15 s, 2 threads and every setup.")
    return out


def measure(lab: Lab, args, mode: Mode, oha: str | None, out: dict) -> bool:
    """Every pass in order, into `out`; False when the backend did not start."""
    try:
        lab.start_backend()
    except RuntimeError as e:
        log(f"cannot measure: the backend did not start: {e}")
        return False
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
    out["method"].append(tracing_line(lab.otlp.requests, lab.otlp.bytes))

    if args.instructions_only:
        out["control_plane"] = {"error": "not measured (--instructions-only)"}
    else:
        log("control plane: bench/cp_bench.py")
        out["control_plane"] = control_plane(args, mode)
    return True


def measured_any(out: dict, instructions_only: bool) -> bool:
    return any(v["median"]["runs_ok"] for t in out.get("threads", {}).values()
               for v in t.get("get", {}).values()) or (
        instructions_only and any("per_request" in v for v in out["instructions"].values()
                                  if isinstance(v, dict)))


def write_outputs(out: dict, args, run_dir: Path) -> None:
    """bench/results/<stem>.{json,md} and -latency.png, compared with the run they replace."""
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
    write_json(out, json_path)
    write_markdown(out, md_path, None if png_err else png_path.name)
    log(f"wrote {md_path.relative_to(ROOT) if md_path.is_relative_to(ROOT) else md_path}, "
        f"{json_path.name}{'' if png_err else ', ' + png_path.name} in {out['elapsed_s']:.0f} s")


def main() -> int:
    args, mode, oha = parse_args()
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
    out = new_report(mode, oha, started)

    lab = Lab(args, run_dir)
    if lab.counting_bins is None:
        out["notes"].append(
            f"no counting build in {args.alloc_bin_dir} (sidecar and bare_proxy built with "
            "--features alloc-count, as bench/run.sh does): the sidecar's and bare Pingora's "
            "allocations were counted by malloc_count.so instead of their Rust allocator.")
    code = 0
    try:
        if not measure(lab, args, mode, oha, out):
            return 2
    finally:
        stop_all()

    if not measured_any(out, args.instructions_only):
        log("cannot measure: no setup completed a run")
        code = 2
    out["load"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["ratios"] = compute_ratios(out)
    out["elapsed_s"] = round(time.monotonic() - t_start, 1)
    write_outputs(out, args, run_dir)
    print_summary(out)
    if not args.keep_run_dir and code == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
    return code
