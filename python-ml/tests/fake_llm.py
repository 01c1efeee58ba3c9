"""A scripted stand-in for the hosted LLM providers, on a real loopback socket.

It speaks just enough of Anthropic's Messages API and OpenAI's chat completions (both streamed as
server-sent events) for the generators, and follows a script: each request takes the next planned
reply (a status to fail with, a delay, or text to stream, and how the stream ends). It records what
it was sent and whether a client hung up mid-stream.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Ending = Literal["complete", "cut", "malformed", "unexpected"]
"""How a streamed reply ends after its text: with the provider's end mark; cut off without it;
with a `data:` line that is not JSON; or with a JSON event shaped unlike anything the provider sends."""


@dataclass
class Reply:
    """One planned answer: fail with `status`, or stream `text` word by word and end as `ending` says."""

    status: int = 200
    text: str = "Paris is the capital of France [1]."
    delay_before: float = 0.0
    delay_between: float = 0.0
    retry_after: str | None = None
    ending: Ending = "complete"


@dataclass
class Recorded:
    """What the fake saw."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    hung_up: threading.Event = field(default_factory=threading.Event)


class FakeLLM(ThreadingHTTPServer):
    """The server; `script` is consumed one reply per request (the last one repeats)."""

    daemon_threads = True

    def __init__(self, script: list[Reply]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.recorded = Recorded()
        self._lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_reply(self) -> Reply:
        """The reply for the next request."""
        with self._lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def stop(self) -> None:
        """Stops serving."""
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLM
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        self.server.recorded.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        reply = self.server.next_reply()
        time.sleep(reply.delay_before)
        if reply.status != 200:
            payload = json.dumps({"error": {"type": "overloaded", "message": "scripted failure"}}).encode()
            self.send_response(reply.status)
            if reply.retry_after is not None:
                self.send_header("retry-after", reply.retry_after)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        anthropic = self.path.endswith("/v1/messages")
        try:
            for i, word in enumerate(reply.text.split(" ")):
                piece = word if i == 0 else " " + word
                if anthropic:
                    event = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
                    self.wfile.write(f"event: content_block_delta\ndata: {json.dumps(event)}\n\n".encode())
                else:
                    event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
                time.sleep(reply.delay_between)
            self.wfile.write(_ENDINGS[reply.ending][int(anthropic)])
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.server.recorded.hung_up.set()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature from the base class
        pass


# (OpenAI, Anthropic) bytes for each ending.
_ENDINGS: dict[Ending, tuple[bytes, bytes]] = {
    "complete": (b"data: [DONE]\n\n", b'event: message_stop\ndata: {"type": "message_stop"}\n\n'),
    "cut": (b"", b""),
    "malformed": (b"data: {not json\n\n", b"event: content_block_delta\ndata: {not json\n\n"),
    "unexpected": (
        b'data: {"choices": "not a list"}\n\n',
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"type": "text_delta"}}\n\n',
    ),
}
