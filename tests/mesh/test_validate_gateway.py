"""The offline analyzer on Gateway API routes: each check refuses what the API server's schema
and CEL rules (v1.6.1 standard channel) refuse, and `canarykit validate` finds what only several
files together show: missing backend Services, and a workload routed by both a VirtualService
and an HTTPRoute."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import yaml

from canarykit.mesh import gateway, traffic, validate
from canarykit.mesh.validate import analyze, has_errors, validate_object


def http_route(rules=None, namespace=None, name="reviews", **spec):
    """A valid mesh-bound (GAMMA) route for reviews: a header rule to v2, then a 90/10 split."""
    if rules is None:
        rules = [
            {"name": "jason", "matches": [{"headers": [{"name": "end-user", "value": "jason"}]}],
             "backendRefs": [{"name": "reviews-v2", "port": 9080}]},
            {"name": "split", "backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 90},
                                              {"name": "reviews-v2", "port": 9080, "weight": 10}]},
        ]
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    spec = {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
            **spec, "rules": rules}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": metadata, "spec": spec}


def grpc_route(rules):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "ratings"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "ratings"}],
                     "rules": rules}}


def backends(*refs):
    return {"backendRefs": [{"name": name, "port": 9080, **extra} for name, extra in refs]}


def service(name, namespace=None):
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata,
            "spec": {"ports": [{"port": 9080}]}}


def virtual_service(hosts=("reviews",), gateways=None, namespace=None):
    spec = {"hosts": list(hosts),
            "http": [{"route": [{"destination": {"host": hosts[0]}}]}]}
    if gateways is not None:
        spec["gateways"] = gateways
    metadata = {"name": "reviews", **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": metadata, "spec": spec}


def texts(messages, level=None, code=None):
    return [m.message for m in messages
            if (level is None or m.level == level) and (code is None or m.code == code)]


def errors(obj):
    return texts(validate_object(obj), level="Error")


def rule_errors(*rules):
    return errors(http_route(list(rules)))


def warnings(obj):
    return [(m.code, m.message) for m in validate_object(obj) if m.level == "Warning"]


SERVICES = [service("reviews"), service("reviews-v1"), service("reviews-v2")]


# --- the valid baseline ---------------------------------------------------------------------


def test_a_valid_route_with_its_services_has_no_messages():
    assert analyze([http_route(), *SERVICES]) == []


@pytest.mark.parametrize("api_version", ["gateway.networking.k8s.io/v1",
                                         "gateway.networking.k8s.io/v1beta1"])
def test_http_route_is_checked_in_v1_and_v1beta1(api_version):
    route = http_route()
    route["apiVersion"] = api_version
    route["spec"]["rules"][1]["backendRefs"][0]["weight"] = -1
    assert errors(route) == ["spec.rules[1].backendRefs[0].weight: must be between 0 and "
                             "1000000 (got -1)"]


@pytest.mark.parametrize("kind, api_version", [("HTTPRoute", "gateway.networking.k8s.io/v1alpha2"),
                                               ("GRPCRoute", "gateway.networking.k8s.io/v1beta1")])
def test_a_version_the_standard_channel_does_not_serve_is_refused(kind, api_version):
    route = http_route()
    route.update(kind=kind, apiVersion=api_version)
    [message] = validate_object(route)
    assert (message.level, message.code, message.kind) == ("Error", "IST0106", kind)
    assert message.message.startswith("apiVersion: must be one of gateway.networking.k8s.io/v1")


def test_an_http_route_of_another_api_group_is_not_ours():
    route = http_route([{"backendRefs": [{"name": "x", "weight": -5}]}])
    route["apiVersion"] = "example.com/v1"
    assert validate_object(route) == []


def test_messages_name_the_route_and_its_namespace():
    route = http_route([backends(("reviews-v1", {"weight": 2_000_000}))], namespace="prod")
    [message] = validate_object(route)
    assert (message.kind, message.namespace, message.name) == ("HTTPRoute", "prod", "reviews")
    assert message.message.startswith("spec.rules[0].backendRefs[0].weight: ")


def test_wrong_types_are_reported_not_crashed_on():
    for spec in ({"rules": "x"}, {"rules": [None, 7, {"backendRefs": [None, "x"]}]},
                 {"rules": [{"matches": [{"headers": [None, {"name": 5}]}], "filters": [3]}]},
                 {"rules": [{"filters": [{"type": "RequestMirror", "requestMirror": 1}]}]},
                 {"parentRefs": 7, "hostnames": [None, 3]}):
        route = http_route()
        route["spec"] = spec
        assert has_errors(validate_object(route)) or validate_object(route) == []


# --- backendRefs ----------------------------------------------------------------------------


@pytest.mark.parametrize("weight, problem", [
    (-1, "must be between 0 and 1000000 (got -1)"),
    (1_000_001, "must be between 0 and 1000000 (got 1000001)"),
    ("10", "must be an integer (got '10')"),
    (True, "must be an integer (got True)"),
])
def test_weights_outside_0_to_1000000_are_refused(weight, problem):
    assert rule_errors(backends(("reviews-v1", {"weight": weight}))) == [
        f"spec.rules[0].backendRefs[0].weight: {problem}"]


@pytest.mark.parametrize("weight", [0, 1, 1_000_000, None])
def test_weights_from_0_to_1000000_are_accepted(weight):
    assert rule_errors(backends(("reviews-v1", {"weight": weight}), ("reviews-v2", {}))) == []


def test_a_service_backend_without_port_is_refused_like_the_cel_rule():
    assert rule_errors({"backendRefs": [{"name": "reviews-v1"}]}) == [
        "spec.rules[0].backendRefs[0]: must have a port: it refers to a Service"]
    assert rule_errors({"backendRefs": [{"kind": "Service", "group": "", "name": "r"}]}) != []


def test_a_backend_of_another_kind_needs_no_port():
    assert rule_errors({"backendRefs": [{"group": "multicluster.x-k8s.io",
                                         "kind": "ServiceImport", "name": "reviews"}]}) == []


def test_a_backend_needs_a_name():
    assert rule_errors({"backendRefs": [{"port": 9080}]}) == [
        "spec.rules[0].backendRefs[0].name: is required"]


# --- the CRD's list limits ------------------------------------------------------------------


def test_more_than_16_backends_is_refused():
    rule = {"backendRefs": [{"name": f"r{n}", "port": 1} for n in range(17)]}
    assert rule_errors(rule) == ["spec.rules[0].backendRefs: must have at most 16 items (got 17)"]
    rule["backendRefs"].pop()
    assert rule_errors(rule) == []


def test_more_than_64_matches_in_a_rule_is_refused():
    matches = [{"path": {"type": "Exact", "value": f"/{n}"}} for n in range(65)]
    assert rule_errors({"matches": matches, **backends(("reviews-v1", {}))}) == [
        "spec.rules[0].matches: must have at most 64 items (got 65)"]


def test_more_than_16_rules_is_refused():
    rules = [{"matches": [{"path": {"type": "Exact", "value": f"/{n}"}}],
              **backends(("reviews-v1", {}))} for n in range(17)]
    assert rule_errors(*rules) == ["spec.rules: must have at most 16 items (got 17)"]


def test_more_than_128_matches_across_rules_is_refused():
    rules = [{"matches": [{"path": {"type": "Exact", "value": f"/{r}/{n}"}} for n in range(43)],
              **backends(("reviews-v1", {}))} for r in range(3)]
    assert rule_errors(*rules) == [
        "spec.rules: must have at most 128 matches across all rules (got 129)"]
    rules[2]["matches"].pop()
    assert rule_errors(*rules) == []


def test_more_than_16_header_matches_is_refused():
    headers = [{"name": f"x-{n}", "value": "1"} for n in range(17)]
    assert rule_errors({"matches": [{"headers": headers}], **backends(("reviews-v1", {}))}) == [
        "spec.rules[0].matches[0].headers: must have at most 16 items (got 17)"]


def test_an_http_route_with_an_empty_rule_list_is_refused():
    assert rule_errors() == ["spec.rules: must have at least one rule"]


# --- names and matches ----------------------------------------------------------------------


def test_duplicate_rule_names_are_refused():
    one = {"name": "split", **backends(("reviews-v1", {}))}
    assert rule_errors(one, {**one, "matches": [{"method": "GET"}]}) == [
        "spec.rules[1].name: duplicates spec.rules[0].name (rule names must be unique within a "
        "route) (got 'split')"]


@pytest.mark.parametrize("name", ["Split", "split_1", "-split", "x" * 254])
def test_rule_names_must_be_dns_subdomains(name):
    [problem] = rule_errors({"name": name, **backends(("reviews-v1", {}))})
    assert problem.startswith("spec.rules[0].name: must be a DNS-1123 subdomain")


@pytest.mark.parametrize("name", ["x canary", "x-canary:", "é", "x" * 257])
def test_header_match_names_must_be_http_tokens(name):
    rule = {"matches": [{"headers": [{"name": name, "value": "1"}]}],
            **backends(("reviews-v1", {}))}
    [problem] = rule_errors(rule)
    assert problem.startswith("spec.rules[0].matches[0].headers[0].name: must be an HTTP token")


@pytest.mark.parametrize("field", ["headers", "queryParams"])
def test_condition_names_and_values_are_required(field):
    rule = {"matches": [{field: [{"type": "Exact"}]}], **backends(("reviews-v1", {}))}
    assert rule_errors(rule) == [f"spec.rules[0].matches[0].{field}[0].name: is required",
                                 f"spec.rules[0].matches[0].{field}[0].value: is required "
                                 "(a non-empty string)"]


def test_a_regular_expression_that_re2_refuses_is_an_error():
    rule = {"matches": [{"headers": [{"name": "cookie", "type": "RegularExpression",
                                      "value": "(?=beta)"}],
                         "queryParams": [{"name": "v", "type": "RegularExpression",
                                          "value": "[0-9"}],
                         "path": {"type": "RegularExpression", "value": "/(a"}}],
            **backends(("reviews-v1", {}))}
    problems = rule_errors(rule)
    assert [p.split(":")[0] for p in problems] == [
        "spec.rules[0].matches[0].headers[0].value",
        "spec.rules[0].matches[0].queryParams[0].value", "spec.rules[0].matches[0].path.value"]
    assert all("is not a valid RE2 regular expression" in p for p in problems)


def test_valid_regular_expressions_and_match_types_are_accepted():
    rule = {"matches": [{"headers": [{"name": "cookie", "type": "RegularExpression",
                                      "value": traffic.cookie_regex("beta")}],
                         "path": {"type": "RegularExpression", "value": "/api/v[0-9]+"}}],
            **backends(("reviews-v1", {}))}
    assert rule_errors(rule) == []


def test_unknown_match_types_are_refused():
    rule = {"matches": [{"headers": [{"name": "a", "value": "1", "type": "Prefix"}],
                         "path": {"type": "Prefix", "value": "/"}, "method": "get"}],
            **backends(("reviews-v1", {}))}
    assert [p.split(":")[0] for p in rule_errors(rule)] == [
        "spec.rules[0].matches[0].headers[0].type", "spec.rules[0].matches[0].method",
        "spec.rules[0].matches[0].path.type"]


# --- timeouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1.5s", "10", "100000s", "1h1m1s1ms1h", "-1s", "1us", "1d"])
def test_timeouts_must_be_gateway_api_durations(value):
    [problem] = rule_errors({"timeouts": {"request": value}, **backends(("reviews-v1", {}))})
    assert problem.startswith("spec.rules[0].timeouts.request: must be a Gateway API duration")


@pytest.mark.parametrize("value", ["10s", "500ms", "1h30m", "99999ms", "0s", "1h1m1s1ms"])
def test_gateway_api_durations_are_accepted(value):
    assert rule_errors({"timeouts": {"request": value, "backendRequest": value},
                        **backends(("reviews-v1", {}))}) == []


def test_backend_request_longer_than_request_is_refused_unless_request_is_off():
    def check(request, backend_request):
        return rule_errors({"timeouts": {"request": request, "backendRequest": backend_request},
                            **backends(("reviews-v1", {}))})
    assert check("1s", "1001ms") == ["spec.rules[0].timeouts.backendRequest: must not be longer "
                                     "than the request timeout (1s) (got '1001ms')"]
    assert check("1m", "60s") == []
    assert check("0s", "1h") == []


# --- RequestMirror --------------------------------------------------------------------------


def mirror_errors(mirror):
    return rule_errors({"filters": [{"type": "RequestMirror", "requestMirror": mirror}],
                        **backends(("reviews-v1", {}))})


TO_V2 = {"name": "reviews-v2", "port": 9080}


@pytest.mark.parametrize("mirror, problem", [
    ({"percent": 10}, "spec.rules[0].filters[0].requestMirror.backendRef: is required"),
    ({"backendRef": TO_V2, "percent": 10, "fraction": {"numerator": 1}},
     "spec.rules[0].filters[0].requestMirror: must set only one of percent or fraction"),
    ({"backendRef": TO_V2, "percent": 101},
     "spec.rules[0].filters[0].requestMirror.percent: must be between 0 and 100 (got 101)"),
    ({"backendRef": TO_V2, "percent": -1},
     "spec.rules[0].filters[0].requestMirror.percent: must be between 0 and 100 (got -1)"),
    ({"backendRef": TO_V2, "fraction": {"numerator": 0, "denominator": 0}},
     "spec.rules[0].filters[0].requestMirror.fraction.denominator: must be >= 1 (got 0)"),
    ({"backendRef": TO_V2, "fraction": {"numerator": 3, "denominator": 2}},
     "spec.rules[0].filters[0].requestMirror.fraction: numerator must be at most the "
     "denominator (got '3/2')"),
    ({"backendRef": TO_V2, "fraction": {"numerator": 101}},  # the denominator defaults to 100
     "spec.rules[0].filters[0].requestMirror.fraction: numerator must be at most the "
     "denominator (got '101/100')"),
    ({"backendRef": {"name": "reviews-v2"}},
     "spec.rules[0].filters[0].requestMirror.backendRef: must have a port: it refers to a "
     "Service"),
])
def test_bad_request_mirrors_are_refused(mirror, problem):
    assert mirror_errors(mirror) == [problem]


@pytest.mark.parametrize("share", [{}, {"percent": 0}, {"percent": 100},
                                   {"fraction": {"numerator": 1, "denominator": 8}},
                                   {"fraction": {"numerator": 100}}])
def test_good_request_mirrors_are_accepted(share):
    assert mirror_errors({"backendRef": TO_V2, **share}) == []


def test_a_filter_needs_the_field_of_its_type_and_no_other():
    assert rule_errors({"filters": [{"type": "RequestMirror"}],
                        **backends(("reviews-v1", {}))}) == [
        "spec.rules[0].filters[0]: requestMirror is required when type is RequestMirror"]
    assert rule_errors({"filters": [{"type": "ExtensionRef", "requestMirror": {"backendRef": TO_V2},
                                     "extensionRef": {"group": "", "kind": "K", "name": "n"}}],
                        **backends(("reviews-v1", {}))}) == [
        "spec.rules[0].filters[0].requestMirror: must not be set when type is ExtensionRef"]


def test_a_mirror_in_a_backends_own_filters_is_checked_too():
    rule = {"backendRefs": [{"name": "reviews-v1", "port": 9080, "filters": [
        {"type": "RequestMirror", "requestMirror": {"backendRef": TO_V2, "percent": 200}}]}]}
    assert rule_errors(rule) == ["spec.rules[0].backendRefs[0].filters[0].requestMirror.percent: "
                                 "must be between 0 and 100 (got 200)"]


# --- warnings -------------------------------------------------------------------------------


def test_a_rule_whose_weights_are_all_zero_warns_that_it_serves_nothing():
    route = http_route([backends(("reviews-v1", {"weight": 0}), ("reviews-v2", {"weight": 0}))])
    [(code, message)] = warnings(route)
    assert code == "CK0004" and message.startswith("spec.rules[0].backendRefs: all weights are "
                                                   "zero")
    assert not has_errors(validate_object(route))


@pytest.mark.parametrize("refs", [[("reviews-v1", {"weight": 0}), ("reviews-v2", {})], []])
def test_one_weight_above_zero_or_no_backends_is_no_such_warning(refs):
    assert warnings(http_route([{"backendRefs": backends(*refs)["backendRefs"]}])) == []


def test_a_rule_repeating_an_earlier_rules_matches_can_never_match():
    matches = [{"path": {"type": "PathPrefix", "value": "/api"}}, {"method": "POST"}]
    route = http_route([{"name": "first", "matches": matches, **backends(("reviews-v1", {}))},
                        {"name": "second", "matches": matches[::-1],
                         **backends(("reviews-v2", {}))}])
    [(code, message)] = warnings(route)
    assert code == "CK0005"
    assert message == ('spec.rules[1]: rule "second" can never match: rule "first" has the same '
                       'matches and, listed first, wins every tie')


def test_a_rule_without_matches_repeats_an_explicit_prefix_slash():
    slash = [{"path": {"type": "PathPrefix", "value": "/"}}]
    route = http_route([backends(("reviews-v1", {})),
                        {"matches": slash, **backends(("reviews-v2", {}))}])
    assert [code for code, _ in warnings(route)] == ["CK0005"]


def test_more_specific_rules_are_reachable():
    canary = gateway.add_match_rule(http_route(), "internal", stable="reviews-v1",
                                    canary="reviews-v2", rule="split",
                                    headers=[{"name": "x-canary", "value": "1"}]).after
    assert validate_object(canary) == []


# --- GRPCRoute ------------------------------------------------------------------------------


def test_grpc_routes_get_the_same_backend_and_mirror_checks():
    route = grpc_route([{"matches": [{"method": {"service": "ratings.Ratings"}}],
                         "filters": [{"type": "RequestMirror", "requestMirror": {"percent": 5}}],
                         "backendRefs": [{"name": "ratings-v1", "weight": -2}]}])
    assert [m.split(":")[0] for m in errors(route)] == [
        "spec.rules[0].filters[0].requestMirror.backendRef", "spec.rules[0].backendRefs[0]",
        "spec.rules[0].backendRefs[0].weight"]


def test_grpc_method_matches_are_checked():
    route = grpc_route([{"matches": [{"method": {"type": "RegularExpression", "service": "(a"}},
                                     {"method": {"type": "Exact"}}],
                         "backendRefs": [{"name": "ratings-v1", "port": 9090}]}])
    assert [m.split(":")[0] for m in errors(route)] == [
        "spec.rules[0].matches[0].method.service", "spec.rules[0].matches[1].method"]


def test_grpc_filters_are_the_grpc_ones():
    route = grpc_route([{"filters": [{"type": "URLRewrite", "urlRewrite": {}}],
                         "backendRefs": [{"name": "ratings-v1", "port": 9090}]}])
    [problem] = errors(route)
    assert problem.startswith("spec.rules[0].filters[0].type: must be one of "
                              "RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, "
                              "ExtensionRef")


# --- canarykit's own routes pass --------------------------------------------------------------


def test_every_operation_leaves_a_route_the_validator_accepts():
    pair = {"stable": "reviews-v1", "canary": "reviews-v2", "rule": "split"}
    route = http_route()
    for step in (lambda r: gateway.set_canary_weight(r, 30, **pair),
                 lambda r: gateway.add_match_rule(r, "beta", cookie=("beta", None), **pair),
                 lambda r: gateway.set_mirror(r, percent=12.5, **pair),
                 lambda r: gateway.set_timeouts(r, request="10s", backend_request="2s",
                                                rule="split"),
                 lambda r: gateway.promote_change(r, release="r1", **pair)):
        route = step(route).after
        assert analyze([route, *SERVICES]) == []


# --- across files: missing Services ---------------------------------------------------------


def test_a_backend_naming_a_missing_service_is_ist0101():
    route = http_route([backends(("reviews-v1", {}), ("reviews-v3", {}))])
    [message] = [m for m in analyze([route, *SERVICES]) if m.code == "IST0101"]
    assert (message.level, message.kind, message.name) == ("Error", "HTTPRoute", "reviews")
    assert message.message == ('spec.rules[0].backendRefs[1]: Referenced Service not found: '
                               '"default/reviews-v3"')


def test_a_mirror_to_a_missing_service_is_ist0101():
    rule = {"filters": [{"type": "RequestMirror",
                         "requestMirror": {"backendRef": {"name": "shadow", "port": 1}}}],
            **backends(("reviews-v1", {}))}
    assert texts(analyze([http_route([rule]), *SERVICES]), code="IST0101") == [
        'spec.rules[0].filters[0].requestMirror.backendRef: Referenced Service not found: '
        '"default/shadow"']


def test_backends_are_looked_up_in_their_own_namespace():
    route = http_route([backends(("reviews-v1", {"namespace": "prod"}), ("reviews-v2", {}))],
                       namespace="staging")
    found = texts(analyze([route, service("reviews"), service("reviews-v1", "staging"),
                           service("reviews-v2", "staging")]), code="IST0101")
    assert found == ['spec.rules[0].backendRefs[0]: Referenced Service not found: '
                     '"prod/reviews-v1"']


def test_without_any_service_in_the_files_nothing_is_said_about_backends():
    route = http_route([backends(("reviews-v3", {}))])
    assert analyze([route]) == []


def test_backends_of_another_kind_are_not_looked_up():
    rule = {"backendRefs": [{"group": "multicluster.x-k8s.io", "kind": "ServiceImport",
                             "name": "reviews-v9"}]}
    assert analyze([http_route([rule]), *SERVICES]) == []


def test_virtual_services_are_still_not_checked_against_services():
    assert analyze([virtual_service(hosts=("nowhere",)), *SERVICES]) == []


# --- across files: VirtualService and HTTPRoute on one workload -------------------------------


def test_a_mesh_route_and_a_mesh_virtual_service_for_one_service_are_ck0003():
    [message] = [m for m in analyze([http_route(), virtual_service(), *SERVICES])
                 if m.code == "CK0003"]
    assert (message.level, message.kind, message.name) == ("Error", "HTTPRoute", "reviews")
    assert message.message == (
        'spec.parentRefs[0]: host "reviews.default.svc.cluster.local" is routed on the mesh by '
        "both HTTPRoute default/reviews and VirtualService default/reviews; Istio does not "
        "support mixing VirtualService and HTTPRoute on one workload")


def test_gateway_bound_route_and_virtual_service_for_one_hostname_are_ck0003():
    route = http_route(hostnames=["reviews.example.com"])
    route["spec"]["parentRefs"] = [{"name": "public", "namespace": "istio-ingress"}]
    vs = virtual_service(hosts=("reviews.example.com",), gateways=["istio-ingress/public"])
    found = texts(analyze([route, vs]), code="CK0003")
    assert len(found) == 1 and found[0].startswith(
        'spec.hostnames[0]: host "reviews.example.com" is routed on a gateway by both '
        "HTTPRoute default/reviews and VirtualService default/reviews")


@pytest.mark.parametrize("vs", [
    virtual_service(gateways=["istio-ingress/public"]),  # only on a gateway: not the mesh
    virtual_service(namespace="other"),  # another namespace's reviews
    virtual_service(hosts=("ratings",)),
])
def test_different_workloads_do_not_conflict(vs):
    assert texts(analyze([http_route(), vs]), code="CK0003") == []


def test_a_mesh_virtual_service_does_not_conflict_with_a_gateway_hostname():
    route = http_route(hostnames=["reviews"])
    route["spec"]["parentRefs"] = [{"name": "public"}]
    assert texts(analyze([route, virtual_service()]), code="CK0003") == []


# --- the command ----------------------------------------------------------------------------


def test_canarykit_validate_shows_the_cross_file_errors_and_exits_1(tmp_path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(yaml.safe_dump_all([
        http_route([backends(("reviews-v1", {"weight": 90}), ("reviews-v3", {"weight": 10}))]),
        virtual_service()]))
    services = tmp_path / "services.yaml"
    services.write_text(yaml.safe_dump_all(SERVICES))
    done = subprocess.run([sys.executable, "-m", "canarykit", "validate", str(routes),
                           str(services)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        'Error [IST0101] (HTTPRoute default/reviews) spec.rules[0].backendRefs[1]: Referenced '
        'Service not found: "default/reviews-v3"',
        'Error [CK0003] (HTTPRoute default/reviews) spec.parentRefs[0]: host '
        '"reviews.default.svc.cluster.local" is routed on the mesh by both HTTPRoute '
        "default/reviews and VirtualService default/reviews; Istio does not support mixing "
        "VirtualService and HTTPRoute on one workload"]


def test_canarykit_validate_json_output_and_a_clean_route(tmp_path, capsys):
    path = tmp_path / "route.yaml"
    path.write_text(yaml.safe_dump_all([http_route(), *SERVICES]))
    parser = argparse.ArgumentParser()
    validate.add_arguments(parser)
    assert validate.run(parser.parse_args([str(path), "-o", "json"])) == 0
    assert json.loads(capsys.readouterr().out) == []
