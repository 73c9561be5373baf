"""Rollout plans: validation naming the field path, secret refusal, expansion into phases."""

from __future__ import annotations

import copy
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from canarykit.core.errors import BadInput
from canarykit.rollout import plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
BASE = {
    "service": "reviews",
    "analysis": {"window": "30s", "interval": "5s", "until_verdict": True, "max_duration": "2m"},
    "steps": [{"internal-canary": {}}, {"shadow": {"percentage": 10}}, {"weight": 5},
              {"weight": 25, "analysis": {"max_duration": "1m"}}, {"promote": {}}],
}


def with_changes(**changes) -> dict:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def refused(data) -> BadInput:
    with pytest.raises(BadInput) as caught:
        plan.parse_plan(data)
    return caught.value


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("data", "field", "value"), [
    (with_changes(steps=[{"weight": 5}, {"weight": 130}]), "steps[1].weight", 130),
    (with_changes(steps=[{"weight": 0}]), "steps[0].weight", 0),
    (with_changes(steps=[{"weight": "25"}]), "steps[0].weight", "25"),
    (with_changes(steps=[{"weight": 5}, {"canary": 5}]), "steps[1]", ["canary"]),
    (with_changes(steps=[{"weight": 5, "shadow": {}}]), "steps[0]", ["shadow", "weight"]),
    (with_changes(steps=[{"weight": 5, "wait": "1m"}]), "steps[0].wait", "1m"),
    (with_changes(steps=[{"weight": 5, "pause": "later"}]), "steps[0].pause", "later"),
    (with_changes(steps=[{"promote": {}}, {"weight": 5}]), "steps[1]", {"weight": 5}),
    (with_changes(steps=[]), "steps", []),
    (with_changes(steps=[{"shadow": {"percentage": 0}}]), "steps[0].shadow.percentage", 0),
    (with_changes(steps=[{"internal-canary": {"colour": "red"}}]),
     "steps[0].internal-canary.colour", "red"),
    (with_changes(steps=[{"internal-canary": {"header": ""}}]),
     "steps[0].internal-canary.header", ""),
    (with_changes(steps=[{"blue-green": {"to_subset": "v3"}}]), "steps[0].blue-green.to_subset",
     "v3"),
    (with_changes(steps=[{"weight": 5, "analysis": {"judges": ["magic"]}}]),
     "steps[0].analysis.judges", "magic"),
    (with_changes(steps=[{"weight": 5, "analysis": {"window": "soon"}}]),
     "steps[0].analysis.window", "soon"),
    (with_changes(steps=[{"promote": {}, "analysis": {}}]), "steps[0].analysis", {}),
    (with_changes(analysis={"min_requests": 0}), "analysis.min_requests", 0),
    (with_changes(analysis={"interval": "2m", "window": "1m"}), "analysis.interval", "2m"),
    (with_changes(analysis={"min_success_rate": 120}), "analysis.min_success_rate", 120),
    (with_changes(analysis={"check_every": "0s"}), "analysis.check_every", "0s"),
    (with_changes(analysis={"colour": "red"}), "analysis.colour", "red"),
    (with_changes(analysis={"until_verdict": "yes"}), "analysis.until_verdict", "yes"),
    (with_changes(analysis={"until_verdict": True, "max_duration": "10s"}),
     "analysis.max_duration", "10s"),
    (with_changes(analysis={"canary_weight": 25}), "analysis.canary_weight", 25),
    (with_changes(steps=[{"shadow": {"window": "2s"}}]), "steps[0].shadow.interval", "5s"),
    (with_changes(inconclusive={"hold_steps": 2, "then": "promote"}), "inconclusive.then",
     "promote"),
    (with_changes(inconclusive={"hold_steps": -1}), "inconclusive.hold_steps", -1),
    (with_changes(preflight={"baseline_window": "a while"}), "preflight.baseline_window",
     "a while"),
    (with_changes(prometheus={"url": "ftp://prometheus"}), "prometheus.url", "ftp://prometheus"),
    (with_changes(servise="reviews"), "servise", "reviews"),
    (with_changes(service="Reviews_1"), "service", "Reviews_1"),
    (with_changes(canary="v1"), "canary", "v1"),
    (with_changes(namespace=7), "namespace", 7),
    (with_changes(release="../../etc"), "release", "../../etc"),
])
def test_a_bad_plan_is_refused_naming_the_field_path_and_the_value(data, field, value):
    error = refused(data)
    assert error.field == field
    assert error.value == value
    assert field in str(error)


