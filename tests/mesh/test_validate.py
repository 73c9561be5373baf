"""The offline analyzer: each check refuses what Istio refuses and accepts what Istio accepts."""

import argparse
import copy
import json
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from canarykit.cli import main as cli
from canarykit.core.errors import BadInput, ExitCode, exit_code_for
from canarykit.mesh import istio, validate
from canarykit.mesh.validate import Message, analyze, has_errors, validate_object

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RUN_VALIDATE = (
    "import argparse,sys; from canarykit.mesh import validate; p=argparse.ArgumentParser(); "
    "validate.add_arguments(p); sys.exit(validate.run(p.parse_args(sys.argv[1:])))"
)


def virtual_service(http=None, namespace=None, **spec):
    """A valid VS for `reviews`: a header route to v2, then a 90/10 split."""
    if http is None:
        http = [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                       {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}]},
        ]
    metadata = {"name": "reviews"}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": metadata, "spec": {"hosts": ["reviews"], "http": http, **spec}}


def destination_rule(subsets=("v1", "v2"), host="reviews", namespace=None, **spec):
    metadata = {"name": "reviews"}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": metadata,
            "spec": {"host": host,
                     "subsets": [{"name": s, "labels": {"version": s}} for s in subsets],
                     **spec}}


def rule(route=None, **fields):
    """One http rule routing to reviews v1 unless told otherwise."""
    return {"route": route or [{"destination": {"host": "reviews", "subset": "v1"}}], **fields}


def texts(messages, level=None, code=None):
    return [m.message for m in messages
            if (level is None or m.level == level) and (code is None or m.code == code)]


def errors(obj):
    return texts(validate_object(obj), level="Error")


def http_errors(*rules):
    return errors(virtual_service(list(rules)))


def policy_errors(policy):
    return errors(destination_rule(trafficPolicy=policy))


# --- the valid baseline ---------------------------------------------------------------------


def test_valid_pair_has_no_messages():
    assert analyze([virtual_service(), destination_rule()]) == []


@pytest.mark.parametrize("api_version", ["networking.istio.io/v1", "networking.istio.io/v1beta1",
                                         "networking.istio.io/v1alpha3"])
def test_all_istio_api_versions_share_the_schema(api_version):
    vs = virtual_service()
    vs["apiVersion"] = api_version
    vs["spec"]["http"][1]["route"][0]["weight"] = -5
    assert errors(vs) == ["spec.http[1].route[0].weight: must be >= 0 (got -5)"]


def test_unknown_api_version_of_an_istio_kind_is_a_schema_error():
    vs = virtual_service()
    vs["apiVersion"] = "networking.istio.io/v2"
    [message] = validate_object(vs)
    assert (message.level, message.code) == ("Error", "IST0106")
    assert message.message.startswith("apiVersion: must be one of networking.istio.io/v1, ")
    assert message.message.endswith("(got 'networking.istio.io/v2')")


def test_other_kinds_are_ignored():
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews"},
               "spec": {"ports": "not even a list"}}
    assert validate_object(service) == []
    assert analyze([service, virtual_service(), destination_rule()]) == []


def test_a_mapping_that_is_not_a_kubernetes_object_is_a_schema_error():
    [message] = validate_object({"hosts": ["reviews"]})
    assert (message.level, message.code) == ("Error", "IST0106")
    assert "apiVersion and kind are required" in message.message


def test_namespace_defaults_to_default():
    vs = virtual_service()
    vs["spec"]["hosts"] = []
    [message] = validate_object(vs)
    assert (message.kind, message.namespace, message.name) == ("VirtualService", "default",
                                                               "reviews")
    vs["metadata"]["namespace"] = "prod"
    assert validate_object(vs)[0].namespace == "prod"


def test_wrong_types_are_reported_not_crashed_on():
    assert http_errors(rule([{"destination": {"host": "reviews"}, "weight": "ten"}])) == [
        "spec.http[0].route[0].weight: must be an integer (got 'ten')"]
    assert errors(virtual_service(http="all")) == [
        "spec.http: must be a list (got 'all')", "spec: must have http, tcp or tls routes"]
    assert http_errors(rule([{"destination": {"host": "reviews"}, "weight": True}])) == [
        "spec.http[0].route[0].weight: must be an integer (got True)"]


# --- IST0101: subsets that no DestinationRule defines ---------------------------------------


def test_route_to_subset_missing_from_the_destination_rule_is_ist0101():
    vs = virtual_service([rule([{"destination": {"host": "reviews", "subset": "v3"}}])])
    [message] = analyze([vs, destination_rule()])
    assert message == Message("Error", "IST0101", "VirtualService", "default", "reviews",
                              'Referenced host+subset in destinationrule not found: "reviews+v3"')


def test_route_to_subset_without_any_destination_rule_is_ist0101():
    assert texts(analyze([virtual_service()]), code="IST0101") == [
        'Referenced host+subset in destinationrule not found: "reviews+v2"',
        'Referenced host+subset in destinationrule not found: "reviews+v1"']


def test_destination_without_subset_needs_no_destination_rule():
    vs = virtual_service([rule([{"destination": {"host": "reviews"}}])])
    assert analyze([vs]) == []


def test_validate_object_alone_makes_no_cross_object_checks():
    assert validate_object(virtual_service()) == []


@pytest.mark.parametrize("vs_host", ["reviews", "reviews.default", "reviews.default.svc",
                                     "reviews.default.svc.cluster.local"])
@pytest.mark.parametrize("dr_host", ["reviews", "reviews.default.svc.cluster.local"])
def test_short_and_qualified_hosts_name_the_same_service(vs_host, dr_host):
    vs = virtual_service([rule([{"destination": {"host": vs_host, "subset": "v1"}}])])
    assert analyze([vs, destination_rule(host=dr_host)]) == []


def test_short_hosts_resolve_in_each_objects_own_namespace():
    vs = virtual_service([rule([{"destination": {"host": "reviews", "subset": "v1"}}])],
                         namespace="prod")
    assert texts(analyze([vs, destination_rule()]), code="IST0101") == [
        'Referenced host+subset in destinationrule not found: "reviews+v1"']
    assert analyze([vs, destination_rule(namespace="prod")]) == []


