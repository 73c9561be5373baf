"""Anytime-valid sequential judges: formulas, verdicts, and type-I error under monitoring."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
from scipy import integrate, stats

from canarykit.analysis import sequential
from canarykit.analysis.judges import Verdict, decide
from canarykit.analysis.sequential import (
    FALLBACK_DISPERSION,
    Segment,
    cdf_band_halfwidth,
    count_dispersion,
    error_log_bayes_factor,
    error_rate_test,
    errors_to_detect,
    estimate_dispersion,
    histogram_quantile,
    judge_sequential,
    latency_dispersion,
    latency_test,
    null_share,
    retry_adjusted_split_log_bayes_factor,
    split_log_bayes_factor,
    traffic_split_test,
)
from canarykit.core.errors import BadInput

EDGES = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
         300000, 600000, 1800000, 3600000]
MONTE_CARLO_MARGIN = 0.03  # about 3 standard errors of a 5% rate over 500 streams


# Monte Carlo calibrations of thousands of simulated rollouts: the slow tier, with the lab.
LONG_SIMULATION = pytest.mark.lab

def segment(share, stable_requests, stable_errors, canary_requests, canary_errors):
    return Segment(share, stable_requests, stable_errors, canary_requests, canary_errors)


# --- the Bayes factors against their definitions ------------------------------------------


def test_error_bayes_factor_is_the_restricted_beta_mixture_likelihood_ratio():
    x, y, share, tolerance, k = 4, 10, 0.1, 0.2, 5.0
    rho0 = null_share(share, tolerance)
    a, b = k * rho0, k * (1 - rho0)
    mixed = integrate.quad(lambda t: t ** (x + a - 1) * (1 - t) ** (y + b - 1), rho0, 1)[0]
    prior = integrate.quad(lambda t: t ** (a - 1) * (1 - t) ** (b - 1), rho0, 1)[0]
    expected = mixed / prior / (rho0**x * (1 - rho0) ** y)
    got = math.exp(error_log_bayes_factor(x, y, share, tolerance=tolerance, concentration=k))
    assert got == pytest.approx(expected, rel=1e-6)


def test_null_share_is_the_canarys_share_of_errors_at_the_tolerated_rate():
    # 10% of traffic, canary errors 1.5x as often: 0.15 / (0.15 + 0.9)
    assert null_share(0.1, 0.5) == pytest.approx(0.15 / 1.05)
    assert null_share(0.25) == pytest.approx(0.25)


def test_split_bayes_factor_is_the_dirichlet_multinomial_formula():
    x, y, share, k = 30, 170, 0.2, 50.0
    a, b = k * share, k * (1 - share)
    mixed = integrate.quad(lambda t: stats.beta.pdf(t, a, b) * t**x * (1 - t) ** y, 0, 1,
                           points=[x / (x + y)])[0]
    expected = mixed / (share**x * (1 - share) ** y)
    got = math.exp(split_log_bayes_factor(x, y, share, concentration=k))
    assert got == pytest.approx(expected, rel=1e-5)


def test_bayes_factors_stay_finite_with_millions_of_requests():
    assert np.isfinite(split_log_bayes_factor(5_000_000, 95_000_000, 0.05))
    assert np.isfinite(error_log_bayes_factor(30_000, 500_000, 0.05))
    assert error_log_bayes_factor(1_000, 500_000, 0.05) < 0  # far better canary: no evidence


# --- error-rate test verdicts -------------------------------------------------------------


def test_error_rate_fails_when_errors_pile_up_on_the_canary():
    result = error_rate_test([segment(0.1, 9000, 50, 1000, 16)])
    assert result.judge == "error-rate-sequential" and result.verdict == Verdict.FAIL
    assert result.evidence["bayes_factor"] == pytest.approx(89.2, rel=0.01)
    assert result.evidence["p_value"] == pytest.approx(1 / 89.2, rel=0.01)
    assert result.thresholds["bayes_factor_threshold"] == pytest.approx(20)
    assert result.values["canary_error_rate"] == pytest.approx(0.016)
    assert "1.60% of 1,000 requests vs stable 0.56% of 9,000" in result.reason
    assert ">= 1/alpha = 20" in result.reason


def test_error_rate_passes_without_evidence_and_says_so():
    result = error_rate_test([segment(0.1, 9000, 45, 1000, 5)])
    assert result.verdict == Verdict.PASS
    assert result.reason.startswith("no evidence of an error-rate regression so far")
    assert result.evidence["bayes_factor"] < 1


def test_error_rate_with_too_few_canary_requests_is_inconclusive():
    result = error_rate_test([segment(0.1, 900, 4, 60, 0)], min_requests=100)
    assert result.verdict == Verdict.INCONCLUSIVE and "only 60 canary requests" in result.reason


def test_error_rate_fails_with_few_requests_when_the_evidence_is_overwhelming():
    result = error_rate_test([segment(0.05, 950, 0, 50, 8)], min_requests=100)
    assert result.verdict == Verdict.FAIL


def test_error_rate_without_segments_is_inconclusive():
    result = error_rate_test([])
    assert result.verdict == Verdict.INCONCLUSIVE and result.reason.startswith("no data")


def test_all_errors_on_stable_never_fail_and_give_no_evidence():
    result = error_rate_test([segment(0.25, 75_000, 400, 25_000, 0)])
    assert result.verdict == Verdict.PASS and result.evidence["bayes_factor"] < 0.05
    json.dumps(result.to_dict(), allow_nan=False)


def test_tolerance_lets_a_slightly_worse_canary_pass():
    counts = [segment(0.1, 900_000, 4_500, 100_000, 600)]  # canary 1.2x stable's 5xx rate
    assert error_rate_test(counts).verdict == Verdict.FAIL
    assert error_rate_test(counts, tolerance=0.5).verdict == Verdict.PASS


def test_evidence_is_chained_across_weight_changes():
    first, second = segment(0.1, 9000, 50, 1000, 13), segment(0.25, 7500, 40, 2500, 22)
    alone = [error_rate_test([s]) for s in (first, second)]
    both = error_rate_test([first, second])
    assert all(r.verdict != Verdict.FAIL for r in alone)
    assert both.evidence["log_bayes_factor"] == pytest.approx(
        sum(r.evidence["log_bayes_factor"] for r in alone))
    assert both.verdict == Verdict.FAIL
    assert [s["canary_share"] for s in both.evidence["segments"]] == [0.1, 0.25]


def test_segment_share_outside_zero_one_is_refused_naming_the_field():
    with pytest.raises(BadInput) as error:
        error_rate_test([segment(0.1, 10, 0, 10, 0), segment(1.0, 10, 0, 10, 0)])
    assert error.value.field == "segments[1].canary_share"


def test_segment_with_more_errors_than_requests_is_refused():
    with pytest.raises(BadInput) as error:
        error_rate_test([segment(0.1, 10, 0, 10, 11)])
    assert error.value.field == "segments[0].canary_errors"


# --- error-rate test under continuous monitoring ------------------------------------------


def simulate_counts(rng, streams, looks, share, stable_rate, canary_rate, per_look=200,
                    shares=None):
    """Cumulative (stable req, stable err, canary req, canary err) per stream and look."""
    shares = np.full(looks, share) if shares is None else np.asarray(shares)
    n = rng.poisson(per_look, size=(streams, looks))
    canary = rng.binomial(n, shares)
    stable = n - canary
    return (stable, rng.binomial(stable, stable_rate), canary,
            rng.binomial(canary, canary_rate), shares)


def monitored_fail_rate(counts, tolerance=0.0):
    """Share of streams whose error test FAILs at any of the looks (segments by share).

    Every error_rate_test call works out the power curve (`errors_to_detect`, ~60 Bayes
    factors, 90% of the call's time) for its evidence; it is a pure function of the share and
    the test's settings, which repeat at every look, so it is memoised for the simulation.
    The verdicts are the same, call for call."""
    stable, stable_err, canary, canary_err, shares = counts
    failed = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sequential, "errors_to_detect",
                      functools.lru_cache(maxsize=None)(sequential.errors_to_detect))
        for row in range(len(stable)):
            for look in range(stable.shape[1]):
                segments = []
                for share in dict.fromkeys(shares[: look + 1]):
                    part = shares[: look + 1] == share
                    segments.append(Segment(
                        float(share), int(stable[row, : look + 1][part].sum()),
                        int(stable_err[row, : look + 1][part].sum()),
                        int(canary[row, : look + 1][part].sum()),
                        int(canary_err[row, : look + 1][part].sum())))
                if error_rate_test(segments, tolerance=tolerance).verdict == Verdict.FAIL:
                    failed += 1
                    break
    return failed / len(stable)


@LONG_SIMULATION
def test_identical_versions_fail_at_most_alpha_when_checked_100_times():
    counts = simulate_counts(np.random.default_rng(1), 500, 100, 0.1, 0.02, 0.02)
    assert monitored_fail_rate(counts) <= 0.05 + MONTE_CARLO_MARGIN


@LONG_SIMULATION
def test_a_canary_exactly_at_the_tolerance_fails_at_most_alpha():
    counts = simulate_counts(np.random.default_rng(2), 500, 100, 0.1, 0.02, 0.02 * 1.25)
    assert monitored_fail_rate(counts, tolerance=0.25) <= 0.05 + MONTE_CARLO_MARGIN


@LONG_SIMULATION
def test_chained_evidence_over_weight_changes_fails_at_most_alpha():
    shares = [0.05] * 30 + [0.25] * 30 + [0.5] * 40
    counts = simulate_counts(np.random.default_rng(3), 500, 100, None, 0.02, 0.02,
                             shares=shares)
    assert monitored_fail_rate(counts) <= 0.05 + MONTE_CARLO_MARGIN


@LONG_SIMULATION
def test_a_canary_better_than_stable_never_fails():
    counts = simulate_counts(np.random.default_rng(4), 200, 100, 0.1, 0.02, 0.004)
    assert monitored_fail_rate(counts) == 0.0


def test_a_canary_with_five_times_the_errors_is_rolled_back():
    counts = simulate_counts(np.random.default_rng(5), 100, 100, 0.1, 0.02, 0.1)
    assert monitored_fail_rate(counts) >= 0.95


# --- traffic split ------------------------------------------------------------------------


def test_traffic_split_matching_the_weights_passes():
    result = traffic_split_test([segment(0.05, 950_300, 0, 49_700, 0)])
    assert result.judge == "traffic-split" and result.verdict == Verdict.PASS
    assert result.critical is False
    assert result.values["observed_canary_share"] == pytest.approx(0.0497)


def test_traffic_split_mismatch_fails_as_a_routing_problem():
    result = traffic_split_test([segment(0.05, 940_000, 0, 60_000, 0)])
    assert result.verdict == Verdict.FAIL
    assert "routing problem" in result.reason and "6.00%" in result.reason
    assert result.evidence["bayes_factor"] > 1e6


def test_traffic_split_with_few_requests_is_inconclusive():
    assert traffic_split_test([segment(0.5, 30, 0, 20, 0)]).verdict == Verdict.INCONCLUSIVE


def test_traffic_split_with_identical_routing_fails_at_most_alpha():
    rng = np.random.default_rng(6)
    n = rng.poisson(500, size=(500, 100))
    canary = rng.binomial(n, 0.1).cumsum(1)
    total = n.cumsum(1)
    log_bf = split_log_bayes_factor(canary, total - canary, 0.1)
    assert np.mean((log_bf >= math.log(20)).any(1)) <= 0.05 + MONTE_CARLO_MARGIN


def retried(rng, requests, error_rate, attempts=3):
    """Destination-side (requests, 5xx) when a proxy retries each 5xx up to attempts - 1 times."""
    total = errors = np.zeros_like(requests)
    pending = requests
    for _ in range(attempts):
        failed = rng.binomial(pending, error_rate)
        total, errors, pending = total + pending, errors + failed, failed
    return total, errors


def test_the_retry_adjusted_factor_is_the_least_over_every_count_clients_may_have_sent():
    rng = np.random.default_rng(7)
    for _ in range(100):
        share = rng.choice([0.05, 0.25, 0.5])
        canary, stable = rng.integers(0, 3000), rng.integers(0, 9000)
        canary_errors, stable_errors = rng.integers(0, canary + 1), rng.integers(0, stable + 1)
        x, y = np.meshgrid(np.linspace(canary - canary_errors, canary, 80),
                           np.linspace(stable - stable_errors, stable, 80))
        least = split_log_bayes_factor(x, y, share).min()
        got = retry_adjusted_split_log_bayes_factor(canary, stable, canary_errors,
                                                    stable_errors, share)
        assert least - 0.05 * abs(least) - 1e-3 <= got <= least + 1e-9


def test_without_5xx_the_retry_adjusted_factor_is_the_plain_one():
    assert retry_adjusted_split_log_bayes_factor(600, 9400, 0, 0, 0.05) == pytest.approx(
        split_log_bayes_factor(600, 9400, 0.05))


def test_a_failing_canary_whose_extra_requests_are_retries_is_not_a_routing_problem():
    rng = np.random.default_rng(8)
    canary, canary_errors = retried(rng, np.int64(25_000), 0.25)  # 25 % of 100,000 requests
    stable, stable_errors = retried(rng, np.int64(75_000), 0.005)
    seg = segment(0.25, int(stable), int(stable_errors), int(canary), int(canary_errors))
    assert split_log_bayes_factor(canary, stable, 0.25) > math.log(1e6)  # unadjusted: SRM
    errors, split = judge_sequential([seg], None, None, judge_latency=False)
    assert split.verdict == Verdict.PASS
    assert errors.verdict == Verdict.FAIL and decide([errors, split]).verdict == Verdict.FAIL


def test_retries_on_both_versions_keep_false_split_failures_at_most_alpha():
    rng = np.random.default_rng(9)
    sent = rng.poisson(500, size=(300, 60))
    to_canary = rng.binomial(sent, 0.1)
    canary, canary_errors = retried(rng, to_canary, 0.05)
    stable, stable_errors = retried(rng, sent - to_canary, 0.05)
    log_bf = retry_adjusted_split_log_bayes_factor(
        canary.cumsum(1), stable.cumsum(1), canary_errors.cumsum(1), stable_errors.cumsum(1),
        0.1)
    assert np.mean((log_bf >= math.log(20)).any(1)) <= 0.05 + MONTE_CARLO_MARGIN


# --- latency ------------------------------------------------------------------------------


def lognormal_buckets(total, median_ms=50.0, sigma=0.6):
    cdf = stats.norm.cdf((np.log(EDGES) - math.log(median_ms)) / sigma)
    return [(e, round(total * c)) for e, c in zip(EDGES, cdf, strict=True)] + [(math.inf, total)]


def test_latency_fails_when_the_canary_is_clearly_slower():
    result = latency_test(lognormal_buckets(20_000), lognormal_buckets(2_000, median_ms=65))
    assert result.judge == "latency-sequential" and result.verdict == Verdict.FAIL
    assert result.values["max_cdf_gap_at_ms"] == 50
    assert result.evidence["max_gap_lower_bound"] > 0.05
    assert "canary slower" in result.reason and "within 50 ms" in result.reason


def test_latency_of_identical_versions_passes_and_rules_out_a_slowdown_with_enough_data():
    result = latency_test(lognormal_buckets(20_000), lognormal_buckets(20_000))
    assert result.verdict == Verdict.PASS
    assert result.reason.startswith("no evidence of a latency regression so far")
    assert result.evidence["slowdown_ruled_out"] is True
    early = latency_test(lognormal_buckets(500), lognormal_buckets(500))
    assert early.verdict == Verdict.PASS and early.evidence["slowdown_ruled_out"] is False
    assert "not yet ruled out" in early.reason


def test_latency_with_too_few_requests_or_no_histogram_is_inconclusive():
    few = latency_test(lognormal_buckets(20_000), lognormal_buckets(50), min_requests=100)
    assert few.verdict == Verdict.INCONCLUSIVE and "only 50 canary" in few.reason
    assert latency_test([], lognormal_buckets(500)).verdict == Verdict.INCONCLUSIVE
    empty = latency_test(lognormal_buckets(0), lognormal_buckets(0))
    assert empty.verdict == Verdict.INCONCLUSIVE and empty.reason.startswith("no data")


def test_latency_buckets_must_share_edges_and_end_with_inf():
    with pytest.raises(BadInput) as error:
        latency_test(lognormal_buckets(100), lognormal_buckets(100)[1:])
    assert error.value.field == "canary_buckets"
    with pytest.raises(BadInput) as error:
        latency_test(lognormal_buckets(100)[:-1], lognormal_buckets(100)[:-1])
    assert error.value.field == "stable_buckets" and "+Inf" in error.value.problem


def test_latency_tolerance_must_be_below_one():
    with pytest.raises(BadInput) as error:
        latency_test([], [], tolerance=1.5)
    assert error.value.field == "tolerance"


def test_cdf_band_holds_at_all_times_with_probability_alpha():
    rng = np.random.default_rng(7)
    hits = rng.random((1000, 3000)) < 0.3
    n = np.arange(1, 3001)
    error = np.abs(hits.cumsum(1) / n - 0.3)
    width = cdf_band_halfwidth(n, 0.05, edges=1)
    assert np.mean((error > width).any(1)) <= 0.05 + MONTE_CARLO_MARGIN / 2
    fixed = 1.96 * math.sqrt(0.3 * 0.7) / np.sqrt(n)  # a fixed-sample 95% interval
    assert np.mean((error > fixed).any(1)) > 0.3


def monitored_latency_fails(rng, streams, looks, canary_scale, tolerance):
    probs = np.diff(np.concatenate([[0], stats.norm.cdf(np.log(EDGES) / 0.6), [1]]))
    canary_probs = np.diff(np.concatenate(
        [[0], stats.norm.cdf((np.log(EDGES) - math.log(canary_scale)) / 0.6), [1]]))
    stable = rng.multinomial(rng.poisson(300, (streams, looks)), probs).cumsum(1)
    canary = rng.multinomial(rng.poisson(60, (streams, looks)), canary_probs).cumsum(1)
    edges = EDGES + [math.inf]
    failed = 0
    for row in range(streams):
        for look in range(looks):
            result = latency_test(list(zip(edges, stable[row, look].cumsum(), strict=True)),
                                  list(zip(edges, canary[row, look].cumsum(), strict=True)),
                                  tolerance=tolerance)
            if result.verdict == Verdict.FAIL:
                failed += 1
                break
    return failed / streams


@LONG_SIMULATION
def test_identical_latency_fails_at_most_alpha_when_checked_40_times():
    assert monitored_latency_fails(np.random.default_rng(8), 300, 40, 1.0, 0.0) <= \
        0.05 + MONTE_CARLO_MARGIN


@LONG_SIMULATION
def test_a_faster_canary_never_fails_on_latency():
    assert monitored_latency_fails(np.random.default_rng(9), 100, 40, 0.7, 0.0) == 0.0


def test_a_canary_30_percent_slower_is_caught():
    assert monitored_latency_fails(np.random.default_rng(10), 50, 40, 1.3, 0.05) >= 0.95


def test_histogram_quantile_interpolates_like_prometheus():
    edges = np.array([10.0, 50.0, 100.0, math.inf])
    cumulative = np.array([20.0, 60.0, 100.0, 100.0])
    assert histogram_quantile(0.5, edges, cumulative) == pytest.approx(10 + 40 * 30 / 40)
    assert histogram_quantile(0.1, edges, cumulative) == pytest.approx(5.0)
    overflow = np.array([20.0, 60.0, 90.0, 100.0])
    assert histogram_quantile(0.99, edges, overflow) == 100.0


# --- judging together ---------------------------------------------------------------------


def test_sample_ratio_mismatch_turns_the_error_verdict_inconclusive_as_a_routing_problem():
    segments = [segment(0.05, 940_000, 4_700, 60_000, 700)]
    assert error_rate_test(segments).verdict == Verdict.FAIL  # alone it would blame the canary
    errors, split, latency = judge_sequential(segments, lognormal_buckets(940_000),
                                              lognormal_buckets(60_000))
    assert split.verdict == Verdict.FAIL and split.critical is False
    assert errors.verdict == Verdict.INCONCLUSIVE
    assert errors.reason.startswith("routing problem")
    assert errors.evidence["verdict_without_routing_problem"] == "FAIL"
    assert latency.verdict == Verdict.PASS
    assert decide([errors, split, latency]).verdict == Verdict.INCONCLUSIVE


def test_alpha_is_split_across_the_judges_run_together():
    segments = [segment(0.1, 9000, 50, 1000, 15)]  # Bayes factor 40.3
    assert error_rate_test(segments, alpha=0.05).verdict == Verdict.FAIL
    three = judge_sequential(segments, lognormal_buckets(9000), lognormal_buckets(1000))
    assert [j.thresholds["alpha"] for j in three] == pytest.approx([0.05 / 3] * 3)
    assert three[0].verdict == Verdict.PASS  # 40.3 < 60
    two = judge_sequential(segments, None, None, judge_latency=False)
    assert [j.judge for j in two] == ["error-rate-sequential", "traffic-split"]
    assert two[0].thresholds["alpha"] == pytest.approx(0.025)
    assert two[0].verdict == Verdict.FAIL  # 40.3 >= 40


def test_missing_histograms_make_latency_inconclusive_and_block_pass():
    judgements = judge_sequential([segment(0.1, 9000, 45, 1000, 5)], None, None)
    assert judgements[2].verdict == Verdict.INCONCLUSIVE
    assert decide(judgements).verdict == Verdict.INCONCLUSIVE


def test_healthy_canary_passes_the_step_and_serialises():
    judgements = judge_sequential([segment(0.1, 90_000, 450, 10_000, 48)],
                                  lognormal_buckets(90_000), lognormal_buckets(10_000))
    decision = decide(judgements)
    assert [j.verdict for j in judgements] == [Verdict.PASS] * 3
    assert decision.verdict == Verdict.PASS
    json.dumps(decision.to_dict(), allow_nan=False)


# --- clustered error streams: the dispersion ----------------------------------------------


def clustered_stream(rng, rows, intervals, *, rate=200.0, share=0.0, error_rate=0.005,
                     cluster=1):
    """Per-interval (requests, errors) of one version: a triggering request makes the next
    `cluster` requests of that version fail (spilling into later intervals when needed)."""
    requests = rng.poisson(rate * 10 * (share or 1.0), size=(rows, intervals))
    triggers = rng.binomial(requests, error_rate / cluster)
    errors = np.zeros_like(requests)
    carry = np.zeros(rows, dtype=int)
    for t in range(intervals):
        carry += triggers[:, t] * cluster
        errors[:, t] = np.minimum(carry, requests[:, t])
        carry -= errors[:, t]
    return requests, errors


def test_dispersion_of_independent_errors_is_about_one():
    requests, errors = clustered_stream(np.random.default_rng(1), 200, 360)
    phi = count_dispersion(requests, errors)
    assert 0.95 < np.median(phi) < 1.15
    assert np.all(phi >= 1.0)


@pytest.mark.parametrize("cluster", [5, 20])
def test_dispersion_of_clustered_errors_is_about_the_cluster_size(cluster):
    requests, errors = clustered_stream(np.random.default_rng(2), 200, 360, cluster=cluster)
    assert 0.8 * cluster < np.median(count_dispersion(requests, errors)) < 1.5 * cluster


def test_a_rate_change_in_the_history_makes_the_dispersion_larger_never_smaller():
    rng = np.random.default_rng(3)
    requests = rng.poisson(2000, size=(100, 360))
    steady = rng.binomial(requests, 0.005)
    incident = rng.binomial(requests, np.where(np.arange(360) % 120 < 18, 0.05, 0.005))
    assert np.median(count_dispersion(requests, incident)) > 3 * np.median(
        count_dispersion(requests, steady))


def test_too_thin_a_history_gives_no_dispersion_and_the_fallback_says_so():
    few_intervals = count_dispersion(np.full(10, 1000), np.full(10, 5))
    no_errors = count_dispersion(np.full(360, 1000), np.zeros(360))
    assert math.isnan(few_intervals) and math.isnan(no_errors)
    spread = estimate_dispersion("error", float(no_errors), history="stable's last hour")
    assert (spread.value, spread.source) == (FALLBACK_DISPERSION, "fallback")
    assert "stable's last hour too thin" in spread.note
    measured = estimate_dispersion("error", 0.93, history="stable's last hour")
    assert (measured.value, measured.source) == (1.0, "history")  # never below independence


def test_latency_dispersion_sees_bursts_of_slow_requests():
    rng = np.random.default_rng(4)
    steady = rng.multinomial(2000, [0.2, 0.5, 0.25, 0.05], size=(50, 360))
    bursts = steady.copy()
    slowed = rng.random((50, 360)) < 0.1  # now and then 60 requests slowed together
    bursts[:, :, 1] -= np.where(slowed, 60, 0)
    bursts[:, :, 3] += np.where(slowed, 60, 0)
    calm = latency_dispersion(steady)
    assert 0.95 < np.median(calm) < 1.4
    assert np.median(latency_dispersion(bursts)) > 3 * np.median(calm)  # var 60^2 x .09 + 95
    assert math.isnan(latency_dispersion(np.zeros((360, 4))))


def test_the_dispersion_tempers_the_error_evidence_as_counts_divided_by_it():
    counts = [segment(0.25, 30_000, 60, 10_000, 60)]
    independent = error_rate_test(counts)
    clustered = error_rate_test(counts, dispersion=20.0)
    assert independent.verdict == Verdict.FAIL
    assert clustered.verdict == Verdict.PASS
    assert clustered.evidence["log_bayes_factor"] == pytest.approx(
        float(error_log_bayes_factor(3.0, 3.0, 0.25)))
    assert clustered.thresholds["dispersion"] == 20.0
    assert "each error counted as 1/20" in clustered.reason


def test_a_dispersion_below_one_is_refused_naming_the_field():
    with pytest.raises(BadInput) as caught:
        error_rate_test([segment(0.25, 100, 1, 100, 1)], dispersion=0.5)
    assert caught.value.field == "dispersion" and caught.value.value == 0.5


def test_latency_bands_widen_with_the_dispersion():
    stable, canary = lognormal_buckets(20_000), lognormal_buckets(2_000, median_ms=65)
    assert latency_test(stable, canary).verdict == Verdict.FAIL
    widened = latency_test(stable, canary, dispersion=30.0)
    assert widened.verdict == Verdict.PASS
    assert widened.evidence["dispersion"]["value"] == 30.0


def false_rollbacks_with_clusters(cluster, *, temper, rollouts=400, share=0.25):
    """A/A rollouts of 30 min checked every 10 s, with a 1 h stable-only history."""
    rng = np.random.default_rng([5, cluster])
    history = clustered_stream(rng, rollouts, 360, cluster=cluster)
    stable = clustered_stream(rng, rollouts, 180, share=1 - share, cluster=cluster)
    canary = clustered_stream(rng, rollouts, 180, share=share, cluster=cluster)
    phi = np.fmax(count_dispersion(*history), 1.0) if temper else np.ones(rollouts)
    phi = np.where(np.isnan(phi), FALLBACK_DISPERSION, phi)[:, None]
    evidence = error_log_bayes_factor(canary[1].cumsum(1) / phi, stable[1].cumsum(1) / phi,
                                      share)
    return np.mean((evidence >= math.log(1 / 0.05)).any(1))


@pytest.mark.parametrize("cluster", [5, 50])
def test_clustered_errors_on_identical_versions_fail_at_most_alpha_with_the_dispersion(cluster):
    assert false_rollbacks_with_clusters(cluster, temper=True) <= 0.05 + MONTE_CARLO_MARGIN
    assert false_rollbacks_with_clusters(cluster, temper=False) > 0.15  # what it fixes


def test_the_power_curve_needs_more_errors_for_smaller_regressions_and_more_clustering():
    two = errors_to_detect(0.25, ratio=2.0)
    assert errors_to_detect(0.25, ratio=5.0) < two < errors_to_detect(0.05, ratio=2.0)
    assert errors_to_detect(0.25, ratio=2.0, dispersion=5.0) == pytest.approx(5 * two, rel=0.01)


def test_the_power_curve_is_near_the_median_detection_point_of_simulated_rollouts():
    rng = np.random.default_rng(6)
    theta = null_share(0.25, 4.0)  # a canary with 5x the 5xx rate at 25% of the traffic
    on_canary = rng.random((2000, 400)) < theta
    x, y = on_canary.cumsum(1), (~on_canary).cumsum(1)
    fails = error_log_bayes_factor(x, y, 0.25) >= math.log(20)
    median = np.median(fails.argmax(1) + 1)
    assert 0.6 * median < errors_to_detect(0.25, ratio=5.0) < 1.6 * median


def test_a_step_that_cannot_reach_min_requests_in_its_budget_is_inconclusive_early():
    counts = [segment(0.05, 950, 5, 50, 0)]
    early = error_rate_test(counts, min_requests=100, remaining_seconds=60, canary_rate=0.5)
    assert early.verdict == Verdict.INCONCLUSIVE
    assert early.evidence["decidable_in_budget"] is False
    assert "cannot decide in the 60s left" in early.reason
    assert ">= 0.833 canary requests/s (>= 16.7 requests/s to the service" in early.reason
    in_time = error_rate_test(counts, min_requests=100, remaining_seconds=60, canary_rate=1.0)
    assert "decidable_in_budget" not in in_time.evidence
    assert error_rate_test(counts, min_requests=100).reason.startswith("only 50 canary")
