"""canarykit.mesh.policy: the settings table, and the one change per object a policy makes."""

from __future__ import annotations

import copy

import pytest

from canarykit.core.errors import BadInput
from canarykit.mesh import policy
from tests.policy_seeds import DESTINATION_SEEDS, DR, ROUTE_SEEDS, VS, canary_route


def test_every_setting_has_a_known_group_a_unique_flag_and_an_operation_parameter():
    assert {s.group for s in policy.SETTINGS} == set(policy.GROUPS)
    assert len({s.flag for s in policy.SETTINGS}) == len(policy.SETTINGS)
    assert policy.BY_NAME["retries"].flag == "--retries"
    assert policy.BY_NAME["http1_max_pending"].flag == "--http1-max-pending"
    assert policy.BY_NAME["outlier_base_ejection"].flag == "--outlier-base-ejection"


@pytest.mark.parametrize("text, wanted", [
    ("header:x-user", {"header": "x-user"}),
    ("cookie:session", {"cookie": "session"}),
    ("cookie:session:1h", {"cookie": "session", "cookie_ttl": "1h"}),
    ("cookie:session:0s:/api", {"cookie": "session", "cookie_ttl": "0s", "cookie_path": "/api"}),
    ("source-ip", {"source_ip": True}),
    ("query:user", {"query_parameter": "user"}),
])
def test_an_affinity_is_read_from_its_short_form(text, wanted):
    assert policy.parse_affinity(text) == wanted


@pytest.mark.parametrize("text", ["", "header", "header:", "cookie:", "source-ip:x", "ip",
                                  "query:"])
def test_a_malformed_affinity_is_refused_naming_the_forms(text):
    with pytest.raises(BadInput, match="header:NAME, cookie:NAME"):
        policy.parse_affinity(text)


def test_the_seeds_make_one_change_per_object_and_leave_other_routes_alone():
    values = {**ROUTE_SEEDS["fault-injection"][0], **ROUTE_SEEDS["timeout-and-retries"][0],
              **DESTINATION_SEEDS["connection-pool"][0]}
    vs_change, dr_change = policy.istio_changes(copy.deepcopy(VS), copy.deepcopy(DR), values,
                                                [], stable="stable", canary="canary")
    assert vs_change.operation == dr_change.operation == "set_traffic_policy"
    route = canary_route(vs_change.after)
    for _, fields in ROUTE_SEEDS.values():
        assert {k: route[k] for k in fields} == fields
    assert vs_change.after["spec"]["http"][0] == VS["spec"]["http"][0]
    assert dr_change.after["spec"]["trafficPolicy"]["connectionPool"] == \
        DESTINATION_SEEDS["connection-pool"][1]["connectionPool"]
    assert dr_change.params["settings"] == DESTINATION_SEEDS["connection-pool"][0]


def test_a_grpc_abort_and_every_outlier_and_pool_field_reach_the_object():
    values = {"fault_abort": "unavailable", "outlier_consecutive_gateway_errors": 3,
              "outlier_consecutive_local_origin_failures": 4,
              "outlier_split_local_origin_errors": True, "outlier_min_health_percent": 20,
              "retry_remote_localities": True, "max_connection_duration": "1h",
              "tcp_idle_timeout": "5m", "tcp_keepalive_probes": 3, "tcp_keepalive_time": "7200s",
              "tcp_keepalive_interval": "75s", "max_retries": 3, "http_idle_timeout": "1m",
              "use_client_protocol": True, "max_concurrent_streams": 100}
    vs_change, dr_change = policy.istio_changes(VS, DR, values, [], stable="stable",
                                                canary="canary")
    route = canary_route(vs_change.after)
    assert route["fault"] == {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}
    assert route["retries"] == {"retryRemoteLocalities": True}
    top = dr_change.after["spec"]["trafficPolicy"]
    assert top["outlierDetection"] == {
        "consecutiveGatewayErrors": 3, "consecutiveLocalOriginFailures": 4,
        "splitExternalLocalOriginErrors": True, "minHealthPercent": 20}
    assert top["connectionPool"] == {
        "tcp": {"maxConnectionDuration": "1h", "idleTimeout": "5m",
                "tcpKeepalive": {"probes": 3, "time": "7200s", "interval": "75s"}},
        "http": {"maxRetries": 3, "idleTimeout": "1m", "useClientProtocol": True,
                 "maxConcurrentStreams": 100}}
    assert top["loadBalancer"] == {"simple": "LEAST_REQUEST"}


def test_clearing_a_group_removes_it_and_an_emptied_traffic_policy():
    [set_pool] = policy.istio_changes(VS, DR, {"max_connections": 5}, [], subset="canary",
                                      stable="stable", canary="canary")
    cleared = policy.destination_change(set_pool.after, {}, ["pool"], subset="canary")
    assert cleared.after == DR


@pytest.mark.parametrize("values, clear, naming, field", [
    ({"per_try_timeout": "1"}, [], "cli", "--per-try-timeout"),
    ({"per_try_timeout": "1"}, [], "plan", "per_try_timeout"),
    ({"affinity": "header:Bad Header"}, [], "cli", "--affinity"),
    ({"max_retries": 0}, [], "runbook", "max_retries"),
])
def test_a_refusal_names_the_setting_as_its_caller_knows_it(values, clear, naming, field):
    with pytest.raises(BadInput) as refused:
        policy.istio_changes(VS, DR, values, clear, stable="stable", canary="canary",
                             naming=naming)
    assert refused.value.field == field


def test_local_origin_failures_are_refused_unless_split_from_answers():
    with pytest.raises(BadInput) as refused:
        policy.istio_changes(VS, DR, {"outlier_consecutive_local_origin_failures": 3}, [],
                             stable="stable", canary="canary")
    assert refused.value.field == "outlier_consecutive_local_origin_failures"
    (change,) = policy.istio_changes(
        VS, DR, {"outlier_consecutive_local_origin_failures": 3,
                 "outlier_split_local_origin_errors": True}, [], stable="stable",
        canary="canary")
    assert change.after["spec"]["trafficPolicy"]["outlierDetection"][
        "consecutiveLocalOriginFailures"] == 3
