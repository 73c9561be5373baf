"""The local API server serves the Gateway API (HTTPRoute, GRPCRoute, Gateway) as a cluster with
the v1.6.1 standard-channel CRDs installed would, specified through the official client."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import threading

import pytest
from kubernetes import client, watch

from canarykit.lab import apiserver as server_module
from canarykit.mesh import validate
from tests.apiserver_fixture import (
    apiserver,  # noqa: F401 (the fixture)
    kube_client,
    start_apiserver,
    stop_apiserver_process,
)
from tests.lab.test_apiserver import service_account_client, status_of

pytestmark = pytest.mark.lab  # every test talks to a real API server

GROUP = "gateway.networking.k8s.io"


def http_route(name: str = "reviews", weights=(100, 0), version: str = "v1") -> dict:
    backends = [{"name": f"reviews-v{i + 1}", "port": 9080, "weight": w}
                for i, w in enumerate(weights)]
    return {"apiVersion": f"{GROUP}/{version}", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews",
                                     "port": 9080}],
                     "rules": [{"name": "primary", "backendRefs": backends}]}}


def grpc_route(name: str = "ratings") -> dict:
    return {"apiVersion": f"{GROUP}/v1", "kind": "GRPCRoute",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "ratings"}],
                     "rules": [{"matches": [{"method": {"service": "ratings.Ratings"}}],
                                "backendRefs": [{"name": "ratings-v1", "port": 50051}]}]}}


def gateway(name: str = "edge") -> dict:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"gatewayClassName": "istio",
                     "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}


def args(plural: str = "httproutes", version: str = "v1"):
    return GROUP, version, "default", plural


@pytest.fixture
def api(apiserver):  # noqa: F811
    with kube_client(apiserver) as api_client:
        yield api_client


@pytest.fixture
def custom(api) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture(scope="module")
def refusing(tmp_path_factory):
    """One server for the admission cases: each is refused, so none leaves anything behind."""
    server = start_apiserver(tmp_path_factory.mktemp("refusing"))
    try:
        with kube_client(server) as api_client:
            yield client.CustomObjectsApi(api_client)
    finally:
        stop_apiserver_process(server.process)


# ---------------------------------------------------------------- discovery


def test_discovery_offers_the_gateway_group_with_v1_preferred(api, custom):
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert [v.version for v in groups[GROUP].versions] == ["v1", "v1beta1"]
    assert groups[GROUP].preferred_version.group_version == f"{GROUP}/v1"
    v1 = {r.name: r for r in custom.get_api_resources(GROUP, "v1").resources}
    assert {name: r.kind for name, r in v1.items()} == {
        "httproutes": "HTTPRoute", "grpcroutes": "GRPCRoute", "gateways": "Gateway"}
    assert all(r.namespaced for r in v1.values())
    assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= set(
        v1["httproutes"].verbs)
    assert v1["gateways"].short_names == ["gtw"]
    v1beta1 = {r.name for r in custom.get_api_resources(GROUP, "v1beta1").resources}
    assert v1beta1 == {"httproutes", "gateways"}  # GRPCRoute is served as v1 only


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_api_resources_lists_the_gateway_kinds(tmp_path):
    server = start_apiserver(tmp_path / "tls", args=("--tls",))
    try:
        listed = subprocess.run(
            [shutil.which("kubectl") or "kubectl", "--kubeconfig", str(server.kubeconfig),
             "api-resources", f"--api-group={GROUP}", "-o", "name"],
            capture_output=True, text=True, timeout=60, check=True, env={"HOME": str(tmp_path)})
    finally:
        stop_apiserver_process(server.process)
    assert set(listed.stdout.split()) == {f"httproutes.{GROUP}", f"grpcroutes.{GROUP}",
                                          f"gateways.{GROUP}"}


# ---------------------------------------------------------------- the verbs


def test_httproute_create_get_list_replace_and_delete(custom):
    created = custom.create_namespaced_custom_object(*args(), http_route())
    assert created["apiVersion"] == f"{GROUP}/v1" and created["kind"] == "HTTPRoute"
    assert created["metadata"]["resourceVersion"] and created["metadata"]["uid"]
    got = custom.get_namespaced_custom_object(*args(), "reviews")
    assert got == created
    listed = custom.list_namespaced_custom_object(*args())
    assert listed["kind"] == "HTTPRouteList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["reviews"]

    got["spec"]["rules"][0]["backendRefs"][0]["weight"] = 90
    got["spec"]["rules"][0]["backendRefs"][1]["weight"] = 10
    replaced = custom.replace_namespaced_custom_object(*args(), "reviews", got)
    assert int(replaced["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"])
    assert replaced["metadata"]["generation"] == 2
    assert [b["weight"] for b in replaced["spec"]["rules"][0]["backendRefs"]] == [90, 10]

    deleted = custom.delete_namespaced_custom_object(*args(), "reviews")
    assert deleted["metadata"]["name"] == "reviews"  # CRDs answer with the deleted object
    with pytest.raises(client.ApiException) as gone:
        custom.get_namespaced_custom_object(*args(), "reviews")
    assert gone.value.status == 404
    assert status_of(gone.value)["message"] == \
        f'httproutes.{GROUP} "reviews" not found'


def test_a_replace_with_a_stale_resource_version_is_a_conflict(custom):
    first = custom.create_namespaced_custom_object(*args(), http_route())
    newer = copy.deepcopy(first)
    newer["spec"]["rules"][0]["backendRefs"][1]["weight"] = 5
    custom.replace_namespaced_custom_object(*args(), "reviews", newer)
    first["spec"]["rules"][0]["backendRefs"][1]["weight"] = 50
    with pytest.raises(client.ApiException) as stale:
        custom.replace_namespaced_custom_object(*args(), "reviews", first)
    assert stale.value.status == 409 and status_of(stale.value)["reason"] == "Conflict"
    kept = custom.get_namespaced_custom_object(*args(), "reviews")
    assert kept["spec"]["rules"][0]["backendRefs"][1]["weight"] == 5


def test_merge_patch_changes_the_weights_it_names(custom):
    custom.create_namespaced_custom_object(*args(), http_route())
    rules = [{"name": "primary", "backendRefs": [
        {"name": "reviews-v1", "port": 9080, "weight": 75},
        {"name": "reviews-v2", "port": 9080, "weight": 25}]}]
    patched = custom.patch_namespaced_custom_object(*args(), "reviews", {
        "metadata": {"annotations": {"canarykit.io/release": "r1"}}, "spec": {"rules": rules}})
    assert [b["weight"] for b in patched["spec"]["rules"][0]["backendRefs"]] == [75, 25]
    assert patched["metadata"]["annotations"] == {"canarykit.io/release": "r1"}
    assert patched["spec"]["parentRefs"][0]["name"] == "reviews"  # untouched


def test_strategic_merge_patch_is_refused_as_for_every_custom_resource(apiserver):  # noqa: F811
    from tests.lab.test_apiserver import raw

    with kube_client(apiserver) as api:
        client.CustomObjectsApi(api).create_namespaced_custom_object(*args(), http_route())
    code, body = raw(apiserver, "PATCH", f"/apis/{GROUP}/v1/namespaces/default/httproutes/"
                     "reviews", b'{"spec": {}}',
                     content_type="application/strategic-merge-patch+json")
    assert code == 415 and json.loads(body)["reason"] == "UnsupportedMediaType"


def test_the_crd_defaults_are_filled_in(custom):
    body = http_route()
    body["spec"]["parentRefs"] = [{"name": "mesh-gateway"}]
    del body["spec"]["rules"][0]["backendRefs"][0]["weight"]
    body["spec"]["rules"].append({"backendRefs": [{"name": "reviews-v1", "port": 9080}],
                                  "matches": [{"headers": [{"name": "x-canary",
                                                            "value": "yes"}]}]})
    stored = custom.create_namespaced_custom_object(*args(), body)
    assert stored["spec"]["parentRefs"] == [
        {"name": "mesh-gateway", "group": GROUP, "kind": "Gateway"}]
    first, second = stored["spec"]["rules"]
    assert first["backendRefs"][0] == {"name": "reviews-v1", "port": 9080, "group": "",
                                       "kind": "Service", "weight": 1}
    assert first["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert second["matches"] == [{"headers": [{"name": "x-canary", "value": "yes",
                                               "type": "Exact"}],
                                  "path": {"type": "PathPrefix", "value": "/"}}]


def test_one_httproute_is_served_under_v1_and_v1beta1(custom):
    custom.create_namespaced_custom_object(*args(version="v1beta1"),
                                           http_route(version="v1beta1"))
    as_v1 = custom.get_namespaced_custom_object(*args(), "reviews")
    as_beta = custom.get_namespaced_custom_object(*args(version="v1beta1"), "reviews")
    assert as_v1["apiVersion"] == f"{GROUP}/v1"
    assert as_beta["apiVersion"] == f"{GROUP}/v1beta1"
    assert as_v1["spec"] == as_beta["spec"]
    with pytest.raises(client.ApiException) as not_served:
        custom.list_namespaced_custom_object(*args("grpcroutes", "v1beta1"))
    assert not_served.value.status == 404


def test_dry_run_checks_but_stores_nothing(custom):
    answer = custom.create_namespaced_custom_object(*args(), http_route(), dry_run="All")
    assert answer["metadata"]["uid"] and answer["spec"]["rules"][0]["backendRefs"][0][
        "kind"] == "Service"
    assert custom.list_namespaced_custom_object(*args())["items"] == []
    stored = custom.create_namespaced_custom_object(*args(), http_route())
    changed = copy.deepcopy(stored)
    changed["spec"]["rules"][0]["backendRefs"][0]["weight"] = 1
    custom.replace_namespaced_custom_object(*args(), "reviews", changed, dry_run="All")
    assert custom.get_namespaced_custom_object(*args(), "reviews") == stored
    bad = copy.deepcopy(stored)
    bad["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    with pytest.raises(client.ApiException) as refused:
        custom.replace_namespaced_custom_object(*args(), "reviews", bad, dry_run="All")
    assert refused.value.status == 422


def test_watch_streams_added_modified_and_deleted_httproutes(custom):
    events: list[tuple[str, str, int]] = []
    started = threading.Event()

    def follow() -> None:
        stream = watch.Watch().stream(custom.list_namespaced_custom_object, *args(),
                                      timeout_seconds=10)
        started.set()
        for event in stream:
            weights = [b["weight"] for b in event["object"]["spec"]["rules"][0]["backendRefs"]]
            events.append((event["type"], event["object"]["metadata"]["name"], weights[1]))
            if event["type"] == "DELETED":
                return

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    started.wait(5)
    custom.create_namespaced_custom_object(*args(), http_route())
    custom.patch_namespaced_custom_object(*args(), "reviews", {"spec": {"rules": [
        {"name": "primary", "backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 80},
                                            {"name": "reviews-v2", "port": 9080,
                                             "weight": 20}]}]}})
    custom.delete_namespaced_custom_object(*args(), "reviews")
    watcher.join(15)
    assert events == [("ADDED", "reviews", 0), ("MODIFIED", "reviews", 20),
                      ("DELETED", "reviews", 20)]


def test_grpcroutes_and_gateways_are_served_too(custom):
    stored = custom.create_namespaced_custom_object(*args("grpcroutes"), grpc_route())
    assert stored["spec"]["rules"][0]["backendRefs"][0]["weight"] == 1
    assert stored["spec"]["rules"][0]["matches"][0]["method"]["type"] == "Exact"
    edge = custom.create_namespaced_custom_object(*args("gateways"), gateway())
    assert edge["kind"] == "Gateway"
    assert [g["metadata"]["name"] for g in custom.list_namespaced_custom_object(
        *args("gateways", "v1beta1"))["items"]] == ["edge"]
    with pytest.raises(client.ApiException) as refused:
        custom.create_namespaced_custom_object(*args("gateways"), {
            **gateway("bare"), "spec": {"listeners": []}})
    assert refused.value.status == 422
    fields = {c["field"] for c in status_of(refused.value)["details"]["causes"]}
    assert fields == {"spec.gatewayClassName", "spec.listeners"}


# ---------------------------------------------------------------- admission


def _mirror(**settings) -> dict:
    return {"type": "RequestMirror", "requestMirror": {
        "backendRef": {"name": "reviews-v2", "port": 9080}, **settings}}


def _set(path: tuple, value):
    def change(body: dict) -> None:
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _rules(count: int):
    return _set(("spec", "rules"), [{"backendRefs": [{"name": "reviews-v1", "port": 9080}]}
                                    for _ in range(count)])


def _filters(*filters):
    return _set(("spec", "rules", 0, "filters"), list(filters))


INVALID = {
    "weight above 1000000": (
        _set(("spec", "rules", 0, "backendRefs", 1, "weight"), 1_000_001),
        "spec.rules[0].backendRefs[1].weight", "FieldValueInvalid",
        "should be less than or equal to 1000000"),
    "negative weight": (
        _set(("spec", "rules", 0, "backendRefs", 0, "weight"), -1),
        "spec.rules[0].backendRefs[0].weight", "FieldValueInvalid",
        "should be greater than or equal to 0"),
    "weight not a number": (
        _set(("spec", "rules", 0, "backendRefs", 0, "weight"), "ten"),
        "spec.rules[0].backendRefs[0].weight", "FieldValueTypeInvalid",
        "must be of type integer"),
    "Service backend without a port": (
        lambda body: body["spec"]["rules"][0]["backendRefs"][0].pop("port"),
        "spec.rules[0].backendRefs[0]", "FieldValueInvalid",
        "Must have port for Service reference"),
    "backend without a name": (
        lambda body: body["spec"]["rules"][0]["backendRefs"][0].pop("name"),
        "spec.rules[0].backendRefs[0].name", "FieldValueRequired", "Required value"),
    "33 parentRefs": (
        _set(("spec", "parentRefs"), [{"group": "", "kind": "Service", "name": f"s{i}"}
                                      for i in range(33)]),
        "spec.parentRefs", "FieldValueTooMany", "must have at most 32 items"),
    "17 rules": (_rules(17), "spec.rules", "FieldValueTooMany", "must have at most 16 items"),
    "no rules": (_rules(0), "spec.rules", "FieldValueInvalid", "should have at least 1 items"),
    "65 matches in a rule": (
        _set(("spec", "rules", 0, "matches"), [{"path": {"type": "Exact", "value": f"/{i}"}}
                                               for i in range(65)]),
        "spec.rules[0].matches", "FieldValueTooMany", "must have at most 64 items"),
    "request timeout not a Duration": (
        _set(("spec", "rules", 0, "timeouts"), {"request": "1.5s"}),
        "spec.rules[0].timeouts.request", "FieldValueInvalid", "in body should match"),
    "backendRequest timeout not a Duration": (
        _set(("spec", "rules", 0, "timeouts"), {"backendRequest": "10 s"}),
        "spec.rules[0].timeouts.backendRequest", "FieldValueInvalid", "in body should match"),
    "backendRequest longer than request": (
        _set(("spec", "rules", 0, "timeouts"), {"request": "1s", "backendRequest": "2s"}),
        "spec.rules[0].timeouts", "FieldValueInvalid",
        "backendRequest timeout cannot be longer than request timeout"),
    "mirror percent above 100": (
        _filters(_mirror(percent=101)), "spec.rules[0].filters[0].requestMirror.percent",
        "FieldValueInvalid", "should be less than or equal to 100"),
    "mirror percent below 0": (
        _filters(_mirror(percent=-1)), "spec.rules[0].filters[0].requestMirror.percent",
        "FieldValueInvalid", "should be greater than or equal to 0"),
    "mirror fraction with denominator 0": (
        _filters(_mirror(fraction={"numerator": 0, "denominator": 0})),
        "spec.rules[0].filters[0].requestMirror.fraction.denominator", "FieldValueInvalid",
        "should be greater than or equal to 1"),
    "mirror fraction above 1": (
        _filters(_mirror(fraction={"numerator": 3, "denominator": 2})),
        "spec.rules[0].filters[0].requestMirror.fraction", "FieldValueInvalid",
        "numerator must be less than or equal to denominator"),
    "mirror with percent and fraction": (
        _filters(_mirror(percent=10, fraction={"numerator": 1, "denominator": 10})),
        "spec.rules[0].filters[0].requestMirror", "FieldValueInvalid",
        "Only one of percent or fraction may be specified"),
    "mirror to a Service without a port": (
        _filters({"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "x"}}}),
        "spec.rules[0].filters[0].requestMirror.backendRef", "FieldValueInvalid",
        "Must have port for Service reference"),
    "unknown filter type": (
        _filters({"type": "Teleport"}), "spec.rules[0].filters[0].type",
        "FieldValueNotSupported", 'Unsupported value: "Teleport"'),
    "filter type without its field": (
        _filters({"type": "RequestHeaderModifier"}), "spec.rules[0].filters[0]",
        "FieldValueInvalid", "filter.requestHeaderModifier must be specified"),
    "unknown path match type": (
        _set(("spec", "rules", 0, "matches"), [{"path": {"type": "Glob", "value": "/a*"}}]),
        "spec.rules[0].matches[0].path.type", "FieldValueNotSupported",
        'Unsupported value: "Glob"'),
    "relative path prefix": (
        _set(("spec", "rules", 0, "matches"), [{"path": {"type": "PathPrefix",
                                                         "value": "api"}}]),
        "spec.rules[0].matches[0].path", "FieldValueInvalid",
        "value must be an absolute path"),
    "no spec": (lambda body: body.pop("spec"), "spec", "FieldValueRequired", "Required value"),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_admission_refuses_what_the_crd_refuses_naming_the_field(refusing, case):
    change, field, reason, text = INVALID[case]
    body = http_route(weights=(90, 10))
    change(body)
    with pytest.raises(client.ApiException) as refused:
        refusing.create_namespaced_custom_object(*args(), body)
    assert refused.value.status == 422
    status = status_of(refused.value)
    assert status["reason"] == "Invalid"
    assert status["details"]["kind"] == "HTTPRoute" and status["details"]["group"] == GROUP
    causes = status["details"]["causes"]
    assert [(c["field"], c["reason"]) for c in causes] == [(field, reason)], causes
    assert text in causes[0]["message"]
    assert status["message"].startswith(f'HTTPRoute.{GROUP} "reviews" is invalid: {field}: ')
    assert refusing.list_namespaced_custom_object(*args())["items"] == []


def test_admission_guards_patches_and_leaves_the_route_as_it_was(custom):
    stored = custom.create_namespaced_custom_object(*args(), http_route())
    with pytest.raises(client.ApiException) as refused:
        custom.patch_namespaced_custom_object(*args(), "reviews", {"spec": {"rules": [
            {"backendRefs": [{"name": "reviews-v2", "port": 9080, "weight": 2_000_000}]}]}})
    assert refused.value.status == 422
    assert custom.get_namespaced_custom_object(*args(), "reviews") == stored


def test_grpcroute_admission_checks_weights_and_mirrors(custom):
    body = grpc_route()
    body["spec"]["rules"][0]["backendRefs"][0]["weight"] = 1_000_001
    body["spec"]["rules"][0]["filters"] = [_mirror(percent=150)]
    with pytest.raises(client.ApiException) as refused:
        custom.create_namespaced_custom_object(*args("grpcroutes"), body)
    assert {c["field"] for c in status_of(refused.value)["details"]["causes"]} == {
        "spec.rules[0].backendRefs[0].weight",
        "spec.rules[0].filters[0].requestMirror.percent"}


def test_canarykit_validator_runs_as_a_webhook_on_gateway_kinds(tmp_path, monkeypatch):
    """Besides the schema, the server asks `validate.validate_object`, as for Istio objects."""
    seen = []

    def validator(obj):
        seen.append(obj["kind"])
        weight = obj["spec"]["rules"][0]["backendRefs"][1]["weight"]
        if weight == 13:
            return [validate.Message("Error", "CK9999", obj["kind"], "default", "reviews",
                                     "spec.rules[0].backendRefs[1].weight: unlucky")]
        return [validate.Message("Warning", "CK9998", obj["kind"], "default", "reviews",
                                 "looks fine")]

    monkeypatch.setattr(validate, "validate_object", validator)
    server, thread = server_module.start_server(tmp_path / "data")
    try:
        api = client.ApiClient(client.Configuration())
        api.configuration.host = server.url
        api.configuration.api_key = {"authorization": f"Bearer {server.token}"}
        with api:
            custom = client.CustomObjectsApi(api)
            with pytest.raises(client.ApiException) as refused:
                custom.create_namespaced_custom_object(*args(), http_route(weights=(87, 13)))
            cause = status_of(refused.value)["details"]["causes"][0]
            assert cause["field"] == "spec.rules[0].backendRefs[1].weight"
            assert cause["reason"] == "CK9999"
            custom.create_namespaced_custom_object(*args(), http_route())
    finally:
        server.stop()
        thread.join(5)
    assert seen == ["HTTPRoute", "HTTPRoute"]


# ---------------------------------------------------------------- RBAC


def test_a_service_account_may_change_httproutes_only_once_a_role_grants_it(api, apiserver,  # noqa: F811
                                                                            custom):
    custom.create_namespaced_custom_object(*args(), http_route())
    istio_only = [{"apiGroups": ["networking.istio.io"], "resources": ["*"], "verbs": ["*"]}]
    as_account, _ = service_account_client(api, apiserver, "rollouts", istio_only)
    with as_account:
        mine = client.CustomObjectsApi(as_account)
        with pytest.raises(client.ApiException) as denied:
            mine.get_namespaced_custom_object(*args(), "reviews")
        assert denied.value.status == 403
        assert status_of(denied.value)["message"] == (
            f'httproutes.{GROUP} "reviews" is forbidden: User '
            '"system:serviceaccount:default:rollouts" cannot get resource "httproutes" in API '
            f'group "{GROUP}" in the namespace "default"')

        client.RbacAuthorizationV1Api(api).patch_namespaced_role("rollouts", "default", {
            "rules": istio_only + [{"apiGroups": [GROUP], "resources": ["httproutes"],
                                    "verbs": ["get", "list", "watch", "patch"]}]})
        assert mine.get_namespaced_custom_object(*args(), "reviews")["metadata"]["name"] == \
            "reviews"
        patched = mine.patch_namespaced_custom_object(*args(), "reviews", {
            "metadata": {"labels": {"canary": "yes"}}})
        assert patched["metadata"]["labels"] == {"canary": "yes"}
        with pytest.raises(client.ApiException) as no_delete:
            mine.delete_namespaced_custom_object(*args(), "reviews")
        assert no_delete.value.status == 403
        with pytest.raises(client.ApiException) as other_kind:
            mine.list_namespaced_custom_object(*args("grpcroutes"))
        assert other_kind.value.status == 403
