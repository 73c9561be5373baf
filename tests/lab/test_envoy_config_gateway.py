"""Specification of the translation of mesh-bound (GAMMA) Gateway API HTTPRoutes to Envoy.

Each configuration is also checked by the real Envoy (`--mode validate`), as in
test_envoy_config.py: what the translator writes must be what Envoy accepts.
"""

from __future__ import annotations

import copy

import pytest

from canarykit.lab.controlplane import resolve_services, translate_objects
from canarykit.lab.envoy_config import (
    Endpoint,
    ServiceBackend,
    Translation,
    translate,
    validate_with_envoy,
)
from canarykit.lab.processes import (
    LabConfig,
    VersionSettings,
    seed_deployment,
    seed_destination_rule,
    seed_http_route,
    seed_service,
    seed_version_service,
    seed_virtual_service,
)

pytestmark = pytest.mark.lab  # every translation is checked by the real Envoy

REVIEWS = "reviews.default.svc.cluster.local"
V1 = "outbound|9080||reviews-v1.default.svc.cluster.local"
V2 = "outbound|9080||reviews-v2.default.svc.cluster.local"
V1_EP, V2_EP = Endpoint("127.0.0.1", 18001), Endpoint("127.0.0.1", 18003)
SERVICES = {
    "reviews": ServiceBackend((9080,), (V1_EP, V2_EP)),
    "reviews-v1": ServiceBackend((9080,), (V1_EP,)),
    "reviews-v2": ServiceBackend((9080,), (V2_EP,)),
}
ENDPOINTS = {("reviews", ""): [V1_EP, V2_EP]}  # what the lab's endpoints file gives Istio


def backend(version: str, weight: int | None = None, port: int = 9080, **extra) -> dict:
    out = {"name": f"reviews-{version}", "port": port, **extra}
    if weight is not None:
        out["weight"] = weight
    return out


def rule(*backends: dict, name: str | None = None, **fields) -> dict:
    out = {"backendRefs": list(backends), **fields}
    if name:
        out["name"] = name
    return out


def route(*rules: dict, name: str = "reviews", created: str = "2024-01-01T00:00:00Z",
          parent: str = "reviews") -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent,
                                     "port": 9080}],
                     "rules": list(rules)}}


def path(kind: str, value: str) -> dict:
    return {"path": {"type": kind, "value": value}}


def run(*routes: dict, virtual_services: list[dict] | None = None,
        validate: bool = True) -> Translation:
    t = translate(virtual_services or [], [], ENDPOINTS, listener_port=15001,
                  http_routes=list(routes), services=SERVICES)
    if validate:
        validate_with_envoy(t)
    return t


def virtual_host(t: Translation, host: str = REVIEWS) -> dict:
    manager = t.listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    return next(vh for vh in manager["route_config"]["virtual_hosts"]
                if vh["name"] == f"{host}:9080")


def routes(t: Translation) -> list[dict]:
    return virtual_host(t)["routes"]


def weights(action: dict) -> list[tuple[str, int]]:
    if "cluster" in action:
        return [(action["cluster"], 1)]
    return [(c["name"], c["weight"]) for c in action["weighted_clusters"]["clusters"]]


