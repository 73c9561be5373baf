"""Detection benchmark: false rollbacks and time to roll back, sequential judges vs the usual rules.

Simulates canary rollouts of 30 minutes checked every 10 s, each preceded by one hour of
stable-only history (360 intervals of 10 s, all traffic on stable, the same error and latency
process as stable during the rollout, no regression). Requests arrive as a Poisson process
at a total rate (20 and 200 requests/s), each goes to the canary with the configured weight
(5% and 25%), fails (5xx) at a base rate of 0.5% and takes a log-normal time (median 50 ms,
p99 200 ms) recorded in Envoy's default histogram buckets. Every judge here only sees
per-interval counts, so those are what is drawn (Poisson/binomial/multinomial, and a
per-request cluster process for the clustered scenarios, below).

Scenarios, table 1 (independent errors, as before):
- identical (A/A): both versions the same;
- 2x 5xx, 5x 5xx: the canary's 5xx rate doubled / x5 during the rollout;
- +30% latency: the canary's latency x1.3 during the rollout.
Scenarios, table 2 (what real error streams look like; every A/A one should not roll back):
- clusters of 5 / 20 / 50 (A/A): errors come in clusters. Each request of a version triggers
  a cluster with probability 0.5% / C, and a trigger makes the next C requests of that same
  version fail (a trigger during a cluster extends it by C more), so the mean 5xx rate stays
  0.5%. A cluster longer than what is left of the version's requests in the interval spills
  over into the following intervals (also from the history into the rollout for stable);
- geometric clusters (A/A): the same with cluster sizes drawn from a geometric distribution
  with mean 10 (trigger probability 0.5% / 10);
- shared incident (A/A): both versions fail at 10% for 3 minutes from minute 10 of the
  rollout (the history is clean), with independent errors, and again with clusters of 5;
- latency bursts (A/A): per version, each request triggers a burst with probability
  1% / 20, and the next 20 requests of that version are 10x slower (about 1% of requests
  are in bursts, in the history too); errors are independent;
- 2x / 5x 5xx, clusters of 5: the canary's trigger rate doubled / x5 during the rollout,
  clusters of 5 for both versions, in the history and in the rollout.

On the same streams it compares:
- canarykit sequential (what the product does): `sequential.judge_sequential` +
  `judges.decide` (error rate, traffic split and latency at alpha = 0.05 in total), re-checked
  every 10 s, the error and latency evidence tempered by the dispersions measured on stable's
  history before the rollout: phi_err = max(1, count_dispersion(stable requests, stable 5xx))
  and phi_lat = max(1, latency_dispersion(stable bucket counts)), FALLBACK_DISPERSION when the
  history is too thin (NaN);
- sequential, untempered (previous): the same judges with phi = 1 (every error and request
  counted as independent evidence), the rule before dispersion tempering;
- Flagger's default rule: canary success rate >= 99% and p99 <= 500 ms over the last 1 m,
  checked every 1 m, roll back after 1 failed check (no data counts as a failed check);
- Kayenta-style: Mann-Whitney U on per-10-s error rate and p99 (canary vs stable, 95%
  confidence, the rule of `judges.compare_samples`), re-run over all intervals at every check
  (the slowest judge to simulate: by default run on table 1's scenarios only, all of them
  with --mann-whitney all, which adds about 4 minutes at 1000 rollouts);
- a naive one-sided two-proportion z-test (alpha 0.05) on cumulative 5xx counts and on the
  share of requests slower than 250 ms, re-run at every check.
`verify_against_library` re-judges a few rollouts per scenario (`--verify N`, half of them
ones the vectorised rule rolls back where there are any) with `judge_sequential` (dispersions
from `estimate_dispersion`, as the product builds them) + `judges.decide` at every check, and
fails loudly on any disagreement with the vectorised rule.

Printed: table 1, table 2, the dispersions the tempered judges measured per scenario, and the
goal lines: (1) canarykit's worst false-rollback rate over every A/A scenario, <= 5% required,
2% the target; (2) 5x 5xx rolled back no later than Flagger wherever Flagger itself stays
under 5% false rollbacks; (3) at 200 requests/s and 25%, 5x 5xx rolled back in a median
<= 30 s with independent errors and <= 60 s with clusters of 5.

Usage: python benchmarks/detection.py --rollouts 1000 [--json FILE] [--verify N]
                                     [--mann-whitney {independent,all}]
       (--rollouts 50: a quick look; 1000 rollouts per scenario take about 7 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from canarykit.analysis import (  # noqa: E402
    judges,
    sequential,
)

EDGES_MS = np.array([0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                     60000, 300000, 600000, 1800000, 3600000], dtype=float)
CHECK_S = 10
DURATION_S = 30 * 60
CHECKS = DURATION_S // CHECK_S
HISTORY = 3600 // CHECK_S  # stable-only intervals before the rollout
ALPHA = 0.05
BASE_ERROR_RATE = 0.005
MEDIAN_MS = 50.0
P99_MS = 200.0
SIGMA = math.log(P99_MS / MEDIAN_MS) / stats.norm.ppf(0.99)
LATENCY_TOLERANCE = 0.05
FLAGGER_MIN_SUCCESS = 99.0
FLAGGER_MAX_P99_MS = 500.0
FLAGGER_EVERY = 6  # checks of 10 s: 1 m
KAYENTA_MIN_SAMPLES = 5
Z_SLOW_EDGE_MS = 250.0
INCIDENT_ERROR_RATE = 0.10
INCIDENT_CHECKS = slice(10 * 60 // CHECK_S, 13 * 60 // CHECK_S)  # minutes 10-13 of the rollout
BURST_SIZE = 20
BURST_SHARE = 0.01  # of requests inside a latency burst
BURST_SLOWDOWN = 10.0

RATES = (20, 200)
WEIGHTS = (5, 25)


@dataclass(frozen=True)
class Scenario:
    label: str
    null: bool  # A/A: both versions identical, any rollback is a false one
    table: int
    cluster: int = 1  # 5xx cluster size (mean size if geometric); 1 = independent errors
    geometric: bool = False
    canary_error_factor: float = 1.0  # the canary's 5xx (trigger) rate during the rollout
    canary_latency_scale: float = 1.0
    incident: bool = False  # both versions at INCIDENT_ERROR_RATE during INCIDENT_CHECKS
    bursts: bool = False  # latency bursts in both versions


SCENARIOS = {
    "none": Scenario("identical", True, 1),
    "errors2x": Scenario("2x 5xx", False, 1, canary_error_factor=2.0),
    "errors5x": Scenario("5x 5xx", False, 1, canary_error_factor=5.0),
    "latency30": Scenario("+30% latency", False, 1, canary_latency_scale=1.3),
    "clusters5": Scenario("clusters of 5", True, 2, cluster=5),
    "clusters20": Scenario("clusters of 20", True, 2, cluster=20),
    "clusters50": Scenario("clusters of 50", True, 2, cluster=50),
    "clusters_geometric10": Scenario("geometric clusters, mean 10", True, 2, cluster=10,
                                     geometric=True),
    "incident": Scenario("shared incident", True, 2, incident=True),
    "incident_clusters5": Scenario("shared incident, clusters of 5", True, 2, cluster=5,
                                   incident=True),
    "latency_bursts": Scenario("latency bursts", True, 2, bursts=True),
    "clusters5_errors2x": Scenario("2x 5xx, clusters of 5", False, 2, cluster=5,
                                   canary_error_factor=2.0),
    "clusters5_errors5x": Scenario("5x 5xx, clusters of 5", False, 2, cluster=5,
                                   canary_error_factor=5.0),
}
METHODS = {
    "sequential": "canarykit sequential, tempered (10 s)",
    "untempered": "sequential, untempered (previous)",
    "flagger": "Flagger SR>=99%, p99<=500ms (1 m)",
    "kayenta": "Mann-Whitney re-run (10 s)",
    "ztest": "naive z-test re-run (10 s)",
}


@dataclass
class Streams:
    """Per-interval counts, arrays of shape (rollouts, checks) and (rollouts, checks, buckets);
    history_* are stable's (all the traffic's) in the hour before the rollout."""

    canary_requests: np.ndarray
    stable_requests: np.ndarray
    canary_errors: np.ndarray
    stable_errors: np.ndarray
    canary_hist: np.ndarray  # per-interval counts in each bucket, the last one is +Inf
    stable_hist: np.ndarray
    history_requests: np.ndarray
    history_errors: np.ndarray
    history_hist: np.ndarray


def bucket_probabilities(scale: float) -> np.ndarray:
    """Probability of each Envoy bucket (incl. +Inf) for log-normal latency scaled by `scale`."""
    cdf = stats.norm.cdf((np.log(EDGES_MS) - math.log(MEDIAN_MS * scale)) / SIGMA)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def clustered_counts(requests: np.ndarray, trigger: np.ndarray, size: int, geometric: bool,
                     rng: np.random.Generator) -> np.ndarray:
    """Per-interval number of requests inside clusters, for one version's request stream.

    Every request triggers a cluster with probability trigger[t]; a trigger makes the next
    `size` requests (geometric sizes with that mean if `geometric`) fall inside the cluster,
    after any cluster still running. What does not fit into the interval carries over into
    the next ones. The triggers' positions within an interval are uniform, given their number.
    """
    rollouts, steps = requests.shape
    out = np.zeros(requests.shape, dtype=np.int32)
    backlog = np.zeros(rollouts, dtype=np.int64)
    for t in range(steps):
        n = requests[:, t].astype(np.int64)
        end = backlog  # positions [0, end) of this interval are inside a cluster
        covered = np.minimum(end, n)
        triggers = rng.binomial(n, trigger[t])
        most = int(triggers.max())
        if most:
            live = np.arange(most) < triggers[:, None]
            where = np.floor(rng.random((rollouts, most)) * n[:, None]).astype(np.int64)
            where = np.sort(np.where(live, where, 1 << 40), axis=1)
            for j in range(most):
                start = np.maximum(end, where[:, j] + 1)
                stop = start + (rng.geometric(1.0 / size, rollouts) if geometric else size)
                covered += np.where(live[:, j], np.minimum(stop, n) - np.minimum(start, n), 0)
                end = np.where(live[:, j], stop, end)
        out[:, t] = covered
        backlog = np.maximum(end - n, 0)
    return out


def error_counts(requests: np.ndarray, rate: np.ndarray, scenario: Scenario,
                 rng: np.random.Generator) -> np.ndarray:
    """5xx per interval at the mean rate[t] per request, independent or in clusters."""
    if scenario.cluster == 1 and not scenario.geometric:
        return rng.binomial(requests, rate[None, :]).astype(np.int32)
    return clustered_counts(requests, rate / scenario.cluster, scenario.cluster,
                            scenario.geometric, rng)


def latency_counts(requests: np.ndarray, scale: float, bursts: bool,
                   rng: np.random.Generator) -> np.ndarray:
    """Per-interval, per-bucket latency counts, with BURST_SLOWDOWN x slower bursts if asked."""
    slow = np.zeros_like(requests)
    if bursts:
        trigger = np.full(requests.shape[1], BURST_SHARE / BURST_SIZE)
        slow = clustered_counts(requests, trigger, BURST_SIZE, False, rng)
    hist = rng.multinomial(requests - slow, bucket_probabilities(scale)).astype(np.int32)
    if bursts:
        hist += rng.multinomial(slow, bucket_probabilities(scale * BURST_SLOWDOWN)).astype(
            np.int32)
    return hist


def simulate(rate: float, weight: float, scenario: Scenario, rollouts: int,
             rng: np.random.Generator) -> Streams:
    history = rng.poisson(rate * CHECK_S, size=(rollouts, HISTORY)).astype(np.int32)
    arrivals = rng.poisson(rate * CHECK_S, size=(rollouts, CHECKS)).astype(np.int32)
    canary = rng.binomial(arrivals, weight / 100.0).astype(np.int32)
    stable = np.concatenate([history, arrivals - canary], 1)  # one stream: history, rollout
    error_rate = np.full(HISTORY + CHECKS, BASE_ERROR_RATE)
    if scenario.incident:
        error_rate[HISTORY:][INCIDENT_CHECKS] = INCIDENT_ERROR_RATE
    stable_errors = error_counts(stable, error_rate, scenario, rng)
    canary_errors = error_counts(canary, error_rate[HISTORY:] * scenario.canary_error_factor,
                                 scenario, rng)
    stable_hist = latency_counts(stable, 1.0, scenario.bursts, rng)
    canary_hist = latency_counts(canary, scenario.canary_latency_scale, scenario.bursts, rng)
    return Streams(canary, stable[:, HISTORY:], canary_errors, stable_errors[:, HISTORY:],
                   canary_hist, stable_hist[:, HISTORY:], history, stable_errors[:, :HISTORY],
                   stable_hist[:, :HISTORY])


# --- the judges, each returning the first failing check per rollout (CHECKS if none) ---------


def first_failure(fails: np.ndarray) -> np.ndarray:
    return np.where(fails.any(axis=1), fails.argmax(axis=1), CHECKS)


def measured_dispersions(s: Streams) -> tuple[np.ndarray, np.ndarray]:
    """count_dispersion and latency_dispersion of stable's history (NaN: too thin)."""
    return (sequential.count_dispersion(s.history_requests, s.history_errors),
            sequential.latency_dispersion(s.history_hist))


