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

-- done(): the WRK_JSON line bench/harness.py reads, shared by every script.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
