"""The local API server, specified through the official `kubernetes` client as production uses it.

Raw HTTP appears only for what the client cannot send (bad JSON, a missing token).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client, config, watch

from canarykit.lab import apiserver as server_module
from tests.apiserver_fixture import (
    ApiServerProcess,
    apiserver,  # noqa: F401 (the fixture)
    kube_client,
    seed,
    start_apiserver,
    stop_apiserver_process,
)

ISTIO = "networking.istio.io"
VERSIONS = ["v1", "v1beta1", "v1alpha3"]


def virtual_service(name: str = "reviews", version: str = "v1", weights=(100,),
                    namespace: str = "default", labels: dict | None = None) -> dict:
    routes = [{"destination": {"host": "reviews", "subset": f"v{i + 1}"}, "weight": w}
              for i, w in enumerate(weights)]
    metadata = {"name": name, "namespace": namespace, **({"labels": labels} if labels else {})}
    return {"apiVersion": f"{ISTIO}/{version}", "kind": "VirtualService", "metadata": metadata,
            "spec": {"hosts": ["reviews"], "http": [{"route": routes}]}}


def destination_rule(name: str = "reviews", version: str = "v1") -> dict:
    return {"apiVersion": f"{ISTIO}/{version}", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                    {"name": "v2", "labels": {"version": "v2"}}]}}


def deployment(name: str = "web", template_app: str = "web") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": template_app}},
                                  "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}}


def service(name: str = "reviews") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]}}


@pytest.fixture
def api(apiserver):  # noqa: F811
    with kube_client(apiserver) as api_client:
        yield api_client


@pytest.fixture
def custom(api) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def vs_args(version: str = "v1", namespace: str = "default"):
    return ISTIO, version, namespace, "virtualservices"


def status_of(err: client.ApiException) -> dict:
    return json.loads(err.body)


def raw(server: ApiServerProcess, method: str, path: str, body: bytes | None = None,
        token: str | None = "use-server-token", content_type: str = "application/json"):
    """(status, parsed body) for requests the official client cannot express."""
    request = urllib.request.Request(server.url + path, data=body, method=method)
    request.add_header("Content-Type", content_type)
    if token is not None:
        request.add_header("Authorization",
                           f"Bearer {server.token if token == 'use-server-token' else token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# ---------------------------------------------------------------- discovery


def test_api_group_list_offers_istio_with_v1_preferred(api):
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert {"networking.istio.io", "apps", "coordination.k8s.io",
            "authentication.k8s.io"} <= set(groups)
    istio = groups[ISTIO]
    assert [v.version for v in istio.versions] == VERSIONS
    assert istio.preferred_version.group_version == "networking.istio.io/v1"


@pytest.mark.parametrize("version", VERSIONS)
def test_istio_resource_list_names_both_kinds_with_short_names(custom, version):
    listing = custom.get_api_resources(ISTIO, version)
    assert listing.group_version == f"{ISTIO}/{version}"
    by_name = {r.name: r for r in listing.resources}
    assert by_name["virtualservices"].kind == "VirtualService"
    assert by_name["virtualservices"].short_names == ["vs"]
    assert by_name["virtualservices"].singular_name == "virtualservice"
    assert by_name["virtualservices"].namespaced is True
    assert by_name["destinationrules"].short_names == ["dr"]
    assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= set(
        by_name["destinationrules"].verbs)


def test_core_apps_and_coordination_resources_are_discoverable(api):
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    core = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    assert core["services"].namespaced and not core["namespaces"].namespaced
    apps = {r.name for r in client.AppsV1Api(api).get_api_resources().resources}
    assert apps == {"deployments"}
    leases = {r.name for r in client.CoordinationV1Api(api).get_api_resources().resources}
    assert leases == {"leases"}
    assert client.VersionApi(api).get_code().major == "1"


def test_health_and_version_answer_without_a_token(apiserver):  # noqa: F811
    assert raw(apiserver, "GET", "/healthz", token=None) == (200, b"ok")
    assert raw(apiserver, "GET", "/readyz", token=None) == (200, b"ok")
    code, body = raw(apiserver, "GET", "/version", token=None)
    assert code == 200 and json.loads(body)["gitVersion"].startswith("v1.")


def test_kubeconfig_names_cluster_user_and_current_context(apiserver):  # noqa: F811
    written = yaml.safe_load(apiserver.kubeconfig.read_text())
    assert written["current-context"] == "canarykit-lab"
    assert written["clusters"][0] == {"name": "canarykit-lab",
                                      "cluster": {"server": apiserver.url}}
    assert written["users"][0]["name"] == "canarykit-admin"
    assert written["contexts"][0]["context"] == {"cluster": "canarykit-lab",
                                                 "user": "canarykit-admin", "namespace": "default"}
    assert apiserver.url.startswith("http://127.0.0.1:")


# ---------------------------------------------------------------- CRUD


@pytest.mark.parametrize("version", VERSIONS)
def test_virtualservice_crud_in_each_version(custom, version):
    created = custom.create_namespaced_custom_object(*vs_args(version), virtual_service(
        version=version))
    assert created["apiVersion"] == f"{ISTIO}/{version}"
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["generation"] == 1 and meta["uid"]
    assert meta["creationTimestamp"].endswith("Z")

    got = custom.get_namespaced_custom_object(*vs_args(version), "reviews")
    assert got == created
    listed = custom.list_namespaced_custom_object(*vs_args(version))
    assert listed["kind"] == "VirtualServiceList"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["reviews"]

    got["spec"]["http"][0]["route"][0]["weight"] = 100
    got["spec"]["hosts"] = ["reviews", "reviews.default.svc.cluster.local"]
    replaced = custom.replace_namespaced_custom_object(*vs_args(version), "reviews", got)
    assert replaced["spec"]["hosts"][1] == "reviews.default.svc.cluster.local"

    deleted = custom.delete_namespaced_custom_object(*vs_args(version), "reviews")
    assert deleted["metadata"]["name"] == "reviews"
    with pytest.raises(client.ApiException) as err:
        custom.get_namespaced_custom_object(*vs_args(version), "reviews")
    assert err.value.status == 404


@pytest.mark.parametrize("version", VERSIONS)
def test_destinationrule_crud_in_each_version(custom, version):
    args = (ISTIO, version, "default", "destinationrules")
    created = custom.create_namespaced_custom_object(*args, destination_rule(version=version))
    assert created["kind"] == "DestinationRule"
    created["spec"]["subsets"].append({"name": "v3", "labels": {"version": "v3"}})
    replaced = custom.replace_namespaced_custom_object(*args, "reviews", created)
    assert [s["name"] for s in replaced["spec"]["subsets"]] == ["v1", "v2", "v3"]
    assert custom.get_namespaced_custom_object(*args, "reviews") == replaced
    custom.delete_namespaced_custom_object(*args, "reviews")
    assert custom.list_namespaced_custom_object(*args)["items"] == []


def test_one_istio_object_is_served_under_every_version(custom):
    custom.create_namespaced_custom_object(*vs_args("v1alpha3"), virtual_service(
        version="v1alpha3"))
    seen = [custom.get_namespaced_custom_object(*vs_args(v), "reviews") for v in VERSIONS]
    assert [o["apiVersion"] for o in seen] == [f"{ISTIO}/{v}" for v in VERSIONS]
    assert len({o["metadata"]["uid"] for o in seen}) == 1
    assert len({o["metadata"]["resourceVersion"] for o in seen}) == 1


def test_deployment_crud_through_apps_v1(api):
    apps = client.AppsV1Api(api)
    created = apps.create_namespaced_deployment("default", deployment())
    assert created.metadata.generation == 1 and created.spec.replicas == 1
    read = apps.read_namespaced_deployment("web", "default")
    read.spec.replicas = 3
    replaced = apps.replace_namespaced_deployment("web", "default", read)
    assert replaced.spec.replicas == 3 and replaced.metadata.generation == 2
    patched = apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 5}})
    assert patched.spec.replicas == 5
    assert [d.metadata.name for d in apps.list_namespaced_deployment("default").items] == ["web"]
    apps.delete_namespaced_deployment("web", "default")
    assert apps.list_namespaced_deployment("default").items == []


def test_service_crud_through_core_v1(api):
    core = client.CoreV1Api(api)
    created = core.create_namespaced_service("default", service())
    assert created.spec.ports[0].port == 9080 and created.spec.type == "ClusterIP"
    created.metadata.labels = {"app": "reviews"}
    replaced = core.replace_namespaced_service("reviews", "default", created)
    assert replaced.metadata.labels == {"app": "reviews"}
    assert core.read_namespaced_service("reviews", "default").metadata.labels == {
        "app": "reviews"}
    core.delete_namespaced_service("reviews", "default")
    assert core.list_namespaced_service("default").items == []


def test_lease_can_be_taken_and_renewed_for_leader_election(api):
    coordination = client.CoordinationV1Api(api)
    lease = client.V1Lease(metadata=client.V1ObjectMeta(name="canarykit"),
                           spec=client.V1LeaseSpec(holder_identity="a",
                                                   lease_duration_seconds=15))
    created = coordination.create_namespaced_lease("default", lease)
    created.spec.holder_identity = "b"
    renewed = coordination.replace_namespaced_lease("canarykit", "default", created)
    assert renewed.spec.holder_identity == "b"
    created.spec.holder_identity = "c"  # still carries the old resourceVersion
    with pytest.raises(client.ApiException) as err:
        coordination.replace_namespaced_lease("canarykit", "default", created)
    assert err.value.status == 409


def test_generate_name_gets_a_random_suffix(custom):
    body = virtual_service()
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "reviews-"
    created = custom.create_namespaced_custom_object(*vs_args(), body)
    name = created["metadata"]["name"]
    assert name.startswith("reviews-") and len(name) == len("reviews-") + 5


# ---------------------------------------------------------------- metadata


def test_resource_version_grows_with_every_change_across_kinds(api, custom):
    first = custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    second = custom.create_namespaced_custom_object(
        ISTIO, "v1", "default", "destinationrules", destination_rule())
    third = custom.patch_namespaced_custom_object(
        *vs_args(), "reviews", {"metadata": {"labels": {"team": "a"}}})
    versions = [int(o["metadata"]["resourceVersion"]) for o in (first, second, third)]
    assert versions == sorted(versions) and len(set(versions)) == 3
    listed = custom.list_namespaced_custom_object(*vs_args())
    assert int(listed["metadata"]["resourceVersion"]) >= versions[-1]


def test_generation_follows_spec_changes_not_metadata_changes(custom):
    created = custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    labelled = custom.patch_namespaced_custom_object(
        *vs_args(), "reviews", {"metadata": {"annotations": {"note": "x"}}})
    assert labelled["metadata"]["generation"] == 1
    assert labelled["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    shifted = custom.patch_namespaced_custom_object(
        *vs_args(), "reviews", {"spec": {"hosts": ["reviews", "ratings"]}})
    assert shifted["metadata"]["generation"] == 2
    assert shifted["metadata"]["uid"] == created["metadata"]["uid"]
    assert shifted["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]


def test_an_update_that_changes_nothing_keeps_the_resource_version(custom):
    created = custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    same = custom.replace_namespaced_custom_object(*vs_args(), "reviews", created)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


# ---------------------------------------------------------------- errors


def test_stale_resource_version_is_refused_with_conflict(custom):
    created = custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    fresh = dict(created, spec={**created["spec"], "hosts": ["a"]})
    custom.replace_namespaced_custom_object(*vs_args(), "reviews", fresh)
    created["spec"]["hosts"] = ["b"]
    with pytest.raises(client.ApiException) as err:
        custom.replace_namespaced_custom_object(*vs_args(), "reviews", created)
    assert err.value.status == 409
    status = status_of(err.value)
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        'Operation cannot be fulfilled on virtualservices.networking.istio.io "reviews": the '
        "object has been modified; please apply your changes to the latest version and try "
        "again")
    assert custom.get_namespaced_custom_object(*vs_args(), "reviews")["spec"]["hosts"] == ["a"]


def test_merge_patch_carrying_a_stale_resource_version_is_refused(custom):
    created = custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    custom.patch_namespaced_custom_object(*vs_args(), "reviews", {"spec": {"hosts": ["a"]}})
    with pytest.raises(client.ApiException) as err:
        custom.patch_namespaced_custom_object(*vs_args(), "reviews", {
            "metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
            "spec": {"hosts": ["b"]}})
    assert err.value.status == 409


def test_put_without_resource_version_is_an_unconditional_update(custom):
    custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    custom.patch_namespaced_custom_object(*vs_args(), "reviews", {"spec": {"hosts": ["a"]}})
    replaced = custom.replace_namespaced_custom_object(*vs_args(), "reviews", virtual_service())
    assert replaced["spec"]["hosts"] == ["reviews"]


def test_creating_an_existing_name_is_already_exists(custom):
    custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    assert err.value.status == 409
    status = status_of(err.value)
    assert status["reason"] == "AlreadyExists"
    assert status["message"] == 'virtualservices.networking.istio.io "reviews" already exists'


def test_missing_object_is_not_found_with_details(custom):
    with pytest.raises(client.ApiException) as err:
        custom.get_namespaced_custom_object(*vs_args(), "reviews")
    assert err.value.status == 404
    status = status_of(err.value)
    assert status["reason"] == "NotFound"
    assert status["message"] == 'virtualservices.networking.istio.io "reviews" not found'
    assert status["details"] == {"name": "reviews", "group": ISTIO, "kind": "virtualservices"}


def test_invalid_name_is_422_naming_the_field(custom):
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(*vs_args(), virtual_service(name="Reviews_V2"))
    assert err.value.status == 422
    status = status_of(err.value)
    assert status["reason"] == "Invalid"
    assert [c["field"] for c in status["details"]["causes"]] == ["metadata.name"]
    assert "Reviews_V2" in status["message"]


def test_deployment_whose_selector_misses_the_template_labels_is_invalid(api):
    with pytest.raises(client.ApiException) as err:
        client.AppsV1Api(api).create_namespaced_deployment(
            "default", deployment(template_app="other"))
    assert err.value.status == 422
    causes = status_of(err.value)["details"]["causes"]
    assert causes[0]["field"] == "spec.template.metadata.labels"


def test_body_that_disagrees_with_the_url_is_a_bad_request(custom):
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(*vs_args("v1"), virtual_service(version="v1beta1"))
    assert err.value.status == 400 and "API version" in status_of(err.value)["message"]
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(*vs_args(), virtual_service(namespace="other"))
    assert err.value.status == 400 and "namespace" in status_of(err.value)["message"]
    body = virtual_service()
    body["kind"] = "DestinationRule"
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(*vs_args(), body)
    assert err.value.status == 400 and "kind" in status_of(err.value)["message"]
    assert custom.list_namespaced_custom_object(*vs_args())["items"] == []


def test_bad_json_is_a_bad_request(apiserver):  # noqa: F811
    code, body = raw(apiserver, "POST",
                     "/apis/networking.istio.io/v1/namespaces/default/virtualservices",
                     b"{not json")
    assert code == 400 and json.loads(body)["reason"] == "BadRequest"


def test_wrong_or_missing_token_is_unauthorized(apiserver):  # noqa: F811
    configuration = client.Configuration()
    configuration.host = apiserver.url
    configuration.api_key = {"BearerToken": "not-the-token"}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with client.ApiClient(configuration) as wrong, pytest.raises(client.ApiException) as err:
        client.CustomObjectsApi(wrong).list_namespaced_custom_object(*vs_args())
    assert err.value.status == 401
    assert status_of(err.value)["reason"] == "Unauthorized"
    code, body = raw(apiserver, "GET", "/apis", token=None)
    assert code == 401 and json.loads(body)["reason"] == "Unauthorized"


def test_namespaced_objects_need_an_existing_namespace(api, custom):
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(*vs_args(namespace="bookinfo"),
                                               virtual_service(namespace="bookinfo"))
    assert err.value.status == 404
    assert status_of(err.value)["message"] == 'namespaces "bookinfo" not found'
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="bookinfo")))
    assert {n.metadata.name for n in core.list_namespace().items} == {"default", "bookinfo"}
    custom.create_namespaced_custom_object(*vs_args(namespace="bookinfo"),
                                           virtual_service(namespace="bookinfo"))


# ---------------------------------------------------------------- patches


def test_merge_patch_changes_only_the_fields_it_names(custom):
    custom.create_namespaced_custom_object(*vs_args(), virtual_service(labels={"app": "r"}))
    patched = custom.patch_namespaced_custom_object(
        *vs_args(), "reviews", {"metadata": {"labels": {"team": "t", "app": None}},
                                "spec": {"gateways": ["mesh"]}})
    assert patched["metadata"]["labels"] == {"team": "t"}
    assert patched["spec"]["gateways"] == ["mesh"]
    assert patched["spec"]["hosts"] == ["reviews"]


def test_json_patch_with_a_passing_test_applies(custom):
    created = custom.create_namespaced_custom_object(*vs_args(), virtual_service(
        weights=(100, 0)))
    patch = [{"op": "test", "path": "/metadata/resourceVersion",
              "value": created["metadata"]["resourceVersion"]},
             {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 90},
             {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 10}]
    patched = custom.patch_namespaced_custom_object(
        *vs_args(), "reviews", patch, _content_type="application/json-patch+json")
    assert [r["weight"] for r in patched["spec"]["http"][0]["route"]] == [90, 10]
    assert patched["metadata"]["generation"] == 2


def test_json_patch_with_a_failing_test_is_422_and_changes_nothing(custom):
    created = custom.create_namespaced_custom_object(*vs_args(), virtual_service(
        weights=(100, 0)))
    patch = [{"op": "test", "path": "/spec/http/0/route/0/weight", "value": 50},
             {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 0}]
    with pytest.raises(client.ApiException) as err:
        custom.patch_namespaced_custom_object(*vs_args(), "reviews", patch,
                                              _content_type="application/json-patch+json")
    assert err.value.status == 422
    assert status_of(err.value)["reason"] == "Invalid"
    assert custom.get_namespaced_custom_object(*vs_args(), "reviews") == created


def test_strategic_merge_patch_works_on_deployments_but_not_on_istio_objects(api, custom):
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment("default", deployment())
    patched = apps.patch_namespaced_deployment(
        "web", "default", {"metadata": {"labels": {"track": "canary"}}},
        _content_type="application/strategic-merge-patch+json")
    assert patched.metadata.labels == {"track": "canary"}
    custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    with pytest.raises(client.ApiException) as err:
        custom.patch_namespaced_custom_object(
            *vs_args(), "reviews", {"spec": {"hosts": ["x"]}},
            _content_type="application/strategic-merge-patch+json")
    assert err.value.status == 415


# ---------------------------------------------------------------- dry run


def test_dry_run_all_checks_everything_and_persists_nothing(custom):
    dry = custom.create_namespaced_custom_object(*vs_args(), virtual_service(), dry_run="All")
    assert dry["metadata"]["name"] == "reviews"
    assert custom.list_namespaced_custom_object(*vs_args())["items"] == []

    created = custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    rv = created["metadata"]["resourceVersion"]
    changed = dict(created, spec={**created["spec"], "hosts": ["dry"]})
    assert custom.replace_namespaced_custom_object(
        *vs_args(), "reviews", changed, dry_run="All")["spec"]["hosts"] == ["dry"]
    assert custom.patch_namespaced_custom_object(
        *vs_args(), "reviews", {"spec": {"hosts": ["dry"]}}, dry_run="All"
    )["metadata"]["generation"] == 2
    custom.delete_namespaced_custom_object(*vs_args(), "reviews", dry_run="All")

    assert custom.get_namespaced_custom_object(*vs_args(), "reviews") == created
    listed = custom.list_namespaced_custom_object(*vs_args())
    assert listed["metadata"]["resourceVersion"] == rv

    stale = dict(created, metadata={**created["metadata"], "resourceVersion": "1"})
    with pytest.raises(client.ApiException) as err:
        custom.replace_namespaced_custom_object(*vs_args(), "reviews", stale, dry_run="All")
    assert err.value.status == 409


def test_dry_run_other_than_all_is_a_bad_request(custom):
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(*vs_args(), virtual_service(), dry_run="Some")
    assert err.value.status == 400
    assert custom.list_namespaced_custom_object(*vs_args())["items"] == []


# ---------------------------------------------------------------- admission


def test_admission_refuses_a_negative_weight_and_stores_nothing(custom):
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(*vs_args(), virtual_service(weights=(-5,)))
    assert err.value.status == 422
    status = status_of(err.value)
    assert status["reason"] == "Invalid"
    assert "spec.http[0].route[0].weight" in status["message"]
    assert "spec.http[0].route[0].weight" in [c.get("field") for c in status["details"]["causes"]]
    assert custom.list_namespaced_custom_object(*vs_args())["items"] == []


def test_admission_also_guards_patches(custom):
    created = custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    with pytest.raises(client.ApiException) as err:
        custom.patch_namespaced_custom_object(
            *vs_args(), "reviews", [{"op": "replace", "path": "/spec/http/0/route/0/weight",
                                     "value": -5}],
            _content_type="application/json-patch+json")
    assert err.value.status == 422
    assert custom.get_namespaced_custom_object(*vs_args(), "reviews") == created


def test_admission_warnings_come_back_as_warning_headers(custom):
    _, code, headers = custom.create_namespaced_custom_object_with_http_info(
        *vs_args(), virtual_service(weights=(60, 30)))
    assert code == 201
    warning = headers.get("Warning", "")
    assert warning.startswith('299 - "') and "sum to 90" in warning


# ---------------------------------------------------------------- selectors and listing


def test_label_and_field_selectors_filter_lists(custom):
    custom.create_namespaced_custom_object(*vs_args(), virtual_service("a", labels={"app": "x"}))
    custom.create_namespaced_custom_object(*vs_args(), virtual_service("b", labels={"app": "y"}))
    custom.create_namespaced_custom_object(*vs_args(), virtual_service("c"))

    def names(**kwargs):
        listed = custom.list_namespaced_custom_object(*vs_args(), **kwargs)
        return [o["metadata"]["name"] for o in listed["items"]]

    assert names(label_selector="app=x") == ["a"]
    assert names(label_selector="app!=x") == ["b", "c"]
    assert names(label_selector="app in (x,y)") == ["a", "b"]
    assert names(label_selector="!app") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    with pytest.raises(client.ApiException) as err:
        names(field_selector="spec.hosts=x")
    assert err.value.status == 400


def test_cluster_wide_list_spans_namespaces(apiserver, custom):  # noqa: F811
    seed(apiserver, virtual_service(namespace="bookinfo"), virtual_service())
    listed = custom.list_cluster_custom_object(ISTIO, "v1beta1", "virtualservices")
    assert sorted(o["metadata"]["namespace"] for o in listed["items"]) == ["bookinfo", "default"]
    assert {o["apiVersion"] for o in listed["items"]} == {f"{ISTIO}/v1beta1"}


def test_seed_creates_objects_of_every_kind_through_the_client(apiserver, api):  # noqa: F811
    created = seed(apiserver, virtual_service(), destination_rule(), deployment(), service())
    assert [o["kind"] for o in created] == ["VirtualService", "DestinationRule", "Deployment",
                                            "Service"]
    assert client.CoreV1Api(api).read_namespaced_service("reviews", "default").spec.ports


# ---------------------------------------------------------------- watch


def test_watch_streams_added_modified_and_deleted(custom):
    custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    seen = []
    stream = watch.Watch()
    for event in stream.stream(custom.list_namespaced_custom_object, *vs_args("v1beta1"),
                               timeout_seconds=20):
        obj = event["object"]
        seen.append((event["type"], obj["metadata"]["name"], obj["apiVersion"]))
        if len(seen) == 1:  # the stream is live: change the object now
            custom.patch_namespaced_custom_object(*vs_args(), "reviews",
                                                  {"spec": {"hosts": ["x"]}})
            custom.delete_namespaced_custom_object(*vs_args(), "reviews")
        if event["type"] == "DELETED":
            stream.stop()
    version = f"{ISTIO}/v1beta1"
    assert seen == [("ADDED", "reviews", version), ("MODIFIED", "reviews", version),
                    ("DELETED", "reviews", version)]


def test_watch_from_a_resource_version_replays_only_later_changes(custom):
    custom.create_namespaced_custom_object(*vs_args(), virtual_service("old"))
    start = custom.list_namespaced_custom_object(*vs_args())["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(*vs_args(), virtual_service("new"))
    custom.create_namespaced_custom_object(ISTIO, "v1", "default", "destinationrules",
                                           destination_rule())
    events = [(e["type"], e["object"]["metadata"]["name"]) for e in watch.Watch().stream(
        custom.list_namespaced_custom_object, *vs_args(), resource_version=start,
        timeout_seconds=1)]
    assert events == [("ADDED", "new")]


def test_watch_with_a_label_selector_sees_objects_enter_and_leave_it(custom):
    start = custom.list_namespaced_custom_object(*vs_args())["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(*vs_args(), virtual_service("a"))
    custom.patch_namespaced_custom_object(*vs_args(), "a", {"metadata": {"labels": {"x": "1"}}})
    custom.patch_namespaced_custom_object(*vs_args(), "a", {"metadata": {"labels": {"x": "2"}}})
    events = [e["type"] for e in watch.Watch().stream(
        custom.list_namespaced_custom_object, *vs_args(), resource_version=start,
        label_selector="x=1", timeout_seconds=1)]
    assert events == ["ADDED", "DELETED"]


def test_watch_ends_when_timeout_seconds_pass(custom):
    events = list(watch.Watch().stream(custom.list_namespaced_custom_object, *vs_args(),
                                       timeout_seconds=1))
    assert events == []


# ---------------------------------------------------------------- concurrency and persistence


def test_racing_puts_with_the_same_resource_version_have_exactly_one_winner(apiserver):  # noqa: F811
    with kube_client(apiserver) as setup:
        base = client.CustomObjectsApi(setup).create_namespaced_custom_object(
            *vs_args(), virtual_service())
    contenders = 8
    barrier = threading.Barrier(contenders)
    outcomes: list[int] = []

    def contend(n: int) -> None:
        with kube_client(apiserver) as own:
            body = dict(base, spec={**base["spec"], "hosts": [f"host-{n}"]})
            barrier.wait()
            try:
                client.CustomObjectsApi(own).replace_namespaced_custom_object(
                    *vs_args(), "reviews", body)
                outcomes.append(200)
            except client.ApiException as err:
                outcomes.append(err.status)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [200] + [409] * (contenders - 1)


def test_objects_and_resource_versions_survive_a_restart(apiserver, tmp_path):  # noqa: F811
    with kube_client(apiserver) as before:
        created = client.CustomObjectsApi(before).create_namespaced_custom_object(
            *vs_args(), virtual_service())
    assert stop_apiserver_process(apiserver.process) == 0

    again = start_apiserver(tmp_path / "again", data_dir=apiserver.data_dir)
    try:
        assert again.token == apiserver.token
        with kube_client(again) as after:
            custom = client.CustomObjectsApi(after)
            assert custom.get_namespaced_custom_object(*vs_args(), "reviews") == created
            patched = custom.patch_namespaced_custom_object(*vs_args(), "reviews",
                                                            {"spec": {"hosts": ["x"]}})
        assert int(patched["metadata"]["resourceVersion"]) > int(
            created["metadata"]["resourceVersion"])
    finally:
        stop_apiserver_process(again.process)


def test_sigterm_shuts_down_cleanly_with_exit_zero(apiserver):  # noqa: F811
    assert stop_apiserver_process(apiserver.process) == 0
    assert "apiserver stopped" in apiserver.log.read_text()


def test_access_log_names_requests_but_never_the_token(apiserver, custom):  # noqa: F811
    custom.list_namespaced_custom_object(*vs_args())
    stop_apiserver_process(apiserver.process)
    log = apiserver.log.read_text()
    assert "GET /apis/networking.istio.io/v1/namespaces/default/virtualservices 200" in log
    assert apiserver.token not in log


# ---------------------------------------------------------------- identity and embedding


def test_self_subject_review_names_the_user(api):
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        client.V1SelfSubjectReview())
    assert review.status.user_info.username == "canarykit-admin"
    assert "system:masters" in review.status.user_info.groups


def test_start_server_embeds_in_process_and_keeps_its_token_across_restarts(tmp_path):
    server, thread = server_module.start_server(tmp_path / "data")
    try:
        server_module.write_kubeconfig(tmp_path / "kubeconfig", server)
        with config.new_client_from_config(config_file=str(tmp_path / "kubeconfig")) as api:
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                *vs_args(), virtual_service())
    finally:
        server.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    again, again_thread = server_module.start_server(tmp_path / "data")
    try:
        assert again.token == server.token
        assert again.store.get(server_module.find_resource(ISTIO, "v1", "virtualservices"),
                               "default", "reviews") is not None
    finally:
        again.stop()


def test_tls_serves_https_that_its_own_kubeconfig_trusts(tmp_path):
    server, _ = server_module.start_server(tmp_path / "data", tls=True)
    try:
        assert server.url.startswith("https://127.0.0.1:")
        server_module.write_kubeconfig(tmp_path / "kubeconfig", server)
        written = yaml.safe_load((tmp_path / "kubeconfig").read_text())
        assert written["clusters"][0]["cluster"]["certificate-authority-data"]
        with config.new_client_from_config(config_file=str(tmp_path / "kubeconfig")) as api:
            review = client.AuthenticationV1Api(api).create_self_subject_review(
                client.V1SelfSubjectReview())
        assert review.status.user_info.username == "canarykit-admin"
    finally:
        server.stop()


# ---------------------------------------------------------------- hostile input

VS_PATH = "/apis/networking.istio.io/v1/namespaces/default/virtualservices"


def head(method: str, path: str, token: str | None, *headers: str) -> bytes:
    """A raw request head, for what no client sends (framing the official client gets right)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1",
             *([f"Authorization: Bearer {token}"] if token else []), *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def exchange(url: str, request: bytes, *, hang_up: bool = False,
             timeout: float = 5.0) -> tuple[int, dict, dict | None]:
    """Send raw bytes, return the answer's status, headers and JSON body. `hang_up` closes our
    sending side afterwards, as a client that gives up does; an answer that needs the rest of
    an announced body never comes, and the read times out."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as sock:
        sock.sendall(request)
        if hang_up:
            sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        return response.status, dict(response.headers), json.loads(data) if data else None


def thread_count(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M)[1])


def eventually(check, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("method,path", [
    ("POST", VS_PATH), ("PUT", VS_PATH + "/reviews"), ("PATCH", VS_PATH + "/reviews"),
    ("DELETE", VS_PATH + "/reviews"), ("GET", VS_PATH + "?watch=true")])
def test_a_request_without_the_token_is_refused_before_its_body_is_read(
        apiserver, method, path):  # noqa: F811
    # The announced megabyte is never sent: only an answer given without reading it arrives.
    status, headers, body = exchange(apiserver.url, head(
        method, path, None, "Content-Type: application/json", "Content-Length: 1000000"))
    assert status == 401 and body["reason"] == "Unauthorized"
    assert headers["Connection"] == "close"


def test_expect_100_continue_comes_only_after_the_token_is_checked(apiserver):  # noqa: F811
    address = urlsplit(apiserver.url)
    body = json.dumps({"metadata": {"name": "invited"}}).encode()
    for token, first_line in ((None, b"HTTP/1.1 401 "), (apiserver.token, b"HTTP/1.1 100 ")):
        with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
            sock.sendall(head("POST", "/api/v1/namespaces", token, "Expect: 100-continue",
                              "Content-Type: application/json", f"Content-Length: {len(body)}"))
            assert sock.recv(200).startswith(first_line)
            if token:
                sock.sendall(body)
                response = http.client.HTTPResponse(sock)
                response.begin()
                assert response.status == 201


def test_a_body_over_the_limit_is_413_in_kubernetes_shape_before_it_is_read(
        apiserver):  # noqa: F811
    limit = server_module.MAX_BODY_BYTES
    assert limit == 3 * 1024 * 1024  # Kubernetes' own request limit
    status, headers, body = exchange(apiserver.url, head(
        "POST", VS_PATH, apiserver.token, "Content-Type: application/json",
        f"Content-Length: {limit + 1}"))
    assert status == 413
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": f"Request entity too large: limit is {limit}",
                    "reason": "RequestEntityTooLarge", "code": 413}
    assert headers["Connection"] == "close"


def test_the_official_client_sending_an_object_over_the_limit_gets_413(custom):
    big = virtual_service()
    big["metadata"]["annotations"] = {"padding": "x" * server_module.MAX_BODY_BYTES}
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(*vs_args(), big)
    assert err.value.status == 413
    assert status_of(err.value)["reason"] == "RequestEntityTooLarge"
    assert custom.list_namespaced_custom_object(*vs_args())["items"] == []


def test_the_body_limit_is_one_setting_that_binds_chunked_bodies_too(tmp_path):
    server = start_apiserver(tmp_path / "small", args=("--max-body-bytes", "1000"))
    try:
        def chunked(*pieces: bytes) -> bytes:
            return b"".join(b"%X\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"

        status, _, body = exchange(server.url, head(
            "POST", VS_PATH, server.token, "Transfer-Encoding: chunked") + chunked(
                b"x" * 600, b"x" * 600))
        assert status == 413 and body["message"] == "Request entity too large: limit is 1000"
        status, _, _ = exchange(server.url, head("POST", VS_PATH, server.token,
                                                 "Content-Length: 1001"))
        assert status == 413
        namespace = json.dumps({"metadata": {"name": "chunked"}}).encode()
        status, _, body = exchange(server.url, head(
            "POST", "/api/v1/namespaces", server.token, "Content-Type: application/json",
            "Transfer-Encoding: chunked") + chunked(namespace[:10], namespace[10:]))
        assert status == 201 and body["metadata"]["name"] == "chunked"
    finally:
        stop_apiserver_process(server.process)


@pytest.mark.parametrize("framing", [
    ["Content-Length: abc"], ["Content-Length: -5"], ["Content-Length: +5"],
    ["Content-Length: 5", "Content-Length: 6"], [],
    ["Transfer-Encoding: chunked", "Content-Length: 2"], ["Transfer-Encoding: gzip"],
    ["Transfer-Encoding: chunked"]],
    ids=["non-numeric", "negative", "signed", "conflicting", "missing", "both framings",
         "unknown coding", "bad chunk size"])
def test_a_body_whose_length_cannot_be_trusted_is_a_bad_request(apiserver, framing):  # noqa: F811
    status, _, body = exchange(apiserver.url, head(
        "POST", "/api/v1/namespaces", apiserver.token, "Content-Type: application/json",
        *framing) + b"{}\r\n")
    assert status == 400 and body["reason"] == "BadRequest"


def test_a_body_cut_short_by_a_hang_up_is_a_bad_request_and_stores_nothing(
        apiserver, api):  # noqa: F811
    whole = json.dumps({"metadata": {"name": "cut"}}).encode()
    status, _, body = exchange(apiserver.url, head(
        "POST", "/api/v1/namespaces", apiserver.token, "Content-Type: application/json",
        f"Content-Length: {len(whole) + 50}") + whole, hang_up=True)
    assert status == 400 and f"ended after {len(whole)} of the" in body["message"]
    assert "cut" not in {n.metadata.name for n in client.CoreV1Api(api).list_namespace().items}


def test_a_client_that_stops_sending_is_dropped_after_the_io_timeout(tmp_path):
    server, thread = server_module.start_server(tmp_path / "data", io_timeout=1)
    try:
        baseline = threading.active_count()
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(head("POST", "/api/v1/namespaces", server.token,
                              "Content-Length: 100") + b'{"meta')
            started = time.monotonic()
            try:
                assert sock.recv(1024) == b""  # the server closed the connection
            except ConnectionResetError:
                pass
            assert time.monotonic() - started < 5
        assert eventually(lambda: threading.active_count() <= baseline)
    finally:
        server.stop()
        thread.join(timeout=10)


def test_abandoned_watches_give_their_threads_back(apiserver):  # noqa: F811
    pid, address = apiserver.process.pid, urlsplit(apiserver.url)
    baseline = thread_count(pid)
    watchers = []
    for _ in range(20):
        sock = socket.create_connection((address.hostname, address.port), timeout=5)
        sock.sendall(head("GET", VS_PATH + "?watch=true", apiserver.token))
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        watchers.append((sock, response))
    assert thread_count(pid) >= baseline + 20
    for sock, response in watchers:  # gone without a word, as a killed client goes
        response.close()
        sock.close()
    assert eventually(lambda: thread_count(pid) <= baseline + 2)


# ---------------------------------------------------------------- durable storage


@contextlib.contextmanager
def embedded(data_dir: Path):
    """An in-process server and an official client for it, for tests that fail its disk."""
    server, thread = server_module.start_server(data_dir)
    kubeconfig = data_dir.parent / f"kubeconfig-{server.server_address[1]}"
    server_module.write_kubeconfig(kubeconfig, server)
    try:
        with config.new_client_from_config(config_file=str(kubeconfig)) as api:
            yield client.CustomObjectsApi(api)
    finally:
        server.stop()
        thread.join(timeout=10)


def everything(api: client.ApiClient) -> dict:
    """Every stored object a client can list, to compare before and after a restart."""
    custom = client.CustomObjectsApi(api)
    listed = {plural: custom.list_cluster_custom_object(ISTIO, "v1", plural)["items"]
              for plural in ("virtualservices", "destinationrules")}
    listed["namespaces"] = api.sanitize_for_serialization(
        client.CoreV1Api(api).list_namespace().items)
    return listed


def test_a_disk_that_fills_up_fails_the_write_with_500_and_serves_nothing_of_it(
        tmp_path):
    # Each file the server writes is capped at 64 KiB: the writes of 8 KiB objects fail soon.
    server = start_apiserver(tmp_path / "full", file_size_limit=64 * 1024)
    acknowledged = []
    try:
        with kube_client(server) as api:
            custom = client.CustomObjectsApi(api)
            for n in range(20):
                body = virtual_service(f"vs-{n}")
                body["metadata"]["annotations"] = {"padding": "x" * 8192}
                try:
                    acknowledged.append(custom.create_namespaced_custom_object(*vs_args(), body))
                except client.ApiException as refused:
                    assert refused.status == 500
                    assert status_of(refused)["reason"] == "InternalError"
                    failed = f"vs-{n}"
                    break
            else:
                pytest.fail("the capped disk never filled up")
            with pytest.raises(client.ApiException) as err:
                custom.get_namespaced_custom_object(*vs_args(), failed)
            assert err.value.status == 404
            listed = custom.list_namespaced_custom_object(*vs_args())
            assert listed["items"] == acknowledged
            before = everything(api)
    finally:
        stop_apiserver_process(server.process)

    again = start_apiserver(tmp_path / "again", data_dir=server.data_dir)
    try:
        with kube_client(again) as api:
            assert everything(api) == before
            created = client.CustomObjectsApi(api).create_namespaced_custom_object(
                *vs_args(), virtual_service(failed))
        newest = max(int(o["metadata"]["resourceVersion"]) for o in acknowledged)
        assert int(created["metadata"]["resourceVersion"]) > newest
    finally:
        stop_apiserver_process(again.process)


@pytest.mark.parametrize("failures", [1, 10], ids=["append fails", "append and its undo fail"])
def test_a_failed_save_changes_nothing_now_or_after_a_restart(tmp_path, monkeypatch, failures):
    data, real_fsync, failing = tmp_path / "data", os.fsync, {"left": 0}

    def fsync(fd: int) -> None:
        if failing["left"] > 0:
            failing["left"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with embedded(data) as custom:
        created = custom.create_namespaced_custom_object(*vs_args(), virtual_service())
        list_rv = custom.list_namespaced_custom_object(*vs_args())["metadata"]["resourceVersion"]
        failing["left"] = failures
        with pytest.raises(client.ApiException) as err:
            custom.patch_namespaced_custom_object(*vs_args(), "reviews",
                                                  {"spec": {"hosts": ["lost"]}})
        assert err.value.status == 500 and status_of(err.value)["reason"] == "InternalError"
        failing["left"] = 0
        assert custom.get_namespaced_custom_object(*vs_args(), "reviews") == created
        listed = custom.list_namespaced_custom_object(*vs_args())
        assert listed["metadata"]["resourceVersion"] == list_rv
        kept = custom.patch_namespaced_custom_object(*vs_args(), "reviews",
                                                     {"spec": {"hosts": ["kept"]}})
        # the failed write's resourceVersion is spent: part of it may have reached the disk
        assert int(kept["metadata"]["resourceVersion"]) > int(list_rv) + 1
    with embedded(data) as custom:
        assert custom.get_namespaced_custom_object(*vs_args(), "reviews") == kept
        later = custom.patch_namespaced_custom_object(*vs_args(), "reviews",
                                                      {"spec": {"hosts": ["later"]}})
        assert int(later["metadata"]["resourceVersion"]) > int(kept["metadata"]["resourceVersion"])


def test_every_acknowledged_change_survives_crashes_and_restarts_with_growing_versions(
        apiserver, tmp_path):  # noqa: F811
    versions: list[int] = []

    def changes(api: client.ApiClient, round_: int) -> None:
        custom = client.CustomObjectsApi(api)
        seed_ns = f"team-{round_}"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": seed_ns}})
        results = [
            custom.create_namespaced_custom_object(*vs_args(namespace=seed_ns),
                                                   virtual_service(namespace=seed_ns)),
            custom.create_namespaced_custom_object(*vs_args(), virtual_service(f"a-{round_}")),
            custom.create_namespaced_custom_object(*vs_args(), virtual_service(f"b-{round_}")),
            custom.create_namespaced_custom_object(ISTIO, "v1", "default", "destinationrules",
                                                   destination_rule(f"dr-{round_}")),
            custom.patch_namespaced_custom_object(*vs_args(), f"a-{round_}",
                                                  {"spec": {"hosts": ["patched"]}}),
            custom.delete_namespaced_custom_object(*vs_args(), f"b-{round_}")]
        rvs = [int(r["metadata"]["resourceVersion"]) for r in results]
        assert rvs == sorted(rvs) and min(rvs) > max(versions, default=0)
        versions.extend(rvs)

    server = apiserver
    for round_, stop in enumerate(("crash", "sigterm", "crash")):
        with kube_client(server) as api:
            changes(api, round_)
            before = everything(api)
        if stop == "crash":
            server.process.kill()  # by PID, no clean shutdown
            server.process.wait()
        else:
            assert stop_apiserver_process(server.process) == 0
        server = start_apiserver(tmp_path / f"restart-{round_}", data_dir=apiserver.data_dir)
        try:
            with kube_client(server) as api:
                assert everything(api) == before
        except BaseException:
            stop_apiserver_process(server.process)
            raise
    try:
        with kube_client(server) as api:
            changes(api, 3)
    finally:
        stop_apiserver_process(server.process)


def test_one_write_among_2000_stored_objects_appends_one_line_and_rewrites_nothing(tmp_path):
    data = tmp_path / "data"
    store = server_module.Store(data)
    vs = server_module.find_resource(ISTIO, "v1", "virtualservices")
    for n in range(2000):
        store.put(vs, virtual_service(f"vs-{n}"), "ADDED", None)
    store.stop()
    snapshot, journal = data / server_module.SNAPSHOT_FILE, data / server_module.JOURNAL_FILE
    with embedded(data) as custom:  # a restart folds the journal into the snapshot
        assert len(custom.list_namespaced_custom_object(*vs_args())["items"]) == 2000
        before = snapshot.stat()
        assert before.st_size > 2000 * 200
        journal_before = journal.stat().st_size
        for n in range(10):
            custom.patch_namespaced_custom_object(*vs_args(), f"vs-{n}",
                                                  {"spec": {"hosts": ["x"]}})
        growth = journal.stat().st_size - journal_before
        after = snapshot.stat()
    assert 0 < growth < 10 * 1024  # ten journal lines, not ten copies of the state
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_the_journal_is_folded_into_the_snapshot_now_and_then(tmp_path, monkeypatch):
    monkeypatch.setattr(server_module, "COMPACT_MIN_BYTES", 0)  # fold once past the snapshot
    data = tmp_path / "data"
    store = server_module.Store(data)
    vs = server_module.find_resource(ISTIO, "v1", "virtualservices")
    journal = data / server_module.JOURNAL_FILE
    folds = 0
    for n in range(300):
        size = journal.stat().st_size
        store.put(vs, virtual_service(f"vs-{n}"), "ADDED", None)
        folds += journal.stat().st_size < size
        assert journal.stat().st_size <= (data / server_module.SNAPSHOT_FILE).stat().st_size
    store.stop()
    assert 3 <= folds <= 12  # now and then: about once each time the state doubles
    again = server_module.Store(data)
    try:
        assert len(again.list(vs, "default")) == 300
    finally:
        again.stop()


def test_a_journal_line_torn_by_a_crash_is_dropped_but_a_damaged_one_stops_the_start(tmp_path):
    data = tmp_path / "data"
    store = server_module.Store(data)
    vs = server_module.find_resource(ISTIO, "v1", "virtualservices")
    kept = store.put(vs, virtual_service(), "ADDED", None)
    store.stop()
    journal = data / server_module.JOURNAL_FILE
    with open(journal, "ab") as out:
        out.write(b'{"group":"networking.istio.io","rv":')  # the process died mid-append
    again = server_module.Store(data)
    assert again.get(vs, "default", "reviews") == kept
    assert journal.stat().st_size == 0  # folded into the snapshot at startup
    again.put(vs, virtual_service("second"), "ADDED", None)
    again.stop()
    journal.write_bytes(b"not json\n" + journal.read_bytes())
    with pytest.raises(RuntimeError, match="line 1 is damaged"):
        server_module.Store(data)


# ---------------------------------------------------------------- service accounts and RBAC


def service_account_client(api, apiserver, name: str, rules: list[dict]):  # noqa: F811
    """A client acting as service account `name`, bound to a Role with `rules`."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account("default", {"metadata": {"name": name}})
    rbac.create_namespaced_role("default", {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding("default", {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}]})
    token = core.create_namespaced_service_account_token(
        name, "default", {"spec": {"audiences": []}}).status.token
    configuration = client.Configuration()
    configuration.host = api.configuration.host
    configuration.ssl_ca_cert = api.configuration.ssl_ca_cert
    configuration.verify_ssl = api.configuration.verify_ssl
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration), token