def test_wildcard_destination_rule_host_covers_the_service():
    vs = virtual_service([rule([{"destination": {"host": "reviews", "subset": "v1"}}])])
    assert analyze([vs, destination_rule(host="*.default.svc.cluster.local")]) == []


@pytest.mark.parametrize("mirror_fields", [
    {"mirror": {"host": "reviews", "subset": "v3"}},
    {"mirrors": [{"destination": {"host": "reviews", "subset": "v3"}}]},
])
def test_mirror_to_missing_subset_is_ist0101(mirror_fields):
    vs = virtual_service([rule(**mirror_fields)])
    assert texts(analyze([vs, destination_rule()])) == [
        'Referenced mirror+subset in destinationrule not found: "reviews+v3"']
    mirror_fields = json.loads(json.dumps(mirror_fields).replace("v3", "v2"))
    assert analyze([virtual_service([rule(**mirror_fields)]), destination_rule()]) == []


def test_tcp_route_to_missing_subset_is_ist0101():
    vs = virtual_service(http=None)
    del vs["spec"]["http"]
    vs["spec"]["tcp"] = [{"route": [{"destination": {"host": "reviews", "subset": "v9"}}]}]
    assert texts(analyze([vs, destination_rule()])) == [
        'Referenced host+subset in destinationrule not found: "reviews+v9"']


# --- IST0109: two VirtualServices for one host on the mesh gateway ---------------------------


def named(obj, name):
    obj["metadata"]["name"] = name
    return obj


def test_two_mesh_virtual_services_for_one_host_are_ist0109_on_both():
    other = named(virtual_service(hosts=["reviews.default.svc.cluster.local"]), "reviews-canary")
    messages = [m for m in analyze([virtual_service(), other, destination_rule()])
                if m.code == "IST0109"]
    assert [(m.level, m.name) for m in messages] == [("Error", "reviews"),
                                                    ("Error", "reviews-canary")]
    assert messages[0].message.startswith(
        "The VirtualServices default/reviews, default/reviews-canary associated with mesh "
        'gateway define the same host "reviews.default.svc.cluster.local"')


def test_one_host_in_two_namespaces_or_on_a_gateway_only_does_not_conflict():
    elsewhere = named(virtual_service(namespace="staging"), "reviews")
    ingress = named(virtual_service(gateways=["bookinfo-gateway"]), "reviews-ingress")
    assert texts(analyze([virtual_service(), elsewhere, ingress, destination_rule(),
                          destination_rule(namespace="staging")]), code="IST0109") == []


@pytest.mark.parametrize("gateways", [["mesh"], ["mesh", "bookinfo-gateway"]])
def test_naming_the_mesh_gateway_counts_as_the_mesh(gateways):
    other = named(virtual_service(gateways=gateways), "reviews-2")
    assert len(texts(analyze([virtual_service(), other, destination_rule()]),
                     code="IST0109")) == 2


def test_one_virtual_service_given_in_two_files_does_not_conflict_with_itself():
    assert texts(analyze([virtual_service(), virtual_service(), destination_rule()]),
                 code="IST0109") == []


# --- IST0130 / IST0131: rules and matches that are never used -------------------------------


def jason(**extra):
    return {"headers": {"end-user": {"exact": "jason"}}, **extra}


def test_rule_after_a_rule_without_match_is_unreachable():
    messages = validate_object(virtual_service([rule(), rule(match=[jason()])]))
    assert [(m.level, m.code, m.message) for m in messages] == [
        ("Warning", "IST0130",
         "VirtualService rule #1 not used: rule #0 before it has no match and takes every "
         "request, so its route to subset v1 never applies; move #0 last.")]


def test_second_rule_without_match_is_unreachable():
    assert texts(validate_object(virtual_service([rule(), rule()]))) == [
        "VirtualService rule #1 not used: rule #0 before it has no match and takes every "
        "request, so its route to subset v1 never applies; only the last rule can have no "
        "matches."]


def test_rule_after_a_match_all_rule_is_unreachable():
    vs = virtual_service([rule(match=[{"uri": {"prefix": "/"}}]), rule(match=[jason()]), rule()])
    assert texts(validate_object(vs), code="IST0130") == [
        "VirtualService rule #1 not used: rule #0 before it has match #0, which takes every "
        "request, so its route to subset v1 never applies; move #0 last.",
        "VirtualService rule #2 not used: rule #0 before it has match #0, which takes every "
        "request, so its route to subset v1 never applies; only the last rule can take every "
        "request."]


def test_specific_rules_before_the_catch_all_are_reachable():
    vs = virtual_service([rule(match=[jason()]), rule(match=[{"uri": {"prefix": "/api"}}]),
                          rule()])
    assert validate_object(vs) == []


def test_repeated_match_is_ist0131_and_a_rule_of_only_repeats_is_ist0130():
    vs = virtual_service([rule(match=[jason()]), rule(match=[jason(name="again")]), rule()])
    messages = validate_object(vs)
    assert [(m.level, m.code, m.message) for m in messages] == [
        ("Info", "IST0131", 'VirtualService rule #1 match "again" is not used '
                            "(duplicate/overlapping match in rule #0)."),
        ("Warning", "IST0130",
         "VirtualService rule #1 not used: each of its matches repeats a match of an earlier "
         "rule, so its route to subset v1 never applies.")]
    assert not has_errors(messages)


def test_named_rules_are_quoted_like_istioctl():
    vs = virtual_service([rule(name="testers", match=[jason()]),
                          rule(name="more", match=[jason(), {"uri": {"prefix": "/x"}}])])
    assert texts(validate_object(vs)) == [
        'VirtualService rule "more" match #0 is not used '
        '(duplicate/overlapping match in rule "testers").']


def test_different_matches_are_not_duplicates():
    vs = virtual_service([rule(match=[jason()]), rule(match=[jason(port=8080)]), rule()])
    assert validate_object(vs) == []


