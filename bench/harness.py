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

The code is the package bench/meshbench/ (its __init__ names each module and its job); this
file is only the entry point.
"""

import sys

from meshbench.processes import stop_all
from meshbench.run import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
