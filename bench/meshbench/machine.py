"""What the figures were measured on: the machine, the tool versions, the git commit, and
other processes busy at the start."""

from __future__ import annotations

import os
import re
import socket
import sys
import time

from .common import ROOT, run_text
from .processes import CLK_TCK


def machine_info() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": os.uname().release,
            "mem_mib": mem, "hostname": socket.gethostname()}


def versions(oha: str | None) -> dict:
    wrk = run_text(["wrk", "-v"]).splitlines()
    return {
        "rustc": run_text(["rustc", "--version"]),
        "nginx": run_text(["nginx", "-v"]).replace("nginx version: ", ""),
        "haproxy": run_text(["haproxy", "-v"]).splitlines()[0],
        "wrk": wrk[0] if wrk else "unknown",
        "oha": run_text([oha, "--version"]) if oha else "not installed",
        "python": sys.version.split()[0],
        "sidecar": run_text([str(ROOT / "target/release/sidecar"), "--version"]),
    }


def busy_processes(seconds: float = 0.5) -> list[dict]:
    """Processes (not ours) that used more than 10% of a CPU over a short sample."""
    def snap():
        out = {}
        for e in os.listdir("/proc"):
            if not e.isdigit():
                continue
            try:
                with open(f"/proc/{e}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            name = st[st.find("(") + 1:st.rfind(")")]
            fields = st[st.rfind(")") + 2:].split()
            out[int(e)] = (name, int(fields[11]) + int(fields[12]))
        return out
    a = snap()
    time.sleep(seconds)
    b = snap()
    busy = []
    for pid, (name, t) in b.items():
        if pid in a and pid != os.getpid():
            share = (t - a[pid][1]) / CLK_TCK / seconds
            if share > 0.10:
                busy.append({"pid": pid, "name": name, "cpu": round(share, 2)})
    return sorted(busy, key=lambda x: -x["cpu"])


def git_info() -> dict:
    sha = run_text(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = run_text(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {"sha": sha if re.fullmatch(r"[0-9a-f]{4,40}", sha) else "nogit",
            "dirty": bool(dirty.strip())}
