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

-- done(): the WRK_JSON line bench/harness.py reads, shared by every script.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
