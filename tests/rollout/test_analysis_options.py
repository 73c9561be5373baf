"""Flagger's analysis options in the analyze phase: iterations, threshold, dry-run judges.

The checks run on a fake clock with a scripted `run_analysis`, so each test takes
milliseconds; tests/analysis/test_templates.py judges through a real Prometheus.
"""

from __future__ import annotations

import itertools
import types

import pytest

from canarykit.analysis.judges import Decision, Judgement, Verdict
from canarykit.analysis.settings import AnalysisSettings
from canarykit.core.errors import BadInput
from canarykit.rollout import parameters, phases, plan, runbook

START = 1_700_000_000.0
PASS, FAIL, INCONCLUSIVE = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE


class Clock:
    """time.time and time.sleep of the phases module: sleeping moves the clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class Script:
    """run_analysis answering the scripted verdicts in turn, remembering what it judged."""

    def __init__(self, verdicts) -> None:
        self.verdicts = list(verdicts)
        self.calls: list[tuple[float, float]] = []  # (window start, end) of each check

    def __call__(self, prometheus, selector, config, *, end, **_options) -> Decision:
        window = config.window_seconds
        self.calls.append((end - window, end))
        verdict = self.verdicts[len(self.calls) - 1]
        judgement = Judgement("success-rate", verdict, f"check {len(self.calls)}", {}, {})
        return Decision(verdict, f"check {len(self.calls)} said {verdict.value}", [judgement])


def iterate(monkeypatch, verdicts, **settings):
    """Run `_iterate` from START over 60 s windows; (decision, script, checks, summary)."""
    clock, script = Clock(START), Script(verdicts)
    monkeypatch.setattr(phases, "time", clock)
    monkeypatch.setattr(phases, "run_analysis", script)
    config = AnalysisSettings.from_dict({"window": "60s", "interval": "10s", **settings})
    checks: list[dict] = []
    decision, end, summary = phases._iterate(
        types.SimpleNamespace(prometheus=None), None, None, config, start=START, began=START,
        limit=config.window_seconds * 3, check_every=10.0, segments=[], checks=checks)
    assert end == clock.now
    return decision, script, checks, summary


# ---------------------------------------------------------------- the defaults: one check


@pytest.mark.parametrize("verdict", list(Verdict))
def test_the_defaults_judge_one_window_and_keep_its_decision_as_it_is(monkeypatch, verdict):
    decision, script, checks, _ = iterate(monkeypatch, [verdict])
    assert script.calls == [(START, START + 60)]
    assert decision.verdict == verdict
    assert decision.reason == f"check 1 said {verdict.value}"  # not reworded
    assert [(c["iteration"], c["failed_checks"]) for c in checks] == [
        (1, int(verdict == FAIL))]


# ---------------------------------------------------------------- iterations and threshold


def test_each_iteration_judges_its_own_window_after_the_last(monkeypatch):
    _, script, checks, summary = iterate(monkeypatch, [PASS, PASS, PASS], iterations=3)
    assert script.calls == [(START + 60 * i, START + 60 * (i + 1)) for i in range(3)]
    assert [c["iteration"] for c in checks] == [1, 2, 3]
    assert [s["start"] for s in summary][1:] == [s["end"] for s in summary][:-1]


def test_the_step_fails_when_failed_checks_reach_the_threshold_and_stops_there(monkeypatch):
    decision, script, checks, _ = iterate(monkeypatch, [FAIL, PASS, FAIL, PASS],
                                          iterations=4, threshold=2)
    assert decision.verdict == FAIL
    assert len(script.calls) == 3  # the fourth check is not run
    assert decision.reason.startswith("2 of 3 checks failed (threshold 2, 4 iterations)")
    assert decision.judgements[0].reason == "check 3"  # the check that reached the threshold
    assert [(c["verdict"], c["failed_checks"]) for c in checks] == [
        ("FAIL", 1), ("PASS", 1), ("FAIL", 2)]


def test_fewer_failures_than_the_threshold_pass_when_the_last_check_passes(monkeypatch):
    decision, script, _, summary = iterate(monkeypatch, [FAIL, PASS, PASS], iterations=3,
                                           threshold=2)
    assert decision.verdict == PASS and len(script.calls) == 3
    assert "1 of 3 checks failed" in decision.reason
    assert [s["failed_checks"] for s in summary] == [1, 1, 1]


@pytest.mark.parametrize("last", [INCONCLUSIVE, FAIL])
def test_a_last_check_that_did_not_pass_leaves_the_step_inconclusive(monkeypatch, last):
    decision, _, _, _ = iterate(monkeypatch, [PASS, PASS, last], iterations=3, threshold=2)
    assert decision.verdict == INCONCLUSIVE
    assert "the last check did not pass" in decision.reason


def test_inconclusive_checks_never_make_a_pass_by_themselves(monkeypatch):
    decision, script, _, _ = iterate(monkeypatch, [INCONCLUSIVE] * 3, iterations=3,
                                     threshold=3)
    assert decision.verdict == INCONCLUSIVE and len(script.calls) == 3


@pytest.mark.parametrize(("iterations", "threshold"), [(1, 1), (2, 1), (3, 2), (3, 3)])
def test_every_sequence_of_checks_follows_flaggers_counting(monkeypatch, iterations, threshold):
    for verdicts in itertools.product(list(Verdict), repeat=iterations):
        decision, script, _, _ = iterate(monkeypatch, verdicts, iterations=iterations,
                                         threshold=threshold)
        ran = verdicts[:len(script.calls)]
        failed = ran.count(FAIL)
        reached = next((i + 1 for i in range(iterations)
                        if verdicts[:i + 1].count(FAIL) == threshold), None)
        assert len(script.calls) == (reached or iterations), verdicts
        assert (decision.verdict == FAIL) == (failed >= threshold), verdicts
        if decision.verdict == PASS:
            assert len(ran) == iterations and ran[-1] == PASS and failed < threshold, verdicts


def test_with_until_verdict_a_check_may_fail_early_and_the_next_starts_then(monkeypatch):
    # check 1 fails 10 s in; check 2 is inconclusive 10 s in, then passes once its window is
    # covered (the window grows from the start of the check, as without iterations)
    decision, script, checks, _ = iterate(
        monkeypatch, [FAIL, INCONCLUSIVE] + [PASS] * 5, iterations=2, threshold=2,
        until_verdict=True, max_duration="3m")
    assert script.calls[0] == (START, START + 10)
    assert script.calls[1] == (START + 10, START + 20)
    assert script.calls[-1][1] - script.calls[1][0] >= 60 - 0.5
    assert decision.verdict == PASS
    assert [c["iteration"] for c in checks][:2] == [1, 2]
    assert checks[-1]["failed_checks"] == 1


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(("data", "field", "value"), [
    ({"iterations": 0}, "iterations", 0),
    ({"iterations": "3"}, "iterations", "3"),
    ({"iterations": 2.5}, "iterations", 2.5),
    ({"iterations": True}, "iterations", True),
    ({"threshold": 0}, "threshold", 0),
    ({"threshold": -1}, "threshold", -1),
    ({"iterations": 2, "threshold": 3}, "threshold", 3),
    ({"threshold": 2}, "threshold", 2),  # above the one default iteration
])
def test_bad_iterations_or_threshold_are_refused_naming_them(data, field, value):
    with pytest.raises(BadInput) as refused:
        AnalysisSettings.from_dict(data)
    assert (refused.value.field, refused.value.value) == (field, value)


def test_a_threshold_above_the_iterations_says_why():
    with pytest.raises(BadInput, match="could never fail by count"):
        AnalysisSettings.from_dict({"iterations": 2, "threshold": 3})


def test_the_plan_takes_iterations_and_threshold_at_the_top_and_per_step():
    loaded = plan.parse_plan({
        "service": "reviews", "analysis": {"iterations": 3, "threshold": 2},
        "steps": [{"weight": 5}, {"weight": 25, "analysis": {"threshold": 3}}]})
    assert (loaded.steps[0].analysis.iterations, loaded.steps[0].analysis.threshold) == (3, 2)
    assert (loaded.steps[1].analysis.iterations, loaded.steps[1].analysis.threshold) == (3, 3)
    analyze = [spec for spec in plan.expand(loaded) if spec.runbook == "analyze"]
    assert [(s.parameters["iterations"], s.parameters["threshold"]) for s in analyze] == [
        (3, 2), (3, 3)]
    given = parameters.given_parameters("analyze", analyze[1].parameters, set())
    assert parameters.analysis_settings("analyze", given) == loaded.steps[1].analysis


@pytest.mark.parametrize(("steps", "field", "value"), [
    ([{"weight": 5, "analysis": {"threshold": 4}}], "steps[0].analysis.threshold", 4),
    ([{"weight": 5}, {"weight": 9, "analysis": {"iterations": 0}}],
     "steps[1].analysis.iterations", 0),
])
def test_a_plan_with_a_bad_count_is_refused_naming_its_path(steps, field, value):
    with pytest.raises(BadInput) as refused:
        plan.parse_plan({"service": "reviews", "analysis": {"iterations": 3}, "steps": steps})
    assert (refused.value.field, refused.value.value) == (field, value)


def test_the_shadow_runbook_judges_once():
    assert "iterations" not in parameters.RUNBOOK_PARAMETERS["shadow"]
    assert {"iterations", "threshold"} <= set(parameters.RUNBOOK_PARAMETERS["analyze"])


# ---------------------------------------------------------------- dry-run judges at 100 %


def test_at_full_weight_dry_run_judges_not_run_are_dropped_with_them():
    config = AnalysisSettings.from_dict({"judges": "success-rate,latency,sequential",
                                         "dry_run_judges": "latency,sequential"})
    fitted = phases._fit_config(config, runbook.new_result("analyze", {}), 100, True)
    assert fitted.judges == ["success-rate", "latency"]
    assert fitted.dry_run_judges == ["latency"]
    assert fitted.validate() == fitted


def test_at_full_weight_the_judges_stay_when_only_dry_run_ones_could_judge_alone():
    config = AnalysisSettings.from_dict({"judges": "latency,sequential",
                                         "dry_run_judges": "latency"})
    fitted = phases._fit_config(config, runbook.new_result("analyze", {}), 100, True)
    assert fitted.judges == ["latency", "sequential"]  # INCONCLUSIVE without stable traffic


def test_a_dry_run_error_judge_cannot_end_the_step_early():
    judgement = Judgement("error-rate-sequential", INCONCLUSIVE, "slow traffic", {}, {},
                          evidence={"decidable_in_budget": False})
    assert phases._undecidable(Decision(INCONCLUSIVE, "", [judgement]))
    judgement.dry_run = True
    assert not phases._undecidable(Decision(INCONCLUSIVE, "", [judgement]))


def test_the_judgement_table_says_which_judges_are_dry_run():
    judgements = [Judgement("success-rate", PASS, "ok", {}, {}),
                  Judgement("latency-p99", FAIL, "slow", {}, {}, dry_run=True)]
    table = phases.judgement_table(Decision(PASS, "", judgements))
    assert list(table["dry_run"]) == [False, True]
