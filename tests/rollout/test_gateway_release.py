"""Whole releases through the lab routed by a Gateway API HTTPRoute (`lab up --router
gateway-api`): the same driver, runbooks and report as with a VirtualService.

One lab for the module with steady load; `rollout run` subprocesses as in test_driver.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from canarykit.cluster import audit
from canarykit.cluster import client as cluster
from canarykit.cluster.state import AUDIT_HEAD_ANNOTATION, read_state
from canarykit.lab import processes as lab
from canarykit.lab.processes import LabConfig, LabState, VersionSettings
from canarykit.rollout import release as releases
from tests.lab_fixture import FAST, _vector, wait_until
from tests.rollout.test_driver import ANALYSIS, rollout_cli

pytestmark = pytest.mark.lab


def _v1_requests(state: LabState) -> float:
    """Requests the load generator sent to the reviews-v1 Service, per Prometheus."""
    query = ('sum(istio_requests_total{reporter="destination",'
             'destination_service_name="reviews-v1",source_workload="loadgen"})')
    return sum(float(item["value"][1]) for item in _vector(state, query, time.time()))


def chain_intact(folder: Path, state: LabState) -> bool:
    head = (_route(state)["metadata"].get("annotations") or {}).get(AUDIT_HEAD_ANNOTATION)
    return audit.verify_chain(folder / "audit.jsonl", {head} if head else None).ok


@pytest.fixture(scope="module")
def gateway_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    state = lab.up(LabConfig(
        data_dir=str(tmp_path_factory.mktemp("gateway-release-lab")), router="gateway-api",
        rate=100, versions={"v1": VersionSettings(**FAST), "v2": VersionSettings(**FAST)}))
    try:
        wait_until(lambda: _v1_requests(state) > 300, "a baseline of requests to reviews-v1",
                   timeout=90)
        yield state
    finally:
        lab.down(state.data_dir)


@pytest.fixture
def gateway_now(gateway_lab: LabState) -> LabState:
    lab.reset(gateway_lab)
    lab.set_rate(gateway_lab, 100)
    return gateway_lab


def write_plan(tmp_path: Path, state: LabState, **changes) -> Path:
    data = {
        "service": state.service, "namespace": state.namespace, "router": "gateway-api",
        "stable": "reviews-v1", "canary": "reviews-v2", "kubeconfig": state.kubeconfig,
        "prometheus": {"url": state.prometheus_url}, "reports": str(tmp_path / "reports"),
        "preflight": {"baseline_window": "10s"}, "inconclusive": {"hold_steps": 1},
        "analysis": dict(ANALYSIS),
        "steps": [{"internal-canary": {"header": "x-canary-user", "header_value": "true"}},
                  {"weight": 10}, {"weight": 25}, {"weight": 50}, {"promote": {}}],
    }
    data.update(changes)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _folder(tmp_path: Path) -> Path:
    folders = sorted((tmp_path / "reports" / "reviews").iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def _route(state: LabState) -> dict:
    return cluster.get_object(cluster.connect(state.kubeconfig), "HTTPRoute", "reviews")


def _weights(route: dict) -> list[tuple[str, int]]:
    primary = next(r for r in route["spec"]["rules"] if r.get("name") == "primary")
    return [(ref["name"], ref["weight"]) for ref in primary["backendRefs"]]


def test_a_healthy_release_is_promoted_through_an_http_route_with_its_report(
        tmp_path, gateway_now):
    done = rollout_cli(tmp_path, "run", str(write_plan(tmp_path, gateway_now)), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = _folder(tmp_path)
    summary = json.loads((folder / "release.json").read_text())
    assert summary["status"] == "promoted"
    assert [(p["name"], p["outcome"], p["verdict"]) for p in summary["phases"]] == [
        ("preflight", "ok", "PASS"), ("internal-canary", "ok", None),
        ("analyze-internal", "ok", "PASS"),
        ("shift-10", "ok", None), ("analyze-10", "ok", "PASS"),
        ("shift-25", "ok", None), ("analyze-25", "ok", "PASS"),
        ("shift-50", "ok", None), ("analyze-50", "ok", "PASS"), ("promote", "ok", None)]
    route = _route(gateway_now)
    assert _weights(route) == [("reviews-v1", 0), ("reviews-v2", 100)]
    assert not [r for r in route["spec"]["rules"] if r.get("name", "").startswith("canarykit-")]
    assert read_state(route) is None
    assert chain_intact(folder, gateway_now)
    # the report: the same builder, the weight steps read from the HTTPRoute's audit records
    periods, source = releases.replay_periods(releases.read_release(folder))
    assert [p.weight for p in periods if 0 < p.weight < 100] == [10, 25, 50]
    assert "audit log" in source
    html = (folder / "report.html").read_text()
    assert "reviews-v2" in html and "promoted" in html


def test_a_bad_canary_behind_an_http_route_is_rolled_back(tmp_path, gateway_now):
    lab.set_behaviour(gateway_now, "v2", error_rate=0.5, latency_median_ms=300.0)
    before = _route(gateway_now)["spec"]
    plan = write_plan(tmp_path, gateway_now, steps=[{"weight": 25}, {"promote": {}}])
    done = rollout_cli(tmp_path, "run", str(plan), timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    summary = json.loads((_folder(tmp_path) / "release.json").read_text())
    assert summary["status"] == "rolled-back"
    assert [(p["name"], p["verdict"]) for p in summary["phases"]] == [
        ("preflight", "PASS"), ("shift-25", None), ("analyze-25", "FAIL"), ("rollback", None)]
    after = _route(gateway_now)
    assert after["spec"] == before  # every rule as it was before the release
    assert read_state(after) is None
    assert (_folder(tmp_path) / "report.html").is_file()
    assert chain_intact(_folder(tmp_path), gateway_now)
