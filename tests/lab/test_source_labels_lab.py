"""The canary for calls coming from one client workload (`sourceLabels`), in a real lab.

Envoy has one outbound listener per client workload of the lab, each with the routes istiod
would push to that workload's sidecar; requests sent "as" a workload enter by its listener,
which names the workload to the replicas (their `source_workload`).
"""

from __future__ import annotations

import copy
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from canarykit.cluster import client as cluster
from canarykit.core.errors import BadInput
from canarykit.lab import loadgen
from canarykit.lab import processes as lab
from canarykit.lab.controlplane import client_argument, parse_client
from canarykit.lab.envoy_config import DEFAULT_CLIENT, ClientWorkload
from canarykit.lab.processes import LabConfig, LabState, VersionSettings
from canarykit.mesh import traffic
from tests.lab_fixture import FAST, kube

pytestmark = pytest.mark.lab

N = 30


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    """One replica per version, no steady load: every request counted here is the test's."""
    state = lab.up(LabConfig(
        data_dir=str(tmp_path_factory.mktemp("source-labels-lab")), rate=0,
        loadgen_concurrency=1,
        versions={"v1": VersionSettings(**FAST), "v2": VersionSettings(**FAST)}))
    try:
        yield state
    finally:
        lab.down(state.data_dir)


def the_tester(state: LabState) -> str:
    return lab.tester_client(LabConfig.from_dict(state.config), 0).name


def send_as(state: LabState, source: str, n: int, **kwargs) -> loadgen.LoadStats:
    """n requests from client workload `source`, entering the mesh by its listener."""
    return loadgen.send_requests(lab.client_url(state, source), state.service, n,
                                 source=source, concurrency=4, **kwargs)


def requests_by_source(state: LabState, version: str) -> dict[str, float]:
    """istio_requests_total of the replica of `version`, by source_workload."""
    (replica,) = state.workloads(version)
    with urllib.request.urlopen(f"{replica.url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "istio_requests":
            for sample in family.samples:
                source = sample.labels["source_workload"]
                counts[source] = counts.get(source, 0.0) + sample.value
    return counts


def increase(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after
            if after.get(k, 0.0) != before.get(k, 0.0)}


def route_tester_to_v2(state: LabState, tester: str, tmp_path) -> None:
    """A rule for the tester's requests to v2, before the seeded route everything else takes."""
    def operation(vs: dict) -> traffic.Change:
        after = copy.deepcopy(vs)
        after["spec"]["http"].insert(0, {
            "name": "tester", "match": [{"sourceLabels": {"app": tester}}],
            "route": [{"destination": {"host": state.service, "subset": "v2"}}]})
        return traffic.Change("add-tester-route", {"source": tester}, vs, after)

    cluster.change_virtual_service(kube(state), state.service, operation,
                                   audit_log=tmp_path / "audit.jsonl")
    lab.wait_for_routing(state)


def test_the_tester_workloads_requests_reach_v2_and_the_default_clients_stay_on_v1(
        small_lab, tmp_path):
    tester = the_tester(small_lab)
    before = {v: requests_by_source(small_lab, v) for v in ("v1", "v2")}
    route_tester_to_v2(small_lab, tester, tmp_path)

    assert send_as(small_lab, tester, N).by_version == {"v2": N}
    assert send_as(small_lab, DEFAULT_CLIENT, N).by_version == {"v1": N}
    # The tester's listener names the tester whatever the client claims, as a sidecar would.
    claimed = loadgen.send_requests(lab.client_url(small_lab, tester), small_lab.service, N,
                                    concurrency=4)
    assert claimed.by_version == {"v2": N}

    after = {v: requests_by_source(small_lab, v) for v in ("v1", "v2")}
    assert increase(before["v2"], after["v2"]) == {tester: 2 * N}
    assert increase(before["v1"], after["v1"]) == {DEFAULT_CLIENT: N}


def test_the_lab_knows_its_client_workloads_and_refuses_others(small_lab):
    tester = the_tester(small_lab)
    assert set(small_lab.client_urls) == {DEFAULT_CLIENT, tester}
    assert lab.client_url(small_lab, DEFAULT_CLIENT) == small_lab.envoy_url
    assert lab.client_url(small_lab, tester) != small_lab.envoy_url
    with pytest.raises(BadInput, match=tester) as refused:
        lab.client_url(small_lab, "productpage")
    assert refused.value.field == "source"


def test_a_client_workload_goes_to_the_control_plane_and_back_unchanged():
    client = ClientWorkload("reviews-tester", {"app": "reviews-tester", "version": "v1"}, 15002)
    assert parse_client(client_argument(client)) == client
    for bad in ("reviews-tester", "reviews-tester=0:app=x", "Tester=15002", "t=15002:app"):
        with pytest.raises(BadInput):
            parse_client(bad)


def test_the_internal_canary_step_by_source_labels_sends_only_the_testers_calls_to_v2(
        small_lab, tmp_path):
    """The plan's step `internal-canary: {source_labels: {app: TESTER}}`, run as the driver
    runs it, adds only the sourceLabels route; promote-free rollback puts the seed back."""
    from canarykit.rollout import phases, runbook
    from canarykit.rollout.plan import expand, parse_plan

    lab.reset(small_lab)  # the seed: no route of an earlier test
    tester = the_tester(small_lab)
    assert send_as(small_lab, tester, N).by_version == {"v1": N}
    plan = parse_plan({"service": small_lab.service, "steps": [
        {"internal-canary": {"source_labels": {"app": tester}}, "analysis": False}]})
    (spec,) = [s for s in expand(plan) if s.runbook == "internal-canary"]
    assert spec.parameters == {"source_labels": f"app={tester}", "header": "",
                               "cookie_name": ""}
    target = phases.connect_target(service=small_lab.service, stable="v1", canary="v2",
                                   kubeconfig=small_lab.kubeconfig,
                                   audit_log=str(tmp_path / "audit.jsonl"))
    phases.internal_canary(target, runbook.new_result("internal-canary", spec.parameters),
                           **spec.parameters)
    vs = cluster.find_virtual_service(kube(small_lab), small_lab.service)
    added = [r for r in vs["spec"]["http"] if r.get("name", "").startswith("canary-internal")]
    assert [(r["name"], r["match"]) for r in added] == [
        ("canary-internal-source", [{"sourceLabels": {"app": tester}}])]
    lab.wait_for_routing(small_lab)
    try:
        assert send_as(small_lab, tester, N).by_version == {"v2": N}
        assert send_as(small_lab, DEFAULT_CLIENT, N).by_version == {"v1": N}
    finally:
        cluster.rollback(kube(small_lab), small_lab.service,
                         audit_log=tmp_path / "audit.jsonl")
