"""The lab's load generator: exact counts per version/status/kind/session, pacing, errors."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from canarykit.core.errors import BadInput
from canarykit.lab.loadgen import (
    LoadGenerator,
    LoadStats,
    change_rate,
    fetch_stats,
    parse_mix,
    reset_stats,
    send_requests,
)
from canarykit.lab.workload import Behaviour, Identity, start_workload

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workload():
    started = []

    def start(version: str = "v1", **behaviour):
        server = start_workload(Identity("reviews", "default", version),
                                Behaviour(**{"latency_median_ms": 1.0, **behaviour}))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class Recorder(ThreadingHTTPServer):
    """A test server that records each request's headers and answers by a rule.

    `rule(n)` for the n-th request (from 0) returns a status to answer with (no version
    header), or None to hang up without answering.
    """

    daemon_threads = True

    def __init__(self, rule):
        self.rule = rule
        self.seen: list[dict[str, str]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), RecorderHandler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RecorderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        with self.server.lock:
            number = len(self.server.seen)
            self.server.seen.append({k.lower(): v for k, v in self.headers.items()})
        status = self.server.rule(number)
        if status is None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # hang up without an answer
            return
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.fixture
def recorder():
    started = []

    def start(rule=lambda n: 200):
        server = Recorder(rule)
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- bounded bursts


def test_counts_each_request_once_by_version_status_and_kind(workload):
    server = workload("v2", error_rate=0.3, error_status=503)
    stats = send_requests(server.url, "reviews", 600, concurrency=6)
    assert stats.sent == 600
    assert stats.by_version == {"v2": 600}
    assert sum(stats.by_status.values()) == 600
    assert stats.by_kind == {"plain": 600}
    assert stats.by_kind_version == {"plain": {"v2": 600}}
    assert stats.by_version_status == {"v2": stats.by_status}
    assert len(stats.latencies_ms) == 600
    assert stats.share("v2") == 1.0 and stats.share("v1") == 0.0
    # The workload's own Istio metrics agree exactly, code by code, all from the loadgen.
    exposition = server.metrics.exposition()
    (family,) = [f for f in text_string_to_metric_families(exposition)
                 if f.name == "istio_requests"]
    assert {s.labels["source_workload"] for s in family.samples} == {"loadgen"}
    assert {s.labels["response_code"]: s.value for s in family.samples} == stats.by_status


def test_each_kind_sends_its_own_headers(recorder):
    server = recorder()
    send_requests(server.url, "reviews", 2, kind="plain", concurrency=1)
    send_requests(server.url, "reviews", 2, kind="header", concurrency=1)
    send_requests(server.url, "reviews", 2, kind="cookie", concurrency=1)
    send_requests(server.url, "reviews", 2, kind="session", session="s-9", concurrency=1,
                  headers={"x-extra": "1"})
    seen = server.seen
    assert all(h["host"] == "reviews" and h["x-canarykit-source"] == "loadgen" for h in seen)
    plain, header, cookie, session = seen[0:2], seen[2:4], seen[4:6], seen[6:8]
    assert all("x-canary-user" not in h and "cookie" not in h and "session-id" not in h
               for h in plain)
    assert all(h["x-canary-user"] == "true" for h in header)
    assert all(h["cookie"] == "beta=true; other=x" for h in cookie)
    assert all(h["session-id"] == "s-9" and h["x-extra"] == "1" for h in session)


def test_requests_name_the_client_workload_they_are_sent_as(recorder, workload):
    server = recorder()
    send_requests(server.url, "reviews", 3, concurrency=1, source="reviews-tester")
    send_requests(server.url, "reviews", 2, concurrency=1)
    assert [h["x-canarykit-source"] for h in server.seen] == ["reviews-tester"] * 3 + [
        "loadgen"] * 2
    # The replicas' Istio metrics report it as source_workload, request by request.
    replica = workload("v1")
    send_requests(replica.url, "reviews", 4, concurrency=2, source="reviews-tester")
    send_requests(replica.url, "reviews", 1, concurrency=1)
    (family,) = [f for f in text_string_to_metric_families(replica.metrics.exposition())
                 if f.name == "istio_requests"]
    by_source = {s.labels["source_workload"]: s.value for s in family.samples}
    assert by_source == {"reviews-tester": 4, "loadgen": 1}


def test_paced_load_names_its_client_workload_too(recorder):
    server = recorder()
    generator = LoadGenerator(server.url, "reviews", rate=50, concurrency=1, seed=1,
                              source="reviews-tester")
    generator.start()
    try:
        deadline = time.monotonic() + 10
        while len(server.seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        generator.stop()
    assert len(server.seen) >= 3
    assert {h["x-canarykit-source"] for h in server.seen} == {"reviews-tester"}


def test_a_mix_sends_each_kind_and_counts_it_as_sent(recorder):
    server = recorder()
    stats = send_requests(server.url, "reviews", 400, mix="plain=2,header=1,cookie=1",
                          concurrency=4, seed=3)
    seen = server.seen
    assert stats.sent == len(seen) == 400
    assert stats.by_kind == {
        "plain": sum(1 for h in seen if "x-canary-user" not in h and "cookie" not in h),
        "header": sum(1 for h in seen if "x-canary-user" in h),
        "cookie": sum(1 for h in seen if "cookie" in h),
    }
    assert 140 < stats.by_kind["plain"] < 260, "about half plain"


def test_sessions_cycle_through_the_pool_and_record_the_versions_seen(workload):
    server = workload("v1")
    stats = send_requests(server.url, "reviews", 40, kind="session", sessions=10, concurrency=4)
    assert stats.sessions == {f"s-{i}": {"v1"} for i in range(10)}
    assert stats.by_kind == {"session": 40}


def test_responses_without_a_version_header_count_as_version_none(recorder):
    server = recorder(rule=lambda n: 503)  # what an Envoy fault abort looks like
    stats = send_requests(server.url, "reviews", 20, kind="session", session="s-1")
    assert stats.by_version == {"none": 20}
    assert stats.by_status == {"503": 20}
    assert stats.sessions == {"s-1": set()}, "no version answered this session"


def test_connections_that_hang_up_count_as_errors_and_the_load_goes_on(recorder):
    server = recorder(rule=lambda n: None if n % 3 == 0 else 200)
    stats = send_requests(server.url, "reviews", 90, concurrency=3)
    answered = sum(1 for n in range(len(server.seen)) if n % 3)
    assert stats.sent == 90
    assert stats.by_status == {"200": answered, "error": 90 - answered}
    assert stats.by_version == {"none": 90}
    assert len(server.seen) == 90, "every request reached the server once (no retries)"


def test_a_target_that_refuses_connections_gives_errors_not_exceptions():
    stats = send_requests(f"http://127.0.0.1:{free_port()}", "reviews", 10, concurrency=2)
    assert (stats.sent, stats.by_status, stats.by_version) == (10, {"error": 10}, {"none": 10})


@pytest.mark.parametrize("call, field", [
    (lambda url: send_requests("ftp://127.0.0.1:1", "reviews", 1), "target"),
    (lambda url: send_requests("http://127.0.0.1", "reviews", 1), "target"),
    (lambda url: send_requests(url, "reviews", -1), "n"),
    (lambda url: send_requests(url, "reviews", 1, concurrency=0), "concurrency"),
    (lambda url: send_requests(url, "reviews", 1, kind="vip"), "kind"),
    (lambda url: send_requests(url, "reviews", 1, session="s-1"), "session"),
    (lambda url: send_requests(url, "reviews", 1, timeout=0), "timeout"),
    (lambda url: send_requests(url, "reviews", 1, mix="plain=x"), "mix.plain"),
    (lambda url: send_requests(url, "reviews", 1, mix="vip=1"), "mix.vip"),
    (lambda url: send_requests(url, "reviews", 1, mix="plain=0"), "mix"),
    (lambda url: send_requests(url, "reviews", 1, source="Not A Workload"), "source"),
    (lambda url: LoadGenerator(url, "reviews", source=""), "source"),
    (lambda url: LoadGenerator(url, "reviews", rate=-1), "rate"),
    (lambda url: LoadGenerator(url, "reviews", rate=math.inf), "rate"),
])
def test_bad_input_is_refused_naming_the_field_before_sending(recorder, call, field):
    server = recorder()
    with pytest.raises(BadInput) as refused:
        call(server.url)
    assert refused.value.field == field
    assert server.seen == []


def test_mix_weights_are_normalised():
    assert parse_mix("plain=3,session=1") == {"plain": 0.75, "session": 0.25}
    assert parse_mix({"header": 2, "cookie": 0}) == {"header": 1.0}


def test_stats_round_trip_through_json():
    stats = LoadStats()
    assert math.isnan(stats.share("v1")), "no requests is no share, not 0%"
    stats.record("session", "v2", "200", 12.5, "s-1")
    stats.record("plain", "none", "error", 5000.0)
    again = LoadStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats
    assert again.share("v2") == 0.5
    assert stats.to_dict()["latency_ms"]["p50"] == 12.5


# ---------------------------------------------------------------- paced load


def test_paced_load_keeps_to_the_rate_and_pauses_at_zero(workload):
    server = workload("v1")
    generator = LoadGenerator(server.url, "reviews", rate=40, concurrency=4, seed=1)
    started = time.monotonic()
    generator.start()
    try:
        time.sleep(1.5)
        assert generator.set_rate(0) == 0, "pausing waits for the requests in flight"
        elapsed = time.monotonic() - started
        paused = generator.stats()
        assert 0 < paused.sent <= 40 * elapsed + 1, "never faster than the rate"
        assert paused.sent >= 10, "generous lower bound: it kept sending"
        time.sleep(0.5)
        assert generator.stats().sent == paused.sent, "nothing is sent at rate 0"
        assert server.metrics.total() == paused.sent, "the workload counted the same requests"
        before = generator.reset()
        assert before.sent == paused.sent and generator.stats().sent == 0
        generator.set_rate(200)
        time.sleep(0.5)
    finally:
        generator.stop()
    assert generator.stats().sent > 0, "the rate change took effect"
    assert set(generator.stats().by_kind) <= {"plain", "header", "cookie", "session"}


def get_json(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.lab
def test_process_serves_stats_reset_and_rate_then_stops_on_sigterm(workload, tmp_path):
    server = workload("v2", error_rate=0.2)
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "canarykit.lab.loadgen", "--target", server.url, "--host", "reviews",
         "--rate", "100", "--concurrency", "4", "--stats-port", "0", "--ready-file", str(ready)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if ready.exists() or process.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), process.stderr.read()
        stats_url = f"http://127.0.0.1:{int(ready.read_text())}"
        assert get_json(stats_url + "/healthz")[0] == 200
        time.sleep(1.0)
        assert change_rate(stats_url, 0) == 0, "pausing returns once nothing is in flight"
        status, stats = get_json(stats_url + "/stats")
        assert status == 200 and stats["sent"] > 0 and stats["rate"] == 0.0
        assert stats["sent"] == sum(stats["by_version"].values()) == server.metrics.total()
        assert "latencies_ms" not in stats and stats["latency_ms"]["count"] == stats["sent"]
        assert len(fetch_stats(stats_url, latencies=True).latencies_ms) == stats["sent"]
        assert reset_stats(stats_url).sent == stats["sent"]
        assert fetch_stats(stats_url).sent == 0
        with pytest.raises(BadInput):
            change_rate(stats_url, -5)
        status, refused = get_json(stats_url + "/-/rate", "PUT", {"rate": -5})
        assert status == 400 and refused["field"] == "rate"
        assert get_json(stats_url + "/-/rate")[1]["rate"] == 0.0
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 0
        assert json.loads(out)["sent"] == 0, "final counts since the reset"
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.lab
def test_process_with_a_duration_ends_by_itself_and_prints_its_counts(workload):
    server = workload("v1")
    result = subprocess.run(
        [sys.executable, "-m", "canarykit.lab.loadgen", "--target", server.url, "--host", "reviews",
         "--rate", "20", "--duration", "1", "--mix", "header=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["sent"] > 0
    assert counts["by_kind_version"] == {"header": {"v1": counts["sent"]}}
    assert server.metrics.total() == counts["sent"]


@pytest.mark.lab
def test_process_refuses_bad_flags_naming_the_field():
    result = subprocess.run(
        [sys.executable, "-m", "canarykit.lab.loadgen", "--target", "127.0.0.1:80",
         "--host", "reviews"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("loadgen: target: must be an http:// URL")
