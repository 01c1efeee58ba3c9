-- wrk: chat_post.lua's question from a new team on every request: a semantic-cache miss each time
-- (an empty partition: the question is embedded, searched, indexed, answered upstream and stored).
local counter = 0
local run = tostring(os.time())

request = function()
  counter = counter + 1
  local headers = {["Content-Type"] = "application/json", ["x-team"] = "miss-" .. run .. "-" .. counter}
  local body = '{"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "How long does an espresso shot take?"}]}'
  return wrk.format("POST", nil, headers, body)
end
