"""A real Prometheus filled with synthetic Istio metrics, for the metrics and analysis tests.

A seeded simulation (Poisson arrivals, Bernoulli 5xx, log-normal latency, 10 s resolution)
writes OpenMetrics text; `promtool tsdb create-blocks-from openmetrics` backfills it into a
private data dir before `/usr/bin/prometheus` starts on that dir on a free loopback port. Each
scenario is its own service in one server. The data end at the fixed past time `END`; analyses
use `--at END`.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

__all__ = ["prometheus_url"]  # what tests/conftest.py takes with `import *`

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
END = 1_700_000_000  # 2023-11-14T22:13:20Z, a multiple of the resolution
RESOLUTION = 10  # seconds between samples, like a 10 s scrape
DURATION = 20 * 60  # seconds of data before END
NAMESPACE = "shop"
BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)
# A label value with quotes, braces, a comment sign and a backslash (for the escaping tests).
WEIRD_ROUTE = '/pay"} or vector(1) # {x="y"} \\'
CLUSTERED_SEED = 11
WEIRD_ROUTE_PER_STEP = 3  # checkouts on WEIRD_ROUTE every RESOLUTION seconds


@dataclass
class Version:
    name: str
    rps: float
    error_ratio: float
    latency_median_ms: float
    latency_sigma: float = 0.5
    checkout_success: float | None = None  # emit shop_checkout_total with this success ratio
    error_cluster: int = 1  # errors come in clusters of this many requests (a pod restarting)


@dataclass
class Scenario:
    service: str
    versions: list[Version]
    namespace: str = NAMESPACE
    reporter: str = "destination"
    seed: int = 0
    extra: dict[str, str] = field(default_factory=dict)


SCENARIOS = [
    Scenario("healthy", [
        Version("v1", 30, 0.005, 50, checkout_success=0.97),
        Version("v2", 10, 0.005, 50, checkout_success=0.97),
    ], seed=1),
    Scenario("errors", [
        Version("v1", 30, 0.005, 50, checkout_success=0.97),
        Version("v2", 10, 0.08, 50, checkout_success=0.80),
    ], seed=2),
    Scenario("slow", [Version("v1", 30, 0.005, 50), Version("v2", 10, 0.005, 220)], seed=3),
    Scenario("better", [Version("v1", 30, 0.01, 60), Version("v2", 10, 0.0, 40)], seed=4),
    Scenario("sparse", [Version("v1", 0.1, 0.0, 50), Version("v2", 0.03, 0.0, 50)], seed=5),
    Scenario("nocanary", [Version("v1", 30, 0.005, 50)], seed=6),
    Scenario("sourced", [Version("v1", 20, 0.005, 50), Version("v2", 20, 0.005, 50)],
             reporter="source", seed=7),
    # Identical versions whose 5xx come in clusters of 20 (the canary happened to get more of
    # them in the last 5 minutes: the error test without the measured dispersion fails it).
    Scenario("clustered", [Version("v1", 30, 0.01, 50, error_cluster=20),
                           Version("v2", 10, 0.01, 50, error_cluster=20)], seed=CLUSTERED_SEED),
    # Same service name as `healthy`, another namespace and a very different rate.
    Scenario("healthy", [Version("v1", 100, 0.0, 50)], namespace="staging", seed=8),
]


def _labels(pairs: dict[str, str]) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{key}="{esc(value)}"' for key, value in pairs.items())


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _simulate(scenario: Scenario, version: Version, rng: np.random.Generator):
    """Per-step cumulative counters for one version: yields dicts of series name -> values."""
    steps = DURATION // RESOLUTION
    edges = np.array(BUCKETS_MS, dtype=float)
    series: dict[tuple[str, str, str], list[float]] = {}
    totals: dict[tuple[str, str, str], float] = {}

    def add(key: tuple[str, str, str], amount: float) -> None:
        totals[key] = totals.get(key, 0.0) + amount

    def record() -> None:
        for key, value in totals.items():
            series.setdefault(key, []).append(value)

    codes = ("200", "503")
    for code in codes:
        add(("requests", code, ""), 0)
        for le in [*BUCKETS_MS, math.inf]:
            add(("bucket", code, "+Inf" if le == math.inf else _fmt(le)), 0)
        add(("sum", code, ""), 0)
        add(("count", code, ""), 0)
    if version.checkout_success is not None:
        for route in ("/checkout", WEIRD_ROUTE):
            for outcome in ("success", "failure"):
                add(("checkout", route, outcome), 0)
    record()
    carry = 0  # errors of a cluster that did not fit into the step they started in
    for _ in range(steps):
        arrivals = int(rng.poisson(version.rps * RESOLUTION))
        clusters = (int(rng.binomial(arrivals, version.error_ratio / version.error_cluster))
                    if arrivals else 0)
        carry += clusters * version.error_cluster
        errors = min(carry, arrivals)
        carry -= errors
        latencies = rng.lognormal(math.log(version.latency_median_ms), version.latency_sigma,
                                  arrivals)
        by_code = {"200": latencies[errors:], "503": latencies[:errors]}
        for code in codes:
            values = np.sort(by_code[code])
            add(("requests", code, ""), len(values))
            cumulative = np.searchsorted(values, edges, side="right")
            for le, count in zip(BUCKETS_MS, cumulative, strict=True):
                add(("bucket", code, _fmt(le)), float(count))
            add(("bucket", code, "+Inf"), len(values))
            add(("sum", code, ""), float(values.sum()))
            add(("count", code, ""), len(values))
        if version.checkout_success is not None:
            checkouts = int(rng.poisson(2 * RESOLUTION))
            ok = int(rng.binomial(checkouts, version.checkout_success))
            add(("checkout", "/checkout", "success"), ok)
            add(("checkout", "/checkout", "failure"), checkouts - ok)
            add(("checkout", WEIRD_ROUTE, "success"), WEIRD_ROUTE_PER_STEP)
        record()
    return series


def openmetrics_lines(scenarios: list[Scenario] = SCENARIOS) -> Iterator[str]:
    """The synthetic series as OpenMetrics text lines (without the final `# EOF`)."""
    start = END - DURATION
    stamps = [start + i * RESOLUTION for i in range(DURATION // RESOLUTION + 1)]
    for scenario in scenarios:
        for version in scenario.versions:
            rng = np.random.default_rng([scenario.seed, int.from_bytes(version.name.encode())])
            series = _simulate(scenario, version, rng)
            common = {
                "reporter": scenario.reporter,
                "destination_service":
                    f"{scenario.service}.{scenario.namespace}.svc.cluster.local",
                "destination_service_name": scenario.service,
                "destination_service_namespace": scenario.namespace,
                "destination_workload": f"{scenario.service}-{version.name}",
                "destination_workload_namespace": scenario.namespace,
                "destination_version": version.name,
            }
            for (kind, a, b), values in series.items():
                if kind == "requests":
                    name, labels = "istio_requests_total", {**common, "response_code": a}
                elif kind == "bucket":
                    name = "istio_request_duration_milliseconds_bucket"
                    labels = {**common, "response_code": a, "le": b}
                elif kind in ("sum", "count"):
                    name = f"istio_request_duration_milliseconds_{kind}"
                    labels = {**common, "response_code": a}
                else:
                    name = "shop_checkout_total"
                    labels = {"service": scenario.service, "namespace": scenario.namespace,
                              "version": version.name, "route": a, "outcome": b}
                text = _labels(labels)
                for stamp, value in zip(stamps, values, strict=True):
                    yield f"{name}{{{text}}} {_fmt(value)} {stamp}"


def write_openmetrics(path: Path, scenarios: list[Scenario] = SCENARIOS) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for line in openmetrics_lines(scenarios):
            handle.write(line + "\n")
        handle.write("# EOF\n")
    return path


def _require(binary: str) -> None:
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"{binary} is missing: install the Debian package `prometheus` "
            "(apt-get install -y prometheus) to run the metrics and analysis tests",
            pytrace=False,
        )


def backfill(openmetrics: Path, data_dir: Path) -> None:
    """Turn the OpenMetrics file into TSDB blocks in data_dir (before Prometheus starts)."""
    _require(PROMTOOL)
    done = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data_dir)],
        capture_output=True, text=True, timeout=240,
    )
    if done.returncode != 0:
        pytest.fail(f"promtool backfill failed: {done.stderr[-2000:]}", pytrace=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        """Stop the server by its PID."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def start_prometheus(data_dir: Path, workdir: Path) -> PrometheusServer:
    """Start Prometheus on data_dir on a free loopback port and wait until it is ready."""
    _require(PROMETHEUS)
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  evaluation_interval: 1m\nscrape_configs: []\n")
    log_path = workdir / "prometheus.log"
    for _ in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={data_dir}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=100y",
                "--log.level=warn",
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
        )
        log.close()
        server = PrometheusServer(url, process, log_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return server
            except OSError:
                pass
            time.sleep(0.2)
        server.stop()
    pytest.fail(f"Prometheus did not become ready; its log ends with:\n"
                f"{log_path.read_text()[-2000:]}", pytrace=False)


_SERVER: PrometheusServer | None = None


def shared_prometheus(config: pytest.Config, workdir: Path) -> PrometheusServer:
    """One server per test session, however many modules import the fixture."""
    global _SERVER
    if _SERVER is None or _SERVER.process.poll() is not None:
        data_dir = workdir / "data"
        if data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True)
        backfill(write_openmetrics(workdir / "istio.om"), data_dir)
        server = start_prometheus(data_dir, workdir)
        _SERVER = server
        config.add_cleanup(server.stop)
    return _SERVER


@pytest.fixture(scope="session")
def prometheus_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of a real Prometheus holding the synthetic scenarios (see SCENARIOS, END)."""
    return shared_prometheus(request.config, tmp_path_factory.mktemp("prometheus")).url
