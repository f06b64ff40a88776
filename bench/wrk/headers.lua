-- GET with the header mix of a browser-facing API call behind a mesh: ~1 KiB over 16 fields
-- (cookies, a bearer token, trace context, request id), cycling over 4 paths.
-- `wrk ... -s headers.lua URL -- <service>`; done() prints one `WRK_JSON {...}` line.
local service = "b"
local paths = { "/api/v1/users/42", "/api/v1/orders?page=2&size=50", "/static/app.js", "/bench" }
local reqs = {}
local n = 0

function init(args)
  if args[1] ~= nil then
    service = args[1]
  end
  for i, p in ipairs(paths) do
    reqs[i] = wrk.format("GET", p, {
      ["Host"] = service,
      ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
      ["Accept"] = "application/json, text/plain, */*",
      ["Accept-Language"] = "en-GB,en;q=0.8,fr;q=0.5",
      ["Accept-Encoding"] = "gzip, deflate, br, zstd",
      ["Referer"] = "https://shop.example.test/account/orders",
      ["Cookie"] = "session=" .. string.rep("a1b2c3d4", 12) .. "; theme=dark; consent=1; "
        .. "_ga=GA1.2.1234567890.1700000000; cart=" .. string.rep("x", 40),
      ["Authorization"] = "Bearer " .. string.rep("eyJhbGciOiJIUzI1NiJ9", 8),
      ["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      ["tracestate"] = "vendor=opaque-value-1234",
      ["x-request-id"] = "9d4c1e2a-6b1f-4c1e-9f0a-2b7d3c4e5f60",
      ["x-forwarded-for"] = "203.0.113.7",
      ["x-client-version"] = "web/3.14.159",
      ["Cache-Control"] = "no-cache",
      ["Pragma"] = "no-cache",
      ["sec-fetch-mode"] = "cors",
    })
  end
end

function request()
  n = n % #reqs + 1
  return reqs[n]
end

-- done(): the WRK_JSON line bench/harness.py reads, shared by every script.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
