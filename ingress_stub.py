"""A stand-in for the api service behind the nginx ingress, for test_ingress.py.

It runs in a Python container on the test's own Docker network under the name `api`, with
the standard library only. Port 8000 answers what nginx proxies, by path:

    /stall          held until the test releases it, then 200
    /close          the connection is closed without an answer
    /busy           503 problem+json with a Retry-After of its own (7)
    /big?bytes=N    200 with N bytes of body
    anything else   200 with the request as JSON: method, path (with its query string) and
                    the headers nginx sent

Every answer carries its own X-Request-ID and security headers, which the ingress must
replace with its own. Port 9000 lets the test read and steer it:

    GET  /state     {"requests": how many reached port 8000, "in_flight": how many are
                    being answered, "headers": the headers of the last one}
    POST /reset     counts back to zero, stalled requests held again
    POST /release   every stalled request (and every later one) answers
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

API_PORT = 8000
CONTROL_PORT = 9000
STALL_LIMIT_SECONDS = 120  # a stalled request answers anyway after this long
CHUNK = 1 << 16

# What the API itself might send; the ingress hides these and sends its own.
OWN_HEADERS = {
    "X-Request-ID": "set-by-the-api",
    "Strict-Transport-Security": "max-age=1",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "unsafe-url",
    "X-Content-Type-Options": "nosniff",
}


class State:
    """Counts shared by both ports' threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.headers: dict[str, str] = {}
        self.released = threading.Event()

    def arrived(self, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.headers = headers

    def left(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "headers": self.headers,
            }

    def reset(self) -> None:
        with self.lock:
            self.requests = 0
            self.headers = {}
            self.released.clear()


STATE = State()


class ApiHandler(BaseHTTPRequestHandler):
    """Port 8000: what nginx proxies."""

    protocol_version = "HTTP/1.1"

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # nginx gave up on this answer: nothing to do

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silent: the test reads the counts, not a log."""

    def answer(self) -> None:
        STATE.arrived(dict(self.headers.items()))
        try:
            self.route()
        finally:
            STATE.left()

    do_GET = do_HEAD = do_POST = do_PATCH = do_PUT = do_DELETE = answer  # noqa: N815

    def route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        url = urlsplit(self.path)
        if url.path == "/stall":
            STATE.released.wait(STALL_LIMIT_SECONDS)
            self.send_json(200, {"stalled": True})
        elif url.path == "/close":
            self.close_connection = True
        elif url.path == "/busy":
            problem = {"type": "about:blank", "title": "Service Unavailable", "status": 503}
            self.send_json(503, problem, {"Retry-After": "7"}, "application/problem+json")
        elif url.path == "/big":
            self.send_bytes(int(parse_qs(url.query)["bytes"][0]))
        else:
            echo = {"method": self.command, "path": self.path, "headers": dict(self.headers)}
            self.send_json(200, echo)

    def send_own_headers(self, status: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**OWN_HEADERS, **extra}.items():
            self.send_header(name, value)

    def send_json(
        self,
        status: int,
        body: object,
        extra: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        data = json.dumps(body).encode()
        self.send_own_headers(status, {"Content-Type": content_type, **(extra or {})})
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_bytes(self, size: int) -> None:
        self.send_own_headers(200, {"Content-Type": "application/octet-stream"})
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"x" * CHUNK
        for start in range(0, size, CHUNK):
            self.wfile.write(chunk[: min(CHUNK, size - start)])


class ControlHandler(BaseHTTPRequestHandler):
    """Port 9000: the test reads the counts and releases stalled requests."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silent."""

    def do_GET(self) -> None:
        self.reply(STATE.snapshot() if self.path == "/state" else None)

    def do_POST(self) -> None:
        if self.path == "/reset":
            STATE.reset()
            self.reply(STATE.snapshot())
        elif self.path == "/release":
            STATE.released.set()
            self.reply(STATE.snapshot())
        else:
            self.reply(None)

    def reply(self, body: object | None) -> None:
        data = json.dumps(body).encode()
        self.send_response(404 if body is None else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    control = ThreadingHTTPServer(("", CONTROL_PORT), ControlHandler)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    ThreadingHTTPServer(("", API_PORT), ApiHandler).serve_forever()


if __name__ == "__main__":
    main()
