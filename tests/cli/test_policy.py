"""`canarykit policy`: each seed's traffic policy set through the CLI on a real-shaped service
(FQDN host, subsets stable/canary, two routes, bound to a gateway and the mesh) in the local
API server, shown by `status`, refused whole on a bad flag, and restored by `rollback`."""

from __future__ import annotations

import copy
import json

import pytest

from canarykit.cli.main import main
from canarykit.cluster import audit
from canarykit.cluster import client as cluster
from canarykit.cluster.state import read_state
from canarykit.core.errors import BadInput, ExitCode
from tests.apiserver_fixture import seed
from tests.policy_seeds import (
    DESTINATION_SEEDS,
    DR,
    FQDN,
    ROUTE_SEEDS,
    VS,
    canary_route,
    flags,
    subset_policy,
)


@pytest.fixture
def kube(apiserver):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    return cluster.connect(kubeconfig=str(apiserver.kubeconfig), namespace="prod")


@pytest.fixture
def policy(apiserver, tmp_path):
    def run(*args: str) -> int:
        return main(["policy", FQDN, "--kubeconfig", str(apiserver.kubeconfig), "--audit-log",
                     str(tmp_path / "audit.jsonl"), "--stable-subset", "stable",
                     "--canary-subset", "canary", *args])
    return run


def _objects(kube):
    return (cluster.get_object(kube, "VirtualService", "reviews"),
            cluster.get_object(kube, "DestinationRule", "reviews"))


@pytest.mark.parametrize("name", ROUTE_SEEDS)
def test_a_route_seed_is_set_on_the_canary_route_only(kube, policy, name):
    settings, wanted = ROUTE_SEEDS[name]
    assert policy(*flags(settings)) == ExitCode.OK
    vs, _ = _objects(kube)
    route = canary_route(vs)
    assert {k: route[k] for k in wanted} == wanted
    internal = vs["spec"]["http"][0]
    assert internal["name"] == "api-internal" and not set(wanted) & set(internal)
    assert vs["spec"]["gateways"] == ["istio-system/public", "mesh"]
    assert vs["spec"]["exportTo"] == ["."]


@pytest.mark.parametrize("name", DESTINATION_SEEDS)
def test_a_destination_seed_is_set_for_the_named_subset(kube, policy, name):
    settings, wanted = DESTINATION_SEEDS[name]
    assert policy(*flags(settings), "--subset", "canary") == ExitCode.OK
    _, dr = _objects(kube)
    assert subset_policy(dr, "canary") == wanted
    assert subset_policy(dr, "stable") == {}
    assert dr["spec"]["trafficPolicy"] == {"loadBalancer": {"simple": "LEAST_REQUEST"}}


def test_a_route_can_be_named_and_affinity_at_top_level_replaces_simple_balancing(kube, policy):
    assert policy("--route", "api-internal", "--timeout", "2s",
                  "--affinity", "cookie:session:1h:/api") == ExitCode.OK
    vs, dr = _objects(kube)
    assert vs["spec"]["http"][0]["timeout"] == "2s" and "timeout" not in canary_route(vs)
    assert dr["spec"]["trafficPolicy"] == {"loadBalancer": {"consistentHash": {
        "httpCookie": {"name": "session", "ttl": "1h", "path": "/api"}}}}


def test_status_shows_the_policy_as_text_and_json(kube, policy, apiserver, capsys):
    settings = {**ROUTE_SEEDS["timeout-and-retries"][0],
                **DESTINATION_SEEDS["outlier-detection"][0]}
    assert policy(*flags(settings), "--subset", "canary") == ExitCode.OK
    capsys.readouterr()
    common = [FQDN, "--kubeconfig", str(apiserver.kubeconfig)]
    assert main(["status", *common]) == ExitCode.OK
    text = capsys.readouterr().out
    assert "http[1] api: stable=100, canary=0  timeout=3s  retries.attempts=3" in text
    assert "traffic policy (subset canary):  outlierDetection.consecutive5xxErrors=7" in text
    assert "traffic policy (all subsets):  loadBalancer.simple=LEAST_REQUEST" in text
    assert main(["status", *common, "--output", "json"]) == ExitCode.OK
    report = json.loads(capsys.readouterr().out)
    api = next(r for r in report["routes"] if r["name"] == "api")
    assert api["timeout"] == "3s" and api["retries"]["attempts"] == 3
    canary = next(s for s in report["subsets"] if s["name"] == "canary")
    assert canary["trafficPolicy"] == DESTINATION_SEEDS["outlier-detection"][1]


def test_rollback_restores_the_policy_and_ends_the_rollout_it_began(kube, policy, apiserver,
                                                                    tmp_path):
    before_vs, before_dr = _objects(kube)
    fault = ROUTE_SEEDS["fault-injection"][0]
    assert policy(*flags(fault), *flags(DESTINATION_SEEDS["connection-pool"][0])) == 0
    vs, _ = _objects(kube)
    assert read_state(vs) is not None
    records = audit.read_records(tmp_path / "audit.jsonl")
    operations = [r.get("operation") for r in records if r.get("operation")]
    assert operations.count("set_traffic_policy") == 2 and "begin_rollout" in operations
    assert main(["rollback", FQDN, "--kubeconfig", str(apiserver.kubeconfig),
                 "--audit-log", str(tmp_path / "audit.jsonl")]) == ExitCode.OK
    vs, dr = _objects(kube)
    assert vs["spec"] == before_vs["spec"] and dr["spec"] == before_dr["spec"]
    assert read_state(vs) is None


