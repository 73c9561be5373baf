"""One replica of one version of the lab's demo service (`python -m canarykit.lab.workload`).

The lab has no Istio sidecars, so each replica reports Istio's standard destination-side
metrics itself (`istio_requests_total`, `istio_request_duration_milliseconds` with Envoy's
default buckets and Istio's label names), so canarykit's Prometheus queries run unchanged.
Its error rate and latency change while it runs (`PUT /-/behaviour`), which is how a rollout
rehearsal turns the canary bad half-way. Reserved paths (`/metrics`, `/healthz`,
`/-/behaviour`) are not counted; every other request is counted exactly once, before its
response is written, so a client that has its answer can rely on the count including it.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from canarykit.core.errors import BadInput
from canarykit.core.files import write_atomically
from canarykit.core.names import check_dns_label
from canarykit.lab import process_main

# Envoy's default histogram buckets, which Istio's istio_request_duration_milliseconds uses.
ENVOY_BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)
REQUESTS_METRIC = "istio_requests_total"
DURATION_METRIC = "istio_request_duration_milliseconds"
BEHAVIOUR_PATH = "/-/behaviour"
RESERVED_PATHS = frozenset({"/metrics", "/healthz", BEHAVIOUR_PATH})
SOURCE_HEADER = "x-canarykit-source"
SOURCE_NAMESPACE_HEADER = "x-canarykit-source-namespace"
VERSION_HEADER = "x-canarykit-version"
REPLICA_HEADER = "x-canarykit-replica"
SESSION_HEADER = "session-id"
MAX_LABEL_VALUE = 128  # a client-chosen source name must not blow up the exposition
JSON_TYPE = "application/json"


# ---------------------------------------------------------------- behaviour


def _number(field_name: str, value: Any, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(field_name, value, "must be a finite number")
    if not low <= value <= high:
        bounds = f"between {low:g} and {high:g}" if math.isfinite(high) else f">= {low:g}"
        raise BadInput(field_name, value, f"must be {bounds}")
    return float(value)


@dataclass(frozen=True)
class Behaviour:
    """How a replica answers: error probability and status, log-normal latency."""

    error_rate: float = 0.0
    error_status: int = 503
    latency_median_ms: float = 20.0
    latency_sigma: float = 0.4

    def validate(self) -> Behaviour:
        _number("error_rate", self.error_rate, 0.0, 1.0)
        status = self.error_status
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise BadInput("error_status", status, "must be an HTTP status code from 200 to 599")
        _number("latency_median_ms", self.latency_median_ms, 0.0)
        _number("latency_sigma", self.latency_sigma, 0.0)
        return self

    def updated(self, changes: Mapping[str, Any]) -> Behaviour:
        """A validated copy with some fields changed (a partial update), unknown names refused."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise BadInput(name, changes[name],
                               f"is not a behaviour setting (known: {', '.join(sorted(known))})")
        new = replace(self, **dict(changes)).validate()
        return Behaviour(float(new.error_rate), new.error_status, float(new.latency_median_ms),
                         float(new.latency_sigma))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Behaviour:
        return cls().updated(data)

    def delay_seconds(self, rng: random.Random) -> float:
        """Log-normal with the configured median: median * exp(sigma * N(0, 1))."""
        if self.latency_median_ms <= 0:
            return 0.0
        return self.latency_median_ms * math.exp(self.latency_sigma * rng.gauss(0.0, 1.0)) / 1e3

    def status(self, rng: random.Random) -> int:
        return self.error_status if rng.random() < self.error_rate else 200


# ---------------------------------------------------------------- identity and metrics


@dataclass(frozen=True)
class Identity:
    """Which replica this is, as Istio's destination labels name it."""

    service: str
    namespace: str = "default"
    version: str = "v1"
    replica: int = 0
    app: str = ""  # default: the service name
    workload: str = ""  # default: <service>-<version>, the Deployment's name

    def validate(self) -> Identity:
        check_dns_label("service", self.service)
        check_dns_label("namespace", self.namespace)
        check_dns_label("version", self.version)
        if isinstance(self.replica, bool) or not isinstance(self.replica, int) or self.replica < 0:
            raise BadInput("replica", self.replica, "must be a whole number >= 0")
        if self.app:
            check_dns_label("app", self.app)
        if self.workload:
            check_dns_label("workload", self.workload)
        return self

    def destination_labels(self) -> dict[str, str]:
        """The destination_* labels Istio's destination-side proxy would attach."""
        return {
            "reporter": "destination",
            "destination_service": f"{self.service}.{self.namespace}.svc.cluster.local",
            "destination_service_name": self.service,
            "destination_service_namespace": self.namespace,
            "destination_workload": self.workload or f"{self.service}-{self.version}",
            "destination_workload_namespace": self.namespace,
            "destination_version": self.version,
            "destination_app": self.app or self.service,
        }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def _labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items())


