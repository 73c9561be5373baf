"""Specification of canarykit.mesh.gateway: pure, idempotent operations on Gateway API routes.

Every operation returns a `Change` whose `after` is a new copy in which only canarykit's parts
moved: the canary rule's weights, timeouts and its own mirror, and the `canarykit-` rules.
"""

from __future__ import annotations

import pytest
import re2
import yaml

from canarykit.core.errors import BadInput
from canarykit.mesh import gateway, istio, traffic

STABLE, CANARY = "reviews-v1", "reviews-v2"
PAIR = {"stable": STABLE, "canary": CANARY}

# Bound to the mesh (GAMMA: a Service parent) and to an ingress Gateway; a foreign rule still
# on the stable version, the canary rule with foreign filters (one of a kind the standard
# channel does not know), and a rule for another service.
REVIEWS_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: bookinfo
  labels:
    app: reviews
  annotations:
    owner: team-reviews
  resourceVersion: "4711"
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  - name: public
    namespace: istio-ingress
    sectionName: https
  hostnames:
  - reviews.example.com
  rules:
  - name: legacy
    matches:
    - path:
        type: PathPrefix
        value: /legacy
    filters:
    - type: URLRewrite
      urlRewrite:
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /
    backendRefs:
    - name: reviews-v1
      port: 9080
  - name: api
    matches:
    - path:
        type: PathPrefix
        value: /api
      headers:
      - name: x-tenant
        value: acme
    - path:
        type: Exact
        value: /health
      method: GET
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: x-routed-by
          value: mesh
    - type: ExtensionRef
      extensionRef:
        group: networking.example.io
        kind: RateLimit
        name: reviews-limit
    - type: ExternalAuth
      externalAuth:
        protocol: HTTP
        backendRef:
          name: authz
          port: 8000
    - type: RequestMirror
      requestMirror:
        backendRef:
          name: traffic-recorder
          port: 8080
        percent: 5
    backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 3
    - name: reviews-v2
      port: 9080
      weight: 1
    timeouts:
      request: 10s
  - name: static
    backendRefs:
    - name: static-files
      port: 8080
"""

GRPC_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: ratings
  namespace: bookinfo
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: ratings
  rules:
  - name: admin
    matches:
    - method:
        service: ratings.Admin
    backendRefs:
    - name: ratings-admin
      port: 9090
  - name: main
    filters:
    - type: ExtensionRef
      extensionRef:
        group: networking.example.io
        kind: RateLimit
        name: ratings-limit
    backendRefs:
    - name: ratings-v1
      port: 9090
"""
GRPC = {"stable": "ratings-v1", "canary": "ratings-v2"}


def route() -> dict:
    return yaml.safe_load(REVIEWS_ROUTE)


def grpc_route() -> dict:
    return yaml.safe_load(GRPC_ROUTE)


def rule_named(obj: dict, name: str) -> dict:
    return next(r for r in obj["spec"]["rules"] if r.get("name") == name)


def names(obj: dict) -> list[str | None]:
    return [r.get("name") for r in obj["spec"]["rules"]]


def without(obj: dict, *paths: tuple) -> str:
    """YAML of `obj` with the given (rule name, field) parts removed (a rule name alone removes
    the whole rule): what must stay byte-for-byte the same."""
    copy = istio.copy_object(obj)
    for rule_name, *field in paths:
        found = copy["spec"]["rules"]
        if not field:
            found[:] = [r for r in found if r.get("name") != rule_name]
        else:
            rule_named(copy, rule_name).pop(field[0], None)
    return istio.dump_object(copy)


def refs(obj: dict, rule: str) -> list[tuple[str, int | None]]:
    return [(ref["name"], ref.get("weight")) for ref in rule_named(obj, rule)["backendRefs"]]


def mirrors(obj: dict, rule: str) -> list[dict]:
    return [f["requestMirror"] for f in rule_named(obj, rule).get("filters", [])
            if f["type"] == "RequestMirror"]


def bad_input(call, *args, **kwargs) -> BadInput:
    with pytest.raises(BadInput) as caught:
        call(*args, **kwargs)
    return caught.value


