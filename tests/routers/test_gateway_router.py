"""The Gateway API router against the local API server, through the official client only:
each rollout operation on a mesh-bound HTTPRoute, the parts it does not own left as they
were, and the same guarantees as the Istio router (rollout state, audit, concurrency)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml
from kubernetes import client

from canarykit.cluster import audit
from canarykit.cluster import client as cluster
from canarykit.cluster.state import read_state
from canarykit.core.errors import BadInput, ClusterError, ConcurrentChangeError
from canarykit.rollout import phases, runbook
from canarykit.rollout import target as rollout_target
from canarykit.routers import GATEWAY_API, ISTIO, detect, open_router
from tests.apiserver_fixture import kube_client, seed
from tests.cluster.test_client import DR, VS

SERVICES = list(yaml.safe_load_all("""
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: default}
spec: {selector: {app: reviews, version: v1}, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: default}
spec: {selector: {app: reviews, version: v2}, ports: [{port: 9080}]}
"""))
ROUTE = yaml.safe_load("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  rules:
  - name: admin
    matches:
    - path: {type: PathPrefix, value: /admin}
    filters:
    - type: ExtensionRef
      extensionRef: {group: example.com, kind: RateLimit, name: admin-limit}
    backendRefs:
    - {name: reviews-v1, port: 9080}
  - name: primary
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add: [{name: x-served-by, value: mesh}]
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 100}
    - {name: reviews-v2, port: 9080, weight: 0}
""")


def _stored(kube) -> dict:
    """The route as the API server keeps it (with the CRD's defaults applied)."""
    return cluster.get_object(kube, "HTTPRoute", "reviews")


def _other_rules(route):
    return [r for r in route["spec"]["rules"] if r.get("name") != "primary"
            and not str(r.get("name", "")).startswith("canarykit-")]


def _primary(route):
    return next(r for r in route["spec"]["rules"] if r.get("name") == "primary")


@pytest.fixture
def kube(apiserver):
    seed(apiserver, *copy.deepcopy(SERVICES), copy.deepcopy(ROUTE))
    return cluster.connect(kubeconfig=str(apiserver.kubeconfig))


@pytest.fixture
def router(kube):
    return open_router(kube, "reviews", "reviews-v1", "reviews-v2")


def _target(apiserver, tmp_path, router_name: str = "") -> rollout_target.Target:
    return rollout_target.connect_target(
        service="reviews", stable="reviews-v1", canary="reviews-v2",
        kubeconfig=str(apiserver.kubeconfig), audit_log=str(tmp_path / "audit.jsonl"),
        router=router_name)


def test_the_router_is_detected_from_what_routes_the_service(apiserver, kube):
    assert detect(kube, "reviews") == GATEWAY_API
    assert open_router(kube, "reviews", "reviews-v1", "reviews-v2").name == GATEWAY_API


def test_a_service_routed_only_by_a_virtual_service_gets_the_istio_router(apiserver):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    assert detect(cluster.connect(kubeconfig=str(apiserver.kubeconfig)), "reviews") == ISTIO


def test_a_service_routed_by_both_apis_is_refused_naming_both(apiserver, kube):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    with pytest.raises(ClusterError, match="routed by both VirtualService default/reviews and "
                       "HTTPRoute default/reviews"):
        detect(kube, "reviews")


def test_an_unknown_router_name_is_refused_naming_the_field(kube):
    with pytest.raises(BadInput, match="router"):
        open_router(kube, "reviews", "reviews-v1", "reviews-v2", "linkerd")


def test_a_weight_step_moves_only_the_primary_rule_and_records_the_rollout(
        apiserver, kube, tmp_path):
    before = _stored(kube)
    target = _target(apiserver, tmp_path)
    result = runbook.new_result("shift-traffic", {})
    phases.shift_traffic(target, result, canary_weight=25)
    route = _stored(kube)
    assert [(b["name"], b["weight"]) for b in _primary(route)["backendRefs"]] == [
        ("reviews-v1", 75), ("reviews-v2", 25)]
    assert _primary(route)["filters"] == _primary(before)["filters"]
    assert _other_rules(route) == _other_rules(before)  # the ExtensionRef rule, untouched
    assert route["spec"]["parentRefs"] == before["spec"]["parentRefs"]
    assert result.weights == {"reviews-v1": 75, "reviews-v2": 25}
    state = read_state(route)
    assert (state.stable, state.canary) == ("reviews-v1", "reviews-v2")
    records = audit.read_records(tmp_path / "audit.jsonl")
    assert {r.get("target") for r in records if r.get("type") == audit.INTENT} == {
        "HTTPRoute default/reviews"}
    assert audit.verify_chain(tmp_path / "audit.jsonl").ok