def test_a_service_account_does_only_what_its_role_grants(api, apiserver, custom):  # noqa: F811
    custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    rules = [{"apiGroups": [ISTIO], "resources": ["virtualservices"], "verbs": ["get", "list"]}]
    as_account, _ = service_account_client(api, apiserver, "reader", rules)
    with as_account:
        mine = client.CustomObjectsApi(as_account)
        assert mine.get_namespaced_custom_object(*vs_args(), "reviews")["metadata"]["name"] == \
            "reviews"
        assert len(mine.list_namespaced_custom_object(*vs_args())["items"]) == 1
        with pytest.raises(client.ApiException) as caught:
            mine.patch_namespaced_custom_object(*vs_args(), "reviews",
                                                {"metadata": {"labels": {"a": "b"}}})
        assert caught.value.status == 403
        status = status_of(caught.value)
        assert status["reason"] == "Forbidden"
        assert status["message"] == (
            'virtualservices.networking.istio.io "reviews" is forbidden: User '
            '"system:serviceaccount:default:reader" cannot patch resource "virtualservices" '
            'in API group "networking.istio.io" in the namespace "default"')
        with pytest.raises(client.ApiException) as secret:
            client.CoreV1Api(as_account).list_namespaced_secret("default")
        assert secret.value.status in (403, 404)  # nothing on secrets, whatever is served
    assert custom.get_namespaced_custom_object(*vs_args(), "reviews")["metadata"].get(
        "labels") is None  # nothing half-applied


