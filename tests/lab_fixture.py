"""One running lab for a test module, and helpers to measure it from the outside.

The module lab runs the load generator at rate 0: tests send bounded bursts with
`loadgen.send_requests`, so every count is theirs. `fresh_lab` puts the VirtualService,
DestinationRule, replica behaviours and load counts back to the seed before each test and
waits until Envoy serves the seeded configuration. Prometheus is read the way a rollout
reads it: through `canarykit.analysis.metrics`.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from canarykit.analysis import metrics
from canarykit.cluster import client as cluster
from canarykit.lab import loadgen
from canarykit.lab import processes as lab
from canarykit.lab.processes import LabConfig, LabState, VersionSettings

FAST = {"latency_median_ms": 3.0, "latency_sigma": 0.3}


def module_lab_config(data_dir: Path) -> LabConfig:
    """Two replicas of v1 (for outlier detection), one of v2, fast answers, no steady load."""
    return LabConfig(
        data_dir=str(data_dir), rate=0, loadgen_concurrency=2, keep_config_history=True,
        versions={"v1": VersionSettings(replicas=2, **FAST), "v2": VersionSettings(**FAST)})


@pytest.fixture(scope="module")
def lab_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    """A whole lab for the module, stopped by PID afterwards."""
    state = lab.up(module_lab_config(tmp_path_factory.mktemp("lab")))
    try:
        yield state
    finally:
        lab.down(state.data_dir)


@pytest.fixture(scope="session")
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    """One lab for the session, for the modules that put it back to the seed before each test
    and do not need a lab that never served the canary (the rollout driver, gate and
    in-cluster tests, through `loaded_lab` in tests/rollout/test_driver.py): started once
    instead of once per module, at rate 0 between those modules, stopped by PID at the end.
    tests/conftest.py imports it, so every module gets the same one."""
    state = lab.up(module_lab_config(tmp_path_factory.mktemp("shared-lab")))
    try:
        yield state
    finally:
        lab.down(state.data_dir)


@pytest.fixture
def fresh_lab(lab_state: LabState) -> LabState:
    """The module lab, back to the seed and served by Envoy."""
    lab.reset(lab_state)
    return lab_state


def kube(state: LabState) -> cluster.Cluster:
    return cluster.connect(state.kubeconfig)


def burst(state: LabState, n: int, **kwargs) -> loadgen.LoadStats:
    """n requests through Envoy to the demo service, as the load generator sends them."""
    kwargs.setdefault("concurrency", 8)
    return loadgen.send_requests(state.envoy_url, state.service, n, **kwargs)


def within(count: float, n: int, share: float, sigmas: float = 4.0) -> bool:
    """Whether `count` of `n` is within `sigmas` binomial standard deviations of n * share."""
    return abs(count - n * share) <= sigmas * math.sqrt(n * share * (1 - share)) + 1e-9


# ---------------------------------------------------------------- Prometheus


def _prometheus(state: LabState) -> metrics.Client:
    return metrics.connect(metrics.PrometheusSettings(url=state.prometheus_url))


def _vector(state: LabState, query: str, at: float) -> list[dict]:
    outcome = metrics.query_at(_prometheus(state), query, at)
    assert outcome.ok or outcome.status == "empty", outcome.message
    return outcome.result


def wait_for_scrape(state: LabState, after: float, timeout: float = 30.0) -> float:
    """Wait until Prometheus has scraped every target (replicas, Envoy) after `after`; a time to
    query at."""
    query = "min(timestamp(up))"
    deadline = time.monotonic() + timeout
    while True:
        now = time.time()
        result = _vector(state, query, now)
        if result and float(result[0]["value"][1]) > after:
            return now
        assert time.monotonic() < deadline, f"Prometheus did not scrape after {after}"
        time.sleep(0.2)


def request_counts(state: LabState, at: float,
                   by: tuple[str, ...] = ("destination_version",)) -> dict[tuple, float]:
    """istio_requests_total from the load generator, summed by `by`, at time `at`."""
    query = (f'sum by ({", ".join(by)}) (istio_requests_total{{reporter="destination",'
             f'destination_service_name="{state.service}",source_workload="loadgen"}})')
    return {tuple(item["metric"].get(label, "") for label in by): float(item["value"][1])
            for item in _vector(state, query, at)}


def envoy_cluster_counts(state: LabState, at: float) -> dict[tuple, float]:
    """Envoy's own upstream request counts per subset (`outbound|PORT|SUBSET|HOST` clusters)."""
    query = "sum by (envoy_cluster_name) (envoy_cluster_upstream_rq_total)"
    return {(item["metric"]["envoy_cluster_name"].split("|")[2],): float(item["value"][1])
            for item in _vector(state, query, at)}


def _delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)
            if after.get(k, 0.0) != before.get(k, 0.0)}


def counted(state: LabState, send, by: tuple[str, ...] = ("destination_version",),
            settle: float = 0.3) -> tuple[loadgen.LoadStats, dict[tuple, float],
                                          dict[tuple, float]]:
    """Run `send()` between two complete scrapes: its stats, and the increase Prometheus saw in
    the replicas' istio_requests_total (summed `by`) and in Envoy's requests per subset."""
    at = wait_for_scrape(state, time.time())
    before, envoy_before = request_counts(state, at, by), envoy_cluster_counts(state, at)
    stats = send()
    at = wait_for_scrape(state, time.time() + settle)
    after, envoy_after = request_counts(state, at, by), envoy_cluster_counts(state, at)
    return stats, _delta(before, after), _delta(envoy_before, envoy_after)


# ---------------------------------------------------------------- Envoy


def envoy_stats(state: LabState, contains: str) -> dict[str, int]:
    url = f"{state.envoy_admin_url}/stats?format=json&filter={urllib.request.quote(contains)}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        data = json.load(answer)
    return {s["name"]: s["value"] for s in data["stats"] if "value" in s}


def wait_until(condition, what: str, timeout: float = 20.0, every: float = 0.1):
    """Poll `condition()` until it is truthy (bounded); its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(every)