def test_internal_users_first_then_promote_removes_the_rule_and_ends_the_rollout(
        apiserver, kube, tmp_path):
    before = _stored(kube)
    target = _target(apiserver, tmp_path)
    phases.internal_canary(target, runbook.new_result("internal-canary", {}),
                           header="x-canary", header_value="always", cookie_name="",
                           cookie_value="")
    route = cluster.get_object(target.cluster, "HTTPRoute", "reviews")
    added = [r for r in route["spec"]["rules"] if r.get("name", "").startswith("canarykit-")]
    assert len(added) == 1
    assert [b["name"] for b in added[0]["backendRefs"]] == ["reviews-v2"]
    assert all({"name": "x-canary", "type": "Exact", "value": "always"} in m["headers"]
               for m in added[0]["matches"])
    phases.shift_traffic(target, runbook.new_result("shift-traffic", {}), canary_weight=50)
    result = runbook.new_result("promote", {})
    phases.promote(target, result)
    route = cluster.get_object(target.cluster, "HTTPRoute", "reviews")
    assert not [r for r in route["spec"]["rules"] if r.get("name", "").startswith("canarykit-")]
    assert [(b["name"], b.get("weight")) for b in _primary(route)["backendRefs"]] == [
        ("reviews-v1", 0), ("reviews-v2", 100)]
    assert read_state(route) is None
    assert _other_rules(route) == _other_rules(before)
    # the admin rule still sends everything to the old version: promote says so
    assert any("still sending traffic to reviews-v1" in note and "admin" in note
               for note in result.notes)


def test_rollback_restores_the_rules_exactly_in_one_write(
        apiserver, kube, tmp_path):
    before = _stored(kube)
    target = _target(apiserver, tmp_path)
    phases.shift_traffic(target, runbook.new_result("shift-traffic", {}), canary_weight=10)
    result = runbook.new_result("rollback", {})
    phases.rollback(target, result, reason="test")
    route = _stored(kube)
    assert route["spec"] == before["spec"]
    assert read_state(route) is None
    assert [c["operation"] for c in result.changes] == ["rollback"]


def test_a_concurrent_change_to_the_weights_is_never_overwritten(apiserver, router, tmp_path):
    route = router.route()
    change = router.set_canary_weight(route, 30, None)
    other = copy.deepcopy(route)
    _primary(other)["backendRefs"][1]["weight"] = 5  # a GitOps controller, meanwhile
    client.CustomObjectsApi(kube_client(apiserver)).replace_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", "default", "httproutes", "reviews", other)
    with pytest.raises(ConcurrentChangeError, match="changed by someone else"):
        cluster.apply_change(router.cluster, change, audit_log=tmp_path / "audit.jsonl")
    assert _primary(router.route())["backendRefs"][1]["weight"] == 5


def test_a_mirror_step_adds_a_request_mirror_and_clears_only_its_own(router):
    route = router.route()
    mirrored = router.set_mirror(route, 50, None).after
    filters = _primary(mirrored)["filters"]
    assert filters[0] == _primary(route)["filters"][0]
    mirror = [f for f in filters if f["type"] == "RequestMirror"]
    assert mirror[0]["requestMirror"]["backendRef"]["name"] == "reviews-v2"
    assert mirror[0]["requestMirror"]["percent"] == 50
    assert router.diverted(mirrored)
    cleared = router.clear_mirror(mirrored).after
    assert cleared["spec"] == route["spec"]


