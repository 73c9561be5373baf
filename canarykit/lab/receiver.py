"""A local webhook receiver for the demo: where the releases' messages go in the lab.

It stands in for a team's chat or incident tool on a loopback port, checks each message's
HMAC signature with the shared secret, and keeps the messages so the demo can show them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SIGNATURE_HEADER = "X-Canarykit-Signature"


class Receiver:
    """POSTs to http://127.0.0.1:PORT/..., kept as (signature ok, JSON body)."""

    def __init__(self) -> None:
        self.secret = secrets.token_hex(16)
        self.messages: list[tuple[bool, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="demo-receiver")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/events"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                expected = "sha256=" + hmac.new(receiver.secret.encode(), body,
                                                hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(self.headers.get(SIGNATURE_HEADER, ""), expected)
                try:
                    message = json.loads(body)
                except ValueError:
                    message = None
                with receiver._lock:
                    receiver.messages.append((signed, message))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler
