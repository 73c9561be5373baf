"""Specification of canarykit.mesh.istio: dumping and looking into Istio objects."""

from __future__ import annotations

import pytest
import yaml

from canarykit.core.errors import BadInput
from canarykit.mesh import istio

REVIEWS_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
  labels:
    app: reviews
  annotations:
    owner: team-reviews
  creationTimestamp: 2024-05-01T10:00:00Z
spec:
  hosts:
  - reviews
  gateways:
  - mesh
  - bookinfo-gateway
  exportTo:
  - .
  http:
  - name: jason
    match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - name: split
    route:
    - destination:
        host: reviews
        subset: v1
        port:
          number: 9080
      weight: 90
    - destination:
        host: reviews
        subset: v2
        port:
          number: 9080
      weight: 10
    timeout: 10s
  tcp:
  - match:
    - port: 27017
    route:
    - destination:
        host: mongo.backup.svc.cluster.local
        port:
          number: 5555
  tls:
  - match:
    - port: 443
      sniHosts:
      - login.bookinfo.com
    route:
    - destination:
        host: login.prod.svc.cluster.local
  futureIstioField:
    zeta: 1
    alpha: [3, 2, 1]
status:
  observedGeneration: 4
"""

REVIEWS_DR = """\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: reviews
spec:
  ports:
  - port: 9080
    name: http