def endpoints_of(t: Translation, name: str) -> list[int]:
    found = next(c for c in t.clusters if c["name"] == name)
    return [e["endpoint"]["address"]["socket_address"]["port_value"]
            for group in found["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]


# ---------------------------------------------------------------- backends and weights


def test_backend_weights_become_weighted_clusters_one_per_backend_service():
    t = run(route(rule(backend("v1", 80), backend("v2", 20), name="primary")))
    [only] = routes(t)
    assert only["name"] == "default.reviews.primary"
    assert only["match"] == {"prefix": "/", "case_sensitive": True}
    assert weights(only["route"]) == [(V1, 80), (V2, 20)]
    assert endpoints_of(t, V1) == [18001] and endpoints_of(t, V2) == [18003]
    assert t.problems == []


def test_weights_are_relative_integers_and_zero_weights_are_left_out():
    t = run(route(rule(backend("v1", 3), backend("v2", 1))))
    assert weights(routes(t)[0]["route"]) == [(V1, 3), (V2, 1)]
    t = run(route(rule(backend("v1", 100), backend("v2", 0))))
    assert routes(t)[0]["route"]["cluster"] == V1  # one backend left: a plain cluster
    t = run(route(rule(backend("v1"), backend("v2"))))  # unset weights are 1 each
    assert weights(routes(t)[0]["route"]) == [(V1, 1), (V2, 1)]


def test_every_weight_zero_answers_500_and_is_reported():
    t = run(route(rule(backend("v1", 0), backend("v2", 0))))
    assert routes(t)[0]["direct_response"] == {"status": 500}
    assert any("every backendRef has weight 0" in p for p in t.problems)


def test_a_backend_that_cannot_be_resolved_answers_500_for_its_share_only():
    t = run(route(rule(backend("v1", 50), backend("v9", 50))))
    action = routes(t)[0]["route"]
    assert action["cluster_not_found_response_code"] == "INTERNAL_SERVER_ERROR"
    [(first, _), (second, _)] = weights(action)
    assert first == V1 and second not in {c["name"] for c in t.clusters}
    assert any("backend Service reviews-v9 does not exist" in p for p in t.problems)


def test_the_backend_clusters_are_the_services_own_and_get_their_own_virtual_hosts():
    t = run(route(rule(backend("v1", 90), backend("v2", 10))))
    names = [c["name"] for c in t.clusters]
    assert names == [f"outbound|9080||{REVIEWS}", V1, V2]
    assert all("|v1|" not in n and "|v2|" not in n for n in names)  # no Istio subsets
    assert virtual_host(t, "reviews-v2.default.svc.cluster.local")["routes"][0]["route"][
        "cluster"] == V2


# ---------------------------------------------------------------- matches and precedence


def test_rules_are_ordered_by_the_gateway_api_precedence_not_by_their_place():
    rules = [
        rule(backend("v1"), name="catch-all"),  # PathPrefix / (the default)
        rule(backend("v1"), name="regex", matches=[path("RegularExpression", "/a.*/long")]),
        rule(backend("v1"), name="api", matches=[path("PathPrefix", "/api")]),
        rule(backend("v2"), name="api-v1", matches=[path("PathPrefix", "/api/v1")]),
        rule(backend("v2"), name="two-headers", matches=[{
            "headers": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]}]),
        rule(backend("v2"), name="one-header", matches=[{"headers": [{"name": "a",
                                                                     "value": "1"}]}]),
        rule(backend("v2"), name="method", matches=[{"method": "POST", "headers": [
            {"name": "a", "value": "1"}]}]),
        rule(backend("v2"), name="query", matches=[{"queryParams": [{"name": "q",
                                                                     "value": "1"}]}]),
        rule(backend("v2"), name="exact", matches=[path("Exact", "/x")]),
    ]
    t = run(route(*rules))
    assert [r["name"].rsplit(".", 1)[1] for r in routes(t)] == [
        "exact", "api-v1", "api", "method", "two-headers", "one-header", "query", "catch-all",
        "regex"]
    assert t.problems == [
        "HTTPRoute default/reviews rules[1] (regex): route default.reviews.regex sorts after the "
        "catch-all route default.reviews.catch-all (RegularExpression paths sort last, as "
        "istiod sorts them) and is never reached"]


def test_ties_between_routes_go_to_the_oldest_then_by_name_then_rule_order():
    newer = route(rule(backend("v2"), name="b"), rule(backend("v2"), name="c"), name="aaa",
                  created="2024-06-01T00:00:00Z")
    older = route(rule(backend("v1"), name="a"), name="zzz", created="2024-01-01T00:00:00Z")
    same_time = route(rule(backend("v1"), name="d"), name="mmm", created="2024-06-01T00:00:00Z")
    t = run(newer, same_time, older)
    assert [r["name"] for r in routes(t)] == [
        "default.zzz.a", "default.aaa.b", "default.aaa.c", "default.mmm.d"]


def test_path_header_query_and_method_matches():
    t = run(route(
        rule(backend("v2"), name="exact", matches=[path("Exact", "/reviews/1")]),
        rule(backend("v2"), name="prefix", matches=[path("PathPrefix", "/api/")]),
        rule(backend("v2"), name="regex", matches=[path("RegularExpression", "/r/[0-9]+")]),
        rule(backend("v2"), name="combined", matches=[{
            "path": {"type": "PathPrefix", "value": "/"}, "method": "GET",
            "headers": [{"name": "X-Canary", "value": "yes"},
                        {"type": "RegularExpression", "name": "user", "value": "^(a|b)$"},
                        {"name": "x-canary", "value": "ignored"}],
            "queryParams": [{"name": "debug", "value": "1"},
                            {"type": "RegularExpression", "name": "id", "value": "[0-9]+"}]}]),
    ))
    by_name = {r["name"].rsplit(".", 1)[1]: r["match"] for r in routes(t)}
    assert by_name["exact"] == {"path": "/reviews/1", "case_sensitive": True}
    # PathPrefix matches whole segments: /api and /api/x, never /apix.
    assert by_name["prefix"] == {"path_separated_prefix": "/api", "case_sensitive": True}
    assert by_name["regex"] == {"safe_regex": {"regex": "/r/[0-9]+"}, "case_sensitive": True}
    assert by_name["combined"] == {
        "prefix": "/", "case_sensitive": True,
        "headers": [{"name": "x-canary", "string_match": {"exact": "yes"}},
                    {"name": "user", "string_match": {"safe_regex": {"regex": "^(a|b)$"}}},
                    {"name": ":method", "string_match": {"exact": "GET"}}],
        "query_parameters": [{"name": "debug", "string_match": {"exact": "1"}},
                             {"name": "id", "string_match": {"safe_regex": {
                                 "regex": "[0-9]+"}}}]}


def test_each_match_of_a_rule_is_its_own_route_sorted_on_its_own():
    t = run(route(rule(backend("v2"), name="two", matches=[
        path("PathPrefix", "/"), path("Exact", "/only")])))
    assert [(r["name"], r["match"].get("path") or r["match"].get("prefix"))
            for r in routes(t)] == [("default.reviews.two.1", "/only"),
                                    ("default.reviews.two.0", "/")]


def test_a_rule_with_an_invalid_regex_is_left_out_and_the_others_still_route():
    t = run(route(rule(backend("v2"), name="broken", matches=[path("RegularExpression", "(")]),
                  rule(backend("v1"), name="fine")))
    assert [r["name"] for r in routes(t)] == ["default.reviews.fine"]
    assert any("rules[0] (broken)" in p and "the rule is left out" in p for p in t.problems)


# ---------------------------------------------------------------- filters


def mirror(**settings) -> dict:
    return {"type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": "reviews-v2", "port": 9080}, **settings}}