def test_resource_names_limit_a_rule_to_the_objects_it_names(api, apiserver):  # noqa: F811
    rules = [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
              "verbs": ["get", "update"], "resourceNames": ["canarykit-reviews"]},
             {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}]
    as_account, _ = service_account_client(api, apiserver, "leaser", rules)
    with as_account:
        leases = client.CoordinationV1Api(as_account)
        for name in ("canarykit-reviews", "other"):
            leases.create_namespaced_lease("default", {"metadata": {"name": name},
                                                       "spec": {"holderIdentity": "me"}})
        assert leases.read_namespaced_lease("canarykit-reviews", "default").spec.holder_identity
        with pytest.raises(client.ApiException) as caught:
            leases.read_namespaced_lease("other", "default")
        assert caught.value.status == 403
        with pytest.raises(client.ApiException) as listing:
            leases.list_namespaced_lease("default")
        assert listing.value.status == 403


def test_a_service_account_is_itself_and_a_forged_token_nobody(api, apiserver):  # noqa: F811
    as_account, token = service_account_client(api, apiserver, "canarykit-reviews", [])
    with as_account:
        review = client.AuthenticationV1Api(as_account).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        assert review.status.user_info.username == \
            "system:serviceaccount:default:canarykit-reviews"
    forged = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    assert raw(apiserver, "GET", "/api/v1/namespaces/default/services", token=forged)[0] == 401


