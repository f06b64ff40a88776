"""The outputs of a run: the markdown report (one function per section), the JSON, the
latency chart (gnuplot) and the summary printed at the end; plus the text of the method and
the notes that read figures against each other."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .allocs import RUST_COUNTER, SHIM_COUNTER
from .common import CPU_LOAD, ratio
from .configs import BODY
from .load import CONNECTIONS, IDLE_CONNECTIONS
from .setups import DESCRIPTIONS, SETUPS, TITLES, TRACE_SAMPLE

# How the allocation table names each counter (allocs.py).
COUNTER_NAMES = {RUST_COUNTER: "Rust allocator", SHIM_COUNTER: "malloc_count.so"}


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
            by = [COUNTER_NAMES.get((allocs.get(k) or {}).get("counter", SHIM_COUNTER), "?")
                  for k in ("sidecar", other)]
            notes.append(f"allocations per request: {sa:.1f} against {name}'s {oa:.1f}"
                         + (f" (counted by the {by[0]} against {by[1]})." if by[0] != by[1]
                            else "."))
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


def method_lines(mode, oha: str | None) -> list[str]:
    """How it was measured, one line per measure: the report's list and the JSON's `method`."""
    return [
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
        "Allocations per request: the proxies are started a second time, each with an "
        "allocation counter read before and after a GET run; kept out of the throughput runs "
        "because the counters' atomic increments cost the allocating proxies more. The sidecar "
        "and the bare Pingora proxy: a build with `--features alloc-count` "
        "(bench/.tools/alloc-count/) whose Rust global allocator counts every alloc, dealloc "
        "and realloc call and its bytes (sidecar/src/alloc_count.rs, over Rust's System "
        "allocator = glibc malloc; it sees whatever allocator is linked in), read from the "
        "sidecar's admin /debug/allocations and the bare proxy's --alloc-count listener. nginx "
        "and HAProxy (C programs): bench/.tools/malloc_count.so (LD_PRELOAD; counts "
        "malloc/calloc/realloc/free and posix_memalign, dumped on a signal). nginx allocates "
        "from per-connection and per-request pools (one posix_memalign per pool, then bump "
        "allocation), so its count is pool blocks, not objects; HAProxy recycles objects "
        "through its own pools; the Rust proxies show every object.",
        ("Latency: oha at a fixed rate of half the slowest setup's median saturation, open "
         f"loop with --latency-correction (coordinated omission corrected), {CONNECTIONS} "
         "keep-alive connections, JSON output; medians of the percentiles over repetitions; "
         "'added' = this setup minus direct."
         if oha else
         "Latency: oha could not be installed, so latency is wrk's closed-loop figure from the "
         "saturation runs (it hides queueing delay: coordinated omission)."),
        f"Memory: VmRSS from /proc/PID/status, idle after start, peak sampled during the GET "
        f"runs, and with {IDLE_CONNECTIONS} client connections opened from Python, each after "
        f"one request answered, held idle for 0.5 s; then {IDLE_CONNECTIONS} more. KiB per idle "
        f"client is the growth over all {2 * IDLE_CONNECTIONS}, per client: RSS grows in steps "
        "(an allocator commits a region of several MiB at once, which the next clients fill), so "
        "the steps are spread over more clients than one batch.",
        "Setup 6 turns every policy the sidecar has on. Setup 2 is the same sidecar with every "
        "policy off as far as the table allows (one try, round-robin over one endpoint, no "
        "health check, breaker and limit out of reach): the breaker, limit and budget "
        "bookkeeping still run per request.",
        "No proxy writes an access log (nginx access_log off, HAProxy no log, the sidecar "
        "without --access-log and RUST_LOG=info, which logs no request line).",
    ]


def tracing_line(otlp_requests: int, otlp_bytes: int) -> str:
    """The method line on the sidecar's metrics and tracing, once the sink counted the exports."""
    return (
        "Sidecar metrics and tracing: setups 2 and 3 run with `--metrics off` and no "
        "OTEL_* variables (nothing counted, no span); setup 6 with metrics on and "
        f"OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG={TRACE_SAMPLE}, "
        "exporting over OTLP/HTTP to a sink in the harness, which received "
        f"{otlp_requests} export request(s), {otlp_bytes:,} bytes, over the run"
        + (" (none: this sidecar does not export traces, so no tracing cost is in setup 6)."
           if not otlp_requests else "."))


# --------------------------------------------------------------------------------------------
# the markdown report, section by section: each returns its lines


def title(out: dict) -> list[str]:
    """The title and how the report was made."""
    L: list[str] = []
    a = L.append
    g = out["git"]
    a(f"# meshlab benchmark: {out['date']}, {g['sha']}{' (dirty work tree)' if g['dirty'] else ''}, {out['mode']} mode")
    a("")
    a(f"Generated by `make bench{' QUICK=1' if out['mode'] == 'quick' else ''}` (bench/harness.py) "
      f"in {out['elapsed_s']:.0f} s. Ratios are what to read: absolute figures drift by "
      f"10-20% between runs on this machine.")
    a("")
    return L


def machine_and_versions(out: dict) -> list[str]:
    """## Machine and versions: CPUs, load at start and end, tool versions."""
    L: list[str] = []
    a = L.append
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
    return L


def how_measured(out: dict) -> list[str]:
    """## How it was measured: the method lines (also in the JSON)."""
    L: list[str] = []
    a = L.append
    a("## How it was measured")
    a("")
    for line in out["method"]:
        a(f"- {line}")
    a("")
    return L


def saturation_get(out: dict, th: str, t: dict) -> list[str]:
    """## N worker threads, and its GET saturation table (with allocations per request)."""
    L: list[str] = []
    a = L.append
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
    return L