def test_clear_removes_a_group_and_leaves_the_others(kube, policy):
    assert policy(*flags(ROUTE_SEEDS["fault-injection"][0]),
                  *flags(ROUTE_SEEDS["timeout-and-retries"][0])) == ExitCode.OK
    assert policy("--clear", "fault,timeout") == ExitCode.OK
    route = canary_route(_objects(kube)[0])
    assert "fault" not in route and "timeout" not in route
    assert route["retries"]["attempts"] == 3


def test_dry_run_asks_the_server_and_changes_nothing(kube, policy, capsys):
    before = _objects(kube)
    assert policy("--timeout", "3s", "--max-connections", "5", "--dry-run") == ExitCode.OK
    assert "would change (server dry run, nothing written)" in capsys.readouterr().out
    assert _objects(kube) == before


@pytest.mark.parametrize("args, field, value", [  # each flag alone: the test after the next
    (["--retry-on", "5xx,sometimes"], "--retry-on", "'sometimes'"),
    (["--fault-delay-percent", "10"], "--fault-delay-percent", "10"),
    (["--affinity", "cookie:session:forever"], "--affinity", "'forever'"),
    (["--affinity", "header:X-User"], "--affinity", "'X-User'"),
    (["--timeout", "1s", "--outlier-consecutive-5xx", "-2"], "--outlier-consecutive-5xx", "-2"),
    (["--clear", "everything"], "--clear", "'everything'"),
    (["--timeout", "1s", "--clear", "timeout"], "--timeout", "'1s'"),
    (["--subset", "blue", "--max-connections", "5"], "--subset", "'blue'"),
    (["--route", "nope", "--timeout", "1s"], "--route", "'nope'"),
    (["--subset", "canary", "--timeout", "1s"], "--subset", "'canary'"),
    ([], "policy", "{}"),
])
def test_a_bad_flag_is_refused_naming_it_and_nothing_changes(kube, policy, capsys, args, field,
                                                              value):
    before = _objects(kube)
    assert policy(*args) == ExitCode.BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith(f"canarykit: error: {field}: ") and value in error, error
    assert error.count("\n") == 1
    assert _objects(kube) == before


def test_during_a_rollout_the_policy_follows_its_subsets(kube, apiserver, tmp_path):
    common = [FQDN, "--kubeconfig", str(apiserver.kubeconfig), "--audit-log",
              str(tmp_path / "audit.jsonl")]
    assert main(["weight", *common, "--canary", "20", "--stable-subset", "stable",
                 "--canary-subset", "canary"]) == ExitCode.OK
    assert main(["policy", *common, "--retries", "2"]) == ExitCode.OK  # no subsets named
    route = canary_route(_objects(kube)[0])
    assert route["retries"] == {"attempts": 2}
    assert [d["weight"] for d in route["route"]] == [80, 20]


BAD_TEXT = {"count": "-5", "duration": "soon", "percent": "130", "flag": "maybe",
            "status": "700", "affinity": "bogus", "conditions": "sometimes", "choice": "X"}


def test_every_policy_flag_refuses_a_bad_value_naming_itself_and_changes_nothing(
        kube, policy, capsys):
    from canarykit.mesh.policy import SETTINGS

    before = _objects(kube)
    for setting in SETTINGS:
        value = BAD_TEXT[setting.type]
        extra = {"fault_delay_percent": ["--fault-delay", "1s"],
                 "fault_abort_percent": ["--fault-abort", "500"]}.get(setting.name, [])
        assert policy(*extra, setting.flag, value) == ExitCode.BAD_INPUT, setting
        error = capsys.readouterr().err
        assert error.startswith(f"canarykit: error: {setting.flag}: "), error
        assert value in error, error
    assert _objects(kube) == before


def test_every_policy_setting_of_a_plan_refuses_a_bad_value_naming_its_path():
    from canarykit.mesh.policy import SETTINGS
    from canarykit.rollout.plan import parse_plan

    typed = {"count": -5, "duration": "soon", "percent": 130, "flag": "maybe", "status": 700,
             "affinity": "bogus", "conditions": "sometimes", "choice": "X"}
    for setting in SETTINGS:
        extra = {"fault_delay_percent": {"fault_delay": "1s"},
                 "fault_abort_percent": {"fault_abort": 500}}.get(setting.name, {})
        with pytest.raises(BadInput) as refused:
            parse_plan({"service": "reviews", "steps": [
                {"policy": {**extra, setting.name: typed[setting.type]}}]})
        assert refused.value.field == f"steps[0].policy.{setting.name}", setting
