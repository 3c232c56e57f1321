-- wrk: a flood of made-up bearer tokens, a new one each request: half of the minted format
-- ("alloc_" and 43 urlsafe base64 characters, each an unseen token to look up), half garbage.
-- Arguments: the path to GET, a seed, the pause (ms) each connection makes between requests
-- (the flood's rate). Prints "FLOOD {json}" with the answers by status.
local threads = {}
local counter = 0
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  path = args[1]
  math.randomseed(tonumber(args[2]) + id)
  pause = tonumber(args[3])
  answers = {}
end

function delay()
  return pause
end

local function made_up()
  local length = math.random(0, 1) == 1 and 43 or math.random(1, 60)
  local chars = {}
  for i = 1, length do
    local at = math.random(1, #alphabet)
    chars[i] = alphabet:sub(at, at)
  end
  local prefix = length == 43 and "alloc_" or ""
  return prefix .. table.concat(chars)
end

function request()
  return wrk.format("GET", path, {["Authorization"] = "Bearer " .. made_up()})
end

function response(status, headers, body)
  answers[status] = (answers[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("answers")) do
      total[tostring(status)] = (total[tostring(status)] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(total) do
    table.insert(parts, string.format('"%s": %d', status, count))
  end
  io.write(string.format('FLOOD {"seconds": %.3f, "p99_ms": %.3f, "answers": {%s}}\n',
                         summary.duration / 1e6, latency:percentile(99) / 1000,
                         table.concat(parts, ", ")))
end
