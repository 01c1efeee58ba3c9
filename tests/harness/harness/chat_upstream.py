"""A scripted OpenAI-style chat upstream for the AI filters' tests: `POST /v1/chat/completions`
answers with a fixed text and `usage`, as JSON or streamed (the usage chunk only when
`stream_options.include_usage` asks, as OpenAI does). It records every request body it got whole
(a request cut short is not recorded).

Controls: `server.usage = (prompt, completion)`; `server.fail_with = 503` answers that status;
`server.cut_stream = True` ends a stream after its first text chunk without usage or `[DONE]`;
`server.long_answer = n` streams n words whatever the request's limit (a model that ignores it),
pausing every 100."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = ["Hello", " from", " the", " scripted", " model."]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ChatUpstream

    def do_POST(self) -> None:  # noqa: N802 - name from the base class
        try:
            body = self._read_body()
        except (OSError, ValueError, RecursionError):
            # A request whose body never came (a filter answered it after its headers went on), or
            # is not a JSON object.
            self.close_connection = True
            return
        with self.server.lock:
            self.server.received.append(body)
        if self.server.fail_with is not None:
            self._send(self.server.fail_with, b'{"error": "down"}', "application/json")
            return
        prompt, completion = self.server.usage
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        if body.get("stream"):
            self._stream(body, usage)
            return
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body.get("model", ""),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(ANSWER)}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _read_body(self) -> dict[str, Any]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while (size := int(self.rfile.readline().strip(), 16)) > 0:
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get("content-length", "0")))
        parsed = json.loads(data)
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
        return parsed

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _stream(self, body: dict[str, Any], usage: dict[str, int]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()

        def chunk(data: dict[str, Any]) -> None:
            self.wfile.write(f"data: {json.dumps({'object': 'chat.completion.chunk', **data})}\n\n".encode())
            self.wfile.flush()

        for n, piece in enumerate([" word"] * self.server.long_answer if self.server.long_answer else ANSWER):
            chunk({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            if n % 100 == 99:
                time.sleep(0.01)  # a long answer arrives in batches, as a model's does
            if self.server.cut_stream:
                return
        chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk({"choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature from the base class
        """Keep test output quiet."""


class ChatUpstream(ThreadingHTTPServer):
    """The server; see the module's controls."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        self.usage = (20, 10)
        self.fail_with: int | None = None
        self.cut_stream = False
        self.long_answer = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def start_chat_upstream() -> ChatUpstream:
    """The upstream on a free loopback port, serving in a daemon thread."""
    server = ChatUpstream()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
