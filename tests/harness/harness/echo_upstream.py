#!/usr/bin/env python3
"""A real HTTP upstream for tests and ``make run``: answers every request with what it received, as JSON.

Response body: ``{"upstream": name, "method": ..., "path": ..., "headers": {lower-case name: value}, "body": ...,
"count": n}`` where ``n`` numbers the requests this server answered (so a cached answer shows an old count).

Test controls, all optional:

- ``?status=503`` answers with that status (a 5xx body looks like a Python traceback);
- ``?delay_ms=500`` waits before answering;
- ``?cache_control=max-age=5`` sets the response's ``Cache-Control``;
- ``server.fail_with = 503`` answers every request with that status until reset to ``None``;
- ``GET /sse?events=5&interval_ms=100`` streams Server-Sent Events, one per interval;
- ``GET /healthz`` answers 200 (health checks);
- ``server.stats`` counts ``requests``, ``events_sent`` and ``streams_cancelled`` (event streams whose
  client went away); ``server.paths_seen`` lists the request targets answered.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TRACEBACK = b'Traceback (most recent call last):\n  File "app.py", line 1, in <module>\nValueError: boom\n'


class EchoHandler(BaseHTTPRequestHandler):
    """Echo the request line, headers and body back as JSON."""

    protocol_version = "HTTP/1.1"
    server: EchoServer

    def _echo(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        body = self._read_body()
        if url.path == "/sse":
            self._stream_events(int(query.get("events", "5")), int(query.get("interval_ms", "100")))
            return
        time.sleep(int(query.get("delay_ms", "0")) / 1000)
        with self.server.lock:
            self.server.stats["requests"] += 1
            count = self.server.stats["requests"]
            self.server.paths_seen.append(self.path)
        status = self.server.fail_with or int(query.get("status", "200"))
        if status >= 500:
            self._send(status, "text/plain", TRACEBACK)
            return
        payload = {
            "upstream": self.server.name,
            "method": self.command,
            "path": self.path,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
            "count": count,
        }
        extra = {"cache-control": query["cache_control"]} if "cache_control" in query else {}
        if "invalid_header" in query:
            # Obs-text bytes (latin-1 encodes these code points as the bytes 0xff 0xfe): not UTF-8.
            extra[query["invalid_header"]] = "\xff\xfe"
        self._send(status, "application/json", json.dumps(payload).encode(), extra)

    def _read_body(self) -> bytes:
        """The request body, by content-length or chunked encoding."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            body = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return body
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, content_type: str, payload: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-upstream", self.server.name)
        self.end_headers()
        self.wfile.write(payload)

    def _stream_events(self, events: int, interval_ms: int) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for n in range(events):
                event = f"data: event {n} at {time.monotonic():.6f}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                with self.server.lock:
                    self.server.stats["events_sent"] += 1
                time.sleep(interval_ms / 1000)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            with self.server.lock:
                self.server.stats["streams_cancelled"] += 1

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _echo

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature from the base class
        """Keep test output quiet."""


class EchoServer(ThreadingHTTPServer):
    """The echo server, named so responses tell which upstream answered."""

    daemon_threads = True

    def __init__(self, port: int, name: str) -> None:
        super().__init__(("127.0.0.1", port), EchoHandler)
        self.name = name
        self.lock = threading.Lock()
        self.stats = {"streams_cancelled": 0, "events_sent": 0, "requests": 0}
        # When set, every request is answered with this status (a failing service).
        self.fail_with: int | None = None
        # Every request target answered, in order (tests look for smuggled requests in it).
        self.paths_seen: list[str] = []


def start_echo_upstream(port: int = 0, name: str = "echo") -> EchoServer:
    """Serve on 127.0.0.1:``port`` (0 = any free port) in a daemon thread; returns the server."""
    server = EchoServer(port, name)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    """Serve in the foreground."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--name", default="echo")
    args = parser.parse_args()
    server = EchoServer(args.port, args.name)
    print(f"echo upstream on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