def test_request_mirror_percent_and_fraction_become_runtime_fractions():
    t = run(route(
        rule(backend("v1"), name="percent", filters=[mirror(percent=50)],
             matches=[path("Exact", "/a")]),
        rule(backend("v1"), name="fraction", filters=[mirror(fraction={"numerator": 1,
                                                                       "denominator": 3})],
             matches=[path("Exact", "/b")]),
        rule(backend("v1"), name="all", filters=[mirror()], matches=[path("Exact", "/c")]),
        rule(backend("v1"), name="none", filters=[mirror(percent=0)],
             matches=[path("Exact", "/d")])))
    policies = {r["name"].rsplit(".", 1)[1]: r["route"].get("request_mirror_policies")
                for r in routes(t)}
    assert policies["percent"] == [{
        "cluster": V2, "runtime_fraction": {"default_value": {
            "numerator": 50, "denominator": "HUNDRED"}},
        "trace_sampled": False, "disable_shadow_host_suffix_append": True}]
    assert policies["fraction"][0]["runtime_fraction"]["default_value"] == {
        "numerator": 333333, "denominator": "MILLION"}
    assert policies["all"][0]["runtime_fraction"]["default_value"] == {
        "numerator": 100, "denominator": "HUNDRED"}
    assert policies["none"] is None
    assert endpoints_of(t, V2) == [18003]  # the mirror's cluster is built


