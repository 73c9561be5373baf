"""A real service's shape through the lab, preflight to promote: the host as an FQDN, subsets
`stable`/`canary` whose pods are labelled `version: v1`/`v2`, and two HTTP routes that the plan
moves together (`routes: [api, api-internal]`). The analysis asks Prometheus for the versions
the subsets' labels name, never for the subsets' names."""

from __future__ import annotations

import json

import pytest
import yaml
from kubernetes import client

from canarykit.cluster import client as cluster
from canarykit.cluster.state import read_state
from canarykit.lab import processes as lab
from canarykit.rollout import runbook
from tests.rollout import test_driver
from tests.rollout.test_driver import release_folder, rollout_cli, write_plan

pytestmark = pytest.mark.lab

loaded_lab = test_driver.loaded_lab  # fixture: the session's lab with steady load

FQDN = "reviews.default.svc.cluster.local"
SPLIT = [{"destination": {"host": FQDN, "subset": "stable"}, "weight": 100},
         {"destination": {"host": FQDN, "subset": "canary"}, "weight": 0}]


def reshape(state) -> None:
    """The lab's reviews as a real service: FQDN host, subsets stable/canary, two routes."""
    kube = cluster.connect(state.kubeconfig)
    custom = client.CustomObjectsApi(kube.api)
    group, version = cluster.api_version(kube, "VirtualService")
    vs = cluster.get_object(kube, "VirtualService", "reviews")
    vs["spec"] = {"hosts": [FQDN], "http": [
        {"name": "api-internal", "match": [{"headers": {"x-canary-user": {"exact": "true"}}}],
         "route": json.loads(json.dumps(SPLIT))},
        {"name": "api", "route": json.loads(json.dumps(SPLIT))}]}
    custom.replace_namespaced_custom_object(group, version, "default", "virtualservices",
                                            "reviews", vs)
    dr = cluster.get_object(kube, "DestinationRule", "reviews")
    dr["spec"] = {"host": FQDN, "subsets": [{"name": "stable", "labels": {"version": "v1"}},
                                            {"name": "canary", "labels": {"version": "v2"}}]}
    custom.replace_namespaced_custom_object(group, version, "default", "destinationrules",
                                            "reviews", dr)
    lab.wait_for_routing(state)


def test_stable_canary_subsets_on_two_routes_of_an_fqdn_go_from_preflight_to_promote(
        tmp_path, loaded_lab):
    lab.reset(loaded_lab)
    reshape(loaded_lab)
    try:
        plan = write_plan(tmp_path, loaded_lab, service=FQDN, stable="stable", canary="canary",
                          routes=["api", "api-internal"],
                          steps=[{"weight": 50}, {"promote": {}}])
        assert yaml.safe_load(plan.read_text())["routes"] == ["api", "api-internal"]
        done = rollout_cli(tmp_path, "run", str(plan), timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        folder = release_folder(tmp_path)
        summary = json.loads((folder / "release.json").read_text())
        assert summary["status"] == "promoted"
        assert [(p["name"], p["verdict"]) for p in summary["phases"]] == [
            ("preflight", "PASS"), ("shift-50", None), ("analyze-50", "PASS"),
            ("promote", None)]
        shift = runbook.read_result(next(folder.glob("*-shift-50.ipynb")))
        (change,) = [c for c in shift.changes if c["operation"] == "set_canary_weight"]
        assert change["params"]["routes"] == ["api", "api-internal"]  # one write, both routes
        analysis = runbook.read_result(next(folder.glob("*-analyze-50.ipynb")))
        notes = " ".join(analysis.notes)
        assert "canary subset `canary` (version v2)" in notes, notes
        assert "stable subset `stable` (version v1)" in notes, notes
        kube = cluster.connect(loaded_lab.kubeconfig)
        vs = cluster.get_object(kube, "VirtualService", "reviews")
        assert [r["route"] for r in vs["spec"]["http"]] == [
            [{"destination": {"host": FQDN, "subset": "canary"}}]] * 2
        assert read_state(vs) is None
    finally:
        lab.reset(loaded_lab)