# --- weights -------------------------------------------------------------------------------


def split(*weights):
    return [{"destination": {"host": "reviews", "subset": f"v{i + 1}"}, "weight": w}
            for i, w in enumerate(weights)]


def test_negative_weight_is_refused_naming_the_field():
    assert http_errors(rule(split(105, -5))) == [
        "spec.http[0].route[1].weight: must be >= 0 (got -5)"]


def test_weight_above_100_is_accepted_like_istio_1_15():
    messages = validate_object(virtual_service([rule(split(250))]))
    assert messages == []


def test_total_weight_zero_with_several_destinations_is_refused():
    assert http_errors(rule(split(0, 0))) == [
        "spec.http[0].route: total weight of several destinations must not be 0 (got 0)"]
    assert http_errors(rule(split(0))) == []


def test_weights_not_summing_to_100_warn_with_ck0001_but_are_not_errors():
    messages = validate_object(virtual_service([rule(split(90, 20))]))
    assert [(m.level, m.code) for m in messages] == [("Warning", "CK0001")]
    assert messages[0].message.startswith(
        "spec.http[0].route: destination weights sum to 110, not 100; Istio >= 1.15 accepts")
    assert not has_errors(messages)
    assert validate_object(virtual_service([rule(split(90, 10))])) == []


# --- destinations and hosts ----------------------------------------------------------------


def test_route_without_destination_host_is_refused():
    assert http_errors(rule([{"destination": {"subset": "v1"}}])) == [
        "spec.http[0].route[0].destination.host: is required"]
    assert http_errors(rule([{"weight": 100}])) == [
        "spec.http[0].route[0].destination: is required"]


def test_http_rule_without_any_action_is_refused():
    assert http_errors({"match": [jason()]}) == [
        "spec.http[0]: must have a route, redirect, directResponse or delegate"]


def test_an_empty_or_null_http_rule_is_refused():
    assert http_errors(None) == ["spec.http[0]: must not be empty"]
    assert http_errors({}) == ["spec.http[0]: must not be empty"]


def test_virtual_service_without_hosts_is_refused():
    vs = virtual_service()
    del vs["spec"]["hosts"]
    assert errors(vs) == ["spec.hosts: must list at least one host"]


@pytest.mark.parametrize("gateways", [None, ["mesh"], ["istio-system/gw", "mesh"]])
def test_wildcard_host_in_a_mesh_virtual_service_is_refused(gateways):
    vs = virtual_service()
    vs["spec"]["hosts"] = ["*"]
    if gateways is not None:
        vs["spec"]["gateways"] = gateways
    [message] = errors(vs)
    assert message.startswith("spec.hosts[0]: wildcard host * is not allowed")


def test_wildcard_host_on_a_gateway_only_virtual_service_is_accepted():
    vs = virtual_service(gateways=["istio-system/public-gateway"])
    vs["spec"]["hosts"] = ["*"]
    assert errors(vs) == []


def test_destination_subset_must_be_a_dns_label():
    assert http_errors(rule([{"destination": {"host": "reviews", "subset": "V1_beta"}}])) == [
        "spec.http[0].route[0].destination.subset: must be a DNS-1123 label "
        "(a-z, 0-9 and '-', at most 63) (got 'V1_beta')"]


# --- mirrors -------------------------------------------------------------------------------


def test_mirror_and_mirrors_together_are_refused():
    mirror = {"host": "reviews", "subset": "v2"}
    assert http_errors(rule(mirror=mirror, mirrors=[{"destination": mirror}])) == [
        "spec.http[0]: mirror and mirrors cannot both be set"]
    assert http_errors(rule(mirror=mirror)) == []
    assert http_errors(rule(mirrors=[{"destination": mirror}])) == []


@pytest.mark.parametrize("value", [150, -1, 100.5])
def test_mirror_percentage_outside_0_to_100_is_refused(value):
    assert http_errors(rule(mirror={"host": "reviews"}, mirrorPercentage={"value": value})) == [
        f"spec.http[0].mirrorPercentage.value: must be between 0 and 100 (got {value!r})"]


@pytest.mark.parametrize("value", [0, 12.5, 100])
def test_mirror_percentage_inside_0_to_100_is_accepted(value):
    assert http_errors(rule(mirror={"host": "reviews"}, mirrorPercentage={"value": value})) == []


def test_mirrors_percentage_outside_0_to_100_is_refused():
    mirrors = [{"destination": {"host": "reviews"}, "percentage": {"value": 100}},
               {"destination": {"host": "ratings"}, "percentage": {"value": 101}}]
    assert http_errors(rule(mirrors=mirrors)) == [
        "spec.http[0].mirrors[1].percentage.value: must be between 0 and 100 (got 101)"]


# --- fault injection -----------------------------------------------------------------------


def test_fault_needs_abort_or_delay():
    assert http_errors(rule(fault={})) == ["spec.http[0].fault: must have an abort and/or a delay"]
    assert http_errors(rule(fault={"delay": {"fixedDelay": "5s"}})) == []


def test_abort_needs_a_status():
    assert http_errors(rule(fault={"abort": {"percentage": {"value": 10}}})) == [
        "spec.http[0].fault.abort: must set httpStatus, grpcStatus or http2Error"]
    assert http_errors(rule(fault={"abort": {"grpcStatus": "UNAVAILABLE"}})) == []


@pytest.mark.parametrize("status", [199, 600, 700])
def test_abort_http_status_outside_200_to_599_is_refused(status):
    assert http_errors(rule(fault={"abort": {"httpStatus": status}})) == [
        f"spec.http[0].fault.abort.httpStatus: must be between 200 and 599 (got {status})"]


@pytest.mark.parametrize("status", [200, 503, 599])
def test_abort_http_status_inside_200_to_599_is_accepted(status):
    assert http_errors(rule(fault={"abort": {"httpStatus": status}})) == []


