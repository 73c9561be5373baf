"""The traffic-policy runbook and the plan's policy and fault-rehearsal steps, against the local
API server: each seed's policy made through the runbook (run by papermill, as a user would with
`canarykit runbook run`) and through a plan's phases, on a real-shaped service."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from canarykit.cluster import client as cluster
from canarykit.cluster.state import read_state
from canarykit.core.errors import BadInput
from canarykit.rollout import phases, runbook
from canarykit.rollout import target as rollout_target
from canarykit.rollout.plan import expand, parse_plan
from tests.apiserver_fixture import seed
from tests.policy_seeds import (
    DESTINATION_SEEDS,
    DR,
    FQDN,
    ROUTE_SEEDS,
    VS,
    canary_route,
    subset_policy,
)

ROUTE_SETTINGS = {k: v for settings, _ in ROUTE_SEEDS.values() for k, v in settings.items()}
ROUTE_FIELDS = {k: v for _, fields in ROUTE_SEEDS.values() for k, v in fields.items()}
DESTINATION_SETTINGS = {k: v for settings, _ in DESTINATION_SEEDS.values()
                        for k, v in settings.items()}
DESTINATION_FIELDS = {k: v for _, fields in DESTINATION_SEEDS.values()
                      for k, v in fields.items()}


@pytest.fixture
def kube(apiserver):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    return cluster.connect(kubeconfig=str(apiserver.kubeconfig), namespace="prod")


def _objects(kube):
    return (cluster.get_object(kube, "VirtualService", "reviews"),
            cluster.get_object(kube, "DestinationRule", "reviews"))


def _run_runbook(apiserver, tmp_path, **given):
    parameters = {"service": FQDN, "stable": "stable", "canary": "canary",
                  "kubeconfig": str(apiserver.kubeconfig),
                  "audit_log": str(tmp_path / "audit.jsonl"), **given}
    args = [part for name, value in parameters.items() for part in ("-p", name, str(value))]
    output = tmp_path / "policy.ipynb"
    done = subprocess.run([sys.executable, "-m", "canarykit", "runbook", "run",
                           "traffic-policy", str(output), *args],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    return done, output


def test_the_runbook_makes_every_seed_in_one_run(apiserver, kube, tmp_path):
    done, output = _run_runbook(apiserver, tmp_path, subset="canary", **ROUTE_SETTINGS,
                                **DESTINATION_SETTINGS)
    assert done.returncode == 0, done.stderr
    vs, dr = _objects(kube)
    route = canary_route(vs)
    assert {k: route[k] for k in ROUTE_FIELDS} == ROUTE_FIELDS
    assert subset_policy(dr, "canary") == DESTINATION_FIELDS
    result = runbook.read_result(output)
    assert result.outcome == runbook.Outcome.OK
    assert [c["operation"] for c in result.changes] == ["begin_rollout", "set_traffic_policy",
                                                         "set_traffic_policy"]
    assert result.weights == {"stable": 100, "canary": 0}


def test_the_runbook_refuses_a_bad_value_naming_the_parameter_and_changes_nothing(
        apiserver, kube, tmp_path):
    before = _objects(kube)
    done, _ = _run_runbook(apiserver, tmp_path, timeout="3s", outlier_interval="soon")
    assert done.returncode == 2
    assert "outlier_interval: must be a duration" in done.stderr + done.stdout
    assert _objects(kube) == before


def _plan(**extra):
    steps = [
        {"policy": ROUTE_SEEDS["timeout-and-retries"][0]},
        {"policy": {**DESTINATION_SETTINGS, "subset": "canary"}},
        {"internal-canary": {"header": "x-canary-user"}},
        {"fault-rehearsal": ROUTE_SEEDS["fault-injection"][0]},
        {"weight": 50},
    ]
    return parse_plan({"service": FQDN, "namespace": "prod", "stable": "stable",
                       "canary": "canary", "steps": steps, **extra})


def _run_phase(apiserver, tmp_path, spec):
    target = rollout_target.connect_target(service=FQDN, stable="stable", canary="canary",
                                           kubeconfig=str(apiserver.kubeconfig),
                                           audit_log=str(tmp_path / "audit.jsonl"))
    result = runbook.new_result(spec.runbook, spec.parameters)
    function = {"traffic-policy": phases.traffic_policy,
                "internal-canary": phases.internal_canary}[spec.runbook]
    function(target, result, **spec.parameters)
    return result


def test_the_plan_sets_retries_before_shifting_and_rehearses_a_fault_on_the_canary_only(
        apiserver, kube, tmp_path):
    specs = [s for s in expand(_plan()) if s.runbook in ("traffic-policy", "internal-canary")]
    assert [s.name for s in specs] == ["policy-1", "policy-2", "internal-canary",
                                       "fault-rehearsal-4", "clear-fault-4"]
    by_name = {s.name: s for s in expand(_plan())}
    assert by_name["analyze-fault-rehearsal-4"].judged
    for spec in specs[:4]:
        _run_phase(apiserver, tmp_path, spec)
    vs, dr = _objects(kube)
    fields = ROUTE_SEEDS["timeout-and-retries"][1]
    assert {k: canary_route(vs)[k] for k in fields} == fields
    assert subset_policy(dr, "canary") == DESTINATION_FIELDS
    internal = next(r for r in vs["spec"]["http"] if r["name"] == "canary-internal-header")
    assert internal["fault"] == ROUTE_SEEDS["fault-injection"][1]["fault"]
    assert "fault" not in canary_route(vs)  # users on the split never see the rehearsal
    _run_phase(apiserver, tmp_path, specs[4])
    vs, _ = _objects(kube)
    internal = next(r for r in vs["spec"]["http"] if r["name"] == "canary-internal-header")
    assert "fault" not in internal
    assert read_state(vs) is not None


@pytest.mark.parametrize("step, field", [
    ({"policy": {"retries": "three"}}, "steps[0].policy.retries"),
    ({"policy": {"timeout": "3"}}, "steps[0].policy.timeout"),
    ({"policy": {"fault_abort": 600}}, "steps[0].policy.fault_abort"),
    ({"policy": {"affinity": "ip"}}, "steps[0].policy.affinity"),
    ({"policy": {"outlier_min_health_percent": 120}},
     "steps[0].policy.outlier_min_health_percent"),
    ({"policy": {"max_requests_per_connection": 0}},
     "steps[0].policy.max_requests_per_connection"),
    ({"policy": {"h2_upgrade_policy": "upgrade"}}, "steps[0].policy.h2_upgrade_policy"),
    ({"policy": {"clear": ["faults"]}}, "steps[0].policy.clear"),
    ({"policy": {"subset": "canary"}}, "steps[0].policy"),
    ({"policy": {"retries": 2, "clear": "retries"}}, "steps[0].policy.retries"),
    ({"policy": {"timeout": "1s", "subset": "canary"}}, "steps[0].policy.subset"),
    ({"policy": {"timout": "1s"}}, "steps[0].policy.timout"),
    ({"fault-rehearsal": {"fault_abort": 500}}, "steps[0].fault-rehearsal"),
    ({"fault-rehearsal": {"fault_abort": 500, "route": "x", "timeout": "1s"}},
     "steps[0].fault-rehearsal.timeout"),
    ({"fault-rehearsal": {"fault_delay_percent": 5, "route": "x"}},
     "steps[0].fault-rehearsal.fault_delay_percent"),
    ({"fault-rehearsal": {"fault_abort": 500, "route": "x"}, "analysis": False},
     "steps[0].analysis"),
])
def test_a_bad_policy_step_is_refused_when_the_plan_loads_naming_the_field(step, field):
    with pytest.raises(BadInput) as refused:
        parse_plan({"service": "reviews", "steps": [step]})
    assert refused.value.field == field


def test_a_gateway_api_plan_takes_a_timeout_and_refuses_retries():
    common = {"service": "reviews", "router": "gateway-api", "stable": "reviews-v1",
              "canary": "reviews-v2"}
    plan = parse_plan({**common, "steps": [{"policy": {"timeout": "3s"}}]})
    assert expand(plan)[1].parameters == {"timeout": "3s"}
    with pytest.raises(BadInput) as refused:
        parse_plan({**common, "steps": [{"policy": {"retries": 3}}]})
    assert refused.value.field == "steps[0].policy.retries"
    assert "Gateway API" in refused.value.problem


def test_policy_steps_round_trip_through_the_plans_dict():
    plan = _plan()
    again = parse_plan(plan.to_dict())
    assert again.to_dict() == plan.to_dict() and again.digest() == plan.digest()


def test_a_fault_rehearsal_after_a_source_labels_internal_canary_uses_its_route():
    plan = parse_plan({"service": "reviews", "steps": [
        {"internal-canary": {"source_labels": {"app": "tester"}}},
        {"fault-rehearsal": {"fault_abort": 503}}]})
    rehearsal = [s for s in expand(plan) if s.name.startswith(("fault-rehearsal", "clear"))]
    assert {s.parameters["route"] for s in rehearsal} == {"canary-internal-source"}


def test_with_routes_moving_together_a_destination_policy_loads_and_a_route_policy_goes_to_each(
        apiserver, kube, tmp_path):
    plan = _plan(routes=["api", "api-internal"])
    (destination,) = [s for s in expand(plan) if s.name == "policy-2"]
    assert "route" not in destination.parameters
    target = rollout_target.connect_target(service=FQDN, stable="stable", canary="canary",
                                           kubeconfig=str(apiserver.kubeconfig),
                                           audit_log=str(tmp_path / "audit.jsonl"),
                                           routes="api,api-internal")
    phases.traffic_policy(target, runbook.new_result("traffic-policy", {}), timeout="3s")
    vs, _ = _objects(kube)
    assert [r.get("timeout") for r in vs["spec"]["http"]] == ["3s", "3s"]


def test_iterations_on_a_shadow_step_are_refused_rather_than_ignored():
    with pytest.raises(BadInput) as refused:
        parse_plan({"service": "reviews", "steps": [
            {"shadow": {"percentage": 10}, "analysis": {"iterations": 3}}]})
    assert refused.value.field == "steps[0].analysis.iterations"