def tempering(measured: np.ndarray) -> np.ndarray:
    """The phi the judges use: max(1, measured), FALLBACK_DISPERSION where it is NaN."""
    return np.where(np.isfinite(measured), np.maximum(measured, 1.0),
                    sequential.FALLBACK_DISPERSION)


def split_fails(s: Streams, weight: float) -> np.ndarray:
    """The traffic-split test at every check (not tempered: routing is per request)."""
    threshold = math.log(1 / (ALPHA / 3))
    return sequential.retry_adjusted_split_log_bayes_factor(
        s.canary_requests.cumsum(1), s.stable_requests.cumsum(1), s.canary_errors.cumsum(1),
        s.stable_errors.cumsum(1), weight / 100.0) >= threshold


def sequential_fails(s: Streams, weight: float, split_fail: np.ndarray,
                     phi_error: np.ndarray, phi_latency: np.ndarray) -> np.ndarray:
    """What judge_sequential + decide conclude at every check, vectorised (same functions),
    each rollout's evidence tempered by its phi_error and phi_latency (1: untempered)."""
    share = weight / 100.0
    alpha_each = ALPHA / 3
    threshold = math.log(1 / alpha_each)
    ec, es = s.canary_errors.cumsum(1), s.stable_errors.cumsum(1)
    phi = phi_error[:, None]
    error_fail = sequential.error_log_bayes_factor(ec / phi, es / phi, share) >= threshold
    return (error_fail & ~split_fail) | latency_fails(s, alpha_each, phi_latency)