def test_a_plan_without_a_service_is_refused():
    data = with_changes()
    del data["service"]
    assert refused(data).field == "service"


def test_a_plan_that_is_not_a_mapping_is_refused():
    assert refused(["weight: 5"]).field == "plan"


def test_an_unreadable_or_invalid_plan_file_is_refused_naming_the_file(tmp_path):
    with pytest.raises(BadInput) as missing:
        plan.load_plan(tmp_path / "absent.yaml")
    assert missing.value.field == "PLAN"
    broken = tmp_path / "broken.yaml"
    broken.write_text("service: [reviews\n")
    with pytest.raises(BadInput) as invalid:
        plan.load_plan(broken)
    assert invalid.value.field == "PLAN" and "not valid YAML" in str(invalid.value)


# ---------------------------------------------------------------- hostile or careless files


def plan_file(tmp_path, text: str) -> BadInput:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(BadInput) as caught:
        plan.load_plan(path)
    assert len(str(caught.value)) < 300 and "\n" not in str(caught.value)
    return caught.value


LAUGHS = "\n".join(
    [f'a: &a [{", ".join(["lol"] * 9)}]']
    + [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]"
       for a, b in zip("abcdefgh", "bcdefghi", strict=True)])


def test_a_plan_with_two_steps_keys_is_refused_naming_the_key(tmp_path):
    error = plan_file(tmp_path, "service: reviews\nsteps:\n- weight: 10\nsteps:\n- promote: {}\n")
    assert error.field == "PLAN" and "duplicate key steps at line 4" in error.problem


def test_a_1kb_alias_bomb_plan_is_refused_within_a_second_using_under_100mb(tmp_path):
    text = "service: reviews\n" + LAUGHS.replace("a: &a", "notes: &a") \
        + "\nsteps: [{weight: 10, analysis: {judges: *i}}]\n"
    assert len(text) < 1024
    tracemalloc.start()
    started = time.monotonic()
    error = plan_file(tmp_path, text)
    took = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "alias" in error.problem
    assert took < 1.0 and peak < 100 * 2**20


def test_a_deeply_nested_plan_is_refused(tmp_path):
    assert "nesting" in plan_file(tmp_path, "service: " + "[" * 3000 + "]" * 3000).problem


def test_a_plan_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"service: \xff\xfe\n")
    with pytest.raises(BadInput) as caught:
        plan.load_plan(path)
    assert caught.value.problem == "is not UTF-8 text"


@pytest.mark.parametrize(("changes", "field"), [
    ({"inconclusive": {"hold_steps": 10**400}}, "inconclusive.hold_steps"),
    ({"steps": [{"weight": 2**31}]}, "steps[0].weight"),
    ({"steps": [{"weight": 10**400}]}, "steps[0].weight"),
    ({"steps": [{"shadow": {"percentage": 10**400}}]}, "steps[0].shadow.percentage"),
    ({"analysis": {"min_requests": 2**31}}, "analysis.min_requests"),
    ({"analysis": {"max_p99_ms": 10**400}}, "analysis.max_p99_ms"),
    ({"analysis": {"window": "9" * 400 + "h"}}, "analysis.window"),
    ({"pause": "2562048h"}, "pause"),
])
def test_numbers_beyond_their_range_are_refused_with_the_field_path(changes, field):
    error = refused(with_changes(**changes))
    assert error.field == field
    assert len(str(error)) < 300


@pytest.mark.parametrize("url", ["http://", "http://[::1", "http://prometheus:99999",
                                 "http://prom etheus:9090", "https:///api"])