def test_fault_percentages_outside_0_to_100_are_refused():
    fault = {"abort": {"httpStatus": 503, "percentage": {"value": 120}},
             "delay": {"fixedDelay": "1s", "percentage": {"value": -5}}}
    assert http_errors(rule(fault=fault)) == [
        "spec.http[0].fault.abort.percentage.value: must be between 0 and 100 (got 120)",
        "spec.http[0].fault.delay.percentage.value: must be between 0 and 100 (got -5)"]


# --- retries -------------------------------------------------------------------------------


def test_retry_policy_with_zero_attempts_is_refused():
    assert http_errors(rule(retries={"attempts": 0, "perTryTimeout": "2s"})) == [
        "spec.http[0].retries.attempts: must be > 0 when perTryTimeout is set "
        "(0 or absent disables retries) (got 0)"]
    assert http_errors(rule(retries={"retryOn": "5xx"})) == [
        "spec.http[0].retries.attempts: must be > 0 when retryOn is set "
        "(0 or absent disables retries) (got 0)"]
    assert http_errors(rule(retries={"attempts": 0})) == []
    assert http_errors(rule(retries={"attempts": 3, "perTryTimeout": "2s"})) == []


def test_unknown_retry_on_condition_is_refused():
    assert http_errors(rule(retries={"attempts": 2, "retryOn": "5xx,bogus"})) == [
        "spec.http[0].retries.retryOn: 'bogus' is not an Envoy retry condition or HTTP status "
        "code (got '5xx,bogus')"]


def test_known_retry_on_conditions_and_status_codes_are_accepted():
    retry_on = ",".join(sorted(istio.RETRY_ON_POLICIES)) + ",503,429"
    assert http_errors(rule(retries={"attempts": 2, "retryOn": retry_on})) == []


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize("text, problem", [
    ("abc", "must be a duration such as 100ms, 1.5s or 1h30m"),
    ("5 s", "must be a duration such as 100ms, 1.5s or 1h30m"),
    ("0s", "must be at least 1ms"),
    ("500us", "must be at least 1ms"),
    ("-1s", "must be at least 1ms"),
    ("1.5ms", "must be a whole number of milliseconds"),
])
def test_bad_route_timeout_is_refused(text, problem):
    assert http_errors(rule(timeout=text)) == [f"spec.http[0].timeout: {problem} (got {text!r})"]


@pytest.mark.parametrize("text", ["1ms", "1.5s", "2m", "1h30m"])
def test_good_route_timeout_is_accepted(text):
    assert http_errors(rule(timeout=text)) == []


def test_durations_are_checked_wherever_istio_has_them():
    fault = {"delay": {"fixedDelay": "0s"}}
    retries = {"attempts": 1, "perTryTimeout": "soon"}
    assert http_errors(rule(fault=fault, retries=retries)) == [
        "spec.http[0].fault.delay.fixedDelay: must be at least 1ms (got '0s')",
        "spec.http[0].retries.perTryTimeout: must be a duration such as 100ms, 1.5s or 1h30m "
        "(got 'soon')"]
    policy = {"outlierDetection": {"interval": "0.1ms", "baseEjectionTime": "30s"},
              "connectionPool": {"tcp": {"connectTimeout": "fast"}}}
    assert policy_errors(policy) == [
        "spec.trafficPolicy.outlierDetection.interval: must be at least 1ms (got '0.1ms')",
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout: must be a duration such as 100ms, "
        "1.5s or 1h30m (got 'fast')"]


def test_zero_is_allowed_where_istio_gives_it_a_meaning():
    policy = {"connectionPool": {"tcp": {"idleTimeout": "0s"}},
              "loadBalancer": {"consistentHash": {"httpCookie": {"name": "u", "ttl": "0s"}}}}
    assert policy_errors(policy) == []
    policy["loadBalancer"]["consistentHash"]["httpCookie"]["ttl"] = "1 day"
    assert policy_errors(policy) == [
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl: must be a duration such "
        "as 100ms, 1.5s or 1h30m (got '1 day')"]


# --- regular expressions -------------------------------------------------------------------


def test_lookahead_is_refused_although_python_re_accepts_it():
    pattern = "^(?=.*canary).*$"
    assert re.compile(pattern)  # Python would run it; Envoy's RE2 would not
    [message] = http_errors(rule(match=[{"headers": {"cookie": {"regex": pattern}}}]))
    assert message.startswith("spec.http[0].match[0].headers.cookie.regex: is not a valid RE2 "
                              "regular expression: ")
    assert message.endswith(f"(got {pattern!r})")


@pytest.mark.parametrize("match, field", [
    ({"uri": {"regex": "/api/(v1"}}, "uri"),
    ({"authority": {"regex": "[a-"}}, "authority"),
    ({"method": {"regex": "GET|(?!POST)"}}, "method"),
    ({"queryParams": {"user": {"regex": "(a)\\1"}}}, "queryParams.user"),
    ({"withoutHeaders": {"x-debug": {"regex": "(?<=a)b"}}}, "withoutHeaders.x-debug"),
])
def test_invalid_regex_is_refused_in_every_string_match(match, field):
    [message] = http_errors(rule(match=[match]))
    assert message.startswith(f"spec.http[0].match[0].{field}.regex: is not a valid RE2")


def test_valid_re2_regexes_are_accepted():
    match = {"uri": {"regex": "/api/v[0-9]+/.*"},
             "headers": {"cookie": {"regex": "^(.*?;\\s*)?canary=always(;.*)?$"}},
             "withoutHeaders": {"x-debug": {"regex": "*"}}}
    assert http_errors(rule(match=[match])) == []


def test_string_match_with_two_kinds_is_refused():
    match = {"headers": {"end-user": {"exact": "jason", "prefix": "j"}}}
    assert http_errors(rule(match=[match])) == [
        "spec.http[0].match[0].headers.end-user: must set only one of exact, prefix or regex "
        "(got ['exact', 'prefix'])"]


# --- DestinationRule -----------------------------------------------------------------------


def test_destination_rule_without_host_is_refused():
    dr = destination_rule()
    del dr["spec"]["host"]
    assert errors(dr) == ["spec.host: is required"]


