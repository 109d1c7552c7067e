-- wrk script: CMQ pushes with a distinct message id each, so that dedup never skips a run.
-- BODY_FILE (env) names the request body; every "@ID@" in it becomes the message id, so a JSON
-- envelope's msgId and the x-cmq-message-id header agree. HOOK_PATH (env) is the request path.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0
local parts = { "" }
local path = "/"
function init(args)
  path = os.getenv("HOOK_PATH") or "/"
  local file_name = os.getenv("BODY_FILE")
  if file_name then
    local file = assert(io.open(file_name, "rb"))
    local body = file:read("*a")
    file:close()
    parts = {}
    local from = 1
    while true do
      local at, till = string.find(body, "@ID@", from, true)
      if not at then break end
      table.insert(parts, string.sub(body, from, at - 1))
      from = till + 1
    end
    table.insert(parts, string.sub(body, from))
  end
end

function request()
  counter = counter + 1
  local id = string.format("%s-%d-%d", os.getenv("RUN_ID") or "r", tid, counter)
  return wrk.format("POST", path, {
    ["Content-Type"] = "text/plain",
    ["User-Agent"] = "Qcloud Notification Service Agent",
    ["x-cmq-message-id"] = id,
    ["x-cmq-request-id"] = id,
  }, table.concat(parts, id))
end
