-- wrk: every request is the same small chat completion (what the ai-tokens filter prices).
wrk.method = "POST"
wrk.body = '{"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "How long does an espresso shot take?"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-team"] = "bench"
