-- GET a small body through a sidecar's outbound listener.
-- The target service is named by the Host header; set it with `wrk ... -s get.lua -- <service>`.
local service = "b"

function init(args)
  if args[1] ~= nil then
    service = args[1]
  end
end

function request()
  return wrk.format("GET", "/bench", { ["Host"] = service })
end