def allocations(out: dict, t: dict) -> list[str]:
    """The allocation table: allocs, frees and reallocs per request."""
    L: list[str] = []
    a = L.append
    allocs = t.get("allocs", {})
    if allocs and "error" not in allocs:
        a("Allocations per request = allocation calls / requests, in separate proxy instances "
          f"({out['alloc_duration_s']} s GET each), from the counter each row names: "
          "`Rust allocator` = the counting global allocator of the build with "
          "`--features alloc-count` (alloc + alloc_zeroed calls; bytes = the sizes asked for), "
          "`malloc_count.so` = the LD_PRELOAD shim (malloc + calloc + posix_memalign calls). "
          "frees = dealloc or free calls:")
        a("")
        a("| setup | counted by | allocs/req | frees/req | reallocs/req | bytes allocated/req |")
        a("| --- | --- | ---: | ---: | ---: | ---: |")
        for key in SETUPS:
            al = allocs.get(key)
            if not al:
                continue
            by = COUNTER_NAMES.get(al.get("counter", SHIM_COUNTER), al.get("counter"))
            if "error" in al:
                a(f"| {TITLES[key]} | {by} | n/a: {al['error']} | | | |")
            else:
                a(f"| {TITLES[key]} | {by} | {al['allocs_per_req']:.1f} "
                  f"| {al['frees_per_req']:.1f} | {al['reallocs_per_req']:.2f} "
                  f"| {fmt(al.get('alloc_bytes_per_req'), 0)} |")
        a("")
    elif isinstance(allocs, dict) and "error" in allocs:
        a(f"Allocations: not measured ({allocs['error']}).")
        a("")
    return L


def saturation_other(out: dict, t: dict) -> list[str]:
    """### Saturation for POST and the header mix."""
    L: list[str] = []
    a = L.append
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
    return L


def latency(out: dict, th: str, t: dict, png_name: str | None) -> list[str]:
    """### Latency: percentiles and what each setup adds over direct; the chart."""
    L: list[str] = []
    a = L.append
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
    return L


def memory(t: dict) -> list[str]:
    """### Memory: RSS idle, under load and with idle clients."""
    L: list[str] = []
    a = L.append
    if "rss_idle_kib" in t:
        a(f"### Memory (VmRSS, MiB; summed over the setup's processes)")
        a("")
        a(f"| setup | idle | under load (peak) | {2 * IDLE_CONNECTIONS} idle keep-alive "
          f"clients | KiB per idle client (over {2 * IDLE_CONNECTIONS}) |")
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
                conn = mib(c.get("rss_2n_kib", c.get("rss_kib")))
                per = fmt(c.get("kib_per_connection"), 1)
            label = TITLES[key] + (" (the backend itself)" if key == "direct" else "")
            a(f"| {label} | {mib(idle)} | {mib(load) if key != 'direct' else '-'} "
              f"| {conn} | {per} |")
        a("")
    return L


def profile(t: dict) -> list[str]:
    """### Where the sidecar's CPU goes (perf), when profiled."""
    L: list[str] = []
    a = L.append
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
    return L


def ratio_tables(out: dict) -> list[str]:
    """## Ratios: against nginx, HAProxy, direct and the bare Pingora proxy."""
    L: list[str] = []
    a = L.append
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
    return L


def instructions(out: dict) -> list[str]:
    """### Instructions per request (callgrind)."""
    L: list[str] = []
    a = L.append
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
    return L


def against_previous(out: dict) -> list[str]:
    """### Against the previous run of this commit."""
    L: list[str] = []
    a = L.append
    if out.get("previous"):
        pv = out["previous"]
        a(f"### Against the previous run of this commit ({pv['date_time']})")
        a("")
        a("| ratio | previous | this run | change |")
        a("| --- | ---: | ---: | ---: |")
        for row in pv["rows"]:
            a(f"| {row['name']} | {row['previous']:.3f} | {row['now']:.3f} | {row['change']:+.1%} |")
        a("")

    return L


def control_plane(out: dict) -> list[str]:
    """## Control plane: the headline figures of bench/cp_bench.py."""
    L: list[str] = []
    a = L.append
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
    return L


def losses(out: dict) -> list[str]:
    """## Where the sidecar loses (1 thread)."""
    L: list[str] = []
    a = L.append
    a("## Where the sidecar loses (1 thread)")
    a("")
    notes = loss_notes(out)
    for n in notes or ["Nowhere in this run."]:
        a(f"- {n}")
    a("")
    return L


def run_notes(out: dict) -> list[str]:
    """## Notes: what went wrong or differs in this run."""
    L: list[str] = []
    a = L.append
    if out.get("notes"):
        a("## Notes")
        a("")
        for n in out["notes"]:
            a(f"- {n}")
        a("")
    return L


def configurations(out: dict) -> list[str]:
    """## Setups and their configurations, as run."""
    L: list[str] = []
    a = L.append
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
    return L


def thread_sections(out: dict, th: str, t: dict, png_name: str | None) -> list[str]:
    """Everything measured with `th` worker threads per proxy."""
    return [*saturation_get(out, th, t), *allocations(out, t), *saturation_other(out, t),
            *latency(out, th, t, png_name), *memory(t), *profile(t)]


def write_markdown(out: dict, path: Path, png_name: str | None) -> None:
    L = [*title(out), *machine_and_versions(out), *how_measured(out)]
    for th, t in out.get("threads", {}).items():
        L += thread_sections(out, th, t, png_name)
    for section in (ratio_tables, instructions, against_previous, control_plane, losses,
                    run_notes, configurations):
        L += section(out)
    write_atomic(path, "\n".join(L))


def write_json(out: dict, path: Path) -> None:
    write_atomic(path, json.dumps(out, indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Writes a sibling .tmp file and renames it over `path`: a reader never sees half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


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
