"""The lab's load generator: paced requests through Envoy, counted per version (`loadgen`).

A rollout rehearsal needs traffic of every kind the routes match on (plain, the
`x-canary-user: true` header, a beta cookie, `session-id` values from a fixed pool), and the
lab's tests need the client's own view to hold against Prometheus: every request is counted
exactly once, when its outcome is known, by kind, by version (the `x-canarykit-version`
response header; "none" when absent, e.g. an Envoy fault abort or a connection error), by
status ("error" when no HTTP response came back) and by session. Connections are HTTP/1.1
keep-alive (`http.client`), re-opened after an error, so a target that resets connections or
answers errors never stops the load.

Every request names its client workload (`source`, default `loadgen`) in the source header,
which the replicas' Istio metrics report as `source_workload`. To be routed as that workload,
send to its Envoy listener (`processes.client_url`): the lab's Envoy has one per client
workload, each with the routes istiod would give that workload's sidecar (`sourceLabels`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from canarykit.core.errors import BadInput
from canarykit.core.files import write_atomically
from canarykit.core.names import check_dns_label
from canarykit.lab import process_main
from canarykit.lab.workload import SESSION_HEADER, SOURCE_HEADER, VERSION_HEADER

KINDS = ("plain", "header", "cookie", "session")
DEFAULT_MIX = {"plain": 0.85, "header": 0.05, "cookie": 0.05, "session": 0.05}
KIND_HEADERS = {
    "plain": {},
    "header": {"x-canary-user": "true"},
    "cookie": {"Cookie": "beta=true; other=x"},
    "session": {},
}
SOURCE = "loadgen"  # the default client workload, envoy_config.DEFAULT_CLIENT
NO_VERSION = "none"
ERROR_STATUS = "error"
MAX_LAG_SECONDS = 1.0  # a paced generator that falls further behind skips ahead, no burst
IDLE_RECONNECT_SECONDS = 30.0  # never reuse a connection the other side may have closed
KEEP_LATENCIES = 10_000  # the continuous generator keeps the newest latencies only


# ---------------------------------------------------------------- counts


@dataclass
class LoadStats:
    """What was sent and what came back. Status keys are strings ("200", "503", "error")."""

    sent: int = 0
    by_version: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)
    by_kind_version: dict[str, dict[str, int]] = field(default_factory=dict)
    by_version_status: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    sessions: dict[str, set[str]] = field(default_factory=dict)

    def record(self, kind: str, version: str, status: str, latency_ms: float,
               session: str | None = None) -> None:
        """Count one finished request (the caller holds any lock)."""
        self.sent += 1
        self.by_version[version] = self.by_version.get(version, 0) + 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        per_kind = self.by_kind_version.setdefault(kind, {})
        per_kind[version] = per_kind.get(version, 0) + 1
        per_version = self.by_version_status.setdefault(version, {})
        per_version[status] = per_version.get(status, 0) + 1
        self.latencies_ms.append(latency_ms)
        if session is not None:
            seen = self.sessions.setdefault(session, set())
            if version != NO_VERSION:
                seen.add(version)

    def share(self, version: str) -> float:
        """The fraction of requests sent that `version` answered (NaN when nothing was sent)."""
        return self.by_version.get(version, 0) / self.sent if self.sent else math.nan

    def latency_summary(self) -> dict[str, float | int | None]:
        """Nearest-rank percentiles of the latencies kept (None when there are none)."""
        ordered = sorted(self.latencies_ms)

        def rank(q: float) -> float | None:
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else None

        return {"count": len(ordered), "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99),
                "max": ordered[-1] if ordered else None}

    def copy(self) -> LoadStats:
        return LoadStats.from_dict(self.to_dict())

    def to_dict(self, *, latencies: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "sent": self.sent,
            "by_version": dict(self.by_version),
            "by_status": dict(self.by_status),
            "by_kind": dict(self.by_kind),
            "by_kind_version": {k: dict(v) for k, v in self.by_kind_version.items()},
            "by_version_status": {k: dict(v) for k, v in self.by_version_status.items()},
            "sessions": {s: sorted(v) for s, v in self.sessions.items()},
            "latency_ms": self.latency_summary(),
        }
        if latencies:
            data["latencies_ms"] = list(self.latencies_ms)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadStats:
        return cls(
            sent=int(data.get("sent", 0)),
            by_version=dict(data.get("by_version", {})),
            by_status=dict(data.get("by_status", {})),
            by_kind=dict(data.get("by_kind", {})),
            by_kind_version={k: dict(v) for k, v in data.get("by_kind_version", {}).items()},
            by_version_status={k: dict(v) for k, v in data.get("by_version_status", {}).items()},
            latencies_ms=list(data.get("latencies_ms", [])),
            sessions={s: set(v) for s, v in data.get("sessions", {}).items()},
        )


# ---------------------------------------------------------------- input


def check_target(target: Any) -> tuple[str, int]:
    """(host, port) of an http:// URL such as http://127.0.0.1:10000."""
    parts = urlsplit(target) if isinstance(target, str) else None
    try:
        port = parts.port if parts else None
    except ValueError:
        port = None
    if not parts or parts.scheme != "http" or not parts.hostname or port is None:
        raise BadInput("target", target, "must be an http:// URL with a host and a port, "
                       "such as http://127.0.0.1:10000")
    return parts.hostname, port