class IstioMetrics:
    """The two Istio standard metrics of one replica, in Prometheus text exposition format."""

    def __init__(self, identity: Identity) -> None:
        self._fixed = identity.destination_labels()
        self._lock = threading.Lock()
        # (source_workload, source_namespace, response_code) -> [count, sum_ms, per-bucket counts]
        self._series: dict[tuple[str, str, str], list[Any]] = {}

    def record(self, *, source_workload: str, source_namespace: str, response_code: int,
               duration_ms: float) -> None:
        key = (source_workload[:MAX_LABEL_VALUE], source_namespace[:MAX_LABEL_VALUE],
               str(response_code))
        slot = bisect.bisect_left(ENVOY_BUCKETS_MS, duration_ms)  # first bucket with le >= value
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0, 0.0, [0] * (len(ENVOY_BUCKETS_MS) + 1)]
            series[0] += 1
            series[1] += duration_ms
            series[2][slot] += 1

    def total(self) -> int:
        """Requests counted so far (all series)."""
        with self._lock:
            return sum(series[0] for series in self._series.values())

    def exposition(self) -> str:
        with self._lock:
            snapshot = {key: (s[0], s[1], list(s[2])) for key, s in self._series.items()}
        counters = [f"# HELP {REQUESTS_METRIC} Requests received (destination reporter).",
                    f"# TYPE {REQUESTS_METRIC} counter"]
        histograms = [f"# HELP {DURATION_METRIC} Request duration (destination reporter).",
                      f"# TYPE {DURATION_METRIC} histogram"]
        for (source, source_ns, code), (count, total_ms, buckets) in sorted(snapshot.items()):
            labels = dict(self._fixed)
            labels.update({
                "source_workload": source,
                "source_workload_namespace": source_ns,
                "response_code": code,
                "response_flags": "-",
                "request_protocol": "http",
                "connection_security_policy": "none",
            })
            text = _labels_text(labels)
            counters.append(f"{REQUESTS_METRIC}{{{text}}} {count}")
            cumulative = 0
            for bound, in_bucket in zip(ENVOY_BUCKETS_MS, buckets, strict=False):
                cumulative += in_bucket
                histograms.append(
                    f'{DURATION_METRIC}_bucket{{{text},le="{_format_le(bound)}"}} {cumulative}')
            histograms.append(f'{DURATION_METRIC}_bucket{{{text},le="+Inf"}} {count}')
            histograms.append(f"{DURATION_METRIC}_sum{{{text}}} {total_ms!r}")
            histograms.append(f"{DURATION_METRIC}_count{{{text}}} {count}")
        return "\n".join(counters + histograms) + "\n"


# ---------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Envoy reuses its upstream connections
    wbufsize = -1  # headers and body leave in one write (flushed after each request)
    disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stall on keep-alive
    server: WorkloadServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would cost more CPU than the request itself

    def log_error(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"workload: {self.address_string()} {format % args}\n")

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, content_type: str = JSON_TYPE,
              extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode())

    def _handle(self) -> None:
        started = time.perf_counter()
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send_json(400, {"error": "unreadable request body"})
            return
        path = urlsplit(self.path).path
        if path in RESERVED_PATHS:
            self._reserved(path, body)
        else:
            self._serve(path, started)

    def _reserved(self, path: str, body: bytes) -> None:
        server = self.server
        if path == "/metrics" and self.command in ("GET", "HEAD"):
            self._send(200, server.metrics.exposition().encode(),
                       "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/healthz" and self.command in ("GET", "HEAD"):
            self._send_json(200, {"status": "ok", **server.identity.destination_labels(),
                                  "replica": server.identity.replica})
        elif path == BEHAVIOUR_PATH and self.command in ("GET", "HEAD"):
            self._send_json(200, server.behaviour.to_dict())
        elif path == BEHAVIOUR_PATH and self.command == "PUT":
            try:
                changes = json.loads(body or b"null")
                if not isinstance(changes, dict):
                    raise BadInput("body", changes, "must be a JSON object of behaviour settings")
                self._send_json(200, server.change_behaviour(changes).to_dict())
            except BadInput as err:
                self._send_json(400, {"error": str(err), "field": err.field, "value": err.value,
                                      "problem": err.problem})
            except ValueError as err:  # not JSON, or not UTF-8
                self._send_json(400, {"error": f"body: must be JSON ({err})"})
        else:
            self._send_json(405, {"error": f"{self.command} is not allowed on {path}"})

    def _serve(self, path: str, started: float) -> None:
        server = self.server
        behaviour = server.behaviour
        rng = server.rng()
        status = behaviour.status(rng)
        delay = behaviour.delay_seconds(rng)
        if delay > 0:
            time.sleep(delay)
        identity = server.identity
        payload = {
            "service": identity.service,
            "version": identity.version,
            "replica": identity.replica,
            "path": path,
            "session": self.headers.get(SESSION_HEADER),
        }
        # Counted before writing, so whoever has the response also finds it in /metrics.
        server.metrics.record(
            source_workload=self.headers.get(SOURCE_HEADER) or "unknown",
            source_namespace=self.headers.get(SOURCE_NAMESPACE_HEADER) or "unknown",
            response_code=status,
            duration_ms=(time.perf_counter() - started) * 1e3,
        )
        self._send(status, json.dumps(payload).encode(), extra={
            VERSION_HEADER: identity.version, REPLICA_HEADER: str(identity.replica)})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class WorkloadServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer (one thread per connection) holding one replica's state."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], identity: Identity, behaviour: Behaviour,
                 seed: int | None = None) -> None:
        self.identity = identity.validate()
        self._behaviour = behaviour.validate()
        self.metrics = IstioMetrics(identity)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._seed = seed
        self._local = threading.local()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def behaviour(self) -> Behaviour:
        return self._behaviour  # frozen: a request reads one consistent behaviour

    def change_behaviour(self, changes: Mapping[str, Any]) -> Behaviour:
        with self._lock:
            self._behaviour = self._behaviour.updated(changes)
            return self._behaviour

    def rng(self) -> random.Random:
        """One generator per thread (seeded per thread when a seed is given)."""
        rng = getattr(self._local, "rng", None)
        if rng is None:
            seed = None if self._seed is None else f"{self._seed}/{threading.get_ident()}"
            rng = self._local.rng = random.Random(seed)
        return rng

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hanging up is normal
            super().handle_error(request, client_address)

    def stop(self) -> None:
        """Stop accepting, close the listening socket and every open keep-alive connection."""
        self.shutdown()
        self.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def start_workload(identity: Identity, behaviour: Behaviour | None = None, *, port: int = 0,
                   host: str = "127.0.0.1", seed: int | None = None) -> WorkloadServer:
    """Serve one replica in a background thread (tests, embedding); stop with `.stop()`."""
    server = WorkloadServer((host, port), identity, behaviour or Behaviour(), seed)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                     name=f"workload-{identity.version}-{identity.replica}", daemon=True).start()
    return server


