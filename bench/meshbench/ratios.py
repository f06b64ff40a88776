"""Ratios between setups, from the medians of one run (time-based ones paired within each
repetition, so drift of the machine between repetitions cancels), and how far each moved from
the previous run of the same commit."""

from __future__ import annotations

from .common import median, ratio


def compute_ratios(out: dict) -> dict:
    ratios = {}
    for th, t in out.get("threads", {}).items():
        get = {k: v["median"] for k, v in t.get("get", {}).items()}
        if not get:
            continue

        def g(key, field):
            return (get.get(key) or {}).get(field)

        def paired(a, b, field):
            """The median over repetitions of a/b within each repetition: A and B ran
            seconds apart, so drift of the machine between repetitions cancels."""
            ra = (t["get"].get(a) or {}).get("runs") or []
            rb = (t["get"].get(b) or {}).get("runs") or []
            vals = [x[field] / y[field] for x, y in zip(ra, rb)
                    if "error" not in x and "error" not in y and x.get(field) and y.get(field)]
            return median(vals) if vals else ratio(g(a, field), g(b, field))
        direct_cpu = g("direct", "backend_cpu_us_per_req")
        r = {}
        for name, key in (("sidecar", "sidecar"), ("mesh", "mesh"), ("policies", "policies")):
            r[name] = {
                "rps_vs_nginx": paired(key, "nginx", "rps"),
                "rps_vs_haproxy": paired(key, "haproxy", "rps"),
                "rps_vs_direct": paired(key, "direct", "rps"),
                "cpu_vs_nginx": paired(key, "nginx", "cpu_us_per_req"),
                "cpu_vs_haproxy": paired(key, "haproxy", "cpu_us_per_req"),
                "cpu_vs_direct": ratio(g(key, "cpu_us_per_req"), direct_cpu),
                "cpu_vs_pingora": paired(key, "pingora", "cpu_us_per_req"),
            }
        r["pingora"] = {
            "rps_vs_nginx": paired("pingora", "nginx", "rps"),
            "cpu_vs_nginx": paired("pingora", "nginx", "cpu_us_per_req"),
        }
        r["policies_vs_sidecar"] = {
            "rps": paired("policies", "sidecar", "rps"),
            "cpu": paired("policies", "sidecar", "cpu_us_per_req"),
        }
        for k in r:
            r[k] = {a: (round(b, 3) if b is not None else None) for a, b in r[k].items()}
        ratios[th] = r
    ins = {k: v.get("per_request") for k, v in (out.get("instructions") or {}).items()
           if isinstance(v, dict)}
    if any(ins.values()):
        r = {}
        for key in ("sidecar", "mesh", "policies", "pingora"):
            r[key] = {f"vs_{o}": ratio(ins.get(key), ins.get(o))
                      for o in ("nginx", "haproxy", "pingora") if o != key}
        r["policies_vs_sidecar"] = {"instr": ratio(ins.get("policies"), ins.get("sidecar"))}
        for k in r:
            r[k] = {a: (round(b, 3) if b is not None else None) for a, b in r[k].items()}
        ratios["instructions"] = r
    return ratios


def compare_previous(prev: dict, out: dict) -> dict | None:
    rows = []
    for th, r in out.get("ratios", {}).items():
        pr = (prev.get("ratios") or {}).get(th)
        if not pr:
            continue
        for key, vals in r.items():
            for k, v in vals.items():
                p = (pr.get(key) or {}).get(k)
                if v is None or p is None or p == 0:
                    continue
                label = "instructions" if th == "instructions" else f"t{th}"
                rows.append({"name": f"{label} {key} {k}", "previous": p, "now": v,
                             "change": v / p - 1})
    if not rows:
        return None
    return {"date_time": prev.get("started", "?"), "rows": rows}