def parse_mix(text: Any) -> dict[str, float]:
    """`plain=0.85,header=0.05,...` -> weights normalised to sum 1; unknown kinds refused."""
    if isinstance(text, Mapping):
        items = list(text.items())
    elif isinstance(text, str) and text.strip():
        items = []
        for part in text.split(","):
            name, sep, weight = part.partition("=")
            if not sep:
                raise BadInput("mix", text, "must look like plain=0.85,header=0.05,cookie=0.05,"
                               "session=0.05")
            items.append((name.strip(), weight.strip()))
    else:
        raise BadInput("mix", text, "must look like plain=0.85,header=0.05,cookie=0.05,"
                       "session=0.05")
    weights: dict[str, float] = {}
    for name, weight in items:
        if name not in KINDS:
            raise BadInput(f"mix.{name}", weight, f"is not a request kind ({', '.join(KINDS)})")
        try:
            value = float(weight)
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(weight, bool) or not math.isfinite(value) or value < 0:
            raise BadInput(f"mix.{name}", weight, "must be a number >= 0")
        weights[name] = weights.get(name, 0.0) + value
    total = sum(weights.values())
    if total <= 0:
        raise BadInput("mix", text, "must give at least one kind a weight above 0")
    return {name: value / total for name, value in weights.items() if value > 0}