# ---------------------------------------------------------------- client helpers


def set_behaviour(url: str, *, timeout: float = 5.0, **changes: Any) -> dict[str, Any]:
    """Change a running replica's behaviour (partial update); returns the behaviour now in force.

    Checked here first, so a bad value is refused before anything is sent.
    """
    if not changes:
        raise BadInput("changes", changes, "must name at least one behaviour setting")
    Behaviour().updated(changes)
    return process_main.call_json("workload", url, BEHAVIOUR_PATH, "PUT", changes, timeout)


def get_behaviour(url: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The behaviour a running replica is using."""
    return process_main.call_json("workload", url, BEHAVIOUR_PATH, "GET", None, timeout)


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", required=True, help="service name, e.g. reviews")
    parser.add_argument("--namespace", default="default", help="namespace (default: default)")
    parser.add_argument("--version", required=True, help="version label, e.g. v2")
    parser.add_argument("--replica", type=int, default=0, help="replica number (default 0)")
    parser.add_argument("--app", default="", help="app label (default: the service name)")
    parser.add_argument("--workload", default="",
                        help="workload (Deployment) name (default: <service>-<version>)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--error-rate", type=float, default=0.0,
                        help="probability of answering with --error-status (default 0)")
    parser.add_argument("--error-status", type=int, default=503,
                        help="status of an injected error (default 503)")
    parser.add_argument("--latency-median-ms", type=float, default=20.0,
                        help="median of the log-normal response delay (default 20)")
    parser.add_argument("--latency-sigma", type=float, default=0.4,
                        help="sigma of the log-normal response delay (default 0.4)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: none)")
    parser.add_argument("--ready-file", default=None,
                        help="file to write the listening port to, atomically, once listening")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT, then close every socket and exit 0."""
    try:
        identity = Identity(args.service, args.namespace, args.version, args.replica,
                            args.app, args.workload).validate()
        behaviour = Behaviour(args.error_rate, args.error_status, args.latency_median_ms,
                              args.latency_sigma).validate()
        if not 0 <= args.port <= 65535:
            raise BadInput("port", args.port, "must be from 0 to 65535")
    except BadInput as err:
        sys.stderr.write(f"workload: {err}\n")
        return 2
    stop = process_main.stop_on_signals()
    try:
        server = start_workload(identity, behaviour, port=args.port, host=args.host,
                                seed=args.seed)
    except OSError as err:
        sys.stderr.write(f"workload: cannot listen on {args.host}:{args.port}: {err}\n")
        return 1
    if args.ready_file:
        write_atomically(Path(args.ready_file), f"{server.port}\n")
    sys.stderr.write(f"workload {identity.service} {identity.version} replica {identity.replica}"
                     f" listening on {server.url}\n")
    sys.stderr.flush()
    while not stop.wait(0.5):
        pass
    server.stop()
    sys.stderr.write("workload stopped\n")
    return 0


if __name__ == "__main__":
    process_main.main("canarykit.lab.workload", __doc__, add_arguments, run)