def test_status_shows_the_route_its_rules_and_the_rollout(
        apiserver, kube, tmp_path):
    target = _target(apiserver, tmp_path)
    phases.shift_traffic(target, runbook.new_result("shift-traffic", {}), canary_weight=20)
    shown = subprocess.run(
        [sys.executable, "-m", "canarykit", "status", "reviews", "--kubeconfig",
         str(apiserver.kubeconfig), "--output", "json"], capture_output=True, text=True,
        timeout=60)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["router"] == GATEWAY_API
    assert report["virtualService"] == "HTTPRoute default/reviews"
    primary = next(r for r in report["routes"] if r["name"] == "primary")
    assert primary["destinations"] == [{"subset": "reviews-v1", "weight": 80},
                                       {"subset": "reviews-v2", "weight": 20}]
    assert report["rollout"]["canary"] == "reviews-v2"


def test_the_cli_sets_a_weight_and_rolls_back_on_an_http_route(
        apiserver, kube, tmp_path):
    before = _stored(kube)
    base = [sys.executable, "-m", "canarykit"]
    common = ["reviews", "--kubeconfig", str(apiserver.kubeconfig), "--audit-log",
              str(tmp_path / "audit.jsonl")]
    done = subprocess.run([*base, "weight", *common, "--canary", "40", "--stable-subset",
                           "reviews-v1", "--canary-subset", "reviews-v2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kube = cluster.connect(kubeconfig=str(apiserver.kubeconfig))
    assert [b["weight"] for b in _primary(cluster.get_object(kube, "HTTPRoute", "reviews"))[
        "backendRefs"]] == [60, 40]
    done = subprocess.run([*base, "rollback", *common], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert _stored(kube)["spec"] == before["spec"]


def test_preflight_checks_the_route_and_each_backend_service(
        apiserver, kube, tmp_path):
    """No Deployments exist here: preflight fails at the backends, naming them, and changes
    nothing."""
    before = _stored(kube)
    target = _target(apiserver, tmp_path)
    target.prometheus = None
    checked, objects = phases._check_objects(target)
    assert checked.verdict.value == "PASS", checked.reason
    assert checked.judge == "gateway-api-objects"
    backends = phases._check_subsets(target, objects)
    assert backends.verdict.value == "FAIL"
    assert "reviews-v1" in backends.reason and "reviews-v2" in backends.reason
    assert _stored(kube)["spec"] == before["spec"]


def test_blue_green_switches_the_whole_rule_and_back(apiserver, kube, tmp_path):
    target = _target(apiserver, tmp_path)
    phases.blue_green_switch(target, runbook.new_result("blue-green", {}), to_subset="reviews-v2")
    assert [(b["name"], b["weight"]) for b in _primary(_stored(kube))["backendRefs"]] == [
        ("reviews-v1", 0), ("reviews-v2", 100)]
    phases.blue_green_switch(target, runbook.new_result("blue-green", {}), to_subset="reviews-v1")
    assert [(b["name"], b["weight"]) for b in _primary(_stored(kube))["backendRefs"]] == [
        ("reviews-v1", 100), ("reviews-v2", 0)]
    with pytest.raises(BadInput, match="to_subset"):
        phases.blue_green_switch(target, runbook.new_result("blue-green", {}),
                                 to_subset="reviews-v3")


def test_a_grpc_route_is_routed_the_same_way(apiserver, tmp_path):
    grpc = yaml.safe_load("""
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: ratings, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings, port: 9090}]
  rules:
  - name: primary
    matches: [{method: {service: ratings.v1.Ratings}}]
    backendRefs:
    - {name: ratings-v1, port: 9090, weight: 100}
    - {name: ratings-v2, port: 9090, weight: 0}
""")
    seed(apiserver, grpc)
    kube = cluster.connect(kubeconfig=str(apiserver.kubeconfig))
    router = open_router(kube, "ratings", "ratings-v1", "ratings-v2")
    assert router.name == GATEWAY_API
    route = router.route()
    assert router.kind == "GRPCRoute"
    cluster.start_rollout(kube, route, router.snapshot(router.read()), stable="ratings-v1",
                          canary="ratings-v2", audit_log=tmp_path / "audit.jsonl")
    cluster.apply_change(kube, router.set_canary_weight(router.route(), 20, None),
                         audit_log=tmp_path / "audit.jsonl")
    moved = cluster.get_object(kube, "GRPCRoute", "ratings")
    assert [(b["name"], b["weight"]) for b in moved["spec"]["rules"][0]["backendRefs"]] == [
        ("ratings-v1", 80), ("ratings-v2", 20)]
    assert moved["spec"]["rules"][0]["matches"] == route["spec"]["rules"][0]["matches"]
    router.rollback(audit_log=tmp_path / "audit.jsonl")
    assert cluster.get_object(kube, "GRPCRoute", "ratings")["spec"] == route["spec"]


def test_policy_sets_the_canary_rules_request_timeout_and_refuses_what_httproute_lacks(
        apiserver, kube, tmp_path, capsys):
    from canarykit.cli.main import main

    before = _stored(kube)
    common = ["policy", "reviews", "--kubeconfig", str(apiserver.kubeconfig), "--audit-log",
              str(tmp_path / "audit.jsonl"), "--stable-subset", "reviews-v1",
              "--canary-subset", "reviews-v2"]
    assert main([*common, "--retries", "3"]) == 2
    assert capsys.readouterr().err.startswith("canarykit: error: --retries: retries is not "
                                              "available with the Gateway API router")
    assert main([*common, "--timeout", "90"]) == 2
    assert "--timeout: must be a Gateway API duration" in capsys.readouterr().err
    assert _stored(kube) == before
    assert main([*common, "--timeout", "3s"]) == 0
    after = _stored(kube)
    assert _primary(after)["timeouts"] == {"request": "3s"}
    assert _other_rules(after) == _other_rules(before)
    assert main(["status", "reviews", "--kubeconfig", str(apiserver.kubeconfig)]) == 0
    assert "timeouts.request=3s" in capsys.readouterr().out
    assert main(["rollback", "reviews", "--kubeconfig", str(apiserver.kubeconfig),
                 "--audit-log", str(tmp_path / "audit.jsonl")]) == 0
    assert _stored(kube)["spec"] == before["spec"]


def test_promote_with_move_sends_the_foreign_rules_to_the_canary_keeping_their_filters(
        router, kube, tmp_path):
    route = router.route()
    change = router.promote(route, None, "r-1", move=True)
    admin = next(r for r in change.after["spec"]["rules"] if r.get("name") == "admin")
    assert [(ref["name"], ref["port"]) for ref in admin["backendRefs"]] == [("reviews-v2", 9080)]
    assert admin["filters"] == next(r for r in ROUTE["spec"]["rules"]
                                    if r["name"] == "admin")["filters"]
    assert change.params["moved_routes"] == ["rule 'admin' (#0)"]
    cluster.apply_change(kube, change, audit_log=tmp_path / "audit.jsonl")
    status = router.status().to_dict()["lastPromotion"]
    assert status == {"release": "r-1", "from": "reviews-v1", "to": "reviews-v2",
                      "stillOnOld": []}


def test_route_by_query_and_by_header_prefix_on_an_http_route(apiserver, kube, tmp_path):
    from canarykit.cli.main import main

    common = ["route", "reviews", "--kubeconfig", str(apiserver.kubeconfig), "--audit-log",
              str(tmp_path / "audit.jsonl"), "--stable-subset", "reviews-v1",
              "--canary-subset", "reviews-v2"]
    assert main([*common, "--query", "canary=1"]) == 0
    assert main([*common, "--header", "x-team=qa.", "--header-match", "prefix"]) == 0
    rules = {r["name"]: r for r in _stored(kube)["spec"]["rules"]}
    query = rules["canarykit-canary-internal-query"]["matches"][0]["queryParams"]
    assert query == [{"type": "Exact", "name": "canary", "value": "1"}]
    headers = rules["canarykit-canary-internal-header"]["matches"][0]["headers"]
    assert headers == [{"type": "RegularExpression", "name": "x-team", "value": "qa\\..*"}]
    assert main([*common, "--source-labels", "app=t"]) == 2


def test_clearing_the_timeout_keeps_a_backend_request_timeout(router):
    objects = router.read()
    _primary(objects.route)["timeouts"] = {"request": "10s", "backendRequest": "2s"}
    (change,) = router.policy_changes(objects, {}, ["timeout"])
    assert _primary(change.after)["timeouts"] == {"backendRequest": "2s"}
    (change,) = router.policy_changes(objects, {"timeout": "5s"}, [])
    assert _primary(change.after)["timeouts"] == {"request": "5s", "backendRequest": "2s"}
    with pytest.raises(BadInput, match="backendRequest timeout"):
        router.policy_changes(objects, {"timeout": "1s"}, [])
