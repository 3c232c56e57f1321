-- wrk: buy one unit per request, each with its own Idempotency-Key, for the whole duration
-- (the stock is set so it does not run out). Prints a JSON summary line for contenders.py.
-- Arguments: the path, a run id (for the keys), a bearer token; optionally a number of items N:
-- then "{i}" in the path is replaced by an item number that turns over all N.
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  n, ok, sold_out, other = 0, 0, 0, 0
  statuses = ""  -- the first few answers that were neither, to say what went wrong
  path = args[1]
  run = args[2]  -- keys of their own for each wrk run: a warm-up's keys would replay
  authorization = "Bearer " .. args[3]
  items = tonumber(args[4])
end

function request()
  n = n + 1
  local target = path
  if items then target = (path:gsub("{i}", tostring((n * 7 + id * 13) % items))) end
  return wrk.format("POST", target, {["Content-Type"] = "application/json",
                                   ["Authorization"] = authorization,
                                   ["Idempotency-Key"] = run .. "-" .. id .. "-" .. n},
                    '{"qty": 1}')
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 409 then sold_out = sold_out + 1
  else
    other = other + 1
    if other <= 5 then statuses = statuses .. status .. " " end
  end
end

function done(summary, latency, requests)
  local o, s, x, st = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); s = s + t:get("sold_out"); x = x + t:get("other")
    st = st .. t:get("statuses")
  end
  io.write(string.format(
    'WRK {"ok": %d, "sold_out": %d, "other": %d, "requests": %d, "seconds": %f, ' ..
    '"p50_ms": %f, "p99_ms": %f, "errors": %d, "statuses": "%s"}\n',
    o, s, x, summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, st))
end
