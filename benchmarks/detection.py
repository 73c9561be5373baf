"""Detection benchmark: false rollbacks and time to roll back, sequential judges vs the usual rules.

Simulates canary rollouts of 30 minutes checked every 10 s. Requests arrive as a Poisson
process at a total rate, each goes to the canary with the configured weight, fails (5xx)
with a fixed probability, and takes a log-normal time (median 50 ms, p99 200 ms) recorded in
Envoy's default histogram buckets. Per 10-s interval this is exactly Poisson/binomial/
multinomial counts, which is what is drawn (every judge here only sees interval counts).

On the same streams it compares:
- canarykit: `sequential.judge_sequential` + `judges.decide` (error rate, traffic split and
  latency at alpha = 0.05 in total), re-checked every 10 s;
- Flagger's default rule: canary success rate >= 99% and p99 <= 500 ms over the last 1 m,
  checked every 1 m, roll back after 1 failed check (no data counts as a failed check);
- Kayenta-style: Mann-Whitney U on per-10-s error rate and p99 (canary vs stable, 95%
  confidence, the rule of `judges.compare_samples`), re-run over all intervals at every check;
- a naive one-sided two-proportion z-test (alpha 0.05) on cumulative 5xx counts and on the
  share of requests slower than 250 ms, re-run at every check.

Usage: python benchmarks/detection.py --rollouts 1000 [--json FILE]   (--rollouts 50: quick)
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

from canarykit.analysis import (
    judges,
    sequential,  # noqa: E402
)

EDGES_MS = np.array([0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                     60000, 300000, 600000, 1800000, 3600000], dtype=float)
CHECK_S = 10
DURATION_S = 30 * 60
CHECKS = DURATION_S // CHECK_S
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

RATES = (20, 200)
WEIGHTS = (5, 25)
REGRESSIONS = {
    "none": "identical",
    "errors2x": "2x 5xx",
    "errors5x": "5x 5xx",
    "latency30": "+30% latency",
}
METHODS = {
    "sequential": "canarykit sequential (10 s)",
    "flagger": "Flagger SR>=99%, p99<=500ms (1 m)",
    "kayenta": "Mann-Whitney re-run (10 s)",
    "ztest": "naive z-test re-run (10 s)",
}


@dataclass
class Streams:
    """Per-interval counts, arrays of shape (rollouts, checks) and (rollouts, checks, buckets)."""

    canary_requests: np.ndarray
    stable_requests: np.ndarray
    canary_errors: np.ndarray
    stable_errors: np.ndarray
    canary_hist: np.ndarray  # per-interval counts in each bucket, the last one is +Inf
    stable_hist: np.ndarray


def bucket_probabilities(scale: float) -> np.ndarray:
    """Probability of each Envoy bucket (incl. +Inf) for log-normal latency scaled by `scale`."""
    cdf = stats.norm.cdf((np.log(EDGES_MS) - math.log(MEDIAN_MS * scale)) / SIGMA)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def simulate(rate: float, weight: float, regression: str, rollouts: int,
             rng: np.random.Generator) -> Streams:
    arrivals = rng.poisson(rate * CHECK_S, size=(rollouts, CHECKS))
    canary = rng.binomial(arrivals, weight / 100.0)
    stable = arrivals - canary
    factor = {"errors2x": 2.0, "errors5x": 5.0}.get(regression, 1.0)
    canary_errors = rng.binomial(canary, BASE_ERROR_RATE * factor)
    stable_errors = rng.binomial(stable, BASE_ERROR_RATE)
    scale = 1.3 if regression == "latency30" else 1.0
    canary_hist = rng.multinomial(canary, bucket_probabilities(scale))
    stable_hist = rng.multinomial(stable, bucket_probabilities(1.0))
    return Streams(canary, stable, canary_errors, stable_errors, canary_hist, stable_hist)


# --- the judges, each returning the first failing check per rollout (CHECKS if none) ---------


def first_failure(fails: np.ndarray) -> np.ndarray:
    return np.where(fails.any(axis=1), fails.argmax(axis=1), CHECKS)


def sequential_fails(s: Streams, weight: float) -> np.ndarray:
    """What judge_sequential + decide conclude at every check, vectorised (same functions)."""
    share = weight / 100.0
    alpha_each = ALPHA / 3
    threshold = math.log(1 / alpha_each)
    cc, cs = s.canary_requests.cumsum(1), s.stable_requests.cumsum(1)
    ec, es = s.canary_errors.cumsum(1), s.stable_errors.cumsum(1)
    error_fail = sequential.error_log_bayes_factor(ec, es, share) >= threshold
    split_fail = sequential.retry_adjusted_split_log_bayes_factor(cc, cs, ec, es, share) \
        >= threshold
    return (error_fail & ~split_fail) | latency_fails(s, alpha_each)


def latency_fails(s: Streams, alpha: float) -> np.ndarray:
    edges = len(EDGES_MS)
    hist_c, hist_s = s.canary_hist.cumsum(1), s.stable_hist.cumsum(1)  # cumulative in time
    n_c, n_s = hist_c.sum(2), hist_s.sum(2)
    with np.errstate(divide="ignore", invalid="ignore"):
        cdf_c = hist_c[:, :, :edges].cumsum(2) / n_c[:, :, None]
        cdf_s = hist_s[:, :, :edges].cumsum(2) / n_s[:, :, None]
    width = (sequential.cdf_band_halfwidth(n_c, alpha / 2, edges=edges)
             + sequential.cdf_band_halfwidth(n_s, alpha / 2, edges=edges))
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


JUDGES = {"sequential": None, "flagger": flagger_fails, "kayenta": kayenta_fails,
          "ztest": ztest_fails}


def verify_against_library(s: Streams, weight: float, fails: np.ndarray, rows: int) -> None:
    """Check the vectorised rule against judge_sequential + decide on a few whole rollouts."""
    share = weight / 100.0
    for row in range(min(rows, len(fails))):
        for check in range(CHECKS):
            upto = slice(0, check + 1)
            segment = sequential.Segment(
                share, int(s.stable_requests[row, upto].sum()),
                int(s.stable_errors[row, upto].sum()), int(s.canary_requests[row, upto].sum()),
                int(s.canary_errors[row, upto].sum()))
            decision = judges.decide(sequential.judge_sequential(
                [segment], _buckets(s.stable_hist[row, upto]), _buckets(s.canary_hist[row, upto]),
                alpha=ALPHA, latency_tolerance=LATENCY_TOLERANCE))
            if (decision.verdict == judges.Verdict.FAIL) != bool(fails[row, check]):
                raise AssertionError(f"benchmark rule disagrees with the library at rollout {row}"
                                     f", check {check}: {decision.reason}")


def _buckets(per_interval: np.ndarray) -> list[tuple[float, float]]:
    cumulative = per_interval.sum(0).cumsum()
    return [(float(e), float(c)) for e, c in zip(EDGES_MS, cumulative[:-1], strict=True)] + [
        (math.inf, float(cumulative[-1]))]


# --- running and reporting -----------------------------------------------------------------


def run(rollouts: int, seed: int, verify: int) -> list[dict]:
    rows = []
    for index, (rate, weight, regression) in enumerate(
            (r, w, g) for r in RATES for w in WEIGHTS for g in REGRESSIONS):
        rng = np.random.default_rng([seed, index])
        streams = simulate(rate, weight, regression, rollouts, rng)
        canary_so_far = np.concatenate(
            [streams.canary_requests.cumsum(1), np.full((rollouts, 1), np.inf)], 1)
        for method, judge in JUDGES.items():
            fails = sequential_fails(streams, weight) if judge is None else judge(streams)
            if method == "sequential" and verify:
                verify_against_library(streams, weight, fails, verify)
            first = first_failure(fails)
            seconds = np.where(first < CHECKS, (first + 1) * CHECK_S, np.inf)
            requests = canary_so_far[np.arange(rollouts), first]
            rows.append({
                "rate_per_s": rate, "weight_percent": weight, "regression": regression,
                "method": method, "rollouts": rollouts,
                "rollback_rate": float(np.mean(first < CHECKS)),
                "time_p50_s": _quantile(seconds, 0.5), "time_p90_s": _quantile(seconds, 0.9),
                "canary_requests_p50": _quantile(requests, 0.5),
                "canary_requests_p90": _quantile(requests, 0.9),
            })
    return rows


def _quantile(values: np.ndarray, q: float) -> float | None:
    """Quantile over all rollouts, undetected ones counting as never (None)."""
    value = float(np.quantile(values, q, method="inverted_cdf"))
    return None if math.isinf(value) else value


def format_table(rows: list[dict]) -> str:
    index = {(r["rate_per_s"], r["weight_percent"], r["regression"], r["method"]): r
             for r in rows}
    header = ["traffic", "canary", "judge", "false rollbacks (identical)"]
    for regression in list(REGRESSIONS)[1:]:
        header += [f"{REGRESSIONS[regression]}: time p50 / p90 (rolled back)",
                   f"{REGRESSIONS[regression]}: canary requests p50 / p90"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rate in RATES:
        for weight in WEIGHTS:
            for method, label in METHODS.items():
                null = index[(rate, weight, "none", method)]
                cells = [f"{rate}/s", f"{weight}%", label, f"{null['rollback_rate']:.1%}"]
                for regression in list(REGRESSIONS)[1:]:
                    r = index[(rate, weight, regression, method)]
                    cells.append(f"{_time(r['time_p50_s'])} / {_time(r['time_p90_s'])} "
                                 f"({r['rollback_rate']:.0%})")
                    cells.append(f"{_req(r['canary_requests_p50'])} / "
                                 f"{_req(r['canary_requests_p90'])}")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_report(rows: list[dict]) -> list[str]:
    index = {(r["rate_per_s"], r["weight_percent"], r["regression"], r["method"]): r
             for r in rows}
    lines = []
    worst = max((r for r in rows if r["method"] == "sequential" and r["regression"] == "none"),
                key=lambda r: r["rollback_rate"])
    lines.append(f"goal 1, sequential false rollbacks <= 5% in every scenario: "
                 f"{'met' if worst['rollback_rate'] <= 0.05 else 'NOT met'} (worst "
                 f"{worst['rollback_rate']:.1%} at {worst['rate_per_s']}/s, "
                 f"{worst['weight_percent']}%)")
    for rate in RATES:
        for weight in WEIGHTS:
            flagger_null = index[(rate, weight, "none", "flagger")]["rollback_rate"]
            if flagger_null > 0.05:
                lines.append(f"goal 2 at {rate}/s, {weight}%: not applicable (Flagger's own false"
                             f" rollbacks {flagger_null:.1%} > 5%)")
                continue
            seq = index[(rate, weight, "errors5x", "sequential")]
            flag = index[(rate, weight, "errors5x", "flagger")]
            ok = all(_not_later(seq[k], flag[k]) for k in ("time_p50_s", "time_p90_s"))
            lines.append(f"goal 2 at {rate}/s, {weight}%: 5x 5xx rolled back "
                         f"{'no later than' if ok else 'LATER than'} Flagger (p50/p90 "
                         f"{_time(seq['time_p50_s'])}/{_time(seq['time_p90_s'])} vs "
                         f"{_time(flag['time_p50_s'])}/{_time(flag['time_p90_s'])})")
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
    args = parser.parse_args(argv)
    if args.rollouts < 1:
        parser.error("--rollouts must be >= 1")
    started = time.monotonic()
    rows = run(args.rollouts, args.seed, args.verify)
    elapsed = time.monotonic() - started
    print(f"{args.rollouts} rollouts per scenario, 30 min checked every 10 s, base 5xx "
          f"{BASE_ERROR_RATE:.1%}, latency log-normal median {MEDIAN_MS:g} ms p99 {P99_MS:g} ms,"
          f" alpha {ALPHA}; time = until rollback, 'never' = not within 30 min\n")
    print(format_table(rows))
    print()
    for line in goal_report(rows):
        print(line)
    print(f"\nwall time {elapsed:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rollouts": args.rollouts, "seed": args.seed,
                                               "wall_time_s": elapsed, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
