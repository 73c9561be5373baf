"""The internal-canary step takes every match the seeds use (header exact/prefix/regex, cookie
only, query parameter, sourceLabels, a JWT claim at a gateway) and adds only the routes it is
asked for: through the plan and the runbook's phase, against the local API server."""

from __future__ import annotations

import copy

import pytest

from canarykit.cluster import client as cluster
from canarykit.core.errors import BadInput
from canarykit.rollout import phases, runbook
from canarykit.rollout.plan import expand, parse_plan
from tests.apiserver_fixture import seed
from tests.cluster.test_client import DR as MESH_DR
from tests.cluster.test_client import VS as MESH_VS
from tests.policy_seeds import DR, FQDN, VS


def _plan(settings: dict, **extra):
    return parse_plan({"service": FQDN, "namespace": "prod", "stable": "stable",
                       "canary": "canary", "steps": [{"internal-canary": settings,
                                                      "analysis": False}], **extra})


def _run(apiserver, tmp_path, plan, service=FQDN, stable="stable", canary="canary"):
    (spec,) = [s for s in expand(plan) if s.runbook == "internal-canary"]
    target = phases.connect_target(service=service, stable=stable, canary=canary,
                                   kubeconfig=str(apiserver.kubeconfig),
                                   audit_log=str(tmp_path / "audit.jsonl"))
    phases.internal_canary(target, runbook.new_result("internal-canary", spec.parameters),
                           **spec.parameters)
    vs = cluster.find_virtual_service(target.cluster, target.service)
    return [(r["name"], r["match"]) for r in vs["spec"]["http"]
            if r.get("name", "").startswith("canary-internal")]


@pytest.fixture
def prod(apiserver):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    return apiserver


@pytest.mark.parametrize("settings, routes", [
    ({"header": "x-canary-user", "header_match": "prefix", "header_value": "team-"},
     [("canary-internal-header", [{"headers": {"x-canary-user": {"prefix": "team-"}}}])]),
    ({"header": "x-canary-user", "header_match": "regex", "header_value": "(alice|bob)"},
     [("canary-internal-header", [{"headers": {"x-canary-user": {"regex": "(alice|bob)"}}}])]),
    ({"cookie_name": "beta"}, None),  # the cookie's pattern: tests/mesh/test_traffic.py
    ({"query_parameter": "canary", "query_value": "1"},
     [("canary-internal-query", [{"queryParams": {"canary": {"exact": "1"}}}])]),
    ({"source_labels": {"app": "reviews-tester", "version": "v1"}},
     [("canary-internal-source",
       [{"sourceLabels": {"app": "reviews-tester", "version": "v1"}}])]),
    ({"header": "@request.auth.claims.groups", "header_value": "beta-testers"},
     [("canary-internal-header", [{"headers": {"@request.auth.claims.groups":
                                               {"exact": "beta-testers"}}}])]),
])
def test_each_match_becomes_one_route_and_nothing_else_is_added(prod, tmp_path, settings,
                                                                routes):
    found = _run(prod, tmp_path, _plan(settings))
    if "cookie_name" in settings:
        assert [name for name, _ in found] == ["canary-internal-cookie"]
        assert "beta=true" in found[0][1][0]["headers"]["cookie"]["regex"]
    else:
        assert found == routes


def test_a_jwt_claim_route_on_a_mesh_only_virtual_service_is_refused_and_nothing_changes(
        apiserver, tmp_path):
    seed(apiserver, copy.deepcopy(MESH_VS), copy.deepcopy(MESH_DR))
    kube = cluster.connect(kubeconfig=str(apiserver.kubeconfig))
    before = cluster.get_object(kube, "VirtualService", "reviews")
    plan = parse_plan({"service": "reviews", "steps": [{"internal-canary": {
        "header": "@request.auth.claims.groups", "header_value": "beta"}, "analysis": False}]})
    with pytest.raises(cluster.InvalidChange, match="JWT claim routing works only on a gateway"):
        _run(apiserver, tmp_path, plan, service="reviews", stable="v1", canary="v2")
    assert cluster.get_object(kube, "VirtualService", "reviews") == before


@pytest.mark.parametrize("settings, field", [
    ({"header": "x-a", "header_match": "suffix"}, "steps[0].internal-canary.header_match"),
    ({"header": "x-a", "header_match": "regex", "header_value": "(("},
     "steps[0].internal-canary.header_value"),
    ({"query_value": "1", "header": "x-a"}, "steps[0].internal-canary.query_value"),
    ({"query_parameter": "a b", "query_value": "1"}, "steps[0].internal-canary.query_parameter"),
    ({"query_parameter": "q", "query_value": ""}, "steps[0].internal-canary.query_value"),
    ({"source_labels": {"Bad Key": "x"}}, "steps[0].internal-canary.source_labels"),
    ({"source_labels": {"app": "no spaces"}}, "steps[0].internal-canary.source_labels"),
    ({"source_labels": "app=x"}, "steps[0].internal-canary.source_labels"),
    ({"source_labels": {}}, "steps[0].internal-canary.source_labels"),
])
def test_a_bad_match_is_refused_when_the_plan_loads_naming_the_field(settings, field):
    with pytest.raises(BadInput) as refused:
        _plan(settings)
    assert refused.value.field == field


def test_gateway_api_plans_refuse_source_labels_and_turn_a_prefix_into_a_regex():
    common = {"service": "reviews", "router": "gateway-api", "stable": "reviews-v1",
              "canary": "reviews-v2"}
    with pytest.raises(BadInput) as refused:
        parse_plan({**common, "steps": [{"internal-canary": {"source_labels": {"app": "t"}}}]})
    assert refused.value.field == "steps[0].internal-canary.source_labels"
    plan = parse_plan({**common, "steps": [{"internal-canary": {
        "header": "x-team", "header_match": "prefix", "header_value": "qa."}}]})
    assert expand(plan)[1].parameters["header_match"] == "prefix"


def test_the_runbook_adds_a_query_route_and_a_source_route_and_nothing_else(prod, tmp_path):
    import subprocess
    import sys

    parameters = {"service": FQDN, "stable": "stable", "canary": "canary",
                  "kubeconfig": str(prod.kubeconfig), "audit_log": str(tmp_path / "a.jsonl"),
                  "header": "", "cookie_name": "", "query_parameter": "canary",
                  "query_value": "1", "source_labels": "app=reviews-tester"}
    args = [part for name, value in parameters.items() for part in ("-p", name, value)]
    done = subprocess.run([sys.executable, "-m", "canarykit", "runbook", "run",
                           "internal-canary", str(tmp_path / "out.ipynb"), *args],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    kube = cluster.connect(kubeconfig=str(prod.kubeconfig), namespace="prod")
    vs = cluster.get_object(kube, "VirtualService", "reviews")
    assert [(r["name"], r["match"]) for r in vs["spec"]["http"]
            if r["name"].startswith("canary-internal")] == [
        ("canary-internal-query", [{"queryParams": {"canary": {"exact": "1"}}}]),
        ("canary-internal-source", [{"sourceLabels": {"app": "reviews-tester"}}])]
