"""canarykit.rollout.phases without a cluster: parameters, weight history, past releases."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pandas as pd
import pytest

from canarykit.analysis.settings import AnalysisSettings
from canarykit.cluster import audit
from canarykit.core.errors import BadInput
from canarykit.mesh import traffic
from canarykit.rollout import parameters, phases, runbook
from tests import release_fixture

VS_REF = "VirtualService default/reviews"


def _vs(weights: dict[str, int], *, internal: bool = False, mirror: bool = False) -> dict:
    primary = {"name": "primary", "route": [
        {"destination": {"host": "reviews", "subset": s}, "weight": w} for s, w in weights.items()]}
    if mirror:
        primary["mirror"] = {"host": "reviews", "subset": "v2"}
        primary["mirrorPercentage"] = {"value": 10}
    http = [primary]
    if internal:
        http.insert(0, {"name": "canary-internal-header",
                        "match": [{"headers": {"x-canary-user": {"exact": "true"}}}],
                        "route": [{"destination": {"host": "reviews", "subset": "v2"}}]})
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"hosts": ["reviews"], "http": http}}


def _record(log: Path, time: str, operation: str, before: dict, after: dict, *,
            target: str = VS_REF, params: dict | None = None) -> None:
    release_fixture.append_record(log, {"time": time, "actor": "tester", "server": "https://127.0.0.1",
                              "target": target, "apiVersion": "networking.istio.io/v1",
                              "operation": operation, "params": params or {},
                              "before": {"http": before["spec"]["http"]},
                              "after": {"http": after["spec"]["http"]},
                              "baseResourceVersion": "1"})


def _periods(log: Path, release: str = "r1") -> list[phases.WeightPeriod]:
    return phases.weight_periods(audit.read_records(log), virtual_service=VS_REF,
                                 namespace="default", stable="v1", canary="v2", release=release)


# ---------------------------------------------------------------- parameters


def test_given_parameters_are_the_names_bound_after_the_snapshot():
    before = {"phases", "runbook", "In", "Out"}
    namespace = {"phases": phases, "parameters": parameters, "runbook": object(), "In": [],
                 "Out": {}, "_": None,
                 "_i3": "x", "os": os, "helper": len, "service": "reviews",
                 "canary_weight": 25}
    assert parameters.given_parameters("shift-traffic", namespace, before) == {
        "service": "reviews", "canary_weight": 25}


def test_an_unknown_parameter_is_refused_naming_it_and_the_runbook():
    namespace = {"service": "reviews", "canary_wieght": 25}
    with pytest.raises(BadInput) as refused:
        parameters.given_parameters("shift-traffic", namespace, set())
    assert refused.value.field == "canary_wieght"
    assert "shift-traffic" in str(refused.value) and "canary_weight" in str(refused.value)


def test_a_credential_looking_parameter_is_refused_without_its_value():
    namespace = {"service": "reviews", "prometheus_bearer_token": "abc"}
    with pytest.raises(BadInput) as refused:
        parameters.given_parameters("shift-traffic", namespace, set())
    assert refused.value.field == "prometheus_bearer_token"
    assert "abc" not in str(refused.value) and "<hidden>" in str(refused.value)


def test_the_name_of_the_variable_holding_a_token_is_a_fine_parameter():
    namespace = {"prometheus_bearer_token_env": "PROM_TOKEN"}
    assert parameters.given_parameters("analyze", namespace, set()) == namespace


def test_variables_of_a_previous_run_in_jupyterlab_are_not_parameters():
    namespace = {"service": "reviews", "result": {"outcome": "ok"}, "target": object()}
    assert parameters.given_parameters("promote", namespace, set()) == {"service": "reviews"}


@pytest.mark.parametrize(("arguments", "field", "value"), [
    ({"service": "Reviews_1"}, "service", "Reviews_1"),
    ({"canary": "v1"}, "canary", "v1"),
    ({"stable": "V 1"}, "stable", "V 1"),
    ({"prometheus_url": "ftp://127.0.0.1:9090"}, "prometheus_url", "ftp://127.0.0.1:9090"),
    ({"prometheus_url": "http://127.0.0.1:9090",
      "prometheus_bearer_token_env": "CANARYKIT_TEST_UNSET_TOKEN"},
     "prometheus_bearer_token_env", "CANARYKIT_TEST_UNSET_TOKEN"),
    ({"kubeconfig": "/nonexistent/kubeconfig", "prometheus_url": "http://127.0.0.1:9090"},
     "kubeconfig", "/nonexistent/kubeconfig"),
])
def test_bad_common_parameters_are_refused_before_connecting(arguments, field, value,
                                                              monkeypatch, tmp_path):
    monkeypatch.delenv("CANARYKIT_TEST_UNSET_TOKEN", raising=False)
    common = {"service": "reviews", "namespace": "default", "stable": "v1", "canary": "v2"}
    with pytest.raises(BadInput) as refused:
        phases.connect_target(**{**common, **arguments})
    assert refused.value.field == field
    assert refused.value.value == value


@pytest.mark.parametrize(("changes", "field", "value"), [
    ({"window": "abc"}, "window", "abc"),
    ({"interval": "10"}, "interval", "10"),
    ({"window": "10s", "interval": "1m"}, "interval", "1m"),
    ({"judges": "success-rate,vibes"}, "judges", "vibes"),
    ({"min_success_rate": 120.0}, "min_success_rate", 120.0),
    ({"min_requests": 0}, "min_requests", 0),
    ({"until_verdict": True, "max_duration": "30s"}, "max_duration", "30s"),
])
def test_bad_analysis_parameters_are_refused_naming_the_field(changes, field, value):
    given = {"service": "reviews", "window": "1m", "interval": "10s", **changes}
    with pytest.raises(BadInput) as refused:
        parameters.analysis_settings("analyze", given)
    assert (refused.value.field, refused.value.value) == (field, value)


def test_the_analysis_parameters_of_a_run_become_its_settings():
    settings = parameters.analysis_settings("analyze", {
        "service": "reviews", "window": "30s", "interval": "5s", "judges": "latency, sequential",
        "min_success_rate": 98, "canary_weight": 25.0})
    assert settings.window == "30s" and settings.judges == ["latency", "sequential"]
    assert settings.min_success_rate == 98.0 and isinstance(settings.min_success_rate, float)
    assert settings.canary_weight is None  # analyze's -1 sentinel is not a setting
    assert settings.min_requests == AnalysisSettings().min_requests


def test_the_shadow_runbook_takes_no_repeat_settings():
    with pytest.raises(BadInput) as refused:
        parameters.given_parameters("shadow", {"until_verdict": True}, set())
    assert refused.value.field == "until_verdict"


# ---------------------------------------------------------------- weights and their history


def test_configured_weights_read_the_canary_route():
    assert phases.configured_weights(_vs({"v1": 75, "v2": 25}, internal=True), "v1", "v2") == {
        "v1": 75, "v2": 25}
    switched = traffic.switch_all_traffic(_vs({"v1": 100, "v2": 0}), "v2").after
    assert phases.configured_weights(switched, "v1", "v2") == {"v1": 0, "v2": 100}
    assert phases.configured_weights(_vs({"v1": 50, "v3": 50}), "v1", "v2") is None


def test_weight_periods_follow_the_rollouts_weight_changes(tmp_path):
    log = tmp_path / "audit.jsonl"
    seed, five, quarter = _vs({"v1": 100, "v2": 0}), _vs({"v1": 95, "v2": 5}), \
        _vs({"v1": 75, "v2": 25})
    _record(log, "2024-05-01T12:00:00+00:00", "begin_rollout", seed, seed,
            params={"release": "r1"})
    _record(log, "2024-05-01T12:00:10+00:00", "set_canary_weight", seed, five)
    _record(log, "2024-05-01T12:00:20+00:00", "set_canary_weight", five, five)  # same weight
    _record(log, "2024-05-01T12:01:00Z", "set_canary_weight", five, quarter,
            target="VirtualService default/ratings")  # another service
    _record(log, "2024-05-01T12:02:00Z", "set_canary_weight", five, quarter)
    periods = _periods(log)
    t0 = pd.Timestamp("2024-05-01T12:00:00Z").timestamp()
    assert [(p.start - t0, None if p.end is None else p.end - t0, p.weight)
            for p in periods] == [(0, 10, 0), (10, 120, 5), (120, None, 25)]
    assert all(p.share_known for p in periods)
    assert periods[-1].to_dict() == {"start": "2024-05-01T12:02:00Z", "end": None,
                                     "weight": 25, "share_known": True}


def test_weight_periods_start_at_the_begin_record_of_the_release(tmp_path):
    log = tmp_path / "audit.jsonl"
    seed, half = _vs({"v1": 100, "v2": 0}), _vs({"v1": 50, "v2": 50})
    _record(log, "2024-05-01T12:00:00Z", "begin_rollout", seed, seed, params={"release": "old"})
    _record(log, "2024-05-01T12:00:10Z", "set_canary_weight", seed, half)
    _record(log, "2024-05-01T12:00:20Z", "rollback", half, seed)
    _record(log, "2024-05-01T13:00:00Z", "begin_rollout", seed, seed, params={"release": "r1"})
    _record(log, "2024-05-01T13:00:30Z", "set_canary_weight", seed, _vs({"v1": 90, "v2": 10}))
    assert [p.weight for p in _periods(log)] == [0, 10]
    assert [p.weight for p in _periods(log, "old")] == [0, 50, 0]
    assert _periods(log, "unknown") == []


def test_routes_for_matched_users_or_a_mirror_make_the_share_unknown(tmp_path):
    log = tmp_path / "audit.jsonl"
    seed = _vs({"v1": 100, "v2": 0})
    internal = _vs({"v1": 100, "v2": 0}, internal=True)
    mirrored = _vs({"v1": 100, "v2": 0}, mirror=True)
    _record(log, "2024-05-01T12:00:00Z", "begin_rollout", seed, seed, params={"release": "r1"})
    _record(log, "2024-05-01T12:00:10Z", "add_match_route", seed, internal)
    _record(log, "2024-05-01T12:00:20Z", "remove_match_route", internal, mirrored)
    _record(log, "2024-05-01T12:00:30Z", "set_canary_weight", mirrored,
            _vs({"v1": 80, "v2": 20}))
    assert [(p.weight, p.share_known) for p in _periods(log)] == [
        (0, True), (0, False), (20, True)]


def test_judgement_table_lists_each_judge():
    decision = types.SimpleNamespace(judgements=[])
    assert list(phases.judgement_table(decision).columns) == [
        "judge", "verdict", "critical", "required", "reason"]


# ---------------------------------------------------------------- what the routing allows


def _config(**changes) -> AnalysisSettings:
    return AnalysisSettings.from_dict({"judges": "success-rate,latency,sequential", **changes})


def test_the_configured_weight_is_the_share_only_without_internal_routes_or_mirrors():
    result = runbook.new_result("analyze", {})
    assert phases._fit_config(_config(), result, 25, True).canary_weight == 25.0
    hidden = phases._fit_config(_config(canary_weight=25.0), result, 25, False)
    assert hidden.canary_weight is None
    assert any("not taken as the canary's share" in note for note in result.notes)


def test_with_all_traffic_on_the_canary_only_threshold_judges_decide():
    result = runbook.new_result("analyze", {})
    fitted = phases._fit_config(_config(), result, 100, True)
    assert fitted.judges == ["success-rate", "latency"] and fitted.canary_weight is None
    only_sequential = phases._fit_config(_config(judges="sequential"), result, 100, True)
    assert only_sequential.judges == ["sequential"]  # stays INCONCLUSIVE, never a vacuous PASS


def test_no_canary_weight_is_configured_at_zero():
    assert phases._fit_config(_config(), runbook.new_result("analyze", {}), 0,
                              True).canary_weight is None