def test_only_the_administrator_gets_tokens_for_existing_accounts(api, apiserver):  # noqa: F811
    core = client.CoreV1Api(api)
    with pytest.raises(client.ApiException) as missing:
        core.create_namespaced_service_account_token("nobody", "default", {"spec": {}})
    assert missing.value.status == 404
    rules = [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["*"]}]
    as_account, _ = service_account_client(api, apiserver, "ambitious", rules)
    with as_account, pytest.raises(client.ApiException) as caught:
        client.CoreV1Api(as_account).create_namespaced_service_account_token(
            "ambitious", "default", {"spec": {}})
    assert caught.value.status == 403


# ---------------------------------------------------------------- request counts


def request_counts(server: ApiServerProcess, token: str | None = "use-server-token") -> dict:
    code, body = raw(server, "GET", "/debug/requests", token=token)
    assert code == 200, body
    return json.loads(body)


def counted_since(before: dict, after: dict) -> dict[tuple, int]:
    """(verb, resource, dryRun, code) -> how many more requests `after` counts."""
    def keyed(counts: dict) -> dict[tuple, int]:
        return {(r["verb"], r["resource"], r["dryRun"], r["code"]): r["count"]
                for r in counts["requests"]}
    old, new = keyed(before), keyed(after)
    return {key: new[key] - old.get(key, 0) for key in new if new[key] != old.get(key, 0)}


