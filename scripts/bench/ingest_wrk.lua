-- wrk script for scripts/bench/ingest.py: POST /v1/batch with 100-event batches shaped like
-- make_batches() (20% identify with traits, 55% track, 25% page over 50,000 people), each
-- request with fresh message ids (thread, counter) so that none is a duplicate.
-- Environment: WRK_KEY (the ingest key), WRK_SEED (a run id, keeps runs' ids apart).
local key = os.getenv("WRK_KEY")
local seed = os.getenv("WRK_SEED") or "0"
local auth = "Basic " .. (function(s)
  local b = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  return ((s:gsub(".", function(x)
    local r, byte = "", x:byte()
    for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end)(key .. ":")

local threads, counter = {}, 0
id, failures = 0, 0  -- globals: set and read per thread by setup() and done()

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(tonumber(seed) * 1000 + id)
end

local ctx = '"context":{"ip":"203.0.113.7","userAgent":"Mozilla/5.0","locale":"en-US","library":{"name":"bench","version":"1"}}'

local function event(b, e)
  local p = math.random(0, 49999)
  local base = string.format('"userId":"user-%d","anonymousId":"anon-%d","messageId":"w-%s-%d-%d-%d","timestamp":"2026-11-25T10:00:00Z",%s',
    p, p, seed, id, b, e, ctx)
  local r = math.random()
  if r < 0.2 then
    return string.format('{%s,"type":"identify","traits":{"email":"user%d@example.com","phone":"+1415%07d","firstName":"First%d","plan":"%s"}}',
      base, p, p, p, math.random() < 0.5 and "free" or "pro")
  elseif r < 0.75 then
    return string.format('{%s,"type":"track","event":"%s","properties":{"sku":"SKU-%d","price":19.99}}',
      base, math.random() < 0.5 and "Product Viewed" or "Order Completed", math.random(0, 499))
  end
  return string.format('{%s,"type":"page","name":"Home","properties":{"path":"/","title":"Home"}}', base)
end

function request()
  counter = counter + 1
  local events = {}
  for e = 1, 100 do events[e] = event(counter, e) end
  local body = '{"batch":[' .. table.concat(events, ",") .. '],"sentAt":"2026-11-25T10:00:01Z"}'
  return wrk.format("POST", "/v1/batch", { ["Content-Type"] = "application/json", ["Authorization"] = auth }, body)
end

function response(status, headers, body)
  if status ~= 200 then failures = failures + 1 end
end

function done(summary, latency, requests)
  local failed = 0
  for _, t in ipairs(threads) do failed = failed + t:get("failures") end
  io.write(string.format("WRK-RESULT %d %d %.6f %d %d\n", summary.requests, failed, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99)))
end
