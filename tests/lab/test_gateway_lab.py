"""The lab with the Gateway API router (`canarykit lab up --router gateway-api`), measured from
the outside: requests through the real Envoy, counts from the replicas' own metrics and from the
real Prometheus that scrapes them.

One lab for the module, at load rate 0: every request counted here is one a test sent.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from canarykit.core.errors import BadInput
from canarykit.lab import processes as lab
from canarykit.lab.controlplane import PROBLEMS_FILE
from canarykit.lab.processes import LabConfig, LabState, VersionSettings
from tests.lab_fixture import FAST, burst

pytestmark = pytest.mark.lab  # a whole lab: API server, Envoy, Prometheus, replicas

GROUP, VERSION = "gateway.networking.k8s.io", "v1"
SIGMAS = 4.5


@pytest.fixture(scope="module")
def gateway_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    state = lab.up(LabConfig(
        data_dir=str(tmp_path_factory.mktemp("gateway-lab")), router="gateway-api", rate=0,
        loadgen_concurrency=2,
        versions={"v1": VersionSettings(**FAST), "v2": VersionSettings(**FAST)}))
    try:
        yield state
    finally:
        lab.down(state.data_dir)


@pytest.fixture
def fresh(gateway_lab: LabState) -> LabState:
    """The module lab back to its seed (the HTTPRoute), served by Envoy."""
    lab.reset(gateway_lab)
    return gateway_lab


def custom(state: LabState) -> tuple[client.ApiClient, client.CustomObjectsApi]:
    api = lab._api(state)
    return api, client.CustomObjectsApi(api)


def set_rules(state: LabState, rules: list[dict]) -> str:
    """Replace the HTTPRoute's rules; wait until Envoy serves them."""
    api, objects = custom(state)
    with api:
        objects.patch_namespaced_custom_object(GROUP, VERSION, "default", "httproutes",
                                               "reviews", {"spec": {"rules": rules}})
    return lab.wait_for_routing(state)


def primary(v1: int, v2: int, **extra) -> dict:
    return {"name": "primary", "backendRefs": [
        {"name": "reviews-v1", "port": 9080, "weight": v1},
        {"name": "reviews-v2", "port": 9080, "weight": v2}], **extra}


def within(count: float, n: int, share: float, sigmas: float = SIGMAS) -> bool:
    return abs(count - n * share) <= sigmas * math.sqrt(n * share * (1 - share))


