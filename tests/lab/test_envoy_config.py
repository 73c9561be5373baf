"""Specification of the Istio -> Envoy translation used by the local mesh lab.

Unit tests read the translated dicts; every translated configuration is then checked by the
real Envoy (`--mode validate` on a static bootstrap, because validate mode does not read
path-based dynamic resources), and one end-to-end test runs a real Envoy on the dynamic
bootstrap and watches it reload the files that `write_config` replaces.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from canarykit.core.errors import BadInput, CanaryKitError
from canarykit.lab.envoy_config import (
    CLUSTER_TYPE,
    DEFAULT_CLIENT,
    FAULT_FILTER,
    LISTENER_TYPE,
    ClientWorkload,
    Endpoint,
    Translation,
    bootstrap,
    cds_document,
    find_envoy,
    lds_document,
    merge_traffic_policy,
    static_bootstrap,
    translate,
    validate_with_envoy,
    write_config,
)

pytestmark = pytest.mark.lab  # every translation is checked by the real Envoy

REVIEWS = "reviews.default.svc.cluster.local"
V1 = f"outbound|9080|v1|{REVIEWS}"
V2 = f"outbound|9080|v2|{REVIEWS}"
V3 = f"outbound|9080|v3|{REVIEWS}"
ALL = f"outbound|9080||{REVIEWS}"
ENDPOINTS = {
    ("reviews", "v1"): [Endpoint("127.0.0.1", 18001), Endpoint("127.0.0.1", 18002)],
    ("reviews", "v2"): [Endpoint("127.0.0.1", 18003)],
    ("reviews", "v3"): [Endpoint("127.0.0.1", 18004)],
    ("ratings", ""): [Endpoint("127.0.0.1", 18005)],
}


# ---------------------------------------------------------------- builders


def virtual_service(*http: dict, hosts: list[str] | None = None, name: str = "reviews") -> dict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": hosts or ["reviews"], "http": list(http)},
    }


def destination_rule(traffic_policy: dict | None = None, **subset_policies: dict) -> dict:
    subsets = []
    for name in ("v1", "v2", "v3"):
        subset = {"name": name, "labels": {"version": name}}
        if name in subset_policies:
            subset["trafficPolicy"] = subset_policies[name]
        subsets.append(subset)
    spec: dict = {"host": "reviews", "subsets": subsets}
    if traffic_policy is not None:
        spec["trafficPolicy"] = traffic_policy
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": spec,
    }


def to(subset: str, weight: int | None = None, host: str = "reviews") -> dict:
    out: dict = {"destination": {"host": host, "subset": subset}}
    if weight is not None:
        out["weight"] = weight
    return out


def run(vs: list[dict], dr: list[dict] | None = None) -> Translation:
    """Translate, and have the real Envoy validate the result: every configuration these tests
    produce must be one Envoy accepts."""
    rules = [destination_rule()] if dr is None else dr
    t = translate(vs, rules, ENDPOINTS, listener_port=15001)
    validate_with_envoy(t)
    return t


def reviews_host(t: Translation) -> dict:
    manager = t.listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    return next(
        vh for vh in manager["route_config"]["virtual_hosts"] if vh["name"] == f"{REVIEWS}:9080"
    )


def routes(t: Translation) -> list[dict]:
    return reviews_host(t)["routes"]


def action(t: Translation, index: int = 0) -> dict:
    return routes(t)[index]["route"]


def cluster(t: Translation, name: str) -> dict:
    return next(c for c in t.clusters if c["name"] == name)


# ---------------------------------------------------------------- destinations and weights


def test_single_destination_routes_to_one_cluster_named_like_istio():
    t = run([virtual_service({"route": [to("v1")]})])
    assert action(t)["cluster"] == V1
    assert "weighted_clusters" not in action(t)
    assert {c["name"] for c in t.clusters} == {V1, V2, V3, ALL, ALL.replace("reviews", "ratings")}
    assert t.problems == []


def test_several_destinations_become_weighted_clusters_in_order():
    t = run([virtual_service({"route": [to("v1", 75), to("v2", 25)]})])
    assert action(t)["weighted_clusters"] == {
        "clusters": [{"name": V1, "weight": 75}, {"name": V2, "weight": 25}]
    }
    assert "cluster" not in action(t)


def test_zero_weight_destinations_are_dropped_from_weighted_clusters():
    t = run([virtual_service({"route": [to("v1", 0), to("v2", 100), to("v3", 0)]})])
    assert action(t)["weighted_clusters"]["clusters"] == [{"name": V2, "weight": 100}]


def test_destinations_that_all_weigh_zero_are_refused_naming_the_field():
    with pytest.raises(BadInput) as err:
        run([virtual_service({"route": [to("v1", 0), to("v2", 0)]})])
    assert err.value.field == "VirtualService default/reviews http[0].route"


def test_replicas_named_by_host_name_give_a_strict_dns_cluster():
    endpoints = {("reviews", "v1"): [Endpoint("localhost", 18001)]}
    t = translate(
        [virtual_service({"route": [to("v1")]})],
        [destination_rule()],
        endpoints,
        listener_port=15001,
    )
    validate_with_envoy(t)
    assert cluster(t, V1)["type"] == "STRICT_DNS"


def test_destination_without_subset_uses_every_replica_of_the_service():
    t = run([virtual_service({"route": [{"destination": {"host": "reviews"}}]})])
    assert action(t)["cluster"] == ALL
    addresses = cluster(t, ALL)["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ports = sorted(e["endpoint"]["address"]["socket_address"]["port_value"] for e in addresses)
    assert ports == [18001, 18002, 18003, 18004]


def test_subset_cluster_holds_only_that_subsets_replicas_as_static_endpoints():
    t = run([virtual_service({"route": [to("v1")]})])
    v1 = cluster(t, V1)
    assert v1["type"] == "STATIC"
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in v1["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [18001, 18002]


def test_destination_port_and_fqdn_host_name_the_cluster():
    t = run(
        [virtual_service({"route": [{"destination": {"host": REVIEWS, "subset": "v2"}}]})],
    )
    assert action(t)["cluster"] == V2


# ---------------------------------------------------------------- matches


def test_matches_keep_their_order_with_header_exact_prefix_regex_and_cookie_regex():
    vs = virtual_service(
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [to("v2")]},
        {"match": [{"headers": {"x-group": {"prefix": "beta-"}}}], "route": [to("v3")]},
        {"match": [{"headers": {"x-id": {"regex": "^[0-9]{3}$"}}}], "route": [to("v2")]},
        {
            "match": [{"headers": {"cookie": {"regex": "^(.*?;)?(user=jason)(;.*)?$"}}}],
            "route": [to("v3")],
        },
        {"route": [to("v1")]},
    )
    t = run([vs])
    found = [(r["match"].get("headers"), r["route"]["cluster"]) for r in routes(t)]
    assert found == [
        ([{"name": "end-user", "string_match": {"exact": "jason"}}], V2),
        ([{"name": "x-group", "string_match": {"prefix": "beta-"}}], V3),
        ([{"name": "x-id", "string_match": {"safe_regex": {"regex": "^[0-9]{3}$"}}}], V2),
        (
            [
                {
                    "name": "cookie",
                    "string_match": {"safe_regex": {"regex": "^(.*?;)?(user=jason)(;.*)?$"}},
                }
            ],
            V3,
        ),
        (None, V1),
    ]
    assert routes(t)[-1]["match"] == {"prefix": "/", "case_sensitive": True}


def test_each_match_block_of_one_http_route_becomes_its_own_route_in_order():
    vs = virtual_service(
        {
            "name": "canary",
            "match": [
                {"name": "api", "uri": {"prefix": "/api"}},
                {"name": "exact", "uri": {"exact": "/health"}},
            ],
            "route": [to("v2")],
        },
        {"route": [to("v1")]},
    )
    t = run([vs])
    assert [r.get("name") for r in routes(t)] == ["canary.api", "canary.exact", None]
    assert routes(t)[0]["match"]["prefix"] == "/api"
    assert routes(t)[1]["match"]["path"] == "/health"


def test_uri_regex_ignore_case_method_query_params_and_without_headers():
    vs = virtual_service(
        {
            "match": [
                {
                    "uri": {"regex": "/reviews/[0-9]+"},
                    "ignoreUriCase": True,
                    "method": {"exact": "GET"},
                    "queryParams": {"debug": {"exact": "1"}, "trace": {}},
                    "withoutHeaders": {"x-canary": {"exact": "no"}},
                    "headers": {"x-present": {}},
                }
            ],
            "route": [to("v2")],
        },
        {"route": [to("v1")]},
    )
    match = routes(run([vs]))[0]["match"]
    assert match["safe_regex"] == {"regex": "/reviews/[0-9]+"}
    assert match["case_sensitive"] is False
    assert match["headers"] == [
        {
            "name": "x-canary",
            "string_match": {"exact": "no"},
            "invert_match": True,
            "treat_missing_header_as_empty": True,
        },
        {"name": "x-present", "present_match": True},
        {"name": ":method", "string_match": {"exact": "GET"}},
    ]
    assert match["query_parameters"] == [
        {"name": "debug", "string_match": {"exact": "1"}},
        {"name": "trace", "present_match": True},
    ]


def test_routes_after_a_catch_all_are_left_out_and_reported():
    vs = virtual_service({"route": [to("v1")]}, {"route": [to("v2")]})
    t = run([vs])
    assert [r["route"]["cluster"] for r in routes(t)] == [V1]
    assert any("never reached" in p and "http[0]" in p for p in t.problems)


def test_invalid_regex_is_refused_naming_the_field():
    vs = virtual_service({"match": [{"uri": {"regex": "(unclosed"}}], "route": [to("v1")]})
    with pytest.raises(BadInput) as err:
        run([vs])
    assert "http[0].match[0].uri.regex" in err.value.field
    assert err.value.value == "(unclosed"


# ---------------------------------------------------------------- mirror, fault, timeout, retries


def test_mirror_with_percentage_uses_a_runtime_fraction_and_keeps_the_host_header():
    vs = virtual_service(
        {
            "route": [to("v1")],
            "mirror": {"host": "reviews", "subset": "v2"},
            "mirrorPercentage": {"value": 12.5},
        }
    )
    t = run([vs])
    assert action(t)["request_mirror_policies"] == [
        {
            "cluster": V2,
            "runtime_fraction": {"default_value": {"numerator": 125000, "denominator": "MILLION"}},
            "trace_sampled": False,
            "disable_shadow_host_suffix_append": True,
        }
    ]


def test_mirror_without_percentage_mirrors_everything_and_zero_percent_mirrors_nothing():
    everything = run([virtual_service({"route": [to("v1")], "mirror": {"host": "ratings"}})])
    policy = action(everything)["request_mirror_policies"][0]
    assert policy["cluster"] == "outbound|9080||ratings.default.svc.cluster.local"
    assert policy["runtime_fraction"]["default_value"] == {
        "numerator": 100,
        "denominator": "HUNDRED",
    }
    nothing = run(
        [
            virtual_service(
                {
                    "route": [to("v1")],
                    "mirror": {"host": "ratings"},
                    "mirrorPercentage": {"value": 0},
                }
            )
        ]
    )
    assert "request_mirror_policies" not in action(nothing)


def test_mirrors_list_gives_one_policy_per_mirror():
    vs = virtual_service(
        {
            "route": [to("v1")],
            "mirrors": [
                {"destination": {"host": "reviews", "subset": "v2"}, "percentage": {"value": 50}},
                {"destination": {"host": "reviews", "subset": "v3"}},
            ],
        }
    )
    policies = action(run([vs]))["request_mirror_policies"]
    assert [p["cluster"] for p in policies] == [V2, V3]
    assert policies[0]["runtime_fraction"]["default_value"]["numerator"] == 500000


def test_fault_delay_and_abort_become_per_route_fault_config():
    vs = virtual_service(
        {
            "route": [to("v1")],
            "fault": {
                "delay": {"fixedDelay": "7s", "percentage": {"value": 100}},
                "abort": {"httpStatus": 500, "percentage": {"value": 10}},
            },
        }
    )
    fault = routes(run([vs]))[0]["typed_per_filter_config"][FAULT_FILTER]
    assert fault["@type"].endswith("envoy.extensions.filters.http.fault.v3.HTTPFault")
    assert fault["delay"] == {
        "fixed_delay": "7s",
        "percentage": {"numerator": 1000000, "denominator": "MILLION"},
    }
    assert fault["abort"] == {
        "http_status": 500,
        "percentage": {"numerator": 100000, "denominator": "MILLION"},
    }


def test_fault_filter_comes_before_the_router_in_the_listener():
    t = run([virtual_service({"route": [to("v1")]})])
    manager = t.listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in manager["http_filters"]] == [
        "envoy.filters.http.fault",
        "envoy.filters.http.router",
    ]
    assert t.listeners[0]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 15001,
    }


def test_grpc_abort_uses_the_status_code_and_an_unknown_name_is_refused():
    vs = virtual_service(
        {
            "route": [to("v1")],
            "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 1}}},
        }
    )
    fault = routes(run([vs]))[0]["typed_per_filter_config"][FAULT_FILTER]
    assert fault["abort"]["grpc_status"] == 14
    vs["spec"]["http"][0]["fault"]["abort"]["grpcStatus"] = "SOMETIMES"
    with pytest.raises(BadInput) as err:
        run([vs])
    assert err.value.field.endswith("http[0].fault.abort.grpcStatus")


def test_timeout_is_zero_seconds_when_unset_as_in_istio():
    assert action(run([virtual_service({"route": [to("v1")]})]))["timeout"] == "0s"


def test_timeout_is_copied_as_a_protobuf_duration():
    t = run([virtual_service({"route": [to("v1")], "timeout": "1.5s"})])
    assert action(t)["timeout"] == "1.5s"


def test_bad_timeout_is_refused_naming_the_field():
    with pytest.raises(BadInput) as err:
        run([virtual_service({"route": [to("v1")], "timeout": "soon"})])
    assert err.value.field.endswith("http[0].timeout")


def test_unset_retries_get_istios_default_policy_with_the_previous_hosts_predicate():
    policy = action(run([virtual_service({"route": [to("v1")]})]))["retry_policy"]
    assert policy["num_retries"] == 2
    assert policy["retry_on"] == (
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    )
    assert policy["retriable_status_codes"] == [503]
    assert policy["host_selection_retry_max_attempts"] == 5
    assert [p["name"] for p in policy["retry_host_predicate"]] == [
        "envoy.retry_host_predicates.previous_hosts"
    ]


def test_retries_with_numeric_codes_become_retriable_status_codes():
    vs = virtual_service(
        {
            "route": [to("v1")],
            "retries": {
                "attempts": 4,
                "perTryTimeout": "250ms",
                "retryOn": "gateway-error,502,503,connect-failure",
            },
        }
    )
    policy = action(run([vs]))["retry_policy"]
    assert policy["num_retries"] == 4
    assert policy["per_try_timeout"] == "0.25s"
    assert policy["retry_on"] == "gateway-error,connect-failure,retriable-status-codes"
    assert policy["retriable_status_codes"] == [502, 503]
    assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert policy["host_selection_retry_max_attempts"] == 5


def test_zero_retry_attempts_remove_the_retry_policy():
    vs = virtual_service({"route": [to("v1")], "retries": {"attempts": 0}})
    assert "retry_policy" not in action(run([vs]))


def test_retry_ignore_previous_hosts_false_drops_the_predicate():
    vs = virtual_service(
        {"route": [to("v1")], "retries": {"attempts": 1, "retryIgnorePreviousHosts": False}}
    )
    assert "retry_host_predicate" not in action(run([vs]))["retry_policy"]


# ---------------------------------------------------------------- consistent hashing


@pytest.mark.parametrize(
    ("key", "hash_policy"),
    [
        ({"httpHeaderName": "x-user"}, {"header": {"header_name": "x-user"}}),
        (
            {"httpCookie": {"name": "session", "ttl": "60s", "path": "/"}},
            {"cookie": {"name": "session", "path": "/", "ttl": "60s"}},
        ),
        ({"useSourceIp": True}, {"connection_properties": {"source_ip": True}}),
        ({"httpQueryParameterName": "user"}, {"query_parameter": {"name": "user"}}),
    ],
    ids=["header", "cookie", "source-ip", "query"],
)
def test_consistent_hash_key_becomes_the_route_hash_policy_and_ring_hash(key, hash_policy):
    dr = destination_rule({"loadBalancer": {"consistentHash": key}})
    vs = virtual_service({"route": [to("v1")]})
    t = run([vs], [dr])
    assert action(t)["hash_policy"] == [hash_policy]
    assert cluster(t, V1)["lb_policy"] == "RING_HASH"
    assert cluster(t, V1)["ring_hash_lb_config"] == {"minimum_ring_size": 1024}


def test_consistent_hash_routes_retry_without_the_previous_hosts_predicate():
    dr = destination_rule({"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}})
    policy = action(run([virtual_service({"route": [to("v1")]})], [dr]))["retry_policy"]
    assert "retry_host_predicate" not in policy


def test_maglev_and_ring_hash_sizes_set_the_cluster_lb_policy():
    dr = destination_rule(
        None,
        v1={
            "loadBalancer": {
                "consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 65537}}
            }
        },
        v2={
            "loadBalancer": {
                "consistentHash": {"httpHeaderName": "x", "ringHash": {"minimumRingSize": 2048}}
            }
        },
    )
    t = run([virtual_service({"route": [to("v1", 50), to("v2", 50)]})], [dr])
    assert cluster(t, V1)["lb_policy"] == "MAGLEV"
    assert cluster(t, V1)["maglev_lb_config"] == {"table_size": 65537}
    assert cluster(t, V2)["lb_policy"] == "RING_HASH"
    assert cluster(t, V2)["ring_hash_lb_config"] == {"minimum_ring_size": 2048}
    assert action(t)["hash_policy"] == [
        {"connection_properties": {"source_ip": True}},
        {"header": {"header_name": "x"}},
    ]


# ---------------------------------------------------------------- cluster traffic policies


def test_cluster_without_policy_has_istio_defaults():
    c = cluster(run([virtual_service({"route": [to("v1")]})]), V1)
    assert c["lb_policy"] == "LEAST_REQUEST"
    assert c["connect_timeout"] == "10s"
    assert c["circuit_breakers"] == {
        "thresholds": [
            {
                "max_connections": 4294967295,
                "max_pending_requests": 4294967295,
                "max_requests": 4294967295,
                "max_retries": 4294967295,
                "track_remaining": True,
            }
        ]
    }
    assert "outlier_detection" not in c


def test_outlier_detection_ejects_on_consecutive_errors_only():
    dr = destination_rule(
        {
            "outlierDetection": {
                "consecutive5xxErrors": 3,
                "consecutiveGatewayErrors": 0,
                "interval": "5s",
                "baseEjectionTime": "30s",
                "maxEjectionPercent": 100,
                "minHealthPercent": 20,
            }
        }
    )
    c = cluster(run([virtual_service({"route": [to("v1")]})], [dr]), V1)
    assert c["outlier_detection"] == {
        "enforcing_success_rate": 0,
        "consecutive_5xx": 3,
        "enforcing_consecutive_5xx": 100,
        "consecutive_gateway_failure": 0,
        "enforcing_consecutive_gateway_failure": 0,
        "interval": "5s",
        "base_ejection_time": "30s",
        "max_ejection_percent": 100,
    }
    assert c["common_lb_config"] == {"healthy_panic_threshold": {"value": 20.0}}


def test_connection_pool_sets_circuit_breakers_timeouts_and_requests_per_connection():
    dr = destination_rule(
        {
            "connectionPool": {
                "tcp": {
                    "maxConnections": 7,
                    "connectTimeout": "250ms",
                    "tcpKeepalive": {"probes": 3, "time": "60s", "interval": "10s"},
                },
                "http": {
                    "http1MaxPendingRequests": 2,
                    "http2MaxRequests": 50,
                    "maxRequestsPerConnection": 1,
                    "maxRetries": 3,
                    "idleTimeout": "30s",
                },
            }
        }
    )
    c = cluster(run([virtual_service({"route": [to("v1")]})], [dr]), V1)
    assert c["connect_timeout"] == "0.25s"
    assert c["circuit_breakers"]["thresholds"] == [
        {
            "max_connections": 7,
            "max_pending_requests": 2,
            "max_requests": 50,
            "max_retries": 3,
            "track_remaining": True,
        }
    ]
    options = c["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["common_http_protocol_options"] == {
        "idle_timeout": "30s",
        "max_requests_per_connection": 1,
    }
    assert c["upstream_connection_options"] == {
        "tcp_keepalive": {"keepalive_probes": 3, "keepalive_time": 60, "keepalive_interval": 10}
    }


def test_subset_policy_replaces_top_level_fields_one_by_one():
    top = {
        "loadBalancer": {"simple": "RANDOM"},
        "outlierDetection": {"consecutive5xxErrors": 9},
        "connectionPool": {"tcp": {"maxConnections": 11}},
    }
    dr = destination_rule(top, v2={"loadBalancer": {"simple": "ROUND_ROBIN"}})
    t = run([virtual_service({"route": [to("v1", 90), to("v2", 10)]})], [dr])
    v1, v2 = cluster(t, V1), cluster(t, V2)
    assert v1["lb_policy"] == "RANDOM"
    assert v2["lb_policy"] == "ROUND_ROBIN"
    for c in (v1, v2):  # fields the subset does not set are inherited
        assert c["outlier_detection"]["consecutive_5xx"] == 9
        assert c["circuit_breakers"]["thresholds"][0]["max_connections"] == 11


def test_subset_port_level_settings_replace_every_field_and_fall_back_to_defaults():
    top = {"loadBalancer": {"simple": "RANDOM"}, "outlierDetection": {"consecutive5xxErrors": 9}}
    subset = {
        "portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"simple": "ROUND_ROBIN"}}]
    }
    merged = merge_traffic_policy(top, subset, 9080)
    assert merged == {"loadBalancer": {"simple": "ROUND_ROBIN"}}
    assert merge_traffic_policy(top, subset, 8080) == top
    t = run([virtual_service({"route": [to("v1")]})], [destination_rule(top, v1=subset)])
    assert cluster(t, V1)["lb_policy"] == "ROUND_ROBIN"
    assert "outlier_detection" not in cluster(t, V1)


def test_top_level_port_level_settings_apply_to_the_service_port():
    top = {
        "loadBalancer": {"simple": "RANDOM"},
        "portLevelSettings": [
            {"port": {"number": 9080}, "connectionPool": {"tcp": {"maxConnections": 3}}}
        ],
    }
    t = run([virtual_service({"route": [to("v1")]})], [destination_rule(top)])
    assert cluster(t, V1)["circuit_breakers"]["thresholds"][0]["max_connections"] == 3
    assert cluster(t, V1)["lb_policy"] == "LEAST_REQUEST"  # not inherited from the top level


def test_warmup_sets_slow_start_on_the_round_robin_cluster():
    dr = destination_rule({"loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "30s"}})
    c = cluster(run([virtual_service({"route": [to("v1")]})], [dr]), V1)
    assert c["round_robin_lb_config"] == {"slow_start_config": {"slow_start_window": "30s"}}


# ---------------------------------------------------------------- hosts and other route kinds


def test_domains_cover_short_and_long_host_forms_with_and_without_port():
    t = run([virtual_service({"route": [to("v1")]})])
    domains = reviews_host(t)["domains"]
    for name in (REVIEWS, "reviews.default.svc", "reviews.default", "reviews"):
        assert name in domains and f"{name}:9080" in domains
    assert domains[-1] == "*"


def test_a_service_without_virtual_service_gets_istios_default_route():
    t = run([virtual_service({"route": [to("v1")]})])
    manager = t.listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    ratings = next(
        vh
        for vh in manager["route_config"]["virtual_hosts"]
        if vh["domains"][0].startswith("ratings")
    )
    assert "*" not in ratings["domains"]
    assert (
        ratings["routes"][0]["route"]["cluster"]
        == "outbound|9080||ratings.default.svc.cluster.local"
    )
    assert ratings["routes"][0]["route"]["timeout"] == "0s"


def test_header_operations_rewrite_redirect_and_direct_response():
    vs = virtual_service(
        {"match": [{"uri": {"exact": "/old"}}], "redirect": {"uri": "/new", "redirectCode": 307}},
        {
            "match": [{"uri": {"prefix": "/teapot"}}],
            "directResponse": {"status": 418, "body": {"string": "tea"}},
        },
        {
            "match": [{"uri": {"prefix": "/v2"}}],
            "rewrite": {"uri": "/"},
            "headers": {"request": {"set": {"x-lab": "yes"}, "remove": ["x-drop"]}},
            "route": [to("v2")],
        },
        {"route": [to("v1")]},
    )
    r = routes(run([vs]))
    assert r[0]["redirect"] == {"response_code": "TEMPORARY_REDIRECT", "path_redirect": "/new"}
    assert r[1]["direct_response"] == {"status": 418, "body": {"inline_string": "tea"}}
    assert r[2]["route"]["prefix_rewrite"] == "/"
    assert r[2]["request_headers_to_add"] == [
        {"header": {"key": "x-lab", "value": "yes"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
    ]
    assert r[2]["request_headers_to_remove"] == ["x-drop"]


# ---------------------------------------------------------------- what the lab cannot express


def test_unsupported_features_are_reported_not_silently_dropped():
    vs = virtual_service(
        {"match": [{"sourceLabels": {"app": "productpage"}}], "route": [to("v2")]},
        {
            "match": [{"uri": {"prefix": "/c"}}],
            "corsPolicy": {"allowOrigins": [{"exact": "x"}]},
            "route": [to("v1")],
        },
        {"match": [{"uri": {"prefix": "/d"}}], "delegate": {"name": "other"}},
        {
            "match": [{"uri": {"prefix": "/h2"}}],
            "fault": {"abort": {"http2Error": "CANCEL"}},
            "route": [to("v1")],
        },
        {"route": [to("v9")]},
    )
    vs["spec"]["tcp"] = [{"route": [to("v1")]}]
    dr = destination_rule({"tls": {"mode": "ISTIO_MUTUAL"}})
    t = run([vs], [dr])
    expected = [
        "VirtualService default/reviews http[0].match[0].sourceLabels: {app: productpage} "
        "select no client workload of the lab (loadgen {app: loadgen})",
        "VirtualService default/reviews http[1]: corsPolicy is not supported",
        "VirtualService default/reviews http[2]: delegate is not supported",
        "VirtualService default/reviews http[3]: fault.abort with http2Error is not supported",
        "VirtualService default/reviews: tcp routes are not supported",
        "subset v9 of reviews.default.svc.cluster.local is not defined by a DestinationRule",
        "DestinationRule default/reviews trafficPolicy: tls mode ISTIO_MUTUAL is not supported",
    ]
    for text in expected:
        assert any(text in p for p in t.problems), (text, t.problems)
    # the source-labelled and delegated routes are gone; the others stay in order
    assert [r["match"].get("prefix") for r in routes(t)] == ["/c", "/h2", "/"]


def test_virtual_service_only_for_gateways_is_reported_and_left_out():
    vs = virtual_service({"route": [to("v2")]})
    vs["spec"]["gateways"] = ["bookinfo-gateway"]
    t = run([vs])
    assert any("gateways" in p for p in t.problems)
    assert routes(t)[0]["name"] == "default"  # the service falls back to its default route


def test_virtual_service_without_hosts_is_refused_naming_the_field():
    vs = virtual_service({"route": [to("v1")]})
    vs["spec"]["hosts"] = []
    with pytest.raises(BadInput) as err:
        run([vs])
    assert err.value.field == "VirtualService default/reviews spec.hosts"


# ---------------------------------------------------------------- client workloads (sourceLabels)

TESTER = ClientWorkload("reviews-tester", {"app": "reviews-tester", "version": "v1"}, 15002)
PRODUCTPAGE = ClientWorkload("productpage", {"app": "productpage", "version": "v1"}, 15003)
FROM_TESTER = {"sourceLabels": {"app": "reviews-tester"}}


def run_for_clients(vs: list[dict], *clients: ClientWorkload) -> Translation:
    """Translate for the load generator (port 15001) and `clients`; the real Envoy validates
    the listeners of all of them together."""
    t = translate(vs, [destination_rule()], ENDPOINTS, listener_port=15001, clients=clients)
    validate_with_envoy(t)
    return t


def listener_of(t: Translation, port: int) -> dict:
    return next(
        item for item in t.listeners if item["address"]["socket_address"]["port_value"] == port
    )


def client_routes(t: Translation, port: int) -> list[dict]:
    """The routes for reviews in the listener of the client workload on `port`."""
    manager = listener_of(t, port)["filter_chains"][0]["filters"][0]["typed_config"]
    host = next(vh for vh in manager["route_config"]["virtual_hosts"]
                if vh["name"] == f"{REVIEWS}:9080")
    return host["routes"]


def clusters_routed(t: Translation, port: int) -> list[str]:
    return [r["route"]["cluster"] for r in client_routes(t, port)]


def test_each_client_workload_gets_its_own_listener_naming_it_as_the_source():
    t = run_for_clients([virtual_service({"route": [to("v1")]})], TESTER, PRODUCTPAGE)
    ports = [item["address"]["socket_address"]["port_value"] for item in t.listeners]
    assert ports == [15001, TESTER.port, PRODUCTPAGE.port]
    for port, name in ((15001, DEFAULT_CLIENT), (TESTER.port, TESTER.name),
                       (PRODUCTPAGE.port, PRODUCTPAGE.name)):
        manager = listener_of(t, port)["filter_chains"][0]["filters"][0]["typed_config"]
        assert manager["route_config"]["request_headers_to_add"] == [{
            "header": {"key": "x-canarykit-source", "value": name},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    versions = {item["metadata"]["filter_metadata"]["canarykit"]["version"]
                for item in t.listeners}
    assert versions == {t.version}
    # Without a sourceLabels match every client is routed alike.
    assert {tuple(clusters_routed(t, port)) for port in ports} == {(V1,)}


def test_a_source_labels_match_is_kept_only_for_the_workloads_it_selects():
    vs = virtual_service({"name": "tester", "match": [FROM_TESTER], "route": [to("v2")]},
                         {"name": "primary", "route": [to("v1")]})
    t = run_for_clients([vs], TESTER, PRODUCTPAGE)
    # For the tester the match is a catch-all (no uri, no headers): istiod stops there.
    assert clusters_routed(t, TESTER.port) == [V2]
    assert client_routes(t, TESTER.port)[0]["match"] == {"prefix": "/", "case_sensitive": True}
    assert clusters_routed(t, 15001) == [V1]
    assert clusters_routed(t, PRODUCTPAGE.port) == [V1]
    assert t.problems == [], "a catch-all for one client does not hide the others' routes"


def test_source_labels_must_all_be_among_the_workloads_labels():
    vs = virtual_service(
        {"match": [{"sourceLabels": {"app": "reviews-tester", "version": "v1"}}],
         "route": [to("v2")]},
        {"match": [{"sourceLabels": {"app": "reviews-tester", "version": "v2"}}],
         "route": [to("v3")]},
        {"route": [to("v1")]})
    t = run_for_clients([vs], TESTER)
    assert clusters_routed(t, TESTER.port) == [V2]
    assert clusters_routed(t, 15001) == [V1]
    assert any("http[1].match[0].sourceLabels: {app: reviews-tester, version: v2} select no "
               "client workload" in p for p in t.problems), t.problems


def test_a_match_with_source_labels_and_headers_needs_both_while_others_apply_to_all():
    vs = virtual_service(
        {"match": [{**FROM_TESTER, "headers": {"end-user": {"exact": "jason"}}},
                   {"uri": {"prefix": "/beta"}}],
         "route": [to("v2")]},
        {"route": [to("v1")]})
    t = run_for_clients([vs], TESTER)
    tester = client_routes(t, TESTER.port)
    assert [r["route"]["cluster"] for r in tester] == [V2, V2, V1]
    assert tester[0]["match"] == {
        "prefix": "/", "case_sensitive": True,
        "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]}
    assert tester[1]["match"] == {"prefix": "/beta", "case_sensitive": True}
    default = client_routes(t, 15001)
    assert [(r["match"].get("prefix"), r["route"]["cluster"]) for r in default] == [
        ("/beta", V2), ("/", V1)]
    assert all("headers" not in r["match"] for r in default)
    assert t.problems == []


def test_a_rule_whose_only_match_selects_another_client_disappears_for_this_one():
    vs = virtual_service(
        {"match": [{**FROM_TESTER, "uri": {"prefix": "/new"}}], "route": [to("v2")]},
        {"match": [{"uri": {"prefix": "/old"}}], "route": [to("v1")]})
    t = run_for_clients([vs], TESTER)
    assert [(r["match"]["prefix"], r["route"]["cluster"]) for r in client_routes(t, TESTER.port)
            ] == [("/new", V2), ("/old", V1)]
    assert [(r["match"]["prefix"], r["route"]["cluster"]) for r in client_routes(t, 15001)
            ] == [("/old", V1)]


def test_a_virtual_service_only_for_another_client_leaves_this_one_the_default_route():
    vs = virtual_service({"match": [FROM_TESTER], "route": [to("v2")]})
    t = run_for_clients([vs], TESTER)
    assert clusters_routed(t, TESTER.port) == [V2]
    default = client_routes(t, 15001)
    assert [(r["name"], r["route"]["cluster"]) for r in default] == [("default", ALL)]
    assert any(p.startswith("VirtualService default/reviews: no route applies to requests from "
                            f"{DEFAULT_CLIENT};") for p in t.problems), t.problems


def test_source_labels_beside_mesh_gateways_are_ignored_as_istiod_ignores_them():
    vs = virtual_service({"match": [{**FROM_TESTER, "gateways": ["mesh"]}], "route": [to("v2")]})
    t = run_for_clients([vs], TESTER)
    assert clusters_routed(t, TESTER.port) == clusters_routed(t, 15001) == [V2]


def test_client_workloads_need_their_own_names_and_ports_and_labels_must_be_strings():
    vs = [virtual_service({"route": [to("v1")]})]
    with pytest.raises(BadInput) as same_port:
        translate(vs, [], ENDPOINTS, listener_port=15001,
                  clients=[ClientWorkload("other", {}, 15001)])
    assert same_port.value.field == "clients.other.port"
    with pytest.raises(BadInput, match="unique"):
        translate(vs, [], ENDPOINTS, listener_port=15001,
                  clients=[ClientWorkload(DEFAULT_CLIENT, {}, 15009)])
    numeric = [virtual_service({"match": [{"sourceLabels": {"version": 1}}],
                                "route": [to("v2")]})]
    with pytest.raises(BadInput) as bad_labels:
        translate(numeric, [], ENDPOINTS, listener_port=15001)
    assert bad_labels.value.field == "VirtualService default/reviews http[0].match[0].sourceLabels"


# ---------------------------------------------------------------- documents and files


def test_lds_and_cds_documents_carry_type_urls_and_a_content_version():
    t = run([virtual_service({"route": [to("v1")]})])
    lds, cds = lds_document(t), cds_document(t)
    assert [r["@type"] for r in lds["resources"]] == [LISTENER_TYPE]
    assert {r["@type"] for r in cds["resources"]} == {CLUSTER_TYPE}
    changed = run([virtual_service({"route": [to("v2")]})])
    assert lds_document(changed)["version_info"] != lds["version_info"]
    assert cds_document(changed)["version_info"] == cds["version_info"]


def test_write_config_replaces_both_files_whole(tmp_path):
    first = run([virtual_service({"route": [to("v1")]})])
    write_config(first, tmp_path)
    inode = (tmp_path / "lds.yaml").stat().st_ino
    second = run([virtual_service({"route": [to("v2")]})])
    write_config(second, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cds.yaml", "lds.yaml"]
    assert (tmp_path / "lds.yaml").stat().st_ino != inode  # renamed over, not rewritten in place
    assert yaml.safe_load((tmp_path / "lds.yaml").read_text()) == lds_document(second)
    assert yaml.safe_load((tmp_path / "cds.yaml").read_text()) == cds_document(second)


def test_bootstrap_reads_lds_and_cds_from_the_watched_directory(tmp_path):
    boot = bootstrap(tmp_path, admin_port=9901)
    assert boot["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9901,
    }
    for key, file_name in (("lds_config", "lds.yaml"), ("cds_config", "cds.yaml")):
        source = boot["dynamic_resources"][key]["path_config_source"]
        assert source["path"] == str(tmp_path.resolve() / file_name)
        assert source["watched_directory"] == {"path": str(tmp_path.resolve())}


# ---------------------------------------------------------------- the real Envoy checks them


def test_envoy_validation_really_refuses_a_broken_configuration():
    # run() validates every translation above; this shows that validation can fail.
    t = run([virtual_service({"route": [to("v1")]})])
    cluster(t, V1)["lb_policy"] = "FASTEST"
    with pytest.raises(CanaryKitError, match="Envoy refused"):
        validate_with_envoy(t)


def test_static_bootstrap_embeds_the_same_resources():
    t = run([virtual_service({"route": [to("v1")]})])
    static = static_bootstrap(t)["static_resources"]
    assert static == {"listeners": t.listeners, "clusters": t.clusters}


# ---------------------------------------------------------------- end to end with a real Envoy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_backend(version: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the http.server API
            body = version.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


class Lab:
    """Two backends (v1, v2) and a real Envoy on the dynamic bootstrap."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.backends = {v: start_backend(v) for v in ("v1", "v2")}
        self.endpoints = {
            ("reviews", v): [Endpoint("127.0.0.1", s.server_address[1])]
            for v, s in self.backends.items()
        }
        self.port = free_port()
        self.log = directory / "envoy.log"
        self.config_dir = directory / "xds"
        self.process: subprocess.Popen | None = None

    def apply(self, *http: dict) -> Translation:
        t = translate(
            [virtual_service(*http)], [destination_rule()], self.endpoints, listener_port=self.port
        )
        assert t.problems == []
        write_config(t, self.config_dir)
        return t

    def start(self) -> None:
        boot = self.directory / "bootstrap.yaml"
        boot.write_text(yaml.safe_dump(bootstrap(self.config_dir, admin_port=0)))
        admin_file = self.directory / "admin-address"
        self.process = subprocess.Popen(
            [
                find_envoy(),
                "-c",
                str(boot),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--drain-time-s",
                "1",
                "--log-path",
                str(self.log),
                "--admin-address-path",
                str(admin_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not (admin_file.exists() and admin_file.read_text().strip()):
            assert self.process.poll() is None, self.log_text()
            assert time.monotonic() < deadline, "Envoy did not start: " + self.log_text()
            time.sleep(0.05)
        self.admin = admin_file.read_text().strip()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for server in self.backends.values():
            server.shutdown()
            server.server_close()

    def log_text(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else "(no log)"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://{self.admin}/stats?format=json", timeout=5) as r:
            data = json.load(r)
        return {s["name"]: s["value"] for s in data["stats"] if "value" in s}

    def wait_for(self, t: Translation) -> None:
        """Wait (bounded) until Envoy's active listener is this translation."""
        deadline = time.monotonic() + 15
        while True:
            url = f"http://{self.admin}/config_dump?resource=dynamic_listeners"
            with urllib.request.urlopen(url, timeout=5) as r:
                dump = json.load(r)
            versions = [
                c.get("active_state", {})
                .get("listener", {})
                .get("metadata", {})
                .get("filter_metadata", {})
                .get("canarykit", {})
                .get("version")
                for c in dump["configs"]
            ]
            if t.version in versions:
                return
            assert time.monotonic() < deadline, f"Envoy kept {versions}: " + self.log_text()
            time.sleep(0.1)

    def get(self, headers: dict | None = None) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(
                "GET",
                "/reviews/1",
                headers={"Host": "reviews", "Connection": "close", **(headers or {})},
            )
            response = conn.getresponse()
            body = response.read().decode()
            assert response.status == 200, (response.status, body)
            return body
        finally:
            conn.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("envoy-lab"))
    try:
        lab.start_with = lab.apply({"route": [to("v1")]})
        lab.start()
        lab.wait_for(lab.start_with)
        yield lab
    finally:
        lab.stop()


def test_real_envoy_splits_75_25_then_reloads_the_rewritten_files_to_0_100(lab):
    t = lab.apply({"route": [to("v1", 75), to("v2", 25)]})
    lab.wait_for(t)
    n, share = 400, 0.25
    v2 = sum(lab.get() == "v2" for _ in range(n))
    sigma = math.sqrt(n * share * (1 - share))
    assert abs(v2 - n * share) <= 4 * sigma, f"{v2} of {n} went to v2"

    lab.apply({"route": [to("v1", 0), to("v2", 100)]})
    deadline = time.monotonic() + 15
    while not all(lab.get() == "v2" for _ in range(20)):
        assert time.monotonic() < deadline, "Envoy did not reload: " + lab.log_text()
        time.sleep(0.2)
    assert {lab.get() for _ in range(100)} == {"v2"}
    stats = lab.stats()
    assert stats["listener_manager.lds.update_rejected"] == 0
    assert stats["cluster_manager.cds.update_rejected"] == 0
    assert stats["listener_manager.lds.update_success"] >= 3


def test_real_envoy_routes_the_header_match_only_to_v2(lab):
    t = lab.apply(
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": [to("v2")]},
        {"route": [to("v1")]},
    )
    lab.wait_for(t)
    assert {lab.get({"end-user": "jason"}) for _ in range(50)} == {"v2"}
    assert {lab.get({"end-user": "someone"}) for _ in range(50)} == {"v1"}
    assert {lab.get() for _ in range(50)} == {"v1"}


def test_envoy_binary_is_found_beside_the_interpreter_or_on_path():
    assert os.access(find_envoy(), os.X_OK)