def test_an_invalid_prometheus_url_is_refused_when_the_plan_is_loaded(url):
    error = refused(with_changes(prometheus={"url": url}))
    assert error.field == "prometheus.url" and "URL" in error.problem


def test_a_bearer_token_variable_must_be_a_variable_name():
    assert refused(with_changes(prometheus={"bearer_token_env": "not a name"})).field == \
        "prometheus.bearer_token_env"


@pytest.mark.parametrize(("settings", "field"), [
    ({"header": "x y"}, "steps[0].internal-canary.header"),
    ({"header": "X-Canary"}, "steps[0].internal-canary.header"),
    ({"header": 'x-"q"'}, "steps[0].internal-canary.header"),
    ({"header_value": "a\nb"}, "steps[0].internal-canary.header_value"),
    ({"cookie_name": "a;b"}, "steps[0].internal-canary.cookie_name"),
])
def test_an_internal_canary_istio_would_refuse_is_refused_when_loaded(settings, field):
    assert refused(with_changes(steps=[{"internal-canary": settings}])).field == field


def test_a_plan_too_large_to_be_one_is_refused_unread(tmp_path):
    started = time.monotonic()
    error = plan_file(tmp_path, "service: reviews\nsteps: [" + "{weight: 10}, " * 200_000 + "]\n")
    assert "too large for a plan" in error.problem and time.monotonic() - started < 1.0


def test_more_steps_than_a_rollout_can_have_are_refused_quickly():
    started = time.monotonic()
    error = refused(with_changes(steps=[{"weight": 10}] * 100_000))
    assert error.field == "steps" and "at most 100 steps" in error.problem
    assert time.monotonic() - started < 1.0


def test_a_huge_value_is_cut_in_the_message():
    error = refused(with_changes(steps=[{"weight": 5, "colour": "r" * 100_000}]))
    assert error.field == "steps[0].colour" and len(str(error)) < 300


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize(("data", "field"), [
    (with_changes(prometheus={"url": "", "bearer_token": "s3cr3t-value"}),
     "prometheus.bearer_token"),
    (with_changes(prometheus={"url": "http://admin:hunter2@127.0.0.1:9090"}), "prometheus.url"),
    (with_changes(kubeconfig="apiVersion: v1\nusers:\n- user:\n    token: abcdef123"),
     "kubeconfig"),
    (with_changes(password="hunter2"), "password"),
    (with_changes(steps=[{"internal-canary": {"header_value": "Bearer abcdefghijklmnop"}}]),
     "steps[0].internal-canary.header_value"),
])
def test_anything_that_looks_like_a_credential_is_refused_without_echoing_it(data, field):
    error = refused(data)
    assert error.field == field
    assert error.value == "<hidden>"
    for secret in ("s3cr3t-value", "hunter2", "abcdef123", "abcdefghijklmnop"):
        assert secret not in str(error)


def test_names_of_environment_variables_holding_credentials_are_accepted():
    loaded = plan.parse_plan(with_changes(prometheus={"url": "http://127.0.0.1:9090",
                                                      "bearer_token_env": "PROM_TOKEN"}))
    assert loaded.prometheus.bearer_token_env == "PROM_TOKEN"


# ---------------------------------------------------------------- expansion


def test_steps_expand_into_phases_in_order_with_an_analysis_after_each_step():
    phases = plan.expand(plan.parse_plan(with_changes()))
    assert [(p.name, p.runbook) for p in phases] == [
        ("preflight", "preflight"),
        ("internal-canary", "internal-canary"),
        ("analyze-internal", "analyze"),
        ("shadow-10", "shadow"),
        ("shift-5", "shift-traffic"),
        ("analyze-5", "analyze"),
        ("shift-25", "shift-traffic"),
        ("analyze-25", "analyze"),
        ("promote", "promote"),
    ]
    judged = [p.name for p in phases if p.judged]
    assert judged == ["preflight", "analyze-internal", "shadow-10", "analyze-5", "analyze-25"]