def _check_count(field_name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadInput(field_name, value, f"must be a whole number >= {low}")
    return value


def _check_rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < 0:
        raise BadInput("rate", value, "must be a number of requests per second >= 0")
    return float(value)


def _check_seconds(field_name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value <= 0:
        raise BadInput(field_name, value, "must be a number of seconds above 0")
    return float(value)


def request_headers(host: str, kind: str, session: str | None,
                    extra: Mapping[str, str] | None = None,
                    source: str = SOURCE) -> dict[str, str]:
    """The headers of one request of `kind` (Host, source, the kind's own, then `extra`)."""
    headers = {"Host": host, SOURCE_HEADER: source, **KIND_HEADERS[kind]}
    if session is not None:
        headers[SESSION_HEADER] = session
    headers.update(extra or {})
    return headers


# ---------------------------------------------------------------- one connection


class Connection:
    """One keep-alive HTTP/1.1 connection, re-opened after an error or a long idle time."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None
        self._last_used = 0.0

    def get(self, path: str, headers: Mapping[str, str]) -> tuple[str, str]:
        """(status, version) of one GET: ("error", "none") when no HTTP response came back."""
        if self._conn is None or time.monotonic() - self._last_used > IDLE_RECONNECT_SECONDS:
            self.close()
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self._conn.request("GET", path, headers=dict(headers))
            response = self._conn.getresponse()
            response.read()
            return str(response.status), response.getheader(VERSION_HEADER) or NO_VERSION
        except (OSError, http.client.HTTPException):
            self.close()
            return ERROR_STATUS, NO_VERSION
        finally:
            self._last_used = time.monotonic()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ---------------------------------------------------------------- bounded bursts


def send_requests(
    target: str,
    host: str,
    n: int,
    *,
    kind: str = "plain",
    session: str | None = None,
    headers: Mapping[str, str] | None = None,
    concurrency: int = 8,
    timeout: float = 5.0,
    path: str = "/",
    mix: Mapping[str, float] | str | None = None,
    sessions: int = 50,
    seed: int | None = None,
    source: str = SOURCE,
) -> LoadStats:
    """Send exactly n requests as fast as `concurrency` connections allow; return the counts.

    kind "session" without `session` cycles through s-0 .. s-<sessions-1>; `mix` (weights per
    kind) replaces `kind` with a random kind per request. `source` is the client workload the
    requests come from (`target` should be its listener).
    """
    address = check_target(target)
    check_dns_label("source", source)
    _check_count("n", n, 0)
    _check_count("concurrency", concurrency, 1)
    _check_count("sessions", sessions, 1)
    _check_seconds("timeout", timeout)
    if kind not in KINDS:
        raise BadInput("kind", kind, f"must be one of {', '.join(KINDS)}")
    if session is not None and (kind != "session" or mix is not None):
        raise BadInput("session", session, "is only for kind='session' without a mix")
    weights = parse_mix(mix) if mix is not None else None
    stats = LoadStats()
    lock = threading.Lock()
    rng = random.Random(seed)
    counter = iter(range(n))

    def plan() -> tuple[str, str | None] | None:
        with lock:
            index = next(counter, None)
            if index is None:
                return None
            chosen = rng.choices(list(weights), list(weights.values()))[0] if weights else kind
            if chosen != "session":
                return chosen, None
            if session is not None:
                return chosen, session
            return chosen, f"s-{rng.randrange(sessions) if weights else index % sessions}"

    def worker() -> None:
        connection = Connection(*address, timeout)
        try:
            while (planned := plan()) is not None:
                chosen, session_id = planned
                started = time.perf_counter()
                status, version = connection.get(
                    path, request_headers(host, chosen, session_id, headers, source))
                latency_ms = (time.perf_counter() - started) * 1e3
                with lock:
                    stats.record(chosen, version, status, latency_ms, session_id)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, name=f"send-{i}", daemon=True)
               for i in range(min(concurrency, n))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stats


# ---------------------------------------------------------------- continuous, paced load


class LoadGenerator:
    """Paced load at `rate` requests per second over `concurrency` keep-alive connections.

    Open-loop-ish: send times are planned at 1/rate intervals and claimed by whichever worker
    is free; a change of rate re-plans at once (claimed but unsent slots are dropped), so
    `set_rate(0)` pauses the load and waits for the requests in flight.
    """

    def __init__(self, target: str, host: str, *, rate: float = 50.0,
                 mix: Mapping[str, float] | str | None = None, sessions: int = 50,
                 concurrency: int = 16, timeout: float = 5.0, path: str = "/",
                 headers: Mapping[str, str] | None = None, seed: int | None = None,
                 source: str = SOURCE) -> None:
        self.target = target
        self.address = check_target(target)
        self.source = check_dns_label("source", source)
        self.host = host
        self.mix = parse_mix(mix if mix is not None else DEFAULT_MIX)
        self.sessions = _check_count("sessions", sessions, 1)
        self.concurrency = _check_count("concurrency", concurrency, 1)
        self.timeout = _check_seconds("timeout", timeout)
        self.path = path
        self.headers = dict(headers or {})
        self._rate = _check_rate(rate)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._schedule = threading.Condition(self._lock)  # workers waiting for a send time
        self._drained = threading.Condition(self._lock)  # set_rate(0) waiting for in-flight
        self._generation = 0
        self._next = time.monotonic()
        self._in_flight = 0
        self._stopping = False
        self._stats = LoadStats()
        self._stats_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self) -> LoadGenerator:
        with self._lock:
            self._next = time.monotonic()
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._worker, name=f"loadgen-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def set_rate(self, rate: float, *, drain_timeout: float | None = None) -> int:
        """Change the rate now; at 0, wait (bounded) for requests in flight; returns those left."""
        new_rate = _check_rate(rate)
        with self._lock:
            self._rate = new_rate
            self._generation += 1
            self._next = time.monotonic()
            self._schedule.notify_all()
            if new_rate == 0:
                self._drained.wait_for(lambda: self._in_flight == 0,
                                       self.timeout + 1 if drain_timeout is None else drain_timeout)
            return self._in_flight

    def stats(self) -> LoadStats:
        """A copy of the counts so far."""
        with self._stats_lock:
            return self._stats.copy()

    def reset(self) -> LoadStats:
        """Start counting afresh; returns the counts until now."""
        with self._stats_lock:
            before, self._stats = self._stats, LoadStats()
        return before

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._schedule.notify_all()
        for thread in self._threads:
            thread.join(self.timeout + 1)

    def _claim(self) -> bool:
        """Wait for the next planned send time; False once stopping."""
        with self._lock:
            while not self._stopping:
                if self._rate <= 0:
                    self._schedule.wait()
                    continue
                now = time.monotonic()
                self._next = max(self._next, now - MAX_LAG_SECONDS)
                slot, generation = self._next, self._generation
                self._next += 1.0 / self._rate
                while (not self._stopping and generation == self._generation
                       and (left := slot - time.monotonic()) > 0):
                    self._schedule.wait(left)
                if not self._stopping and generation == self._generation:
                    self._in_flight += 1
                    return True
            return False

    def _plan(self) -> tuple[str, str | None]:
        with self._lock:
            kind = self._rng.choices(list(self.mix), list(self.mix.values()))[0]
            session = f"s-{self._rng.randrange(self.sessions)}" if kind == "session" else None
        return kind, session

    def _worker(self) -> None:
        connection = Connection(*self.address, self.timeout)
        try:
            while self._claim():
                try:
                    kind, session = self._plan()
                    started = time.perf_counter()
                    status, version = connection.get(
                        self.path,
                        request_headers(self.host, kind, session, self.headers, self.source))
                    latency_ms = (time.perf_counter() - started) * 1e3
                    with self._stats_lock:
                        self._stats.record(kind, version, status, latency_ms, session)
                        if len(self._stats.latencies_ms) > 2 * KEEP_LATENCIES:
                            del self._stats.latencies_ms[:-KEEP_LATENCIES]
                finally:
                    with self._lock:
                        self._in_flight -= 1
                        if self._in_flight == 0:
                            self._drained.notify_all()
        finally:
            connection.close()


# ---------------------------------------------------------------- stats server


class _StatsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # headers and body leave in one write (flushed after each request)
    disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stall on keep-alive
    server: StatsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(self, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        generator = self.server.generator
        if parts.path == "/stats":
            latencies = parse_qs(parts.query).get("latencies", ["0"])[0] in ("1", "true")
            self._send_json(200, self.server.describe(generator.stats(), latencies))
        elif parts.path == "/-/rate":
            self._send_json(200, {"rate": generator.rate, "in_flight": generator.in_flight})
        elif parts.path == "/healthz":
            self._send_json(200, {"status": "ok"})
        else:
            self._send_json(404, {"error": f"no such path {parts.path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        self._body()
        if path == "/-/reset":
            self._send_json(200, self.server.describe(self.server.generator.reset(), False))
        else:
            self._send_json(404, {"error": f"no such path {path}"})

    def do_PUT(self) -> None:
        path = urlsplit(self.path).path
        try:
            body = json.loads(self._body() or b"null")
        except ValueError as err:
            self._send_json(400, {"error": f"body: must be JSON ({err})"})
            return
        if path != "/-/rate":
            self._send_json(404, {"error": f"no such path {path}"})
            return
        try:
            if not isinstance(body, dict) or "rate" not in body:
                raise BadInput("body", body, 'must be a JSON object such as {"rate": 100}')
            left = self.server.generator.set_rate(body["rate"])
        except BadInput as err:
            self._send_json(400, {"error": str(err), "field": err.field})
            return
        self._send_json(200, {"rate": self.server.generator.rate, "in_flight": left})


class StatsServer(ThreadingHTTPServer):
    """`GET /stats`, `POST /-/reset`, `GET|PUT /-/rate`, `GET /healthz` for one generator."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], generator: LoadGenerator) -> None:
        self.generator = generator
        super().__init__(address, _StatsHandler)

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def describe(self, stats: LoadStats, latencies: bool) -> dict[str, Any]:
        """The counts (with the latency list only when asked) and the generator's settings."""
        generator = self.generator
        return {"target": generator.target, "host": generator.host,
                "source": generator.source, "rate": generator.rate,
                "mix": generator.mix, "in_flight": generator.in_flight,
                **stats.to_dict(latencies=latencies)}


def start_stats_server(generator: LoadGenerator, *, port: int = 0,
                       host: str = "127.0.0.1") -> StatsServer:
    """Serve the generator's counts in a background thread; stop with shutdown/server_close."""
    server = StatsServer((host, port), generator)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                     name="loadgen-stats", daemon=True).start()
    return server


def fetch_stats(url: str, *, latencies: bool = False) -> LoadStats:
    """The counts of a running load generator (its stats URL)."""
    path = "/stats?latencies=1" if latencies else "/stats"
    return LoadStats.from_dict(process_main.call_json("loadgen", url, path))


def reset_stats(url: str) -> LoadStats:
    """Zero a running load generator's counts; returns the counts until now."""
    return LoadStats.from_dict(process_main.call_json("loadgen", url, "/-/reset", "POST", {}))


def change_rate(url: str, rate: float) -> int:
    """Change a running load generator's rate; at 0 it returns once nothing is in flight.

    Returns the requests still in flight (0 unless the drain timed out).
    """
    _check_rate(rate)
    answer = process_main.call_json("loadgen", url, "/-/rate", "PUT", {"rate": rate})
    return int(answer["in_flight"])


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True,
                        help="where to send requests, e.g. http://127.0.0.1:10000 (Envoy)")
    parser.add_argument("--host", required=True, help="Host header, e.g. reviews")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="requests per second across all connections (default 50; 0 pauses)")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="seconds to run (default 0: until SIGTERM or SIGINT)")
    parser.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()),
                        help="weights of the request kinds (default %(default)s)")
    parser.add_argument("--sessions", type=int, default=50,
                        help="size of the session-id pool s-0 .. s-<n-1> (default 50)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="keep-alive connections / worker threads (default 16)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for a response (default 5)")
    parser.add_argument("--path", default="/", help="request path (default /)")
    parser.add_argument("--source", default=SOURCE,
                        help="the client workload the requests come from (default %(default)s); "
                        "--target should be its Envoy listener")
    parser.add_argument("--seed", type=int, default=None, help="random seed for kinds/sessions")
    parser.add_argument("--stats-port", type=int, default=None,
                        help="serve /stats, /-/reset and /-/rate on this port (0: a free one)")
    parser.add_argument("--stats-host", default="127.0.0.1", help="address of the stats server")
    parser.add_argument("--ready-file", default=None,
                        help="file to write the stats port to (0 without one), atomically, "
                        "once running")


def run(args: argparse.Namespace) -> int:
    """Generate load until --duration ends or SIGTERM; print the final counts as JSON; exit 0."""
    try:
        if args.duration < 0 or not math.isfinite(args.duration):
            raise BadInput("duration", args.duration, "must be seconds >= 0 (0: until stopped)")
        if args.stats_port is not None and not 0 <= args.stats_port <= 65535:
            raise BadInput("stats-port", args.stats_port, "must be from 0 to 65535")
        generator = LoadGenerator(args.target, args.host, rate=args.rate, mix=args.mix,
                                  sessions=args.sessions, concurrency=args.concurrency,
                                  timeout=args.timeout, path=args.path, seed=args.seed,
                                  source=args.source)
    except BadInput as err:
        sys.stderr.write(f"loadgen: {err}\n")
        return 2
    stop = process_main.stop_on_signals()
    server = None
    if args.stats_port is not None:
        try:
            server = start_stats_server(generator, port=args.stats_port, host=args.stats_host)
        except OSError as err:
            sys.stderr.write(f"loadgen: cannot listen on {args.stats_host}:{args.stats_port}: "
                             f"{err}\n")
            return 1
    generator.start()
    if args.ready_file:
        write_atomically(Path(args.ready_file), f"{server.server_address[1] if server else 0}\n")
    where = f", stats on {server.url}" if server else ""
    sys.stderr.write(f"loadgen sending {generator.rate:g}/s to {args.target} (Host {args.host})"
                     f"{where}\n")
    sys.stderr.flush()
    deadline = time.monotonic() + args.duration if args.duration else math.inf
    while not stop.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            break
    generator.stop()
    if server is not None:
        server.shutdown()
        server.server_close()
    json.dump(generator.stats().to_dict(latencies=False), sys.stdout)
    sys.stdout.write("\n")
    sys.stderr.write("loadgen stopped\n")
    return 0


if __name__ == "__main__":
    process_main.main("canarykit.lab.loadgen", __doc__, add_arguments, run)