"""


def one(text: str) -> dict:
    return yaml.safe_load(text)


def test_dump_reads_back_as_the_same_object_in_the_same_key_order():
    vs = one(REVIEWS_VS)
    text = istio.dump_object(vs)
    again = one(text)
    assert again == vs
    assert istio.dump_object(again) == text
    assert list(again) == ["apiVersion", "kind", "metadata", "spec", "status"]
    assert list(again["spec"]) == [
        "hosts", "gateways", "exportTo", "http", "tcp", "tls", "futureIstioField"]
    assert list(again["spec"]["futureIstioField"]) == ["zeta", "alpha"]


def test_dump_is_block_style_in_original_key_order():
    text = istio.dump_object(one(REVIEWS_DR))
    assert text.splitlines()[:4] == [
        "apiVersion: networking.istio.io/v1beta1", "kind: DestinationRule", "metadata:",
        "  name: reviews"]
    assert "{" not in text


def test_strings_that_look_like_timestamps_booleans_or_numbers_stay_strings():
    obj = {"creationTimestamp": "2024-05-01T10:00:00Z", "a": "yes", "b": "on", "c": "10"}
    assert one(istio.dump_object(obj)) == obj


def test_a_shared_sub_object_is_written_out_in_full_not_as_an_alias():
    shared = {"n": 1}
    text = istio.dump_object({"a": shared, "b": shared})
    assert "&" not in text and "*" not in text
    assert one(text) == {"a": {"n": 1}, "b": {"n": 1}}


def test_a_copy_shares_nothing_with_the_original():
    shared = {"n": 1}
    copied = istio.copy_object({"a": shared, "b": [shared]})
    copied["a"]["n"] = 2
    assert copied["b"] == [{"n": 1}] and shared == {"n": 1}


def test_object_ref_names_kind_namespace_and_name():
    assert istio.object_ref(one(REVIEWS_VS)) == "VirtualService default/reviews"
    dr = one(REVIEWS_DR)
    dr["metadata"]["namespace"] = "shop"
    assert istio.object_ref(dr) == "DestinationRule shop/reviews"


def test_object_without_namespace_is_in_default():
    assert istio.object_ref(one(REVIEWS_DR)) == "DestinationRule default/reviews"


def test_managed_fields_are_deep_copies_of_the_present_managed_spec_fields():
    vs, dr = one(REVIEWS_VS), one(REVIEWS_DR)
    fields = istio.managed_fields(vs)
    assert list(fields) == ["http"]
    fields["http"][0]["name"] = "changed"
    assert vs["spec"]["http"][0]["name"] == "jason"
    assert istio.managed_fields(dr) == {
        "trafficPolicy": dr["spec"]["trafficPolicy"], "subsets": dr["spec"]["subsets"]}
    del dr["spec"]["trafficPolicy"]
    assert list(istio.managed_fields(dr)) == ["subsets"]


def test_managed_fields_of_another_kind_is_refused():
    with pytest.raises(BadInput) as err:
        istio.managed_fields(one(SERVICE))
    assert (err.value.field, err.value.value) == ("kind", "Service")


def test_with_managed_fields_sets_exactly_those_fields_and_leaves_the_rest():
    dr = one(REVIEWS_DR)
    before = istio.dump_object(dr)
    only_v1 = [{"name": "v1", "labels": {"version": "v1"}}]
    result = istio.with_managed_fields(dr, {"subsets": only_v1})
    assert "trafficPolicy" not in result["spec"]
    assert result["spec"]["subsets"] == only_v1
    assert result["spec"]["host"] == "reviews"
    assert result["metadata"] == dr["metadata"]
    assert istio.dump_object(dr) == before


def test_with_managed_fields_keeps_the_position_of_existing_keys():
    vs = one(REVIEWS_VS)
    result = istio.with_managed_fields(vs, {"http": []})
    assert list(result["spec"]) == list(vs["spec"])
    assert result["spec"]["http"] == []


def test_with_managed_fields_refuses_an_unmanaged_field():
    with pytest.raises(BadInput) as err:
        istio.with_managed_fields(one(REVIEWS_VS), {"hosts": ["other"]})
    assert (err.value.field, err.value.value) == ("fields", "hosts")


def test_with_managed_fields_of_its_own_snapshot_is_the_same_object():
    vs = one(REVIEWS_VS)
    assert istio.with_managed_fields(vs, istio.managed_fields(vs)) == vs


@pytest.mark.parametrize("host", [
    "reviews", "reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local",
    "Reviews.Default.svc.cluster.local.",
])
def test_forms_of_a_service_name_are_the_same_host(host):
    assert istio.same_host(host, "reviews", "default")


def test_hosts_in_other_namespaces_or_outside_the_mesh_are_different():
    assert not istio.same_host("reviews.shop", "reviews", "default")
    assert istio.same_host("reviews", "reviews.shop.svc.cluster.local", "shop")
    assert not istio.same_host("api.example.com", "api", "default")
    assert not istio.same_host("*.example.com", "api.example.com", "default")


def test_route_destinations_and_subset_weights():
    vs = one(REVIEWS_VS)
    jason, split = vs["spec"]["http"]
    assert [d["destination"]["subset"] for d in istio.route_destinations(split)] == ["v1", "v2"]
    assert istio.subset_weights(split) == {"v1": 90, "v2": 10}
    assert istio.subset_weights(jason) == {"v2": 100}
    assert istio.route_destinations({"redirect": {"uri": "/x"}}) == []


def test_canary_route_is_the_catch_all_after_the_match_routes():
    assert istio.find_canary_route(one(REVIEWS_VS), "v1", "v2") == 1


def test_canary_route_is_found_when_it_sends_only_to_stable():
    vs = one(REVIEWS_VS)
    vs["spec"]["http"][1]["route"] = vs["spec"]["http"][1]["route"][:1]
    assert istio.find_canary_route(vs, "v1", "v2") == 1


def test_canary_route_by_name():
    assert istio.find_canary_route(one(REVIEWS_VS), "v1", "v2", route="jason") == 0


def test_unknown_route_name_is_refused_listing_the_names_that_exist():
    with pytest.raises(BadInput) as err:
        istio.find_canary_route(one(REVIEWS_VS), "v1", "v2", route="nope")
    assert (err.value.field, err.value.value) == ("route", "nope")
    assert "jason, split" in str(err.value)


def test_no_route_between_the_subsets_is_refused():
    with pytest.raises(BadInput) as err:
        istio.find_canary_route(one(REVIEWS_VS), "v1", "v3")
    assert err.value.field == "route"
    assert "v1/v3" in str(err.value)


def test_a_single_match_route_between_the_subsets_is_the_canary_route():
    vs = one(REVIEWS_VS)
    vs["spec"]["http"][1]["route"][1]["destination"]["subset"] = "v3"
    assert istio.find_canary_route(vs, "v1", "v2") == 0


def test_two_catch_all_routes_are_ambiguous():
    vs = one(REVIEWS_VS)
    vs["spec"]["http"].append({"name": "again", "route": [{"destination": {"host": "reviews",
                                                                          "subset": "v1"}}]})
    with pytest.raises(BadInput) as err:
        istio.find_canary_route(vs, "v1", "v2")
    assert "split, again" in str(err.value)


def test_a_route_to_several_hosts_is_not_a_canary_route():
    vs = one(REVIEWS_VS)
    vs["spec"]["http"][1]["route"][1]["destination"]["host"] = "ratings"
    assert istio.find_canary_route(vs, "v1", "v2") == 0


def test_route_lookup_on_another_kind_is_refused():
    with pytest.raises(BadInput) as err:
        istio.find_canary_route(one(REVIEWS_DR), "v1", "v2")
    assert (err.value.field, err.value.value) == ("kind", "DestinationRule")


def test_destination_rule_subsets_in_order():
    assert istio.destination_rule_subsets(one(REVIEWS_DR)) == ["v1", "v2", "v3"]