# --- reading a route ------------------------------------------------------------------------


def test_rules_are_labelled_by_name_and_position():
    obj = route()
    assert gateway.rule_label(obj, 1) == "rule 'api' (#1)"
    del obj["spec"]["rules"][2]["name"]
    assert gateway.rule_label(obj, 2) == "rule #2"


def test_only_gateway_routes_are_accepted():
    assert bad_input(gateway.rules, {"kind": "VirtualService"}).field == "kind"
    assert bad_input(gateway.rules, {"kind": "HTTPRoute", "spec": {"rules": "x"}}).field == \
        "spec.rules"


def test_backends_are_service_names_and_mirrors_count_once_in_order():
    obj = route()
    rule_named(obj, "static")["backendRefs"].append(
        {"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "static-remote"})
    assert gateway.rule_backends(rule_named(obj, "api")) == [STABLE, CANARY]
    assert gateway.rule_backends(rule_named(obj, "static")) == ["static-files"]
    assert gateway.backend_services(obj) == [STABLE, CANARY, "traffic-recorder", "static-files"]


def test_the_canary_rule_is_found_by_name_or_as_the_one_rule_sending_to_the_pair():
    obj = route()
    assert gateway.find_canary_rule(obj, STABLE, CANARY, "api") == 1
    assert gateway.find_canary_rule(obj, STABLE, CANARY) == 1  # the one naming both
    rule_named(obj, "api")["backendRefs"].pop()  # before the rollout: no canary ref yet
    err = bad_input(gateway.find_canary_rule, obj, STABLE, CANARY)
    assert (err.field, err.value) == ("rule", None)
    assert "rule 'legacy' (#0), rule 'api' (#1)" in err.problem
    del rule_named(obj, "api")["matches"]  # now the catch-all: that one
    assert gateway.find_canary_rule(obj, STABLE, CANARY) == 1
    del obj["spec"]["rules"][0]
    assert gateway.find_canary_rule(obj, STABLE, CANARY) == 0


def test_an_unknown_rule_name_or_no_candidate_is_refused_listing_what_exists():
    err = bad_input(gateway.find_canary_rule, route(), STABLE, CANARY, "apii")
    assert (err.field, err.value) == ("rule", "apii")
    assert "legacy, api, static" in err.problem
    err = bad_input(gateway.find_canary_rule, route(), "details-v1", "details-v2")
    assert (err.field, err.value) == ("rule", None) and "details-v1" in err.problem


def test_rules_canarykit_added_are_never_taken_for_the_canary_rule():
    obj = route()
    del obj["spec"]["rules"][0]
    added = gateway.add_match_rule(obj, "internal", headers=[{"name": "x-canary", "value": "1"}],
                                   **PAIR).after
    assert gateway.find_canary_rule(added, STABLE, CANARY) == 1  # not canarykit-internal (#0)


# --- weights --------------------------------------------------------------------------------


@pytest.mark.parametrize("weights, shown", [
    ((3, 1), (75, 25)),
    ((None, None), (50, 50)),  # absent weights are the API's default of 1
    ((1, 2), (33, 67)),  # largest remainder: 33.3 and 66.7
    ((2, 1), (67, 33)),
    ((0, 5), (0, 100)),
    ((0, 0), (0, 0)),  # nothing served: no percentage to show
    ((999_999, 1), (100, 0)),
])
def test_relative_weights_show_as_whole_percentages(weights, shown):
    obj = route()
    for ref, weight in zip(rule_named(obj, "api")["backendRefs"], weights, strict=True):
        ref.pop("weight")
        if weight is not None:
            ref["weight"] = weight
    assert gateway.weights_percent(obj, STABLE, CANARY, "api") == dict(
        zip((STABLE, CANARY), shown, strict=True))


def test_other_backends_of_the_rule_take_their_share_and_all_make_100():
    obj = route()
    rule_named(obj, "api")["backendRefs"] = [
        {"name": STABLE, "port": 9080}, {"name": CANARY, "port": 9080},
        {"name": "reviews-v3", "port": 9080}]
    assert gateway.weights_percent(obj, STABLE, CANARY, "api") == {STABLE: 34, CANARY: 33}


def test_set_canary_weight_changes_only_the_canary_rules_weights():
    before = route()
    change = gateway.set_canary_weight(before, 10, rule="api", **PAIR)
    assert change.operation == "set_canary_weight" and change.changed
    assert refs(change.after, "api") == [(STABLE, 90), (CANARY, 10)]
    assert without(change.after, ("api", "backendRefs")) == without(before, ("api", "backendRefs"))
    assert [{k: v for k, v in r.items() if k != "weight"} for r in
            rule_named(change.after, "api")["backendRefs"]] == [
        {"name": STABLE, "port": 9080}, {"name": CANARY, "port": 9080}]
    assert before == route()  # the input is never changed
    assert gateway.weights_percent(change.after, STABLE, CANARY, "api") == {STABLE: 90, CANARY: 10}


def test_set_canary_weight_is_idempotent():
    once = gateway.set_canary_weight(route(), 25, rule="api", **PAIR).after
    again = gateway.set_canary_weight(once, 25, rule="api", **PAIR)
    assert not again.changed and again.diff() == ""


def test_a_missing_canary_backend_is_added_last_like_the_stable_one():
    obj = route()
    rule_named(obj, "api")["backendRefs"] = [
        {"group": "", "kind": "Service", "name": STABLE, "namespace": "bookinfo", "port": 9080,
         "filters": [{"type": "RequestHeaderModifier",
                      "requestHeaderModifier": {"set": [{"name": "x-v", "value": "1"}]}}]}]
    after = gateway.set_canary_weight(obj, 5, rule="api", **PAIR).after
    stable_ref, canary_ref = rule_named(after, "api")["backendRefs"]
    assert canary_ref == {"group": "", "kind": "Service", "name": CANARY,
                          "namespace": "bookinfo", "port": 9080, "weight": 5}
    assert stable_ref["filters"] == rule_named(obj, "api")["backendRefs"][0]["filters"]
    assert stable_ref["weight"] == 95


def test_a_rule_with_other_backends_is_refused_rather_than_guessed():
    obj = route()
    rule_named(obj, "api")["backendRefs"].append(
        {"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "reviews-v3"})
    err = bad_input(gateway.set_canary_weight, obj, 10, rule="api", **PAIR)
    assert (err.field, err.value) == ("rule", "rule 'api' (#1)")
    assert "ServiceImport reviews-v3" in err.problem


@pytest.mark.parametrize("weight", [-1, 101, 12.5, "10", True, None])
def test_canary_weight_outside_0_to_100_is_refused_naming_it(weight):
    err = bad_input(gateway.set_canary_weight, route(), weight, rule="api", **PAIR)
    assert (err.field, err.value) == ("canary_weight", weight)


@pytest.mark.parametrize("stable, canary, field", [
    ("reviews-v1", "reviews-v1", "canary"), ("Reviews_v1", "reviews-v2", "stable"),
    ("reviews-v1", "", "canary")])
def test_service_names_are_checked(stable, canary, field):
    err = bad_input(gateway.set_canary_weight, route(), 10, stable=stable, canary=canary,
                    rule="api")
    assert err.field == field


@pytest.mark.parametrize("to, weights", [(CANARY, [(STABLE, 0), (CANARY, 100)]),
                                         (STABLE, [(STABLE, 100), (CANARY, 0)])])
def test_switch_all_traffic_keeps_both_backends(to, weights):
    change = gateway.switch_all_traffic(route(), to, rule="api", **PAIR)
    assert change.operation == "switch_all_traffic"
    assert refs(change.after, "api") == weights


def test_switch_all_traffic_to_a_third_service_is_refused():
    err = bad_input(gateway.switch_all_traffic, route(), "reviews-v3", rule="api", **PAIR)
    assert (err.field, err.value) == ("to", "reviews-v3")


# --- match rules ----------------------------------------------------------------------------


def specificity(match: dict) -> tuple:
    """Gateway API's order for matches of one request: Exact path, longest prefix, method,
    most header matches, most query parameter matches."""
    path = match.get("path", {"type": "PathPrefix", "value": "/"})
    return (path["type"] == "Exact", len(path["value"]), "method" in match,
            len(match.get("headers", [])), len(match.get("queryParams", [])))


def test_a_match_rule_goes_just_before_the_canary_rule_and_sends_only_to_canary():
    before = route()
    change = gateway.add_match_rule(before, "internal", rule="api",
                                    headers=[{"name": "x-canary", "value": "always"}], **PAIR)
    assert change.operation == "add_match_rule"
    assert names(change.after) == ["legacy", "canarykit-internal", "api", "static"]
    added = rule_named(change.after, "canarykit-internal")
    assert added["backendRefs"] == [{"name": CANARY, "port": 9080}]
    assert without(change.after, ("canarykit-internal",)) == istio.dump_object(before)


def test_each_match_of_the_canary_rule_is_copied_and_made_strictly_more_specific():
    change = gateway.add_match_rule(route(), "internal", rule="api",
                                    headers=[{"name": "x-canary", "value": "always"}], **PAIR)
    canary_matches = rule_named(change.after, "api")["matches"]
    new_matches = rule_named(change.after, "canarykit-internal")["matches"]
    assert len(new_matches) == len(canary_matches)
    for old, new in zip(canary_matches, new_matches, strict=True):
        assert {k: v for k, v in new.items() if k != "headers"} == \
            {k: v for k, v in old.items() if k != "headers"}
        assert new["headers"] == old.get("headers", []) + [
            {"type": "Exact", "name": "x-canary", "value": "always"}]
        assert specificity(new) > specificity(old)


def test_query_parameters_alone_also_win_over_the_canary_rule():
    change = gateway.add_match_rule(route(), "beta", rule="api",
                                    query_params=[{"name": "beta", "value": "1"}], **PAIR)
    pairs = zip(rule_named(change.after, "api")["matches"],
                rule_named(change.after, "canarykit-beta")["matches"], strict=True)
    assert all(specificity(new) > specificity(old) for old, new in pairs)


def test_a_canary_rule_without_matches_is_matched_as_prefix_slash():
    obj = route()
    del obj["spec"]["rules"][:2]
    rule_named(obj, "static")["backendRefs"] = [{"name": STABLE, "port": 9080}]
    after = gateway.add_match_rule(obj, "internal", headers=[{"name": "x-canary", "value": "1"}],
                                   **PAIR).after
    assert rule_named(after, "canarykit-internal")["matches"] == [
        {"path": {"type": "PathPrefix", "value": "/"},
         "headers": [{"type": "Exact", "name": "x-canary", "value": "1"}]}]


def test_the_match_rule_keeps_the_canary_rules_filters_and_timeouts_but_not_its_mirrors():
    added = rule_named(gateway.add_match_rule(route(), "internal", rule="api", **PAIR,
                                              headers=[{"name": "x-canary", "value": "1"}]).after,
                       "canarykit-internal")
    canary_rule = rule_named(route(), "api")
    assert added["filters"] == [f for f in canary_rule["filters"] if f["type"] != "RequestMirror"]
    assert added["timeouts"] == {"request": "10s"}


def test_a_cookie_is_a_regular_expression_match_on_the_cookie_header():
    after = gateway.add_match_rule(route(), "beta-users", rule="api", cookie=("beta", "on"),
                                   **PAIR).after
    condition = rule_named(after, "canarykit-beta-users")["matches"][1]["headers"][-1]
    assert {k: condition[k] for k in ("type", "name")} == {"type": "RegularExpression",
                                                           "name": "cookie"}
    pattern = re2.compile(condition["value"])
    assert pattern.search("session=x; beta=on; theme=dark")
    assert not pattern.search("session=x; beta=off") and not pattern.search("alphabeta=on")


def test_re_adding_a_match_rule_replaces_it_and_adding_it_twice_changes_nothing():
    headers = [{"name": "x-canary", "value": "1"}]
    once = gateway.add_match_rule(route(), "internal", rule="api", headers=headers, **PAIR).after
    assert not gateway.add_match_rule(once, "internal", rule="api", headers=headers,
                                      **PAIR).changed
    other = gateway.add_match_rule(once, "internal", rule="api", cookie=("beta", None),
                                   **PAIR).after
    assert names(other).count("canarykit-internal") == 1
    assert rule_named(other, "canarykit-internal")["matches"][1]["headers"][-1]["name"] == \
        "cookie"


def test_a_name_given_with_the_prefix_means_the_same_rule():
    once = gateway.add_match_rule(route(), "internal", rule="api", **PAIR,
                                  headers=[{"name": "x-canary", "value": "1"}]).after
    assert gateway.remove_match_rule(once, "canarykit-internal").after == route()


@pytest.mark.parametrize("kwargs, field, value", [
    ({}, "headers", None),
    ({"headers": [{"name": "x canary", "value": "1"}]}, "headers", "x canary"),
    ({"headers": [{"name": "x-canary", "value": ""}]}, "headers", ""),
    ({"headers": [{"name": "x-canary", "value": "1", "type": "Prefix"}]}, "headers", "Prefix"),
    ({"headers": [{"name": "x-canary", "value": "(?=a)", "type": "RegularExpression"}]},
     "headers", "(?=a)"),
    ({"headers": [{"name": "X-Tenant", "value": "beta"}]}, "headers", "X-Tenant"),
    ({"headers": [{"name": "x-a", "value": "1"}, {"name": "X-A", "value": "2"}]}, "headers",
     "x-a"),
    ({"headers": "x-canary: 1"}, "headers", "x-canary: 1"),
    ({"query_params": [{"name": "a b", "value": "1"}]}, "query_params", "a b"),
    ({"cookie": ("beta;", None)}, "cookie", "beta;"),
    ({"cookie": ("beta", "a b")}, "cookie", "a b"),
    ({"cookie": "beta"}, "cookie", "beta"),
])
def test_bad_match_conditions_are_refused_naming_the_parameter_and_value(kwargs, field, value):
    err = bad_input(gateway.add_match_rule, route(), "internal", rule="api", **PAIR, **kwargs)
    assert (err.field, err.value) == (field, value)


@pytest.mark.parametrize("name", ["Internal", "internal_users", "", "x-", None])
def test_match_rule_names_must_make_a_gateway_api_rule_name(name):
    err = bad_input(gateway.add_match_rule, route(), name, rule="api", **PAIR,
                    headers=[{"name": "x-canary", "value": "1"}])
    assert (err.field, err.value) == ("name", name)


def test_a_route_already_at_16_rules_takes_no_match_rule():
    obj = route()
    obj["spec"]["rules"] += [{"name": f"r{n}", "backendRefs": [{"name": "x", "port": 1}]}
                             for n in range(13)]
    err = bad_input(gateway.add_match_rule, obj, "internal", rule="api", **PAIR,
                    headers=[{"name": "x-canary", "value": "1"}])
    assert err.field == "name" and "16 rules" in err.problem


def test_remove_match_rule_removes_only_canarykits_rule_of_that_name():
    with_rule = gateway.add_match_rule(route(), "internal", rule="api", **PAIR,
                                       headers=[{"name": "x-canary", "value": "1"}]).after
    change = gateway.remove_match_rule(with_rule, "internal")
    assert change.operation == "remove_match_rule"
    assert istio.dump_object(change.after) == istio.dump_object(route())
    assert not gateway.remove_match_rule(route(), "legacy").changed  # foreign: not canarykit's


# --- mirroring ------------------------------------------------------------------------------


def test_a_whole_mirror_percentage_is_percent_on_the_stable_port():
    before = route()
    change = gateway.set_mirror(before, percent=20, rule="api", **PAIR)
    assert mirrors(change.after, "api")[-1] == {"backendRef": {"name": CANARY, "port": 9080},
                                                "percent": 20}
    assert without(change.after, ("api", "filters")) == without(before, ("api", "filters"))
    assert rule_named(change.after, "api")["filters"][:-1] == rule_named(before, "api")["filters"]


@pytest.mark.parametrize("percent, fraction", [(12.5, (1, 8)), (0.1, (1, 1000)),
                                               (33.3, (333, 1000))])
def test_a_fractional_mirror_percentage_is_an_exact_fraction(percent, fraction):
    mirror = mirrors(gateway.set_mirror(route(), percent=percent, rule="api", **PAIR).after,
                     "api")[-1]
    assert "percent" not in mirror
    assert (mirror["fraction"]["numerator"], mirror["fraction"]["denominator"]) == fraction


def test_setting_the_mirror_again_replaces_it_in_place():
    once = gateway.set_mirror(route(), percent=10, rule="api", **PAIR).after
    assert not gateway.set_mirror(once, percent=10, rule="api", **PAIR).changed
    twice = gateway.set_mirror(once, percent=2.5, rule="api", **PAIR).after
    assert [m["backendRef"]["name"] for m in mirrors(twice, "api")] == ["traffic-recorder",
                                                                         CANARY]
    assert mirrors(twice, "api")[-1]["fraction"] == {"numerator": 1, "denominator": 40}


def test_clear_mirror_removes_only_the_mirror_to_canary():
    mirrored = gateway.set_mirror(route(), percent=10, rule="api", **PAIR).after
    change = gateway.clear_mirror(mirrored, rule="api", **PAIR)
    assert change.after == route()  # the foreign mirror to traffic-recorder stays
    assert not gateway.clear_mirror(change.after, rule="api", **PAIR).changed


def test_a_mirror_set_on_a_rule_without_filters_clears_back_to_none():
    obj = route()
    del rule_named(obj, "api")["filters"]
    mirrored = gateway.set_mirror(obj, percent=100, rule="api", **PAIR).after
    assert len(mirrors(mirrored, "api")) == 1
    assert gateway.clear_mirror(mirrored, rule="api", **PAIR).after == obj


@pytest.mark.parametrize("percent", [-1, 100.5, "10", float("nan")])
def test_mirror_percent_outside_0_to_100_is_refused(percent):
    err = bad_input(gateway.set_mirror, route(), percent=percent, rule="api", **PAIR)
    assert err.field == "percent"


# --- timeouts and retries -------------------------------------------------------------------


def test_set_timeouts_sets_exactly_what_is_given():
    before = route()
    change = gateway.set_timeouts(before, request="30s", backend_request="5s", rule="api")
    assert rule_named(change.after, "api")["timeouts"] == {"request": "30s",
                                                           "backendRequest": "5s"}
    assert without(change.after, ("api", "timeouts")) == without(before, ("api", "timeouts"))
    only_backend = gateway.set_timeouts(change.after, backend_request="5s", rule="api").after
    assert rule_named(only_backend, "api")["timeouts"] == {"backendRequest": "5s"}  # None removes


def test_set_timeouts_with_nothing_removes_the_timeouts():
    after = gateway.set_timeouts(route(), rule="api").after
    assert "timeouts" not in rule_named(after, "api")
    assert not gateway.set_timeouts(after, rule="api").changed


@pytest.mark.parametrize("value", ["1.5s", "10sec", "100000s", "1h1m1s1ms1h", "-1s", "1us", 10])
def test_timeouts_must_be_gateway_api_durations(value):
    err = bad_input(gateway.set_timeouts, route(), request=value, rule="api")
    assert (err.field, err.value) == ("request", value)


def test_backend_request_may_not_outlast_the_request_unless_that_is_off():
    err = bad_input(gateway.set_timeouts, route(), request="1s", backend_request="1001ms",
                    rule="api")
    assert (err.field, err.value) == ("backend_request", "1001ms")
    assert gateway.set_timeouts(route(), request="0s", backend_request="1h", rule="api").changed


def test_set_timeouts_needs_the_rule_when_the_route_has_several():
    err = bad_input(gateway.set_timeouts, route(), request="10s")
    assert (err.field, err.value) == ("rule", None) and "rule 'api' (#1)" in err.problem


def test_set_timeouts_on_a_grpc_route_is_refused():
    assert bad_input(gateway.set_timeouts, grpc_route(), request="1s", rule="main").field == \
        "timeouts"


def test_retries_are_refused_pointing_at_the_standard_channel():
    err = bad_input(gateway.set_retries, route(), attempts=3, rule="api")
    assert err.field == "retries" and err.value == {"attempts": 3, "rule": "api"}
    assert "standard channel (v1.6.1)" in err.problem and "Istio router" in err.problem


# --- promotion ------------------------------------------------------------------------------


def test_promote_removes_canarykits_rules_and_mirrors_and_sends_all_to_canary():
    obj = gateway.add_match_rule(route(), "internal", rule="api", **PAIR,
                                 headers=[{"name": "x-canary", "value": "1"}]).after
    obj = gateway.set_mirror(obj, percent=50, rule="api", **PAIR).after
    change = gateway.promote_change(obj, release="reviews-2.1.0", rule="api", **PAIR)
    assert change.operation == "promote" and change.params["release"] == "reviews-2.1.0"
    assert names(change.after) == ["legacy", "api", "static"]
    assert refs(change.after, "api") == [(STABLE, 0), (CANARY, 100)]
    assert [m["backendRef"]["name"] for m in mirrors(change.after, "api")] == ["traffic-recorder"]
    assert without(change.after, ("api", "backendRefs")) == without(route(),
                                                                     ("api", "backendRefs"))


def test_after_promotion_routes_to_lists_the_foreign_rules_left_on_the_old_version():
    after = gateway.promote_change(route(), release="r1", rule="api", **PAIR).after
    assert gateway.routes_to(after, STABLE) == ["rule 'legacy' (#0)"]
    assert gateway.routes_to(after, CANARY) == ["rule 'api' (#1)"]
    assert gateway.routes_to(route(), STABLE) == ["rule 'legacy' (#0)", "rule 'api' (#1)"]


def test_promotion_is_undone_by_restoring_the_managed_rules():
    before = route()
    snapshot = istio.managed_fields(before)
    promoted = gateway.promote_change(before, release="r1", rule="api", **PAIR).after
    restored = traffic.restore_managed_fields(promoted, snapshot)
    assert restored.after == before
    assert restored.to_dict()["target"] == "HTTPRoute bookinfo/reviews"


def test_a_change_diff_names_the_route_and_shows_only_the_weights():
    diff = gateway.set_canary_weight(route(), 50, rule="api", **PAIR).diff()
    assert diff.startswith("--- HTTPRoute bookinfo/reviews (before)")
    changed = [line for line in diff.splitlines()
               if line[:1] in "+-" and not line.startswith(("---", "+++"))]
    assert changed == ["-      weight: 3", "+      weight: 50",
                       "-      weight: 1", "+      weight: 50"]


# --- GRPCRoute ------------------------------------------------------------------------------


def test_grpc_route_canary_weight_adds_the_canary_backend():
    before = grpc_route()
    change = gateway.set_canary_weight(before, 20, **GRPC)
    assert refs(change.after, "main") == [("ratings-v1", 80), ("ratings-v2", 20)]
    assert without(change.after, ("main", "backendRefs")) == without(before,
                                                                      ("main", "backendRefs"))


def test_grpc_match_rules_add_headers_and_refuse_query_parameters():
    after = gateway.add_match_rule(grpc_route(), "internal", cookie=("beta", None),
                                   headers=[{"name": "x-canary", "value": "1"}], **GRPC).after
    assert names(after) == ["admin", "canarykit-internal", "main"]
    added = rule_named(after, "canarykit-internal")
    assert [[h["name"] for h in m["headers"]] for m in added["matches"]] == [
        ["x-canary", "cookie"]]
    assert added["filters"] == rule_named(after, "main")["filters"]
    err = bad_input(gateway.add_match_rule, grpc_route(), "internal",
                    query_params=[{"name": "a", "value": "1"}], **GRPC)
    assert err.field == "query_params"


def test_grpc_mirror_and_promotion():
    obj = gateway.set_mirror(grpc_route(), percent=10, **GRPC).after
    assert mirrors(obj, "main") == [{"backendRef": {"name": "ratings-v2", "port": 9090},
                                     "percent": 10}]
    promoted = gateway.promote_change(obj, release="r1", **GRPC).after
    assert mirrors(promoted, "main") == []
    assert refs(promoted, "main") == [("ratings-v1", 0), ("ratings-v2", 100)]
