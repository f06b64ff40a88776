"""meshlab's benchmark harness as a package: bench/harness.py runs `run.main`, and
bench/cp_bench.py (the control plane's figures) reuses its processes and helpers.

Layout, in the order a run uses it:
- `common`: paths, logging, the pinning CPUs, a free port, a plain HTTP GET, medians, ratios;
- `processes`: child processes (pinned, own process group, logs in the run dir, LISTENING
  line, stopping many at once) and their CPU and memory from /proc;
- `configs`: the configuration text of the backend, nginx, HAProxy and the sidecar's tables;
- `setups`: the seven setups and the `Lab` that starts them (under the malloc_count shim or
  valgrind when a pass asks);
- `load`: the load generators (wrk, oha, idle keep-alive clients) and their figures;
- `passes`: saturation, latency, memory and profile per thread count; allocations;
  instructions under callgrind; the control plane;
- `allocs`: the two allocation counters (the Rust allocator's over HTTP, malloc_count.so's on
  a signal) and the figures per request;
- `machine`: the machine, tool versions, git commit, busy processes;
- `ratios`: ratios between setups and the change against the previous run;
- `report`: the markdown (one function per section), the JSON, the chart, the summary;
- `run`: the command line and the order of the passes.

Python 3.11 standard library only.
"""
