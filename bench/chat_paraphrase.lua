-- wrk: chat_post.lua's question in other words, from the same team: a semantic-cache hit on every
-- request (its exact key is never stored, so each one asks the index).
wrk.method = "POST"
wrk.body = '{"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "How much time does an espresso shot take?"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-team"] = "bench"
