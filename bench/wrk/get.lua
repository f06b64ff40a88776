-- GET a small body. The Host header names the target service of a sidecar's outbound
-- listener (`wrk ... -s get.lua URL -- <service>`, default b); nginx, HAProxy and the backend
-- ignore it. done() prints one `WRK_JSON {...}` line that bench/harness.py reads.
local service = "b"

function init(args)
  if args[1] ~= nil then
    service = args[1]
  end
end

function request()
  return wrk.format("GET", "/bench", { ["Host"] = service })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,'
      .. '"p99.9":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