def latency_fails(s: Streams, alpha: float, phi: np.ndarray) -> np.ndarray:
    edges = len(EDGES_MS)
    hist_c, hist_s = s.canary_hist.cumsum(1), s.stable_hist.cumsum(1)  # cumulative in time
    n_c, n_s = hist_c.sum(2), hist_s.sum(2)
    with np.errstate(divide="ignore", invalid="ignore"):
        cdf_c = hist_c[:, :, :edges].cumsum(2) / n_c[:, :, None]
        cdf_s = hist_s[:, :, :edges].cumsum(2) / n_s[:, :, None]
    width = (sequential.cdf_band_halfwidth(n_c / phi[:, None], alpha / 2, edges=edges)
             + sequential.cdf_band_halfwidth(n_s / phi[:, None], alpha / 2, edges=edges))
    gap_low = np.nan_to_num(cdf_s - cdf_c, nan=0.0).max(2) - width
    return gap_low > LATENCY_TOLERANCE


def histogram_quantile(q: float, hist: np.ndarray) -> np.ndarray:
    """Prometheus histogram_quantile over the last axis of per-bucket counts; NaN if empty."""
    cumulative = hist.cumsum(-1).astype(float)
    total = cumulative[..., -1]
    rank = q * total
    index = np.minimum((cumulative < rank[..., None]).sum(-1), len(EDGES_MS))
    upper = np.append(EDGES_MS, EDGES_MS[-1])[index]
    lower = np.concatenate([[0.0], EDGES_MS])[index]
    below = np.take_along_axis(np.concatenate([np.zeros(hist.shape[:-1] + (1,)), cumulative],
                                              -1), index[..., None], -1)[..., 0]
    inside = np.take_along_axis(hist, index[..., None], -1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(inside > 0, lower + (upper - lower) * (rank - below) / inside, upper)
    value = np.where(index >= len(EDGES_MS), EDGES_MS[-1], value)
    return np.where(total > 0, value, np.nan)


def flagger_fails(s: Streams) -> np.ndarray:
    fails = np.zeros(s.canary_requests.shape, dtype=bool)
    window = FLAGGER_EVERY
    for check in range(window - 1, CHECKS, window):
        part = slice(check - window + 1, check + 1)
        requests = s.canary_requests[:, part].sum(1)
        errors = s.canary_errors[:, part].sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            success = 100.0 * (requests - errors) / requests
        p99 = histogram_quantile(0.99, s.canary_hist[:, part].sum(1))
        fails[:, check] = ((requests == 0) | (success < FLAGGER_MIN_SUCCESS)
                           | (p99 > FLAGGER_MAX_P99_MS))
    return fails


def mann_whitney_high(stable: np.ndarray, canary: np.ndarray) -> np.ndarray:
    """Rows where compare_samples classifies the canary High (confidence 0.95, ratio > 1)."""
    high = np.zeros(len(stable), dtype=bool)
    missing = np.isnan(stable).any(1) | np.isnan(canary).any(1)
    full = ~missing
    if full.any():
        high[full] = _high(stable[full], canary[full])
    for row in np.flatnonzero(missing):
        st, ca = stable[row][~np.isnan(stable[row])], canary[row][~np.isnan(canary[row])]
        if len(st) >= KAYENTA_MIN_SAMPLES and len(ca) >= KAYENTA_MIN_SAMPLES:
            high[row] = _high(st[None, :], ca[None, :])[0]
    return high


def _high(stable: np.ndarray, canary: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        result = stats.mannwhitneyu(canary, stable, axis=1, alternative="two-sided",
                                    method="asymptotic")
        mean_s, mean_c = stable.mean(1), canary.mean(1)
        ratio = np.where(mean_s > 0, mean_c / mean_s, np.where(mean_c > 0, np.inf, 1.0))
    p_value = np.nan_to_num(result.pvalue, nan=1.0)
    half = stable.shape[1] * canary.shape[1] / 2.0
    return (p_value < 1 - 0.95) & (result.statistic > half) & (ratio > 1.0)


def kayenta_fails(s: Streams) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_c = s.canary_errors / s.canary_requests
        rate_s = s.stable_errors / s.stable_requests
    p99_c = histogram_quantile(0.99, s.canary_hist)
    p99_s = histogram_quantile(0.99, s.stable_hist)
    fails = np.zeros(s.canary_requests.shape, dtype=bool)
    alive = np.ones(len(fails), dtype=bool)
    for check in range(KAYENTA_MIN_SAMPLES - 1, CHECKS):
        rows = np.flatnonzero(alive)
        if not len(rows):
            break
        upto = slice(0, check + 1)
        high = (mann_whitney_high(rate_s[rows, upto], rate_c[rows, upto])
                | mann_whitney_high(p99_s[rows, upto], p99_c[rows, upto]))
        fails[rows[high], check] = True
        alive[rows[high]] = False  # a rolled-back canary is not checked again
    return fails


def ztest_fails(s: Streams) -> np.ndarray:
    z_crit = stats.norm.ppf(1 - ALPHA)
    cc, cs = s.canary_requests.cumsum(1), s.stable_requests.cumsum(1)
    slow_from = int(np.searchsorted(EDGES_MS, Z_SLOW_EDGE_MS)) + 1
    errors = _z(s.canary_errors.cumsum(1), cc, s.stable_errors.cumsum(1), cs)
    slow = _z(s.canary_hist[:, :, slow_from:].sum(2).cumsum(1), cc,
              s.stable_hist[:, :, slow_from:].sum(2).cumsum(1), cs)
    return (errors > z_crit) | (slow > z_crit)


def _z(x_c: np.ndarray, n_c: np.ndarray, x_s: np.ndarray, n_s: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (x_c + x_s) / (n_c + n_s)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_s))
        z = (x_c / n_c - x_s / n_s) / se
    return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


JUDGES = {"flagger": flagger_fails, "kayenta": kayenta_fails, "ztest": ztest_fails}
HISTORY_NOTE = "stable's hour before the rollout"


def verify_against_library(s: Streams, weight: float, fails: np.ndarray,
                           measured_error: np.ndarray, measured_latency: np.ndarray,
                           rows: int) -> int:
    """Check the vectorised tempered rule against judge_sequential + decide at every check of
    a few whole rollouts (half of them rolled back, if any were). Returns the checks compared."""
    share = weight / 100.0
    failing = [int(r) for r in np.flatnonzero(fails.any(axis=1))[:(rows + 1) // 2]]
    others = (r for r in range(len(fails)) if r not in failing)
    picked = failing + [next(others) for _ in range(min(rows, len(fails)) - len(failing))]
    for row in picked:
        error_phi = sequential.estimate_dispersion("error", float(measured_error[row]),
                                                   history=HISTORY_NOTE)
        latency_phi = sequential.estimate_dispersion("latency", float(measured_latency[row]),
                                                     history=HISTORY_NOTE)
        for check in range(CHECKS):
            upto = slice(0, check + 1)
            segment = sequential.Segment(
                share, int(s.stable_requests[row, upto].sum()),
                int(s.stable_errors[row, upto].sum()), int(s.canary_requests[row, upto].sum()),
                int(s.canary_errors[row, upto].sum()))
            decision = judges.decide(sequential.judge_sequential(
                [segment], _buckets(s.stable_hist[row, upto]), _buckets(s.canary_hist[row, upto]),
                alpha=ALPHA, latency_tolerance=LATENCY_TOLERANCE, error_dispersion=error_phi,
                latency_dispersion=latency_phi))
            if (decision.verdict == judges.Verdict.FAIL) != bool(fails[row, check]):
                raise AssertionError(
                    f"benchmark rule disagrees with the library at rollout {row}, check {check} "
                    f"(phi {error_phi.value:g} / {latency_phi.value:g}): {decision.reason}")
    return len(picked) * CHECKS


def _buckets(per_interval: np.ndarray) -> list[tuple[float, float]]:
    cumulative = per_interval.sum(0).cumsum()
    return [(float(e), float(c)) for e, c in zip(EDGES_MS, cumulative[:-1], strict=True)] + [
        (math.inf, float(cumulative[-1]))]


# --- running and reporting -----------------------------------------------------------------


def run(rollouts: int, seed: int, verify: int,
        mann_whitney_tables: tuple[int, ...]) -> tuple[list[dict], list[dict], int]:
    """All scenarios: result rows, the dispersions measured per scenario and rate, and the
    number of checks compared with the library. Mann-Whitney runs on the tables given."""
    rows, phis, verified = [], {}, 0
    for rate in RATES:
        for weight in WEIGHTS:
            for number, (key, scenario) in enumerate(SCENARIOS.items()):
                started = time.monotonic()
                rng = np.random.default_rng([seed, rate, weight, number])
                streams = simulate(rate, weight, scenario, rollouts, rng)
                measured_error, measured_latency = measured_dispersions(streams)
                phi_error, phi_latency = tempering(measured_error), tempering(measured_latency)
                split = split_fails(streams, weight)
                ones = np.ones(rollouts)
                results = {
                    "sequential": sequential_fails(streams, weight, split, phi_error, phi_latency),
                    "untempered": sequential_fails(streams, weight, split, ones, ones),
                }
                for method, judge in JUDGES.items():
                    if method != "kayenta" or scenario.table in mann_whitney_tables:
                        results[method] = judge(streams)
                if verify:
                    verified += verify_against_library(streams, weight, results["sequential"],
                                                       measured_error, measured_latency, verify)
                found = phis.setdefault((key, rate), ([], [], []))
                found[0].append(phi_error)
                found[1].append(phi_latency)
                found[2].append(~np.isfinite(measured_error) | ~np.isfinite(measured_latency))
                canary_so_far = np.concatenate(
                    [streams.canary_requests.cumsum(1), np.full((rollouts, 1), np.inf)], 1)
                for method in METHODS:
                    if method not in results:
                        continue
                    first = first_failure(results[method])
                    seconds = np.where(first < CHECKS, (first + 1) * CHECK_S, np.inf)
                    requests = canary_so_far[np.arange(rollouts), first]
                    row = {
                        "rate_per_s": rate, "weight_percent": weight, "regression": key,
                        "scenario": scenario.label, "identical_versions": scenario.null,
                        "method": method, "rollouts": rollouts,
                        "rollback_rate": float(np.mean(first < CHECKS)),
                        "time_p50_s": _quantile(seconds, 0.5),
                        "time_p90_s": _quantile(seconds, 0.9),
                        "canary_requests_p50": _quantile(requests, 0.5),
                        "canary_requests_p90": _quantile(requests, 0.9),
                    }
                    if method == "sequential":
                        row.update(_spread("error", phi_error, measured_error))
                        row.update(_spread("latency", phi_latency, measured_latency))
                    rows.append(row)
                print(f"{rate}/s {weight}% {key}: {time.monotonic() - started:.1f} s",
                      file=sys.stderr, flush=True)
    summary = []
    for (key, rate), (error, latency, fallback) in phis.items():
        error, latency = np.concatenate(error), np.concatenate(latency)
        summary.append({"regression": key, "scenario": SCENARIOS[key].label, "rate_per_s": rate,
                        "fallback_share": float(np.mean(np.concatenate(fallback))),
                        **{f"phi_error_p{q}": float(np.percentile(error, q)) for q in (5, 50, 95)},
                        **{f"phi_latency_p{q}": float(np.percentile(latency, q))
                           for q in (5, 50, 95)}})
    return rows, summary, verified


def _spread(kind: str, phi: np.ndarray, measured: np.ndarray) -> dict:
    return {f"phi_{kind}_p5": float(np.percentile(phi, 5)),
            f"phi_{kind}_p50": float(np.percentile(phi, 50)),
            f"phi_{kind}_fallback_share": float(np.mean(~np.isfinite(measured)))}


def _quantile(values: np.ndarray, q: float) -> float | None:
    """Quantile over all rollouts, undetected ones counting as never (None)."""
    value = float(np.quantile(values, q, method="inverted_cdf"))
    return None if math.isinf(value) else value


def format_table(rows: list[dict], table: int, with_requests: bool) -> str:
    index = {(r["rate_per_s"], r["weight_percent"], r["regression"], r["method"]): r
             for r in rows}
    keys = [k for k, sc in SCENARIOS.items() if sc.table == table]
    nulls = [k for k in keys if SCENARIOS[k].null]
    regressions = [k for k in keys if not SCENARIOS[k].null]
    header = ["traffic", "canary", "judge"]
    header += [f"false rollbacks ({SCENARIOS[k].label})" for k in nulls]
    for key in regressions:
        header.append(f"{SCENARIOS[key].label}: time p50 / p90 (rolled back)")
        if with_requests:
            header.append(f"{SCENARIOS[key].label}: canary requests p50 / p90")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    run_here = {r["method"] for r in rows if r["regression"] in keys}
    for rate in RATES:
        for weight in WEIGHTS:
            for method, label in METHODS.items():
                if method not in run_here:
                    continue
                cells = [f"{rate}/s", f"{weight}%", label]
                for key in nulls:
                    r = index.get((rate, weight, key, method))
                    cells.append("not run" if r is None else f"{r['rollback_rate']:.1%}")
                for key in regressions:
                    r = index.get((rate, weight, key, method))
                    if r is None:
                        cells += ["not run"] * (2 if with_requests else 1)
                        continue
                    cells.append(f"{_time(r['time_p50_s'])} / {_time(r['time_p90_s'])} "
                                 f"({r['rollback_rate']:.0%})")
                    if with_requests:
                        cells.append(f"{_req(r['canary_requests_p50'])} / "
                                     f"{_req(r['canary_requests_p90'])}")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_dispersions(summary: list[dict]) -> str:
    by = {(s["regression"], s["rate_per_s"]): s for s in summary}
    header = ["scenario"] + [f"5xx phi at {rate}/s" for rate in RATES] + [
        f"latency phi at {rate}/s" for rate in RATES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, scenario in SCENARIOS.items():
        cells = [scenario.label]
        for kind in ("error", "latency"):
            for rate in RATES:
                s = by[(key, rate)]
                cell = (f"{s[f'phi_{kind}_p50']:.2f} ({s[f'phi_{kind}_p5']:.2f}-"
                        f"{s[f'phi_{kind}_p95']:.2f})")
                cells.append(cell)
        if any(by[(key, rate)]["fallback_share"] for rate in RATES):
            cells[0] += " (fallback: " + ", ".join(
                f"{by[(key, rate)]['fallback_share']:.1%} at {rate}/s" for rate in RATES) + ")"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_report(rows: list[dict]) -> list[str]:
    index = {(r["rate_per_s"], r["weight_percent"], r["regression"], r["method"]): r
             for r in rows}
    lines = []

    def where(r: dict) -> str:
        return f"{SCENARIOS[r['regression']].label} at {r['rate_per_s']}/s, {r['weight_percent']}%"

    nulls = {m: [r for r in rows if r["method"] == m and SCENARIOS[r["regression"]].null]
             for m in ("sequential", "untempered")}
    worst = max(nulls["sequential"], key=lambda r: r["rollback_rate"])
    rate = worst["rollback_rate"]
    lines.append(f"goal 1, canarykit false rollbacks <= 5% (target 2%) in every A/A scenario "
                 f"(independent, clustered, shared incident, latency bursts): "
                 f"{'met' if rate <= 0.05 else 'NOT met'}, target 2% "
                 f"{'met' if rate <= 0.02 else 'not met'} (worst {rate:.1%}: {where(worst)})")
    over = sorted((r for r in nulls["sequential"] if r["rollback_rate"] > 0.02),
                  key=lambda r: -r["rollback_rate"])
    for r in over:
        lines.append(f"  above 2%: {r['rollback_rate']:.1%} in {where(r)}")
    previous = max(nulls["untempered"], key=lambda r: r["rollback_rate"])
    lines.append(f"  the previous untempered rule: worst {previous['rollback_rate']:.1%} "
                 f"({where(previous)})")
    for rate_per_s in RATES:
        for weight in WEIGHTS:
            flagger_null = index[(rate_per_s, weight, "none", "flagger")]["rollback_rate"]
            if flagger_null > 0.05:
                lines.append(f"goal 2 at {rate_per_s}/s, {weight}%: not applicable (Flagger's "
                             f"own false rollbacks {flagger_null:.1%} > 5%)")
                continue
            seq = index[(rate_per_s, weight, "errors5x", "sequential")]
            flag = index[(rate_per_s, weight, "errors5x", "flagger")]
            ok = all(_not_later(seq[k], flag[k]) for k in ("time_p50_s", "time_p90_s"))
            lines.append(f"goal 2 at {rate_per_s}/s, {weight}%: 5x 5xx rolled back "
                         f"{'no later than' if ok else 'LATER than'} Flagger (p50/p90 "
                         f"{_time(seq['time_p50_s'])}/{_time(seq['time_p90_s'])} vs "
                         f"{_time(flag['time_p50_s'])}/{_time(flag['time_p90_s'])})")
    for key, limit in (("errors5x", 30), ("clusters5_errors5x", 60)):
        r = index[(200, 25, key, "sequential")]
        ok = r["time_p50_s"] is not None and r["time_p50_s"] <= limit
        lines.append(f"goal 3, {SCENARIOS[key].label} at 200/s, 25%: canarykit median time to "
                     f"roll back <= {limit} s: {'met' if ok else 'NOT met'} (p50/p90 "
                     f"{_time(r['time_p50_s'])}/{_time(r['time_p90_s'])}, rolled back "
                     f"{r['rollback_rate']:.0%})")
    return lines


def _not_later(ours: float | None, theirs: float | None) -> bool:
    return theirs is None or (ours is not None and ours <= theirs)


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def _req(count: float | None) -> str:
    return "never" if count is None else f"{count:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=1000,
                        help="simulated rollouts per scenario (1000 for the README, 50 quick)")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--verify", type=int, default=3,
                        help="rollouts per scenario re-judged with judge_sequential + decide")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--mann-whitney", choices=("independent", "all"), default="independent",
                        help="scenarios the slow Mann-Whitney judge runs on (default: table 1's)")
    args = parser.parse_args(argv)
    if args.rollouts < 1:
        parser.error("--rollouts must be >= 1")
    if args.verify < 0:
        parser.error("--verify must be >= 0")
    started = time.monotonic()
    mann_whitney_tables = (1, 2) if args.mann_whitney == "all" else (1,)
    rows, summary, verified = run(args.rollouts, args.seed, args.verify, mann_whitney_tables)
    elapsed = time.monotonic() - started
    print(f"{args.rollouts} rollouts per scenario, 30 min checked every 10 s after 1 h of "
          f"stable-only history, base 5xx {BASE_ERROR_RATE:.1%}, latency log-normal median "
          f"{MEDIAN_MS:g} ms p99 {P99_MS:g} ms, alpha {ALPHA}; time = until rollback, 'never' = "
          "not within 30 min. canarykit tempers its evidence by the dispersions measured on "
          "the history; 'untempered' is the previous rule (phi = 1).\n")
    print("Independent errors:\n")
    print(format_table(rows, 1, with_requests=True))
    print("\nClustered errors, shared incidents, latency bursts (A/A columns: false rollbacks"
          + ("" if 2 in mann_whitney_tables else "; Mann-Whitney not run here, it is the "
             "slowest to simulate: --mann-whitney all") + "):\n")
    print(format_table(rows, 2, with_requests=False))
    print("\nDispersion phi the tempered judges used, measured on stable's hour before the "
          "rollout: median (5th-95th percentile) over the rollouts of both canary shares\n")
    print(format_dispersions(summary))
    print()
    for line in goal_report(rows):
        print(line)
    if args.verify:
        print(f"\nlibrary check: {verified:,} checks of {args.verify} rollout(s) per scenario "
              "re-judged with judge_sequential + decide, all agree with the vectorised rule")
    print(f"wall time {elapsed:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rollouts": args.rollouts, "seed": args.seed, "wall_time_s": elapsed,
             "history_intervals": HISTORY, "mann_whitney_scenarios": [
                 k for k in SCENARIOS if SCENARIOS[k].table in mann_whitney_tables],
             "rows": rows, "dispersions": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