@pytest.mark.parametrize("name", ["V1", "v1_beta", "-v1", "v" * 64])
def test_subset_names_must_be_dns_labels(name):
    assert errors(destination_rule(subsets=[name])) == [
        f"spec.subsets[0].name: must be a DNS-1123 label (a-z, 0-9 and '-', at most 63) "
        f"(got {name!r})"]


@pytest.mark.parametrize("name", ["v1", "canary-2", "v" * 63])
def test_dns_label_subset_names_are_accepted(name):
    assert errors(destination_rule(subsets=[name])) == []


def test_duplicate_subset_names_are_refused():
    assert errors(destination_rule(subsets=["v1", "v2", "v1"])) == [
        "spec.subsets[2].name: duplicates spec.subsets[0].name (got 'v1')"]


def test_consistent_hash_with_more_than_one_key_is_refused():
    hashing = {"httpHeaderName": "x-user", "useSourceIp": True}
    assert policy_errors({"loadBalancer": {"consistentHash": hashing}}) == [
        "spec.trafficPolicy.loadBalancer.consistentHash: must set only one of httpHeaderName, "
        "httpCookie, useSourceIp, httpQueryParameterName (got ['httpHeaderName', 'useSourceIp'])"]
    assert policy_errors({"loadBalancer": {"consistentHash": {"useSourceIp": True}}}) == []


def test_consistent_hash_with_simple_is_refused():
    balancer = {"simple": "ROUND_ROBIN", "consistentHash": {"useSourceIp": True}}
    assert policy_errors({"loadBalancer": balancer}) == [
        "spec.trafficPolicy.loadBalancer: must set only one of simple or consistentHash"]
    assert policy_errors({"loadBalancer": {"simple": "LEAST_REQUEST"}}) == []


def test_negative_consecutive_5xx_errors_is_refused():
    assert policy_errors({"outlierDetection": {"consecutive5xxErrors": -1}}) == [
        "spec.trafficPolicy.outlierDetection.consecutive5xxErrors: must be >= 0 (got -1)"]
    assert policy_errors({"outlierDetection": {"consecutive5xxErrors": 0}}) == []


@pytest.mark.parametrize("percent", [-1, 101])
def test_max_ejection_percent_outside_0_to_100_is_refused(percent):
    assert policy_errors({"outlierDetection": {"maxEjectionPercent": percent}}) == [
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 and 100 "
        f"(got {percent})"]


def test_max_ejection_percent_of_100_is_accepted():
    assert policy_errors({"outlierDetection": {"maxEjectionPercent": 100}}) == []


def test_subset_and_port_level_policies_are_checked_too():
    dr = destination_rule()
    dr["spec"]["subsets"][1]["trafficPolicy"] = {
        "outlierDetection": {"maxEjectionPercent": 150},
        "portLevelSettings": [{"port": {"number": 9080},
                               "connectionPool": {"http": {"idleTimeout": "0s"}}}]}
    assert errors(dr) == [
        "spec.subsets[1].trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 "
        "and 100 (got 150)",
        "spec.subsets[1].trafficPolicy.portLevelSettings[0].connectionPool.http.idleTimeout: "
        "must be at least 1ms (got '0s')"]


def test_empty_traffic_policy_is_refused():
    assert policy_errors({}) == ["spec.trafficPolicy: must set at least one field"]


# --- integers, durations and percentages as Istio's protobuf types hold them ---------------


def test_a_weight_beyond_a_32_bit_integer_is_refused_naming_the_field():
    assert http_errors(rule(split(2**31))) == [
        f"spec.http[0].route[0].weight: is out of range for a 32-bit integer (got {2**31})"]
    assert http_errors(rule(split(2**31 - 1))) == []


def test_weights_adding_up_beyond_a_32_bit_integer_are_refused():
    assert http_errors(rule(split(2**30, 2**30))) == [
        f"spec.http[0].route: weights add up beyond a 32-bit integer (got {2**31})"]


@pytest.mark.parametrize("policy, field, kind", [
    ({"outlierDetection": {"consecutive5xxErrors": 2**32}},
     "outlierDetection.consecutive5xxErrors", "an unsigned 32-bit integer"),
    ({"connectionPool": {"tcp": {"maxConnections": 2**31}}},
     "connectionPool.tcp.maxConnections", "a 32-bit integer"),
    ({"connectionPool": {"http": {"http2MaxRequests": 10**30}}},
     "connectionPool.http.http2MaxRequests", "a 32-bit integer"),
    ({"connectionPool": {"tcp": {"tcpKeepalive": {"probes": 2**32}}}},
     "connectionPool.tcp.tcpKeepalive.probes", "an unsigned 32-bit integer"),
    ({"loadBalancer": {"consistentHash": {"ringHash": {"minimumRingSize": 2**64}}}},
     "loadBalancer.consistentHash.ringHash.minimumRingSize", "an unsigned 64-bit integer"),
])
def test_traffic_policy_integers_beyond_their_type_are_refused(policy, field, kind):
    [error] = policy_errors(policy)
    assert error.startswith(f"spec.trafficPolicy.{field}: is out of range for {kind} (got ")


def test_retry_attempts_and_ports_beyond_their_type_are_refused():
    assert http_errors(rule(retries={"attempts": 2**31})) == [
        f"spec.http[0].retries.attempts: is out of range for a 32-bit integer (got {2**31})"]
    destination = {"host": "reviews", "subset": "v1", "port": {"number": 2**32}}
    assert http_errors(rule([{"destination": destination}])) == [
        "spec.http[0].route[0].destination.port.number: is out of range for an unsigned 32-bit "
        f"integer (got {2**32})"]


def test_a_duration_beyond_the_longest_go_duration_is_refused():
    assert http_errors(rule(timeout="2562048h")) == [
        "spec.http[0].timeout: must be at most 2562047h47m16s (the longest Go duration) "
        "(got '2562048h')"]
    assert http_errors(rule(timeout="2562047h")) == []
    assert http_errors(rule(timeout="9" * 400 + "h"))[0].startswith(
        "spec.http[0].timeout: must be at most 2562047h47m16s")


