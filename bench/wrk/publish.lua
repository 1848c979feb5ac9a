-- wrk script for bench/http_publish.sh: each request publishes one
-- `agent_thinking` event, with an event_id, to the next run in RUNS_FILE.
local runs = {}
for line in io.lines(os.getenv("RUNS_FILE")) do
  runs[#runs + 1] = line
end
local n = 0
local headers = { ["Authorization"] = "Bearer dev-publish-key", ["Content-Type"] = "application/json" }

function setup(thread)
  thread:set("prefix", tostring(math.random(1, 1e9)))
end

function request()
  n = n + 1
  local run = runs[(n % #runs) + 1]
  local body = '{"event":"agent_thinking","event_id":"' .. prefix .. "-" .. n ..
    '","data":{"thought":"step ' .. n .. ': looking at the search results and deciding what to do next"}}'
  return wrk.format("POST", "/v1/runs/" .. run .. "/events", headers, body)
end

function response(status, headers, body)
  if status ~= 200 then
    print("unexpected status " .. status .. ": " .. body)
    wrk.thread:stop()
  end
end
