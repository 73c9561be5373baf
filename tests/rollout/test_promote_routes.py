"""After promote no route is silently left on the old version: routes the rollout did not
manage that still send to it are listed by the promote phase (its notes, which the report
shows, and its evidence) and by `canarykit status`, and the plan's `promote: {move_routes:
true}` moves them in the same write."""

from __future__ import annotations

import copy
import json

import pytest

from canarykit.cli.main import main
from canarykit.cluster import client as cluster
from canarykit.rollout import phases, runbook
from canarykit.rollout.plan import expand, parse_plan
from tests.apiserver_fixture import seed
from tests.policy_seeds import DR, FQDN, VS


@pytest.fixture
def prod(apiserver):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    return apiserver


def _promote(apiserver, tmp_path, **parameters):
    target = phases.connect_target(service=FQDN, stable="stable", canary="canary",
                                   kubeconfig=str(apiserver.kubeconfig),
                                   audit_log=str(tmp_path / "audit.jsonl"))
    shift = runbook.new_result("shift-traffic", {})
    phases.shift_traffic(target, shift, canary_weight=50)
    result = runbook.new_result("promote", parameters)
    phases.promote(target, result, **parameters)
    return result, cluster.find_virtual_service(target.cluster, target.service)


def test_promote_lists_a_route_still_on_the_old_subset_and_status_shows_it(prod, tmp_path,
                                                                          capsys):
    result, vs = _promote(prod, tmp_path)
    assert result.evidence == {"left_on_stable": ["api-internal"], "moved_routes": []}
    assert any("still sending traffic to stable" in note and "api-internal" in note
               for note in result.notes)
    assert vs["spec"]["http"][0]["route"] == [
        {"destination": {"host": "reviews", "subset": "stable"}}]
    common = [FQDN, "--kubeconfig", str(prod.kubeconfig)]
    assert main(["status", *common]) == 0
    text = capsys.readouterr().out
    assert "made canary stable over stable; still sending to stable: api-internal" in text
    assert main(["status", *common, "--output", "json"]) == 0
    promotion = json.loads(capsys.readouterr().out)["lastPromotion"]
    assert promotion["from"] == "stable" and promotion["to"] == "canary"
    assert promotion["stillOnOld"] == ["api-internal"]


def test_the_plans_move_routes_moves_them_in_the_promote_write(prod, tmp_path, capsys):
    plan = parse_plan({"service": FQDN, "stable": "stable", "canary": "canary",
                       "steps": [{"weight": 50}, {"promote": {"move_routes": True}}]})
    assert expand(plan)[-1].parameters == {"move_routes": True}
    result, vs = _promote(prod, tmp_path, move_routes=True)
    assert result.evidence == {"left_on_stable": [], "moved_routes": ["api-internal"]}
    assert [r["route"] for r in vs["spec"]["http"]] == [
        [{"destination": {"host": "reviews", "subset": "canary"}}]] * 2
    assert vs["spec"]["http"][0]["match"] == VS["spec"]["http"][0]["match"]
    assert main(["status", FQDN, "--kubeconfig", str(prod.kubeconfig)]) == 0
    assert "no route sends to stable" in capsys.readouterr().out


def test_a_bad_move_routes_is_refused_when_the_plan_loads():
    with pytest.raises(Exception) as refused:
        parse_plan({"service": "reviews", "steps": [{"promote": {"move_routes": "yes"}}]})
    assert refused.value.field == "steps[0].promote.move_routes"


def test_a_route_to_another_services_subset_of_the_same_name_is_neither_listed_nor_moved(
        apiserver, tmp_path):
    vs = copy.deepcopy(VS)
    vs["spec"]["http"].insert(0, {"name": "ratings-proxy", "match": [{"uri": {"prefix": "/r"}}],
                                  "route": [{"destination": {"host": "ratings",
                                                             "subset": "stable"}}]})
    seed(apiserver, vs, copy.deepcopy(DR))
    result, after = _promote(apiserver, tmp_path, move_routes=True)
    assert result.evidence == {"left_on_stable": [], "moved_routes": ["api-internal"]}
    assert after["spec"]["http"][0] == vs["spec"]["http"][0]