def test_a_percentage_between_0_and_a_millionth_is_refused_like_istio():
    assert http_errors(rule(mirrorPercentage={"value": 0.00001})) == [
        "spec.http[0].mirrorPercentage.value: must be 0 or at least 0.0001 (got 1e-05)"]
    assert http_errors(rule(mirrorPercentage={"value": 0.0001})) == []


# --- header names and header operations, as Istio validates them ----------------------------


def header_match_errors(headers, field="headers"):
    return http_errors(rule(match=[{field: headers}]))


@pytest.mark.parametrize("name, shown", [
    ("", '""'),
    ('x-"quoted"', '"x-\\"quoted\\""'),
    ("x-new\nline", '"x-new\\nline"'),
    ("x y", '"x y"'),
])
@pytest.mark.parametrize("field", ["headers", "withoutHeaders"])
def test_a_header_name_istio_refuses_is_refused_on_one_line(name, shown, field):
    found = header_match_errors({name: {"exact": "v"}}, field)
    assert len(found) == 1 and "\n" not in found[0]
    assert found[0].startswith(f"spec.http[0].match[0].{field}.{shown}: ")
    assert ("header name cannot be empty" if name == "" else "is not a valid header name") \
        in found[0]


@pytest.mark.parametrize("name", [
    "x-canary", "X-Canary", ":authority", ":path", "@request.auth.claims.group",
    "@request.auth.claims[nested][key]", "x_under.score~ok"])
def test_header_names_istio_accepts_are_accepted(name):
    gateway_bound = virtual_service([rule(match=[{"headers": {name: {"exact": "v"}}}])],
                                    gateways=["istio-system/public"])
    assert errors(gateway_bound) == []  # JWT claims route only at a gateway


def test_query_parameter_names_are_not_header_names():
    assert header_match_errors({"a b": {"exact": "v"}}, "queryParams") == []


def test_a_null_header_match_is_refused_like_istio():
    assert header_match_errors({"x-canary": None}) == [
        "spec.http[0].match[0].headers.x-canary: header match cannot be null"]


@pytest.mark.parametrize("operations, expected", [
    ({"request": {"set": {"": "v"}}}, "spec.http[0].headers.request.set.\"\": header name cannot "
                                      "be empty (got '')"),
    ({"request": {"remove": ["Host"]}}, "spec.http[0].headers.request.remove[0]: cannot set the "
                                        "Host header (got 'Host')"),
    ({"response": {"set": {":status": "200"}}}, "spec.http[0].headers.response.set.:status: "
                                                "header name cannot have a ':' prefix "
                                                "(got ':status')"),
    ({"request": {"add": {"x-a": "one\ntwo"}}}, "spec.http[0].headers.request.add.x-a: header "
                                                "value must not hold control characters or "
                                                "line breaks (got 'one\\ntwo')"),
    ({"response": {"add": {"x-a": "abc%123"}}}, "spec.http[0].headers.response.add.x-a: header "
                                               "value has a '%' that starts no %VARIABLE% "
                                               "(write %% for a percent sign) (got 'abc%123')"),
])
def test_header_operations_istio_refuses_are_refused(operations, expected):
    assert http_errors(rule(headers=operations)) == [expected]


def test_header_operations_istio_accepts_are_accepted_on_rules_and_routes():
    operations = {"request": {"set": {"host": "a", ":authority": "b", "x-a": "100%%"},
                              "add": {"x-b": "%HOSTNAME% and %START_TIME%"},
                              "remove": ["x-c"]},
                  "response": {"set": {"x-d": "v"}, "remove": ["x-e"]}}
    route = [{"destination": {"host": "reviews", "subset": "v1"}, "headers": operations}]
    assert http_errors(rule(route, headers=operations)) == []


def test_a_header_operation_name_envoy_would_refuse_is_a_warning():
    messages = validate_object(virtual_service([rule(headers={"request": {"set": {"a b": "v"}}})]))
    assert texts(messages, level="Error") == []
    assert texts(messages, code="CK0002") == [
        "spec.http[0].headers.request.set.\"a b\": header name 'a b' is not an HTTP token; Istio "
        "accepts it but Envoy refuses the route"]


# --- messages stay short whatever the input -------------------------------------------------


def test_a_long_value_is_cut_in_its_message():
    [error] = http_errors(rule(match=[{"uri": {"regex": "(?=" + "a" * 1000}}]))
    assert len(error) < 300 and error.endswith("...)")


def test_a_long_name_is_cut_in_its_message():
    vs = virtual_service([rule(split(-1))])
    vs["metadata"]["name"] = "r" * 100_000
    [message] = [m for m in validate_object(vs) if m.level == "Error"]
    assert len(message.format()) < 400


def test_many_conflicting_virtual_services_name_a_few_each():
    services = []
    for n in range(40):
        vs = virtual_service([rule()])
        vs["metadata"]["name"] = f"reviews-{n}"
        services.append(vs)
    messages = [m for m in analyze(services) if m.code == "IST0109"]
    assert len(messages) == 40
    assert all("and 35 more" in m.message and len(m.message) < 500 for m in messages)


# --- time grows with the input, never with its square ---------------------------------------


def test_many_wildcard_destination_rules_and_services_are_checked_in_linear_time():
    count = 4000
    objects = [destination_rule(host=f"*.ns{n}.svc.cluster.local") for n in range(count)]
    objects += [virtual_service([rule([{"destination": {"host": f"s{n}.other", "subset": "v1"}}])])
                for n in range(count)]
    for n, vs in enumerate(objects[count:]):
        vs["metadata"]["name"] = f"s{n}"
        vs["spec"]["hosts"] = [f"s{n}"]
    started = time.monotonic()
    messages = analyze(objects)
    assert time.monotonic() - started < 2.0
    assert len([m for m in messages if m.code == "IST0101"]) == count


