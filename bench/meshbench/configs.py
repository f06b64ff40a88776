"""The configuration text of every process under test: the backend nginx, nginx and HAProxy as
proxies, and the sidecar's routing tables (setups 2/3 and 6). The report prints them as run."""

from __future__ import annotations

from pathlib import Path

BODY = ("meshlab-bench " * 7)[:97] + "\n"  # 98 bytes


def nginx_backend_conf(run_dir: Path, ports: list[int]) -> str:
    listens = "\n".join(f"    listen 127.0.0.1:{p} backlog=4096;" for p in ports)
    return f"""# backend: one worker, a fixed body, no logs; the same for every setup
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {run_dir}/backend.pid;
error_log {run_dir}/backend.error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  client_body_buffer_size 64k;
  server {{
{listens}
    location = /healthz {{ default_type text/plain; return 200 "ok\\n"; }}
    location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }}
  }}
}}
"""


def nginx_proxy_conf(run_dir: Path, name: str, port: int, backend: int, threads: int,
                     master: bool = True) -> str:
    return f"""# nginx reverse proxy: {threads} worker(s), upstream keepalive, no access log
daemon off;
master_process {"on" if master else "off"};
worker_processes {threads};
worker_rlimit_nofile 16384;
pid {run_dir}/{name}.pid;
error_log {run_dir}/{name}.error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  upstream backend {{
    server 127.0.0.1:{backend};
    keepalive 128;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def haproxy_conf(port: int, backend: int, threads: int) -> str:
    return f"""# HAProxy: {threads} thread(s), connection reuse, no logs
global
  nbthread {threads}
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout http-keep-alive 600s
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server backend 127.0.0.1:{backend}
"""


def table_plain(endpoint: str) -> str:
    return f"""# setup 2/3: no policies (what the table allows): one try, round-robin over one
# endpoint, no health checks, breaker and concurrency limit out of reach
version = 1
[services.b]
endpoints = ["{endpoint}"]
lb = "round-robin"
timeouts = {{ connect_ms = 1000, request_ms = 15000 }}
retries = {{ attempts = 1, on = ["connect-failure"] }}
breaker = {{ consecutive_failures = 1000, max_ejected_percent = 0, max_concurrent = 1000000, max_pending = 0 }}
"""


def table_policies(endpoints: list[str]) -> str:
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return f"""# setup 6: every policy on. Two endpoints (two listening ports of the same backend
# process) so p2c-ewma has a choice and the breaker something to eject. Metrics on and
# tracing at 1% (OTEL_* variables).
version = 1
[services.b]
endpoints = [{eps}]
lb = "p2c-ewma"
health_check = {{ kind = "http", path = "/healthz", interval_ms = 1000, timeout_ms = 500, healthy = 2, unhealthy = 3 }}
timeouts = {{ connect_ms = 250, per_try_ms = 1000, request_ms = 5000 }}
retries = {{ attempts = 3, on = ["connect-failure", "reset", "5xx", "gateway-error"], backoff_ms = [25, 250], budget = {{ ratio = 0.2, min_per_s = 10, window_ms = 10000 }}, max_body_bytes = 65536 }}
breaker = {{ consecutive_failures = 5, base_ejection_ms = 30000, max_ejection_ms = 300000, max_ejected_percent = 50, max_concurrent = 1024, max_pending = 1024 }}
"""
