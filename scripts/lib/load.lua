-- wrk script for scripts/bench-load.sh: POSTs OpenAI embeddings requests.
--   BENCH_AUTH      bearer token (optional)
--   BENCH_BODY      same (one body: cache hits) | unique (a new text per request: misses)
--   BENCH_RUN       a label for this run, part of every unique text (no run repeats another's)
--   BENCH_DELAY_MS  pause before each request of a connection (paces the rate)
--   BENCH_OVERHEAD_HEADER  an answer header holding the server's overhead in ms, collected
--   BENCH_MAX       most requests per thread (the run also ends at wrk's -d)
-- Prints one machine-readable RESULT line.

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end

local mode = os.getenv("BENCH_BODY") or "same"
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local overhead_header = os.getenv("BENCH_OVERHEAD_HEADER")
local max_requests = tonumber(os.getenv("BENCH_MAX") or "1000000")
local auth = os.getenv("BENCH_AUTH")
local model = os.getenv("BENCH_MODEL") or "all-MiniLM-L6-v2"
local run = os.getenv("BENCH_RUN") or ""
local counter = 0
overheads = {}
seen = 0
answered = 0

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if auth and auth ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. auth
  end
end

function request()
  local text = "the quick brown fox jumps over the lazy dog"
  if mode == "unique" then
    counter = counter + 1
    text = string.format("%s request %d of connection group %d: the quick brown fox jumps", run, counter, tid)
  end
  return wrk.format(nil, nil, nil, '{"model":"' .. model .. '","input":"' .. text .. '"}')
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function response(status, headers, body)
  answered = answered + 1
  if overhead_header then
    local v = headers[overhead_header]
    if v then
      seen = seen + 1
      overheads[seen] = tonumber(v)
    end
  end
  if answered >= max_requests then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    local o = t:get("overheads")
    if o then
      for _, v in ipairs(o) do
        all[#all + 1] = v
      end
    end
  end
  table.sort(all)
  local function pct(p)
    if #all == 0 then
      return -1
    end
    return all[math.max(1, math.ceil(#all * p / 100))]
  end
  local secs = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d rps=%.1f p50_ms=%.3f p99_ms=%.3f non2xx=%d errors=%d ov_p50_ms=%.3f ov_p99_ms=%.3f ov_n=%d\n",
    summary.requests, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    pct(50), pct(99), #all))
end