def test_request_counts_name_verb_resource_dry_run_and_code(apiserver, custom):  # noqa: F811
    before = request_counts(apiserver)
    assert request_counts(apiserver) == before  # reading the counts is not counted
    created = custom.create_namespaced_custom_object(*vs_args(), virtual_service())
    custom.get_namespaced_custom_object(*vs_args(), "reviews")
    custom.list_namespaced_custom_object(*vs_args())
    custom.replace_namespaced_custom_object(*vs_args(), "reviews", created, dry_run="All")
    custom.patch_namespaced_custom_object(*vs_args(), "reviews", {"spec": {"hosts": ["a"]}})
    with pytest.raises(client.ApiException):
        custom.replace_namespaced_custom_object(*vs_args(), "reviews", created)  # stale: 409
    after = request_counts(apiserver)
    assert counted_since(before, after) == {
        ("create", "virtualservices", False, 201): 1, ("get", "virtualservices", False, 200): 1,
        ("list", "virtualservices", False, 200): 1, ("update", "virtualservices", True, 200): 1,
        ("patch", "virtualservices", False, 200): 1, ("update", "virtualservices", False, 409): 1}
    assert after["total"] == before["total"] + 6


def test_request_counts_are_for_the_administrator_only(api, apiserver):  # noqa: F811
    _, token = service_account_client(api, apiserver, "counter", [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
    code, body = raw(apiserver, "GET", "/debug/requests", token=token)
    assert code == 403
    assert json.loads(body)["message"] == (
        'forbidden: User "system:serviceaccount:default:counter" cannot get path '
        '"/debug/requests"')
    assert raw(apiserver, "GET", "/debug/requests", token=None)[0] == 401