def test_each_phase_carries_its_runbook_parameters_with_step_overrides_applied():
    phases = {p.name: p for p in plan.expand(plan.parse_plan(with_changes()))}
    assert phases["shift-25"].parameters == {"canary_weight": 25}
    assert phases["analyze-25"].parameters["canary_weight"] == 25.0
    assert phases["analyze-25"].parameters["max_duration"] == "1m"  # the step's override
    assert phases["analyze-5"].parameters["max_duration"] == "2m"  # the plan's analysis
    assert phases["analyze-5"].parameters["judges"] == "success-rate,latency,sequential"
    assert phases["analyze-5"].parameters["until_verdict"] is True
    assert phases["analyze-internal"].parameters["canary_weight"] == -1  # read from the VS
    shadow = phases["shadow-10"].parameters
    assert shadow["percentage"] == 10.0 and shadow["window"] == "30s"
    assert "max_duration" not in shadow  # the shadow runbook judges once over its window
    assert "until_verdict" not in shadow
    assert phases["preflight"].parameters == {"min_baseline_success_rate": 99.0,
                                              "baseline_window": "1m"}


def test_a_plan_without_promote_ends_with_promote_and_a_step_can_skip_its_analysis():
    loaded = plan.parse_plan(with_changes(steps=[{"weight": 10, "analysis": False},
                                                 {"weight": 100}]))
    phases = plan.expand(loaded)
    assert [p.name for p in phases] == ["preflight", "shift-10", "shift-100", "analyze-100",
                                        "promote"]
    assert phases[3].parameters["canary_weight"] == -1  # 100% leaves no share to configure


def test_pauses_apply_after_the_last_phase_of_their_step():
    loaded = plan.parse_plan(with_changes(pause="30s", steps=[{"weight": 10, "pause": "2m"},
                                                              {"weight": 50}]))
    pauses = {p.name: p.pause for p in plan.expand(loaded)}
    assert pauses == {"preflight": 30.0, "shift-10": 0.0, "analyze-10": 120.0, "shift-50": 0.0,
                      "analyze-50": 30.0, "promote": 0.0}


def test_a_blue_green_plan_switches_then_judges_then_promotes():
    loaded = plan.load_plan(EXAMPLES / "reviews-blue-green.yaml")
    phases = plan.expand(loaded)
    assert [p.name for p in phases] == ["preflight", "blue-green-v2", "analyze-v2", "promote"]
    assert phases[1].parameters == {"to_subset": "v2"}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_plans_load_and_round_trip_through_yaml(path):
    loaded = plan.load_plan(path)
    again = plan.parse_plan(yaml.safe_load(yaml.safe_dump(loaded.to_dict())))
    assert again == loaded
    assert again.digest() == loaded.digest()


def test_the_digest_changes_when_the_plan_changes():
    first = plan.parse_plan(with_changes())
    second = plan.parse_plan(with_changes(canary="v3"))
    assert first.digest() != second.digest()


# ---------------------------------------------------------------- people in the loop


def test_an_approve_step_is_a_gate_with_its_defaults_and_no_analysis():
    loaded = plan.parse_plan(with_changes(steps=[{"weight": 25}, {"approve": {}},
                                                 {"promote": {}}]))
    phases = plan.expand(loaded)
    assert [(p.name, p.gate) for p in phases] == [
        ("preflight", ""), ("shift-25", ""), ("analyze-25", ""), ("approve", "approve"),
        ("promote", "")]
    assert phases[3].parameters == plan.APPROVE_DEFAULTS
    assert not phases[3].judged and phases[3].runbook == ""


@pytest.mark.parametrize(("step", "field", "value"), [
    ({"approve": {"timeout": "never"}}, "steps[0].approve.timeout", "never"),
    ({"approve": {"timeout": "0s"}}, "steps[0].approve.timeout", "0s"),
    ({"approve": {"on_timeout": "promote"}}, "steps[0].approve.on_timeout", "promote"),
    ({"approve": {"who": "alice"}}, "steps[0].approve.who", "alice"),
    ({"approve": {}, "analysis": {}}, "steps[0].analysis", {}),
])
def test_a_bad_approve_step_is_refused_naming_the_field(step, field, value):
    error = refused(with_changes(steps=[step]))
    assert (error.field, error.value) == (field, value)


