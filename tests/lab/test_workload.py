"""The lab's workload replica: behaviour, Istio standard metrics, behaviour changes, shutdown."""

from __future__ import annotations

import http.client
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from canarykit.core.errors import BadInput, CanaryKitError
from canarykit.lab.workload import (
    ENVOY_BUCKETS_MS,
    Behaviour,
    Identity,
    get_behaviour,
    set_behaviour,
    start_workload,
)

ROOT = Path(__file__).resolve().parents[2]
ISTIO_LABELS = {
    "reporter", "destination_service", "destination_service_name",
    "destination_service_namespace", "destination_workload", "destination_workload_namespace",
    "destination_version", "destination_app", "source_workload", "source_workload_namespace",
    "response_code", "response_flags", "request_protocol", "connection_security_policy",
}


@pytest.fixture
def workload():
    """Start replicas in this process; all are stopped after the test."""
    started = []

    def start(version: str = "v2", replica: int = 0, **behaviour):
        server = start_workload(Identity("reviews", "default", version, replica),
                                Behaviour(**{"latency_median_ms": 1.0, **behaviour}), seed=7)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def request(url: str, path: str = "/", method: str = "GET", body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def send(url: str, n: int, headers: dict | None = None, concurrency: int = 8) -> list[int]:
    """n GETs over `concurrency` keep-alive connections; the statuses seen."""
    host, port = url.removeprefix("http://").split(":")

    def worker(count: int) -> list[int]:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        statuses = []
        for i in range(count):
            conn.request("GET", f"/reviews/{i}", headers=headers or {})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        conn.close()
        return statuses

    shares = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        return [status for part in pool.map(worker, shares) for status in part]


def families(url: str) -> dict:
    status, headers, body = request(url, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def request_counts(url: str) -> dict[tuple[str, str], float]:
    """(response_code, source_workload) -> istio_requests_total."""
    family = families(url).get("istio_requests")
    samples = family.samples if family else []
    return {(s.labels["response_code"], s.labels["source_workload"]): s.value for s in samples}


# ---------------------------------------------------------------- answers


def test_answers_with_its_identity_in_the_body_and_headers(workload):
    server = workload(version="v2", replica=3)
    status, headers, body = request(server.url, "/reviews/1?x=1",
                                    headers={"session-id": "s-4"})
    assert status == 200
    assert headers["x-canarykit-version"] == "v2"
    assert headers["x-canarykit-replica"] == "3"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"service": "reviews", "version": "v2", "replica": 3,
                                "path": "/reviews/1", "session": "s-4"}


def test_keeps_the_connection_open_across_requests_and_reads_request_bodies(workload):
    server = workload()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/a", body=b'{"x": 1}', headers={"Content-Type": "application/json"})
    first = conn.getresponse()
    first.read()
    sock = conn.sock
    conn.request("GET", "/b")
    second = conn.getresponse()
    assert json.loads(second.read())["path"] == "/b"
    assert conn.sock is sock, "the second request reused the first connection"
    assert (first.status, second.status) == (200, 200)
    conn.close()


# ---------------------------------------------------------------- metrics


def test_every_request_is_counted_once_with_istio_destination_labels(workload):
    server = workload(version="v2", replica=0)
    statuses = send(server.url, 300, headers={"x-canarykit-source": "loadgen"})
    assert statuses == [200] * 300
    found = families(server.url)
    counter = found["istio_requests"]
    assert counter.type == "counter"
    (sample,) = counter.samples
    assert sample.name == "istio_requests_total"
    assert sample.value == 300
    assert set(sample.labels) == ISTIO_LABELS
    assert sample.labels == {
        "reporter": "destination",
        "destination_service": "reviews.default.svc.cluster.local",
        "destination_service_name": "reviews",
        "destination_service_namespace": "default",
        "destination_workload": "reviews-v2",
        "destination_workload_namespace": "default",
        "destination_version": "v2",
        "destination_app": "reviews",
        "source_workload": "loadgen",
        "source_workload_namespace": "unknown",
        "response_code": "200",
        "response_flags": "-",
        "request_protocol": "http",
        "connection_security_policy": "none",
    }
    histogram = found["istio_request_duration_milliseconds"]
    assert histogram.type == "histogram"
    buckets = [s for s in histogram.samples if s.name.endswith("_bucket")]
    bounds = [float(s.labels["le"]) for s in buckets]
    assert bounds == [float(b) for b in ENVOY_BUCKETS_MS] + [math.inf]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    assert counts[-1] == 300
    (count,) = [s.value for s in histogram.samples if s.name.endswith("_count")]
    assert count == 300


def test_reserved_paths_are_not_counted(workload):
    server = workload()
    assert request(server.url, "/healthz")[0] == 200
    assert request(server.url, "/metrics")[0] == 200
    assert request(server.url, "/-/behaviour")[0] == 200
    assert request(server.url, "/-/behaviour", "PUT", b'{"error_rate": 0.0}')[0] == 200
    assert request(server.url, "/-/behaviour", "PUT", b'{"error_rate": 7}')[0] == 400
    assert request_counts(server.url) == {}
    assert server.metrics.total() == 0
    request(server.url, "/metricsx")
    assert request_counts(server.url) == {("200", "unknown"): 1}


def test_source_workload_comes_from_the_request_header_and_is_escaped(workload):
    server = workload()
    odd = 'web"frontend\\ {x="y"}'
    send(server.url, 3, headers={"x-canarykit-source": odd}, concurrency=1)
    send(server.url, 2, concurrency=1)
    assert request_counts(server.url) == {("200", odd): 3, ("200", "unknown"): 2}


def test_counts_stay_exact_under_concurrent_requests_and_errors(workload):
    server = workload(error_rate=0.3, error_status=500)
    statuses = send(server.url, 1200, concurrency=16)
    counts = request_counts(server.url)
    assert counts[("200", "unknown")] == statuses.count(200)
    assert counts[("500", "unknown")] == statuses.count(500)
    assert sum(counts.values()) == 1200


# ---------------------------------------------------------------- behaviour


def test_error_rate_gives_the_error_status_in_about_that_share(workload):
    server = workload(error_rate=0.25, error_status=503)
    statuses = send(server.url, 1000)
    errors = statuses.count(503)
    sigma = math.sqrt(1000 * 0.25 * 0.75)
    assert abs(errors - 250) < 5 * sigma
    assert set(statuses) == {200, 503}


def test_error_responses_still_carry_the_version(workload):
    server = workload(version="v1", error_rate=1.0, error_status=500)
    status, headers, body = request(server.url, "/x")
    assert status == 500
    assert headers["x-canarykit-version"] == "v1"
    assert json.loads(body)["version"] == "v1"


def test_delay_is_log_normal_around_the_configured_median():
    behaviour = Behaviour(latency_median_ms=40, latency_sigma=0.5)
    rng = random.Random(1)
    delays_ms = [behaviour.delay_seconds(rng) * 1e3 for _ in range(20000)]
    logs = [math.log(d) for d in delays_ms]
    assert statistics.median(delays_ms) == pytest.approx(40, rel=0.03)
    assert statistics.stdev(logs) == pytest.approx(0.5, rel=0.03)
    assert Behaviour(latency_median_ms=0).delay_seconds(rng) == 0.0
    assert Behaviour(latency_median_ms=25, latency_sigma=0).delay_seconds(rng) == 0.025


def test_responses_take_at_least_the_configured_latency(workload):
    server = workload(latency_median_ms=30, latency_sigma=0.0)
    send(server.url, 20, concurrency=4)
    histogram = families(server.url)["istio_request_duration_milliseconds"]
    below = {float(s.labels["le"]): s.value for s in histogram.samples
             if s.name.endswith("_bucket")}
    assert below[25.0] == 0, "no request answered in under 25 ms"
    assert below[math.inf] == 20


def test_behaviour_changes_while_running(workload):
    server = workload(error_rate=0.0)
    assert send(server.url, 40) == [200] * 40
    now = set_behaviour(server.url, error_rate=1.0, error_status=500)
    assert now == {"error_rate": 1.0, "error_status": 500, "latency_median_ms": 1.0,
                   "latency_sigma": 0.4}
    assert send(server.url, 40) == [500] * 40
    set_behaviour(server.url, latency_median_ms=60, latency_sigma=0.0)
    assert get_behaviour(server.url)["error_rate"] == 1.0, "a partial update keeps the rest"
    started = time.perf_counter()
    assert request(server.url, "/slow")[0] == 500
    assert time.perf_counter() - started >= 0.06
    set_behaviour(server.url, error_rate=0.0)
    assert request(server.url, "/ok")[0] == 200
    assert request_counts(server.url) == {("200", "unknown"): 41, ("500", "unknown"): 41}


@pytest.mark.parametrize("body, field", [
    ({"error_rate": 1.5}, "error_rate"),
    ({"error_rate": -0.1}, "error_rate"),
    ({"error_rate": "high"}, "error_rate"),
    ({"error_status": 700}, "error_status"),
    ({"error_status": 199}, "error_status"),
    ({"error_status": 503.5}, "error_status"),
    ({"error_status": True}, "error_status"),
    ({"latency_median_ms": -1}, "latency_median_ms"),
    ({"latency_sigma": -0.1}, "latency_sigma"),
    ({"error_rate": 0.1, "speed": 3}, "speed"),
    ([0.5], "body"),
])
def test_put_behaviour_refuses_bad_values_naming_the_field(workload, body, field):
    server = workload(error_rate=0.0)
    before = get_behaviour(server.url)
    status, _, answer = request(server.url, "/-/behaviour", "PUT", json.dumps(body).encode())
    assert status == 400
    reply = json.loads(answer)
    assert reply["field"] == field
    assert reply["error"].startswith(f"{field}: ")
    assert get_behaviour(server.url) == before, "a refused update changes nothing"


@pytest.mark.parametrize("body", [b"error_rate=1", b"\xff\xfe"])
def test_put_behaviour_refuses_a_body_that_is_not_json(workload, body):
    server = workload()
    status, _, answer = request(server.url, "/-/behaviour", "PUT", body)
    assert status == 400
    assert json.loads(answer)["error"].startswith("body: must be JSON")


def test_set_behaviour_refuses_bad_values_before_sending_anything():
    with pytest.raises(BadInput) as refused:
        set_behaviour("http://127.0.0.1:9", error_rate=2.0)  # nothing listens there
    assert refused.value.field == "error_rate"
    with pytest.raises(BadInput):
        set_behaviour("http://127.0.0.1:9")
    with pytest.raises(CanaryKitError, match="could not be reached"):
        set_behaviour("http://127.0.0.1:9", error_rate=0.5, timeout=2)


def test_identity_names_must_be_dns_labels():
    with pytest.raises(BadInput) as refused:
        start_workload(Identity("Reviews"))
    assert refused.value.field == "service"
    with pytest.raises(BadInput) as refused:
        Identity("reviews", replica=-1).validate()
    assert refused.value.field == "replica"


# ---------------------------------------------------------------- the process


def start_process(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "canarykit.lab.workload", "--service", "reviews", "--version", "v1",
         "--replica", "1", "--port", "0", "--ready-file", str(ready), *flags],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if ready.exists() or process.poll() is not None:
            break
        time.sleep(0.05)
    assert ready.exists(), process.stderr.read() if process.poll() is not None else "no ready file"
    return process, int(ready.read_text())


@pytest.mark.lab
def test_process_serves_until_sigterm_then_exits_zero_and_frees_the_port(tmp_path):
    process, port = start_process(tmp_path, "--error-rate", "1", "--error-status", "502")
    try:
        url = f"http://127.0.0.1:{port}"
        assert request(url, "/x")[0] == 502
        assert get_behaviour(url)["error_status"] == 502
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        idle.request("GET", "/healthz")
        idle.getresponse().read()  # a keep-alive connection left open across the shutdown
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    idle.close()
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


@pytest.mark.lab
def test_process_refuses_bad_flags_naming_the_field(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "canarykit.lab.workload", "--service", "reviews", "--version", "v1",
         "--error-rate", "1.5", "--ready-file", str(tmp_path / "ready")],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "error_rate: must be between 0 and 1 (got 1.5)" in result.stderr
    assert not (tmp_path / "ready").exists()
