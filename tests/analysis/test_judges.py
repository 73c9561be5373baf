"""Threshold judges, the Mann-Whitney comparison, decide() and the Judgement round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from canarykit.analysis import judges
from canarykit.analysis.judges import (
    CompareMetric,
    Decision,
    Judgement,
    Verdict,
    check_latency,
    check_metric_range,
    check_success_rate,
    compare_samples,
    decide,
    hodges_lehmann,
)
from canarykit.core.errors import BadInput


def judgement(name: str, verdict: Verdict, *, critical: bool = True,
              required: bool = True) -> Judgement:
    return Judgement(name, verdict, f"{name} said {verdict.value}", {}, {}, critical=critical,
                     required=required)


# --- success rate ------------------------------------------------------------------------


def test_success_rate_below_minimum_fails_with_the_numbers_in_the_reason():
    result = check_success_rate(1204, 35, min_success_rate=99, min_requests=100)
    assert result.verdict == Verdict.FAIL
    assert result.judge == "success-rate"
    assert result.values["success_rate"] == pytest.approx(100 * (1204 - 35) / 1204)
    assert "97.09% < minimum 99%" in result.reason and "1,204 requests" in result.reason
    assert result.thresholds == {"min_success_rate": 99.0, "min_requests": 100}


def test_success_rate_at_or_above_minimum_passes():
    result = check_success_rate(1000, 10, min_success_rate=99, min_requests=100)
    assert result.verdict == Verdict.PASS
    assert result.values["success_rate"] == pytest.approx(99.0)


def test_success_rate_with_too_few_requests_is_inconclusive_not_pass():
    result = check_success_rate(40, 0, min_success_rate=99, min_requests=100)
    assert result.verdict == Verdict.INCONCLUSIVE
    assert "only 40 canary requests" in result.reason


@pytest.mark.parametrize("requests,errors", [(None, 3), (100, None), (float("nan"), 1)])
def test_success_rate_with_missing_data_is_inconclusive(requests, errors):
    result = check_success_rate(requests, errors, min_success_rate=99, min_requests=0)
    assert result.verdict == Verdict.INCONCLUSIVE
    assert result.reason.startswith("no data")


def test_success_rate_with_zero_requests_and_no_minimum_is_still_inconclusive():
    assert check_success_rate(0, 0, min_success_rate=99, min_requests=0).verdict == \
        Verdict.INCONCLUSIVE


def test_success_rate_refuses_more_errors_than_requests_naming_the_field():
    with pytest.raises(BadInput) as error:
        check_success_rate(10, 11, min_success_rate=99, min_requests=0)
    assert error.value.field == "errors"


def test_success_rate_minimum_above_100_is_refused_naming_the_field():
    with pytest.raises(BadInput) as error:
        check_success_rate(10, 0, min_success_rate=120, min_requests=0)
    assert error.value.field == "min_success_rate" and error.value.value == 120


# --- latency and custom ranges ------------------------------------------------------------


def test_latency_above_maximum_fails_and_below_passes():
    slow = check_latency(612.5, max_ms=500, requests=900, min_requests=100)
    fast = check_latency(180.0, max_ms=500, requests=900, min_requests=100)
    assert slow.verdict == Verdict.FAIL and "612.5 ms > maximum 500.0 ms" in slow.reason
    assert fast.verdict == Verdict.PASS
    assert slow.judge == fast.judge == "latency-p99"


def test_latency_judge_is_named_after_its_quantile():
    assert check_latency(1, max_ms=5, requests=500, min_requests=1, quantile=0.95).judge == \
        "latency-p95"


def test_latency_without_data_or_with_too_few_requests_is_inconclusive():
    assert check_latency(None, max_ms=500, requests=900, min_requests=100).verdict == \
        Verdict.INCONCLUSIVE
    assert check_latency(float("nan"), max_ms=500, requests=900, min_requests=1).verdict == \
        Verdict.INCONCLUSIVE
    assert check_latency(900.0, max_ms=500, requests=20, min_requests=100).verdict == \
        Verdict.INCONCLUSIVE


def test_latency_maximum_must_be_positive():
    with pytest.raises(BadInput) as error:
        check_latency(1, max_ms=0, requests=10, min_requests=0)
    assert error.value.field == "max_ms"


def test_custom_metric_outside_its_range_fails_and_inside_passes():
    low = check_metric_range("checkout-success", 0.91, min_value=0.95)
    high = check_metric_range("queue-depth", 130, max_value=100)
    inside = check_metric_range("checkout-success", 0.97, min_value=0.95, max_value=1.0)
    assert low.judge == "custom:checkout-success" and low.verdict == Verdict.FAIL
    assert "0.91 < minimum 0.95" in low.reason
    assert high.verdict == Verdict.FAIL and "130 > maximum 100" in high.reason
    assert inside.verdict == Verdict.PASS


def test_custom_metric_missing_is_inconclusive_and_a_range_needs_a_bound():
    assert check_metric_range("x", None, max_value=1).verdict == Verdict.INCONCLUSIVE
    with pytest.raises(BadInput):
        check_metric_range("x", 1.0)
    with pytest.raises(BadInput) as error:
        check_metric_range("x", 1.0, min_value=5, max_value=1)
    assert error.value.field == "min_value"


# --- decide -------------------------------------------------------------------------------


def test_decide_fails_on_any_critical_failure_even_with_inconclusive_ones():
    decision = decide([judgement("a", Verdict.PASS), judgement("b", Verdict.INCONCLUSIVE),
                       judgement("c", Verdict.FAIL)])
    assert decision.verdict == Verdict.FAIL
    assert "c: c said FAIL" in decision.reason


def test_decide_turns_a_non_critical_failure_into_inconclusive_never_pass():
    decision = decide([judgement("a", Verdict.PASS), judgement("b", Verdict.FAIL, critical=False)])
    assert decision.verdict == Verdict.INCONCLUSIVE
    assert "non-critical" in decision.reason


def test_decide_is_inconclusive_when_a_required_judge_is():
    decision = decide([judgement("a", Verdict.PASS), judgement("b", Verdict.INCONCLUSIVE)])
    assert decision.verdict == Verdict.INCONCLUSIVE and "b said INCONCLUSIVE" in decision.reason


def test_decide_ignores_an_inconclusive_judge_that_is_not_required():
    decision = decide([judgement("a", Verdict.PASS),
                       judgement("b", Verdict.INCONCLUSIVE, required=False)])
    assert decision.verdict == Verdict.PASS


def test_decide_on_nothing_or_nothing_required_is_inconclusive():
    assert decide([]).verdict == Verdict.INCONCLUSIVE
    assert decide([judgement("a", Verdict.PASS, required=False)]).verdict == \
        Verdict.INCONCLUSIVE


def test_decide_passes_only_when_every_required_judge_passes():
    decision = decide([judgement("a", Verdict.PASS), judgement("b", Verdict.PASS)])
    assert decision.verdict == Verdict.PASS and "a, b" in decision.reason


# --- round trip ---------------------------------------------------------------------------


def test_judgement_and_decision_round_trip_through_json():
    first = check_success_rate(np.float64(1204), np.int64(35), min_success_rate=99,
                               min_requests=100)
    first.queries = ['sum(increase(istio_requests_total{destination_version="v2"}[1m]))']
    first.evidence = {"p_value": np.float64(0.01), "bayes_factor": math.inf,
                      "per_metric": [{"x": np.nan}]}
    second = check_metric_range("queue", None, max_value=1)
    decision = decide([first, second])
    text = json.dumps(decision.to_dict(), allow_nan=False)
    back = Decision.from_dict(json.loads(text))
    assert back.verdict == Verdict.FAIL
    assert back.judgements[0].verdict == Verdict.FAIL
    assert back.judgements[0].queries == first.queries
    assert back.judgements[0].evidence == {"p_value": 0.01, "bayes_factor": None,
                                           "per_metric": [{"x": None}]}
    assert back.judgements[1].judge == "custom:queue"
    assert back.to_dict() == decision.to_dict()
    assert Judgement.from_dict(first.to_dict()).to_dict() == first.to_dict()


def test_judgement_from_dict_refuses_an_unknown_verdict_naming_the_field():
    data = check_metric_range("q", 1, max_value=2).to_dict()
    data["verdict"] = "MAYBE"
    with pytest.raises(BadInput) as error:
        Judgement.from_dict(data)
    assert error.value.field == "judgement.verdict"


# --- Mann-Whitney comparison --------------------------------------------------------------

STABLE = [float(v) for v in range(10, 30)]  # 20 per-interval values


def shifted(values: list[float], by: float) -> list[float]:
    return [v + by for v in values]


def test_clearly_higher_canary_is_high_and_fails_a_critical_metric():
    result = compare_samples({"errors": (STABLE, shifted(STABLE, 50))},
                             [CompareMetric("errors", critical=True)])
    row = result.evidence["metrics"][0]
    assert result.judge == "mann-whitney" and result.verdict == Verdict.FAIL
    assert row["classification"] == "High" and row["bad"]
    assert row["p_value"] < 1e-6
    assert row["hl_shift"] == pytest.approx(50) and row["hl_ci_low"] > 0
    assert "critical metric errors" in result.reason


def test_clearly_lower_canary_is_low_bad_only_for_direction_decrease():
    samples = {"throughput": (STABLE, shifted(STABLE, -50))}
    bad = compare_samples(samples, [CompareMetric("throughput", direction="decrease")])
    fine = compare_samples(samples, [CompareMetric("throughput", direction="increase")])
    assert bad.values["classifications"] == {"throughput": "Low"}
    assert bad.values["score"] == 0 and bad.verdict == Verdict.FAIL
    assert fine.values["classifications"] == {"throughput": "Low"}
    assert fine.values["score"] == 100 and fine.verdict == Verdict.PASS


def test_either_direction_counts_both_high_and_low_as_bad():
    for by in (50, -50):
        result = compare_samples({"m": (STABLE, shifted(STABLE, by))},
                                 [CompareMetric("m", direction="either")])
        assert result.values["score"] == 0


def test_same_distribution_passes():
    rng = np.random.default_rng(3)
    stable, canary = rng.normal(100, 5, 30).tolist(), rng.normal(100, 5, 30).tolist()
    result = compare_samples({"latency": (stable, canary)}, [CompareMetric("latency")])
    assert result.values["classifications"] == {"latency": "Pass"}
    assert result.verdict == Verdict.PASS and result.values["score"] == 100


def test_p_value_is_scipys_two_sided_asymptotic_mann_whitney():
    rng = np.random.default_rng(5)
    stable, canary = rng.normal(0, 1, 25), rng.normal(0.6, 1, 25)
    result = compare_samples({"m": (stable.tolist(), canary.tolist())}, [CompareMetric("m")])
    expected = stats.mannwhitneyu(canary, stable, method="asymptotic").pvalue
    assert result.evidence["metrics"][0]["p_value"] == pytest.approx(expected)


def test_all_identical_values_pass_with_p_value_one():
    result = compare_samples({"errors": ([0.0] * 10, [0.0] * 10)}, [CompareMetric("errors")])
    assert result.evidence["metrics"][0]["p_value"] == 1.0
    assert result.verdict == Verdict.PASS


def test_allowed_increase_ratio_tolerates_a_small_significant_increase():
    stable = [100 + 0.1 * i for i in range(20)]
    samples = {"latency": (stable, [v * 1.05 for v in stable])}  # 5% slower, no overlap
    strict = compare_samples(samples, [CompareMetric("latency")])
    tolerant = compare_samples(samples, [CompareMetric("latency", allowed_increase_ratio=0.1)])
    assert strict.evidence["metrics"][0]["p_value"] < 0.001
    assert strict.evidence["metrics"][0]["mean_ratio"] == pytest.approx(1.05)
    assert strict.values["classifications"] == {"latency": "High"}
    assert tolerant.values["classifications"] == {"latency": "Pass"}
    assert tolerant.verdict == Verdict.PASS


def test_too_few_samples_is_nodata_and_inconclusive():
    result = compare_samples({"errors": ([1.0, 2.0], [1.0, 2.0, 3.0])},
                             [CompareMetric("errors")], min_samples=5)
    assert result.values["classifications"] == {"errors": "NoData"}
    assert result.values["score"] is None
    assert result.verdict == Verdict.INCONCLUSIVE


def test_a_missing_metric_blocks_pass_even_with_a_perfect_score_elsewhere():
    result = compare_samples({"errors": (STABLE, STABLE)},
                             [CompareMetric("errors"), CompareMetric("latency")])
    assert result.values["classifications"] == {"errors": "Pass", "latency": "NoData"}
    assert result.values["score"] == 100
    assert result.verdict == Verdict.INCONCLUSIVE and "no data for latency" in result.reason


def test_nan_intervals_are_removed_or_replaced_by_zero():
    stable = STABLE[:6] + [float("nan")] * 4
    canary = shifted(STABLE[:6], 0) + [None] * 4
    removed = compare_samples({"m": (stable, canary)}, [CompareMetric("m")], min_samples=6)
    replaced = compare_samples({"m": (stable, canary)},
                               [CompareMetric("m", nan_strategy="replace")], min_samples=10)
    assert removed.evidence["metrics"][0]["n_stable"] == 6
    assert replaced.evidence["metrics"][0]["n_stable"] == 10
    assert replaced.evidence["metrics"][0]["stable_mean"] == pytest.approx(sum(STABLE[:6]) / 10)


def score_case(bad_weight: float, good_weight: float) -> Judgement:
    samples = {"bad": (STABLE, shifted(STABLE, 50)), "good": (STABLE, STABLE)}
    return compare_samples(samples, [CompareMetric("bad", weight=bad_weight),
                                     CompareMetric("good", weight=good_weight)])


def test_weighted_score_below_marginal_fails():
    result = score_case(1, 1)
    assert result.values["score"] == pytest.approx(50) and result.verdict == Verdict.FAIL


def test_weighted_score_between_marginal_and_pass_is_inconclusive():
    result = score_case(1, 4)
    assert result.values["score"] == pytest.approx(80)
    assert result.verdict == Verdict.INCONCLUSIVE and "marginal" in result.reason


def test_weighted_score_at_pass_threshold_passes_despite_a_non_critical_high():
    result = score_case(1, 19)
    assert result.values["score"] == pytest.approx(95) and result.verdict == Verdict.PASS


def test_hodges_lehmann_interval_covers_the_true_shift():
    rng = np.random.default_rng(11)
    stable, canary = rng.normal(0, 1, 40), rng.normal(2, 1, 40)
    shift, low, high = hodges_lehmann(stable, canary, 0.95)
    assert low < 2 < high and low < shift < high and abs(shift - 2) < 0.6


def test_compare_refuses_a_bad_direction_naming_the_metric():
    with pytest.raises(BadInput) as error:
        compare_samples({}, [CompareMetric("errors", direction="up")])
    assert error.value.field == "metrics.errors.direction"


def test_compare_refuses_marginal_above_pass_and_duplicate_metrics():
    with pytest.raises(BadInput) as error:
        compare_samples({}, [CompareMetric("a")], pass_score=70, marginal_score=80)
    assert error.value.field == "marginal_score"
    with pytest.raises(BadInput):
        compare_samples({}, [CompareMetric("a"), CompareMetric("a")])


def test_compare_judgement_is_json_serialisable():
    result = compare_samples({"bad": ([0.0] * 6, [0.0, 0.0, 0.0, 0.0, 0.0, 1.0])},
                             [CompareMetric("bad")], min_samples=5)
    json.dumps(result.to_dict(), allow_nan=False)


def test_a_range_open_above_reads_as_up_to_infinity():
    judgement = judges.check_metric_range("checkout-success", 0.97, min_value=0.9)
    assert judgement.verdict == judges.Verdict.PASS
    assert "within [0.9, inf]" in judgement.reason
