-- wrk script: CMQ pushes with a distinct message id each, so that dedup never skips a run.
-- BODY_FILE (env) names the message body; the push is SIMPLIFIED.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0
local body = ""
function init(args)
  local path = os.getenv("BODY_FILE")
  if path then
    local file = assert(io.open(path, "rb"))
    body = file:read("*a")
    file:close()
  end
end

function request()
  counter = counter + 1
  local id = string.format("%s-%d-%d", os.getenv("RUN_ID") or "r", tid, counter)
  return wrk.format("POST", "/", {
    ["Content-Type"] = "text/plain",
    ["User-Agent"] = "Qcloud Notification Service Agent",
    ["x-cmq-message-id"] = id,
    ["x-cmq-request-id"] = id,
  }, body)
end
