"""A local HTTP receiver standing in for Slack, Teams, a webhook or a load-test trigger.

It listens on 127.0.0.1 on a free port, records every request (method, path, headers, body),
and answers as told: `answer(500, 200)` scripts the next statuses (then 200), `hang(3)` makes
each request wait 3 seconds before its answer. `stop()` ends it, hanging requests included.
Use `running_receiver()` as a context manager, or the `receiver` fixture.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._statuses: list[int] = []
        self._hang = 0.0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="test-receiver", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, in order (then 200)."""
        with self._lock:
            self._statuses = list(statuses)

    def hang(self, seconds: float) -> None:
        """Make every request from now on wait `seconds` before its answer (0: stop)."""
        with self._lock:
            self._hang = seconds

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Whether `count` requests arrived within `timeout` seconds."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.requests) >= count, timeout)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging requests
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._arrived:
                    receiver.requests.append(Request(
                        self.command, self.path,
                        {k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver._statuses.pop(0) if receiver._statuses else 200
                    hang = receiver._hang
                    receiver._arrived.notify_all()
                if hang and receiver._stopping.wait(hang):
                    return  # stopped while hanging: no answer
                answer = b"ok" if 200 <= status < 300 else b"no"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:  # the client gave up (timed out) already
                    pass

            do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet tests

        return Handler


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server