def test_a_service_with_many_missing_subsets_names_each_once():
    """(How fast: benchmarks/validate_speed.py.)"""
    routes = [{"destination": {"host": "reviews", "subset": f"v{n}"}} for n in range(20_000)]
    messages = analyze([virtual_service([rule(routes)] * 2)])
    assert len([m for m in messages if m.code == "IST0101"]) == 20_000


# --- messages ------------------------------------------------------------------------------


def test_message_formats_like_istioctl_and_round_trips_to_a_dict():
    message = Message("Error", "IST0101", "VirtualService", "default", "reviews",
                      'Referenced host+subset in destinationrule not found: "reviews+v3"')
    assert message.format() == (
        'Error [IST0101] (VirtualService default/reviews) Referenced host+subset in '
        'destinationrule not found: "reviews+v3"')
    assert message.to_dict() == {
        "level": "Error", "code": "IST0101", "kind": "VirtualService", "namespace": "default",
        "name": "reviews",
        "message": 'Referenced host+subset in destinationrule not found: "reviews+v3"'}
    assert Message(**message.to_dict()) == message


def test_has_errors_only_counts_error_level():
    warning = Message("Warning", "CK0001", "VirtualService", "default", "r", "w")
    error = Message("Error", "IST0106", "VirtualService", "default", "r", "e")
    assert not has_errors([]) and not has_errors([warning])
    assert has_errors([warning, error])


# --- the command ---------------------------------------------------------------------------


def parse(*argv):
    parser = argparse.ArgumentParser()
    validate.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def write(tmp_path, name, *documents, text=None):
    path = tmp_path / name
    path.write_text(text if text is not None else yaml.safe_dump_all(documents))
    return path


def test_run_text_output_and_exit_1_on_errors(tmp_path, capsys):
    vs = virtual_service([rule([{"destination": {"host": "reviews", "subset": "v3"}}]),
                          rule(split(90, 20))])
    path = write(tmp_path, "vs.yaml", vs, destination_rule())
    assert validate.run(parse(path)) == 1
    assert capsys.readouterr().out == (
        "Warning [CK0001] (VirtualService default/reviews) spec.http[1].route: destination "
        "weights sum to 110, not 100; Istio >= 1.15 accepts this and splits in proportion, but "
        "it is usually a mistake\n"
        "Warning [IST0130] (VirtualService default/reviews) VirtualService rule #1 not used: "
        "rule #0 before it has no match and takes every request, so its route to subset v1 "
        "(weight 90) and subset v2 (weight 20) never applies; only the last rule can have no "
        "matches.\n"
        "Error [IST0101] (VirtualService default/reviews) Referenced host+subset in "
        'destinationrule not found: "reviews+v3"\n')


def test_run_json_output(tmp_path, capsys):
    vs = virtual_service([rule(split(90, 20))])
    path = write(tmp_path, "vs.yaml", vs, destination_rule(subsets=["v1", "v2"]))
    assert validate.run(parse(path, "--output", "json")) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == [{
        "level": "Warning", "code": "CK0001", "kind": "VirtualService", "namespace": "default",
        "name": "reviews",
        "message": "spec.http[0].route: destination weights sum to 110, not 100; Istio >= 1.15 "
                   "accepts this and splits in proportion, but it is usually a mistake"}]
    assert out == json.dumps(json.loads(out), indent=2) + "\n"


def test_run_on_clean_files_exits_0(tmp_path, capsys):
    path = write(tmp_path, "ok.yaml", virtual_service(), destination_rule())
    assert validate.run(parse(path)) == 0
    assert capsys.readouterr().out == "No validation issues found.\n"
    assert validate.run(parse(path, "-o", "json")) == 0
    assert capsys.readouterr().out == "[]\n"


def test_objects_in_several_files_are_analyzed_together(tmp_path, capsys):
    vs_path = write(tmp_path, "vs.yaml", virtual_service())
    dr_path = write(tmp_path, "dr.yaml", destination_rule())
    assert validate.run(parse(vs_path)) == 1
    capsys.readouterr()
    assert validate.run(parse(vs_path, dr_path)) == 0


def test_kubernetes_list_documents_are_opened(tmp_path):
    listing = {"apiVersion": "v1", "kind": "List",
               "items": [virtual_service([rule(split(-1, 101))]), destination_rule()]}
    assert validate.run(parse(write(tmp_path, "list.yaml", listing))) == 1


def test_run_names_a_document_that_is_not_a_kubernetes_object(tmp_path, capsys):
    path = write(tmp_path, "odd.yaml", destination_rule(), {"hosts": ["reviews"]})
    assert validate.run(parse(path)) == 1
    assert capsys.readouterr().out == (
        f"Error [IST0106] ({path} document 2) not a Kubernetes object: apiVersion and kind are "
        "required\n")


@pytest.mark.parametrize("text, problem", [
    ("kind: [unclosed\n", "is not valid YAML: did not find expected ',' or ']' at line 2, "
                           "column 1"),
    ("---\n- just\n- a list\n", "document 1: is not a mapping (got a list)"),
    ("plain words\n", "document 1: is not a mapping (got a str)"),
])
def test_unreadable_input_exits_2_naming_the_file(tmp_path, capsys, text, problem):
    path = write(tmp_path, "bad.yaml", text=text)
    assert validate.run(parse(path)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert str(path) in line and problem in line


def run_on(tmp_path, text, capsys):
    """validate's exit code and its one stderr line for a file holding `text`."""
    path = write(tmp_path, "input.yaml", text=text)
    code = validate.run(parse(path))
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


LAUGHS = "\n".join(
    [f'a: &a [{", ".join(["lol"] * 9)}]']
    + [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]"
       for a, b in zip("abcdefgh", "bcdefghi", strict=True)])