def test_confirm_promotion_webhooks_put_a_gate_before_promote():
    loaded = plan.parse_plan(with_changes(
        steps=[{"weight": 50}],
        webhooks=[{"kind": "confirm-promotion", "url_env": "CONFIRM_URL"}]))
    phases = plan.expand(loaded)
    assert [p.name for p in phases][-2:] == ["confirm-promotion", "promote"]
    assert phases[-2].gate == "confirm-promotion"


def test_channels_and_webhooks_round_trip_and_keep_only_variable_names():
    data = with_changes(
        notifications=[{"kind": "slack", "url_env": "SLACK_URL", "events": ["rolled-back"]},
                       {"kind": "webhook", "url_env": "HOOK_URL", "secret_env": "HOOK_KEY"}],
        webhooks=[{"kind": "pre-rollout", "url_env": "LOADTEST_URL", "timeout": "5s"}],
        steps=[{"weight": 10}, {"approve": {"timeout": "1h"}}, {"promote": {}}])
    loaded = plan.parse_plan(data)
    again = plan.parse_plan(yaml.safe_load(yaml.safe_dump(loaded.to_dict())))
    assert again == loaded
    assert [c.kind for c in loaded.notifications] == ["slack", "webhook"]
    assert loaded.hooks("pre-rollout")[0].url_env == "LOADTEST_URL"
    assert "https://" not in yaml.safe_dump(loaded.to_dict())


def test_a_bad_channel_is_refused_naming_its_path():
    error = refused(with_changes(notifications=[{"kind": "pager", "url_env": "X"}]))
    assert error.field.startswith("notifications[0]")


def test_the_metrics_section_names_the_reporter_and_the_version_label():
    loaded = plan.parse_plan(with_changes(metrics={"reporter": "waypoint",
                                                   "version_label": "destination_workload"}))
    assert (loaded.metrics.reporter, loaded.metrics.version_label) == (
        "waypoint", "destination_workload")
    assert refused(with_changes(metrics={"reporter": "sidecar"})).field == "metrics.reporter"
    assert refused(with_changes(metrics={"version_label": "le"})).field == \
        "metrics.version_label"
    assert refused(with_changes(metrics={"version_label": "a-b"})).field == \
        "metrics.version_label"
    assert refused(with_changes(metrics={"reporters": "source"})).field == "metrics.reporters"


def test_the_default_router_and_metrics_leave_an_older_plans_digest_as_it_was():
    """A release that began before routers existed is not taken for a changed plan."""
    loaded = plan.parse_plan(with_changes())
    assert "router" not in loaded.to_dict() and "metrics" not in loaded.to_dict()
    named = plan.parse_plan(with_changes(router="istio"))
    assert named.to_dict()["router"] == "istio" and named.digest() != loaded.digest()


def test_the_internal_canary_step_adds_only_the_routes_it_names():
    """Naming a header means no cookie route (and the reverse); naming neither, both defaults."""
    def internal(settings):
        loaded = plan.parse_plan(with_changes(steps=[{"internal-canary": settings},
                                                     {"promote": {}}]))
        return next(p for p in plan.expand(loaded) if p.runbook == "internal-canary").parameters

    assert internal({"header": "x-team", "header_value": "qa"}) == {
        "header": "x-team", "header_value": "qa", "cookie_name": ""}
    assert internal({"cookie_name": "beta"}) == {"cookie_name": "beta", "header": ""}
    assert internal({}) == {}
    assert internal({"header_value": "qa"}) == {"header_value": "qa"}  # the default header
    assert refused(with_changes(steps=[{"internal-canary": {"header": "x-team",
                                                            "cookie_value": "yes"}}])).field \
        == "steps[0].internal-canary.cookie_value"
