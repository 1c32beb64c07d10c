-- wrk script for the RTIM benchmark (loadtest/wrkload.py runs it).
--
-- Environment: RTIM_API_KEY (sent as a Bearer token), RTIM_WRK_PATH (/noop,
-- /v1/decide, ...), RTIM_WRK_CUSTOMERS (decide picks c00000000..c{N-1} at
-- random), RTIM_WRK_BODY (extra JSON members for decide, e.g.
-- '"on_overload":"reject"'). done() prints one JSON line the benchmark parses:
-- answers by status, fallbacks (decide answers with "fallback":true), "no
-- message" decisions (200 answers with "offers":[], contact caps included), and
-- the latency percentiles wrk measured.

local path = os.getenv("RTIM_WRK_PATH") or "/noop"
local key = os.getenv("RTIM_API_KEY") or ""
local customers = tonumber(os.getenv("RTIM_WRK_CUSTOMERS") or "1000")
local extra = os.getenv("RTIM_WRK_BODY") or ""
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   statuses = {}
   fallbacks = 0
   no_message = 0
   math.randomseed(os.time() + math.floor(os.clock() * 1e6) + #threads)
   wrk.headers["Authorization"] = "Bearer " .. key
   if path ~= "/noop" then
      wrk.method = "POST"
      wrk.headers["Content-Type"] = "application/json"
   end
end

function request()
   if path == "/v1/decide" then
      local body = string.format(
         '{"customer_id":"c%08d","channel":"web","placement":"home_hero"%s}',
         math.random(0, customers - 1), extra ~= "" and ("," .. extra) or "")
      return wrk.format(nil, path, nil, body)
   end
   return wrk.format(nil, path)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 200 and body then
      if string.find(body, '"fallback":true', 1, true) then
         fallbacks = fallbacks + 1
      elseif string.find(body, '"offers":[]', 1, true) then
         no_message = no_message + 1
      end
   end
end

function done(summary, latency, requests)
   local by_status = {}
   local fb, nm = 0, 0
   for _, t in ipairs(threads) do
      fb = fb + (t:get("fallbacks") or 0)
      nm = nm + (t:get("no_message") or 0)
      local s = t:get("statuses") or {}
      for code, n in pairs(s) do
         by_status[code] = (by_status[code] or 0) + n
      end
   end
   local parts = {}
   for code, n in pairs(by_status) do
      table.insert(parts, string.format('"%d":%d', code, n))
   end
   io.write(string.format(
      'RTIM_WRK {"requests":%d,"seconds":%.6f,"fallbacks":%d,"no_message":%d,"by_status":{%s},' ..
      '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
      '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f}\n',
      summary.requests, summary.duration / 1e6, fb, nm, table.concat(parts, ","),
      summary.errors.connect, summary.errors.read, summary.errors.write,
      summary.errors.timeout, summary.errors.status,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000))
end