def test_a_1kb_alias_bomb_is_refused_within_a_second_using_under_100mb(tmp_path, capsys):
    # One document: the anchors sit in keys validate ignores, the alias where it looks.
    text = LAUGHS + ("\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                     "metadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - match: [*i]\n"
                     "    route: [{destination: {host: r}}]\n")
    assert len(text) < 1024
    tracemalloc.start()
    started = time.monotonic()
    code, err, out = run_on(tmp_path, text, capsys)
    took = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code == 2 and out == ""
    [line] = err
    assert "alias" in line and len(line) < 300
    assert took < 1.0 and peak < 100 * 2**20


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path, capsys):
    code, [line], _ = run_on(tmp_path, "spec: &s {http: [*s]}\n", capsys)
    assert code == 2 and "cycle" in line


def test_a_repeated_key_in_a_manifest_is_refused_naming_it_and_its_line(tmp_path, capsys):
    text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {}\nspec: {}\n"
    code, [line], _ = run_on(tmp_path, text, capsys)
    assert code == 2 and "duplicate key spec at line 4" in line


def test_nesting_beyond_the_limit_is_refused(tmp_path, capsys):
    code, [line], _ = run_on(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n", capsys)
    assert code == 2 and "nesting" in line


@pytest.mark.parametrize("items, problem", [
    ('"not a list"', "document 1: items of a kind: List must be a list (got a str)"),
    ("{a: 1}", "document 1: items of a kind: List must be a list (got a dict)"),
    ("[1]", "document 1 item 0: is not a mapping (got a int)"),
    ("[{kind: List, items: []}]", "document 1 item 0: is a List inside a List"),
])
def test_a_list_with_malformed_items_is_refused_naming_it(tmp_path, capsys, items, problem):
    code, [line], out = run_on(tmp_path, f"apiVersion: v1\nkind: List\nitems: {items}\n", capsys)
    assert code == 2 and out == "" and problem in line


def test_a_list_without_items_holds_nothing(tmp_path, capsys):
    code, err, out = run_on(tmp_path, "apiVersion: v1\nkind: List\nitems: null\n", capsys)
    assert (code, err, out) == (0, [], "No validation issues found.\n")


def test_a_list_item_is_named_by_its_index(tmp_path, capsys):
    listing = {"apiVersion": "v1", "kind": "List", "items": [destination_rule(), {"hosts": []}]}
    assert validate.run(parse(write(tmp_path, "list.yaml", listing))) == 1
    assert "document 1 item 1) not a Kubernetes object" in capsys.readouterr().out


def test_missing_file_exits_2_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert validate.run(parse(missing)) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == f"canarykit validate: {missing}: cannot read file: No such file or directory"


def test_unreadable_input_is_bad_input_with_its_exit_code_and_message(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(validate.UnreadableInput) as refused:
        validate.load_files([str(missing)])
    assert isinstance(refused.value, BadInput)
    assert exit_code_for(refused.value) == ExitCode.BAD_INPUT == 2
    assert str(refused.value) == f"{missing}: cannot read file: No such file or directory"


def test_the_cli_maps_validate_to_the_same_exit_codes(tmp_path, capsys):
    assert cli.main(["validate", str(EXAMPLES / "reviews.yaml")]) == ExitCode.OK
    assert cli.main(["validate", str(EXAMPLES / "broken.yaml")]) == ExitCode.FAILED
    capsys.readouterr()
    assert cli.main(["validate", str(tmp_path / "missing.yaml")]) == ExitCode.BAD_INPUT
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("canarykit validate: ") and "missing.yaml" in line


def run_command(*files):
    return subprocess.run([sys.executable, "-c", RUN_VALIDATE, *map(str, files)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_command_exit_codes_in_a_subprocess(tmp_path):
    assert run_command(EXAMPLES / "reviews.yaml").returncode == 0
    result = run_command(EXAMPLES / "broken.yaml")
    assert result.returncode == 1 and "IST0101" in result.stdout
    result = run_command(tmp_path / "missing.yaml")
    assert result.returncode == 2 and "missing.yaml" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# --- the shipped examples ------------------------------------------------------------------


def load(name):
    return [doc for _, doc in validate.load_files([EXAMPLES / name])]


@pytest.mark.parametrize("name", ["reviews.yaml", "reviews-canary-internal.yaml"])
def test_valid_examples_have_no_messages(name, capsys):
    assert analyze(load(name)) == []
    assert validate.run(parse(EXAMPLES / name)) == 0


def test_reviews_example_is_the_bookinfo_canary():
    vs, dr = load("reviews.yaml")
    assert (vs["metadata"], dr["metadata"]) == ({"name": "reviews", "namespace": "default"},) * 2
    header_rule, split_rule = vs["spec"]["http"]
    assert header_rule["match"] == [{"headers": {"end-user": {"exact": "jason"}}}]
    assert header_rule["route"] == [{"destination": {"host": "reviews", "subset": "v2"}}]
    assert [(r["destination"]["subset"], r["weight"]) for r in split_rule["route"]] == [
        ("v1", 90), ("v2", 10)]
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v2"]


def test_internal_canary_example_routes_header_and_cookie_to_v2():
    vs, _ = load("reviews-canary-internal.yaml")
    matches = vs["spec"]["http"][0]["match"]
    assert {"headers": {"x-canary-user": {"exact": "true"}}} in matches
    assert any("regex" in m["headers"].get("cookie", {}) for m in matches)
    assert vs["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v2"


def test_broken_example_shows_each_kind_of_mistake(capsys):
    messages = analyze(load("broken.yaml"))
    assert has_errors(messages)
    assert 'Referenced host+subset in destinationrule not found: "reviews+v3"' in texts(messages)
    assert any("not a valid RE2" in t for t in texts(messages, code="IST0106"))
    assert any("mirrorPercentage.value: must be between 0 and 100" in t for t in texts(messages))
    assert texts(messages, code="IST0130") == [
        "VirtualService rule #2 not used: rule #1 before it has no match and takes every "
        "request, so its route to subset v2 never applies; move #1 last."]
    assert validate.run(parse(EXAMPLES / "broken.yaml")) == 1


def test_examples_are_not_changed_by_validation():
    docs = load("reviews.yaml")
    before = copy.deepcopy(docs)
    analyze(docs)
    assert docs == before

