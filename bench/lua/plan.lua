-- wrk script for the Nära benchmark suite: replays a request plan and prints JSON statistics.
--
-- Usage: wrk -t1 -cN -dT -s plan.lua URL -- PLAN_FILE BASE_PATH
-- A bearer token, when needed, comes from the environment variable NARA_BENCH_TOKEN (not the command line).
-- PLAN_FILE has one request per line: METHOD <tab> PATH <tab> BODY (BODY empty for none).
-- METHOD "DELETE_CREATED" deletes a resource this thread created earlier in the run (taken from the
-- Location header of a 201 answer); when none is waiting the line is skipped.
-- Each thread starts at its own offset in the plan and walks it round-robin.

local threads = {}
local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  table.insert(threads, thread)
end

local reqs, kinds = {}, {}
local n, i = 0, 0
local created, ncreated = {}, 0
local base = ""
local plain = {}
local track = false
n2xx, n3xx, n4xx, n5xx = 0, 0, 0, 0

local function split(line)
  local a = line:find("\t", 1, true)
  local b = line:find("\t", a + 1, true)
  return line:sub(1, a - 1), line:sub(a + 1, b - 1), line:sub(b + 1)
end

function init(args)
  local plan = args[1]
  base = args[2] or ""
  local token = os.getenv("NARA_BENCH_TOKEN")
  plain["Accept"] = "application/fhir+json"
  if token ~= nil and token ~= "" then
    plain["Authorization"] = "Bearer " .. token
  end
  local withbody = {}
  for k, v in pairs(plain) do withbody[k] = v end
  withbody["Content-Type"] = "application/fhir+json"
  for line in io.lines(plan) do
    if line ~= "" then
      local m, p, b = split(line)
      n = n + 1
      if m == "DELETE_CREATED" then
        kinds[n] = "D"
        reqs[n] = false
        track = true
      elseif b ~= "" then
        kinds[n] = "W"
        reqs[n] = wrk.format(m, p, withbody, b)
      else
        kinds[n] = "R"
        reqs[n] = wrk.format(m, p, plain, nil)
      end
    end
  end
  i = ((tid or 1) - 1) * 7919 % n
end

function request()
  for _ = 1, n do
    i = i % n + 1
    if kinds[i] ~= "D" then
      return reqs[i]
    end
    if ncreated > 0 then
      local path = created[ncreated]
      created[ncreated] = nil
      ncreated = ncreated - 1
      return wrk.format("DELETE", path, plain, nil)
    end
  end
  return reqs[1]
end

function response(status, headers, body)
  if status < 300 then
    n2xx = n2xx + 1
  elseif status < 400 then
    n3xx = n3xx + 1
  elseif status < 500 then
    n4xx = n4xx + 1
  else
    n5xx = n5xx + 1
  end
  if track and status == 201 and ncreated < 100000 then
    local loc = headers["Location"] or headers["location"]
    if loc then
      local t, id = loc:match("/(%u%a+)/([%w%-%.]+)/_history/")
      if not t then
        t, id = loc:match("/(%u%a+)/([%w%-%.]+)$")
      end
      if t then
        ncreated = ncreated + 1
        created[ncreated] = base .. "/" .. t .. "/" .. id
      end
    end
  end
end

function done(summary, latency, requests)
  local s = { 0, 0, 0, 0 }
  for _, t in ipairs(threads) do
    s[1] = s[1] + (t:get("n2xx") or 0)
    s[2] = s[2] + (t:get("n3xx") or 0)
    s[3] = s[3] + (t:get("n4xx") or 0)
    s[4] = s[4] + (t:get("n5xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p75":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d},'
      .. '"status":{"2xx":%d,"3xx":%d,"4xx":%d,"5xx":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency:percentile(99.9),
    s[1], s[2], s[3], s[4]))
end