def test_header_modifiers_change_requests_and_responses():
    t = run(route(rule(backend("v1"), filters=[
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {
            "set": [{"name": "x-env", "value": "lab"}], "add": [{"name": "x-tag", "value": "a"}],
            "remove": ["x-drop"]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
            "set": [{"name": "x-served-by", "value": "gamma"}]}}])))
    only = routes(t)[0]
    assert only["request_headers_to_add"] == [
        {"header": {"key": "x-env", "value": "lab"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-tag", "value": "a"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}]
    assert only["request_headers_to_remove"] == ["x-drop"]
    assert only["response_headers_to_add"][0]["header"] == {"key": "x-served-by",
                                                            "value": "gamma"}


def test_an_extension_ref_filter_is_reported_and_its_rule_answers_500_alone():
    t = run(route(
        rule(backend("v2"), name="custom", matches=[path("PathPrefix", "/custom")], filters=[
            {"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Lua",
                                                      "name": "magic"}}]),
        rule(backend("v1", 90), backend("v2", 10), name="primary")))
    by_name = {r["name"].rsplit(".", 1)[1]: r for r in routes(t)}
    assert by_name["custom"]["direct_response"] == {"status": 500}
    assert weights(by_name["primary"]["route"]) == [(V1, 90), (V2, 10)]
    [problem] = t.problems
    assert problem.startswith("HTTPRoute default/reviews rules[0] (custom) filters[0]: ")
    assert "ExtensionRef example.com/Lua magic cannot be applied by the lab" in problem


def test_a_cors_filter_is_reported_and_ignored():
    t = run(route(rule(backend("v1"), filters=[{"type": "CORS", "cors": {
        "allowOrigins": ["https://a.example"]}}])))
    assert routes(t)[0]["route"]["cluster"] == V1
    assert any("CORS filter is not supported" in p for p in t.problems)


def test_redirect_and_rewrite_filters():
    t = run(route(
        rule(name="moved", matches=[path("PathPrefix", "/old")], filters=[
            {"type": "RequestRedirect", "requestRedirect": {
                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"},
                "statusCode": 301}}]),
        rule(backend("v1"), name="rewritten", matches=[path("PathPrefix", "/v1/api")], filters=[
            {"type": "URLRewrite", "urlRewrite": {
                "hostname": "internal", "path": {"type": "ReplacePrefixMatch",
                                                 "replacePrefixMatch": "/"}}}])))
    by_name = {r["name"].rsplit(".", 1)[1]: r for r in routes(t)}
    assert by_name["moved"]["redirect"] == {"response_code": "MOVED_PERMANENTLY",
                                            "prefix_rewrite": "/new"}
    assert "route" not in by_name["moved"]
    action = by_name["rewritten"]["route"]
    assert action["host_rewrite_literal"] == "internal"
    assert action["regex_rewrite"] == {"pattern": {"regex": "^/v1/api/*"}, "substitution": "/"}


# ---------------------------------------------------------------- timeouts and retries


def timed(**timeouts) -> Translation:
    return run(route(rule(backend("v1"), timeouts=timeouts)))


def test_request_timeout_is_the_route_timeout_and_unset_or_zero_means_none():
    assert routes(timed(request="10s"))[0]["route"]["timeout"] == "10s"
    assert routes(timed(request="1m30s"))[0]["route"]["timeout"] == "90s"
    assert routes(timed(request="0s"))[0]["route"]["timeout"] == "0s"
    assert routes(run(route(rule(backend("v1")))))[0]["route"]["timeout"] == "0s"


def test_backend_request_timeout_without_retries_is_the_route_timeout_when_shorter():
    action = routes(timed(request="10s", backendRequest="2500ms"))[0]["route"]
    assert action["timeout"] == "2.5s"
    assert "per_try_timeout" not in action["retry_policy"]  # istiod's default retries
    assert routes(timed(backendRequest="3s"))[0]["route"]["timeout"] == "3s"
    assert routes(timed(request="0s", backendRequest="3s"))[0]["route"]["timeout"] == "3s"


def test_backend_request_timeout_with_the_routes_own_retries_is_each_tries_timeout():
    t = run(route(rule(backend("v1"), timeouts={"request": "10s", "backendRequest": "2s"},
                       retry={"attempts": 3, "codes": [502, 503], "backoff": "100ms"})))
    action = routes(t)[0]["route"]
    assert action["timeout"] == "10s"
    retry = action["retry_policy"]
    assert retry["per_try_timeout"] == "2s" and retry["num_retries"] == 3
    assert retry["retriable_status_codes"] == [502, 503]
    assert retry["retry_back_off"] == {"base_interval": "0.1s"}


def test_a_timeout_that_is_not_a_gateway_duration_leaves_the_rule_out():
    t = run(route(rule(backend("v1"), name="bad", timeouts={"request": "1.5s"}),
                  rule(backend("v2"), name="good", matches=[path("Exact", "/g")])))
    assert [r["name"] for r in routes(t)] == ["default.reviews.good"]
    assert any("Gateway API duration" in p for p in t.problems)


# ---------------------------------------------------------------- parents and conflicts


def test_only_routes_bound_to_an_existing_service_of_the_lab_apply():
    north_south = route(rule(backend("v2")), name="edge")
    north_south["spec"]["parentRefs"] = [{"name": "public-gateway"}]  # kind Gateway by default
    other_port = route(rule(backend("v2")), name="admin")
    other_port["spec"]["parentRefs"][0]["port"] = 9999
    t = run(route(rule(backend("v1"))), north_south, other_port,
            route(rule(backend("v2")), name="ghost", parent="ratings"))
    assert [r["name"] for r in routes(t)] == ["default.reviews.0"]
    problems = "\n".join(t.problems)
    assert "HTTPRoute default/edge parentRefs[0]: public-gateway is a Gateway" in problems
    assert "port 9999 of Service reviews is not served in the lab" in problems
    assert "Service ratings does not exist" in problems


def test_a_host_routed_by_a_virtual_service_and_an_httproute_keeps_the_virtual_service():
    vs = seed_virtual_service(LabConfig())
    t = translate([vs], [seed_destination_rule(LabConfig())],
                  {("reviews", ""): [V1_EP, V2_EP], ("reviews", "v1"): [V1_EP],
                   ("reviews", "v2"): [V2_EP]},
                  listener_port=15001, http_routes=[route(rule(backend("v2")))],
                  services=SERVICES)
    validate_with_envoy(t)
    [only] = routes(t)
    assert only["name"] == "primary"
    assert weights(only["route"]) == [(f"outbound|9080|v1|{REVIEWS}", 100)]
    assert t.problems == [
        f"HTTPRoute default/reviews: {REVIEWS} is also routed by VirtualService "
        "default/reviews; the lab keeps the VirtualService's routes and leaves the HTTPRoute's "
        "out for it (delete one of them)"]


def test_without_httproutes_the_istio_translation_is_unchanged():
    config = LabConfig()
    args = ([seed_virtual_service(config)], [seed_destination_rule(config)],
            {("reviews", ""): [V1_EP, V2_EP], ("reviews", "v1"): [V1_EP],
             ("reviews", "v2"): [V2_EP]})
    plain = translate(*args, listener_port=15001)
    with_services = translate(*copy.deepcopy(args), listener_port=15001, http_routes=[],
                              services=SERVICES)
    assert (with_services.listeners, with_services.clusters, with_services.version) == (
        plain.listeners, plain.clusters, plain.version)


# ---------------------------------------------------------------- the control plane's inputs


CONFIG = LabConfig(router="gateway-api",
                   versions={"v1": VersionSettings(replicas=2), "v2": VersionSettings()})
RUNNING = {"reviews": {
    "reviews-v1": [Endpoint("127.0.0.1", 7001), Endpoint("127.0.0.1", 7002)],
    "reviews-v2": [Endpoint("127.0.0.1", 7003)]}}


def test_services_select_the_replicas_of_deployments_whose_template_labels_match():
    deployments = [seed_deployment(CONFIG, v) for v in ("v1", "v2")]
    deployments[0]["spec"]["replicas"] = 1
    services = [seed_service(CONFIG), seed_version_service(CONFIG, "v1"),
                seed_version_service(CONFIG, "v2"),
                {"metadata": {"name": "external"}, "spec": {"ports": [{"port": 80}]}}]
    resolved = resolve_services(services, deployments, RUNNING)
    assert resolved["reviews-v1"] == ServiceBackend((9080,), (Endpoint("127.0.0.1", 7001),))
    assert resolved["reviews-v2"].endpoints == (Endpoint("127.0.0.1", 7003),)
    assert resolved["reviews"].endpoints == (Endpoint("127.0.0.1", 7001),
                                             Endpoint("127.0.0.1", 7003))
    assert resolved["external"] == ServiceBackend((80,), ())  # no selector: nothing


def test_the_seeded_gateway_objects_translate_to_everything_on_v1():
    deployments = [seed_deployment(CONFIG, v) for v in ("v1", "v2")]
    services = [seed_service(CONFIG)] + [seed_version_service(CONFIG, v) for v in ("v1", "v2")]
    t = translate_objects([], [], deployments, RUNNING, listener_port=15001,
                          http_routes=[seed_http_route(CONFIG)], services=services)
    validate_with_envoy(t)
    assert t.problems == []
    [primary] = routes(t)
    assert primary["name"] == "default.reviews.primary"
    assert primary["route"]["cluster"] == V1
    assert endpoints_of(t, V1) == [7001, 7002] and endpoints_of(t, V2) == [7003]
