"""The lab's control plane: subsets resolved to replicas, files rewritten on every change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from canarykit.core.errors import BadInput
from canarykit.lab import controlplane
from canarykit.lab.controlplane import read_endpoints, resolve_endpoints, translate_objects
from canarykit.lab.envoy_config import Endpoint
from canarykit.lab.processes import (
    LabConfig,
    VersionSettings,
    seed_deployment,
    seed_destination_rule,
    seed_service,
    seed_virtual_service,
)
from tests.apiserver_fixture import (
    ApiServerProcess,
    kube_client,
    seed,
    start_apiserver,
    stop_apiserver_process,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = LabConfig(versions={"v1": VersionSettings(replicas=2), "v2": VersionSettings()})
RUNNING = {"reviews": {
    "reviews-v1": [Endpoint("127.0.0.1", 7001), Endpoint("127.0.0.1", 7002)],
    "reviews-v2": [Endpoint("127.0.0.1", 7003)],
}}


def deployments(**replicas: int) -> list[dict]:
    out = []
    for version in ("v1", "v2"):
        deployment = seed_deployment(CONFIG, version)
        if version in replicas:
            deployment["spec"]["replicas"] = replicas[version]
        out.append(deployment)
    return out


# ---------------------------------------------------------------- resolution (no processes)


def test_subsets_select_deployments_by_their_pod_template_labels():
    endpoints, problems = resolve_endpoints([seed_destination_rule(CONFIG)], deployments(),
                                            RUNNING, "default")
    assert problems == []
    assert endpoints[("reviews", "v1")] == RUNNING["reviews"]["reviews-v1"]
    assert endpoints[("reviews", "v2")] == RUNNING["reviews"]["reviews-v2"]
    assert len(endpoints[("reviews", "")]) == 3


def test_a_subset_label_shared_by_both_versions_selects_both():
    rule = seed_destination_rule(CONFIG)
    rule["spec"]["subsets"].append({"name": "all", "labels": {"app": "reviews"}})
    endpoints, _ = resolve_endpoints([rule], deployments(), RUNNING, "default")
    assert len(endpoints[("reviews", "all")]) == 3


def test_deployment_replicas_limit_the_endpoints_and_more_than_the_lab_runs_is_reported():
    endpoints, problems = resolve_endpoints([seed_destination_rule(CONFIG)],
                                            deployments(v1=1, v2=3), RUNNING, "default")
    assert endpoints[("reviews", "v1")] == [Endpoint("127.0.0.1", 7001)]
    assert endpoints[("reviews", "v2")] == [Endpoint("127.0.0.1", 7003)]
    assert problems == ["Deployment default/reviews-v2 asks for 3 replicas; the lab runs 1"]


def test_replicas_without_a_deployment_and_subsets_without_replicas_are_reported():
    rule = seed_destination_rule(CONFIG)
    rule["spec"]["subsets"].append({"name": "v3", "labels": {"version": "v3"}})
    endpoints, problems = resolve_endpoints([rule], deployments()[:1], RUNNING, "default")
    assert endpoints[("reviews", "v2")] == [] and endpoints[("reviews", "v3")] == []
    assert any("reviews-v2 run but there is no such Deployment" in p for p in problems)
    assert any("subset v3 selects no Deployment" in p for p in problems)


def test_translation_does_not_depend_on_the_order_objects_arrive_in():
    rules = [seed_destination_rule(CONFIG)]
    other = seed_virtual_service(CONFIG)
    other["metadata"]["name"] = "another"
    other["spec"]["hosts"] = ["ratings"]
    services = [seed_virtual_service(CONFIG), other]
    a = translate_objects(services, rules, deployments(), RUNNING, listener_port=10000)
    b = translate_objects(services[::-1], rules, deployments()[::-1], RUNNING,
                          listener_port=10000)
    assert a.version == b.version


def test_endpoints_file_of_the_wrong_shape_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps({"reviews": {"reviews-v1": [{"address": "127.0.0.1"}]}}))
    with pytest.raises(BadInput) as refused:
        read_endpoints(path)
    assert refused.value.field == "endpoints.reviews.reviews-v1"


# ---------------------------------------------------------------- the process


def write_endpoints(path: Path, running=RUNNING) -> None:
    data = {s: {d: [{"address": e.address, "port": e.port} for e in eps]
                for d, eps in deps.items()} for s, deps in running.items()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class Plane:
    """A `python -m canarykit.lab.controlplane` process and the files it writes."""

    def __init__(self, server: ApiServerProcess, work: Path) -> None:
        self.server = server
        self.dir = work / "xds"
        self.history = work / "history"
        self.endpoints = work / "endpoints.json"
        write_endpoints(self.endpoints)
        self.log = work / "controlplane.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "canarykit.lab.controlplane", "--kubeconfig",
                 str(server.kubeconfig), "--config-dir", str(self.dir), "--listener-port",
                 "10000", "--endpoints", str(self.endpoints), "--history-dir",
                 str(self.history), "--watch-seconds", "2"],
                cwd=work, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def status(self) -> dict | None:
        return controlplane.read_status(self.dir)

    def wait_for(self, condition, what: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status and condition(status):
                return status
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"{what}: {status}\n{self.log.read_text()}"
            time.sleep(0.05)

    def expected(self) -> str:
        """The version the current objects translate to, computed here from what the server
        lists."""
        api = kube_client(self.server)
        try:
            custom = client.CustomObjectsApi(api)
            listed = {p: custom.list_namespaced_custom_object(
                "networking.istio.io", "v1", "default", p)["items"]
                for p in ("virtualservices", "destinationrules")}
            deps = [api.sanitize_for_serialization(d) for d in
                    client.AppsV1Api(api).list_namespaced_deployment("default").items]
        finally:
            api.close()
        return translate_objects(listed["virtualservices"], listed["destinationrules"], deps,
                                 read_endpoints(self.endpoints), listener_port=10000).version

    def lds(self) -> dict:
        return yaml.safe_load((self.dir / "lds.yaml").read_text())

    def cds(self) -> dict:
        return yaml.safe_load((self.dir / "cds.yaml").read_text())


@pytest.fixture
def plane(apiserver, tmp_path):
    seed(apiserver, seed_service(CONFIG), *deployments(), seed_destination_rule(CONFIG),
         seed_virtual_service(CONFIG))
    running = Plane(apiserver, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def patch_vs(server: ApiServerProcess, patch: dict) -> int:
    api = kube_client(server)
    try:
        done = client.CustomObjectsApi(api).patch_namespaced_custom_object(
            "networking.istio.io", "v1", "default", "virtualservices", "reviews", patch)
    finally:
        api.close()
    return int(done["metadata"]["resourceVersion"])


def split(v1: int, v2: int) -> dict:
    return {"spec": {"http": [{"name": "primary", "route": [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": v1},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": v2}]}]}}


def weights(lds: dict) -> list[tuple[str, int]]:
    manager = lds["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    action = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    if "cluster" in action:
        return [(action["cluster"], 100)]
    return [(c["name"], c["weight"]) for c in action["weighted_clusters"]["clusters"]]


def test_writes_the_seeded_config_then_rewrites_it_when_the_virtual_service_changes(plane):
    first = plane.wait_for(lambda s: s["version"], "first config")
    assert first["version"] == plane.expected() and first["error"] is None
    assert weights(plane.lds()) == [("outbound|9080|v1|reviews.default.svc.cluster.local", 100)]
    clusters = {c["name"]: c for c in plane.cds()["resources"]}
    v1 = clusters["outbound|9080|v1|reviews.default.svc.cluster.local"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
             for e in v1["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert ports == [7001, 7002]
    assert json.loads((plane.dir / controlplane.PROBLEMS_FILE).read_text()) == []

    rv = patch_vs(plane.server, split(70, 30))
    second = plane.wait_for(lambda s: s["seen"]["virtualservices"] >= rv, "the change")
    assert second["version"] != first["version"] and second["version"] == plane.expected()
    assert weights(plane.lds()) == [
        ("outbound|9080|v1|reviews.default.svc.cluster.local", 70),
        ("outbound|9080|v2|reviews.default.svc.cluster.local", 30)]
    kept = {p.stem for p in plane.history.glob("*.json")}
    assert kept == {first["version"], second["version"]}


def test_scaling_a_deployment_down_removes_its_replicas_from_the_cluster(plane):
    plane.wait_for(lambda s: s["version"], "first config")
    api = kube_client(plane.server)
    try:
        done = client.AppsV1Api(api).patch_namespaced_deployment(
            "reviews-v1", "default", {"spec": {"replicas": 1}})
    finally:
        api.close()
    rv = int(done.metadata.resource_version)
    plane.wait_for(lambda s: s["seen"]["deployments"] >= rv, "the scale-down")
    v1 = next(c for c in plane.cds()["resources"] if c["name"].startswith("outbound|9080|v1|"))
    assert len(v1["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 1


def test_what_the_lab_cannot_express_is_reported_in_problems_json(plane):
    plane.wait_for(lambda s: s["version"], "first config")
    patch = split(100, 0)
    patch["spec"]["http"][0]["corsPolicy"] = {"allowOrigins": [{"exact": "https://a.example"}]}
    rv = patch_vs(plane.server, patch)
    status = plane.wait_for(lambda s: s["seen"]["virtualservices"] >= rv, "the change")
    problems = json.loads((plane.dir / controlplane.PROBLEMS_FILE).read_text())
    assert status["problems"] == len(problems) == 1
    assert "corsPolicy is not supported" in problems[0] and "reviews" in problems[0]
    assert "corsPolicy" in plane.log.read_text()


def test_an_unreadable_endpoints_file_keeps_the_last_config_and_reports_why(plane):
    first = plane.wait_for(lambda s: s["version"], "first config")
    plane.endpoints.write_text("{not json")
    broken = plane.wait_for(lambda s: s["error"], "the error")
    assert broken["version"] == first["version"]
    assert weights(plane.lds()) == [("outbound|9080|v1|reviews.default.svc.cluster.local", 100)]
    moved = {"reviews": {"reviews-v1": [Endpoint("127.0.0.1", 7100)],
                         "reviews-v2": [Endpoint("127.0.0.1", 7101)]}}
    write_endpoints(plane.endpoints, moved)
    fixed = plane.wait_for(lambda s: s["error"] is None and s["version"] != first["version"],
                           "the recovery")
    assert fixed["version"] == plane.expected()


def test_watches_resume_after_they_end_and_after_the_api_server_restarts(plane, tmp_path):
    first = plane.wait_for(lambda s: s["version"], "first config")
    time.sleep(2.5)  # longer than --watch-seconds: the first watches have ended
    rv = patch_vs(plane.server, split(50, 50))
    plane.wait_for(lambda s: s["seen"]["virtualservices"] >= rv, "a change after the watch end")

    stop_apiserver_process(plane.server.process)
    restarted = start_apiserver(tmp_path / "apiserver2", data_dir=plane.server.data_dir)
    try:
        # The new server listens on another port; the control plane re-reads the kubeconfig.
        plane.server.kubeconfig.write_text(restarted.kubeconfig.read_text())
        rv = patch_vs(restarted, split(10, 90))
        status = plane.wait_for(lambda s: s["seen"]["virtualservices"] >= rv, "reconnection")
        assert status["version"] not in ("", first["version"])
        assert ("outbound|9080|v2|reviews.default.svc.cluster.local", 90) in weights(plane.lds())
    finally:
        stop_apiserver_process(restarted.process)