def replica_requests(state: LabState, version: str) -> float:
    """istio_requests_total from the load generator, read from the replicas' own /metrics."""
    total = 0.0
    for part in state.workloads(version):
        with urllib.request.urlopen(f"{part.url}/metrics", timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith("istio_requests_total{") and 'source_workload="loadgen"' in line:
                    total += float(line.rsplit(" ", 1)[1])
    return total


def prometheus(state: LabState, query: str, at: float) -> list[dict]:
    url = f"{state.prometheus_url}/api/v1/query?" + urllib.parse.urlencode(
        {"query": query, "time": at})
    with urllib.request.urlopen(url, timeout=10) as answer:
        data = json.load(answer)
    assert data["status"] == "success", data
    return data["data"]["result"]


def scraped_after(state: LabState, after: float, timeout: float = 30.0) -> float:
    """A time to query at once Prometheus has scraped every target after `after`."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.time()
        found = prometheus(state, "min(timestamp(up))", now)
        if found and float(found[0]["value"][1]) > after:
            return now
        assert time.monotonic() < deadline, f"Prometheus did not scrape after {after}"
        time.sleep(0.2)


BY = ("destination_service_name", "destination_version", "destination_workload", "reporter")


def version_counts(state: LabState, at: float) -> dict[tuple, float]:
    query = (f"sum by ({', '.join(BY)}) (istio_requests_total{{source_workload=\"loadgen\","
             'destination_app="reviews"})')
    return {tuple(item["metric"].get(k, "") for k in BY): float(item["value"][1])
            for item in prometheus(state, query, at)}


def problems(state: LabState) -> list[str]:
    return json.loads((Path(state.config_dir) / PROBLEMS_FILE).read_text())


# ---------------------------------------------------------------- the seed


def test_the_lab_is_seeded_with_services_per_version_and_an_httproute_only(fresh):
    api, objects = custom(fresh)
    with api:
        route = objects.get_namespaced_custom_object(GROUP, VERSION, "default", "httproutes",
                                                     "reviews")
        services = {s.metadata.name: s.spec.selector for s in
                    client.CoreV1Api(api).list_namespaced_service("default").items}
        istio = [objects.list_namespaced_custom_object("networking.istio.io", "v1", "default",
                                                       plural)["items"]
                 for plural in ("virtualservices", "destinationrules")]
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "reviews",
                                            "port": 9080}]
    [rule] = route["spec"]["rules"]
    assert rule["name"] == "primary"
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [
        ("reviews-v1", 100), ("reviews-v2", 0)]
    assert services == {"reviews": {"app": "reviews"},
                        "reviews-v1": {"app": "reviews", "version": "v1"},
                        "reviews-v2": {"app": "reviews", "version": "v2"}}
    assert istio == [[], []]
    assert problems(fresh) == []
    report = lab.status(fresh.data_dir)
    assert report["healthy"] and report["router"] == "gateway-api"
    stats = burst(fresh, 100)
    assert stats.by_version == {"v1": 100} and stats.by_status == {"200": 100}


# ---------------------------------------------------------------- weights


def test_an_80_20_split_sends_a_fifth_to_v2_whose_replicas_report_reviews_v2(fresh):
    set_rules(fresh, [primary(80, 20)])
    before = version_counts(fresh, scraped_after(fresh, time.time()))
    n = 1000
    stats = burst(fresh, n)
    assert stats.by_status == {"200": n}
    assert within(stats.by_version.get("v2", 0), n, 0.2), stats.by_version
    after = version_counts(fresh, scraped_after(fresh, time.time() + 0.3))
    seen = {k: after.get(k, 0) - before.get(k, 0) for k in after if after[k] != before.get(k)}
    # Each version is its own Service: the metrics tell them apart by destination_service_name.
    assert seen == {
        ("reviews-v1", "v1", "reviews-v1", "destination"): stats.by_version["v1"],
        ("reviews-v2", "v2", "reviews-v2", "destination"): stats.by_version["v2"]}


# ---------------------------------------------------------------- matches


def test_a_header_match_rule_sends_matched_requests_to_v2_only(fresh):
    set_rules(fresh, [
        primary(100, 0),
        {"name": "canary-testers",
         "matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
         "backendRefs": [{"name": "reviews-v2", "port": 9080}]}])
    matched = burst(fresh, 200, headers={"x-canary": "yes"})
    assert matched.by_version == {"v2": 200}
    other_value = burst(fresh, 100, headers={"x-canary": "no"})
    plain = burst(fresh, 100)
    assert other_value.by_version == {"v1": 100} and plain.by_version == {"v1": 100}


# ---------------------------------------------------------------- mirroring


def mirrored_count(state: LabState, start: float) -> float:
    """v2's count once the mirrored requests (sent after the answers) have all arrived."""
    last, stable_since = None, time.monotonic()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = replica_requests(state, "v2") - start
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > 1.0:
            break
        time.sleep(0.1)
    return last or 0.0


def test_a_request_mirror_at_50_percent_copies_half_the_requests_to_v2(fresh):
    set_rules(fresh, [primary(100, 0, filters=[{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"name": "reviews-v2", "port": 9080}, "percent": 50}}])])
    start = replica_requests(fresh, "v2")
    n = 600
    stats = burst(fresh, n)
    assert stats.by_version == {"v1": n}  # the answers come from v1 alone
    copies = mirrored_count(fresh, start)
    assert within(copies, n, 0.5), copies


# ---------------------------------------------------------------- a VirtualService as well


def test_a_virtual_service_for_the_same_host_wins_and_the_conflict_is_reported(fresh):
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "reviews", "namespace": "default"},
          "spec": {"hosts": ["reviews"], "http": [{"name": "istio", "route": [
              {"destination": {"host": "reviews-v2"}}]}]}}
    api, objects = custom(fresh)
    with api:
        objects.create_namespaced_custom_object("networking.istio.io", "v1", "default",
                                                "virtualservices", vs)
        try:
            lab.wait_for_routing(fresh)
            assert burst(fresh, 50).by_version == {"v2": 50}
            [problem] = problems(fresh)
            assert problem.startswith("HTTPRoute default/reviews: "
                                      "reviews.default.svc.cluster.local is also routed by "
                                      "VirtualService default/reviews")
        finally:
            deleted = objects.delete_namespaced_custom_object(
                "networking.istio.io", "v1", "default", "virtualservices", "reviews")
    # A deletion leaves no object to read a resourceVersion from: wait for the deletion's own.
    lab.wait_for_routing(fresh, {"virtualservices": int(deleted["metadata"]["resourceVersion"])})
    assert burst(fresh, 50).by_version == {"v1": 50}
    assert problems(fresh) == []


def test_reset_puts_the_seeded_route_back(gateway_lab):
    set_rules(gateway_lab, [primary(0, 100)])
    assert burst(gateway_lab, 20).by_version == {"v2": 20}
    lab.reset(gateway_lab)
    assert burst(gateway_lab, 20).by_version == {"v1": 20}


def test_the_router_is_a_lab_setting_from_the_flag_or_the_config_file(tmp_path):
    parser = argparse.ArgumentParser()
    lab.add_up_arguments(parser)
    assert lab.config_from_args(parser.parse_args([])).router == "istio"
    assert lab.config_from_args(parser.parse_args(["--router", "gateway-api"])).gateway_api
    config_file = tmp_path / "lab.yaml"
    config_file.write_text("router: gateway-api\n")
    assert lab.load_config(config_file).router == "gateway-api"
    with pytest.raises(BadInput) as refused:
        LabConfig(router="linkerd").validate()
    assert refused.value.field == "router"
