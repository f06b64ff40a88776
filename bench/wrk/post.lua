-- POST a 4 KiB body (Content-Length framed, so a retrying sidecar can buffer it).
-- `wrk ... -s post.lua URL -- <service>`; done() prints one `WRK_JSON {...}` line.
local service = "b"
local body = string.rep("0123456789abcdef", 256) -- 4096 bytes

function init(args)
  if args[1] ~= nil then
    service = args[1]
  end
end

function request()
  return wrk.format("POST", "/bench/upload", {
    ["Host"] = service,
    ["Content-Type"] = "application/octet-stream",
  }, body)
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
