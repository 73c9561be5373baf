"""Anytime-valid sequential judges: safe to re-check every few seconds.

A fixed-sample test re-run at every check rejects a healthy canary far more often than its
nominal alpha (every look is another chance for noise to cross the line). The judges here
are built on test supermartingales: under the null hypothesis their evidence E_t satisfies
E[E_t] <= 1 at every time, so by Ville's inequality P(exists t: E_t >= 1/alpha) <= alpha.
Checking after every request, every 10 s or at any data-dependent time therefore keeps the
false-rollback probability at most alpha for the whole rollout.

- `error_rate_test`: where the 5xx responses fall (Lindon & Malek 2022, Dirichlet-multinomial
  count test), one-sided with a tolerance, evidence chained across weight changes;
- `traffic_split_test`: the same count test on requests against the configured weights
  (sample ratio mismatch, allowing for retried 5xx), a routing problem that invalidates the
  error test;
- `latency_test`: time-uniform confidence bands for both latency CDFs at the histogram bucket
  edges, FAIL when the canary is slower by more than a tolerance;
- `judge_sequential`: all three with alpha split across them (Bonferroni).

Clustered errors. The count tests above assume each request fails independently. Real error
streams come in clusters: a pod restarts and a few dozen requests fail together, a client's
retry storm hits one version, a latency spike slows a burst of requests at once. Then one
cluster is one event, not dozens, and a test that counts each error as independent evidence
rolls back a healthy canary far more often than alpha (about half the time with clusters of
5-50 errors, see benchmarks/detection.py). The judges therefore weight each observation by
1/phi, where phi >= 1 is the *dispersion* of the service's own error stream (the design
effect of survey sampling, Kish 1965; the quasi-likelihood scale of McCullagh & Nelder 1989):
- Why it stays valid: if errors arrive in independent clusters of at most phi errors, each
  wholly on one version, then for a fixed alternative theta the likelihood ratio of a
  cluster of c errors raised to the power 1/phi has expectation <= (E[ratio])^(c/phi) <= 1
  under the null (Jensen, c/phi <= 1). Products and prior mixtures of such factors are still
  test supermartingales, so Ville's inequality holds as before. Tempered counts are what
  `error_log_bayes_factor(X / phi, Y / phi)` computes; for the latency bands a cluster of c
  identical outcomes is one sub-Gaussian block, so n / phi requests count as independent.
- Where phi comes from: `count_dispersion`, the Pearson dispersion statistic of stable's own
  per-interval counts *before the rollout started* (stable against itself; known before any
  canary data, so the tempering is predictable and the guarantee above applies), at the
  check interval and at 6 intervals (clusters that straddle intervals), the larger of the
  two. For a compound-Poisson stream with cluster sizes C it estimates E[C^2] / E[C] (c for
  clusters of exactly c, about 1 for independent errors). The estimate divides the chi-square
  sum by its median under independence, so phi is about 1, not inflated, for a Poisson stream.
- Assumptions and limits: the clustering seen in stable's history (default the hour before
  the rollout) is the clustering of the rollout period; without a usable history (fewer than
  `MIN_HISTORY_INTERVALS` intervals with traffic or `MIN_HISTORY_EVENTS` errors) the judges
  use `FALLBACK_DISPERSION` and say so. A failure that pins one broken client to one version
  for the whole rollout (sticky sessions) is indistinguishable from a regression in
  version-level counts; it is not modelled. Errors that both versions suffer together (a
  shared dependency failing) do not bias the error test at all: it only models where errors
  fall, never how many there are.
- The traffic split: Istio picks the subset of a weighted route for every request, before
  any consistent-hash affinity picks an endpoint within the subset, so session affinity does
  not skew the version split (users are sticky to pods, not versions); a client's own retries
  are routed afresh. What does skew it, the proxy's retries of a 5xx within the same subset,
  is allowed for by `retry_adjusted_split_log_bayes_factor`.

All judges are stateless: they take cumulative counts since the rollout started and can be
re-run at any moment. The vectorised `*_log_bayes_factor` and `cdf_band_halfwidth` functions
are what the judges compute; benchmarks/detection.py uses them on many simulated streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from canarykit.analysis.judges import Judgement, Verdict, _count, _is_number
from canarykit.core.errors import BadInput

# Prior concentration k of the error test: the alternative mixes over the canary's share of
# errors theta ~ Beta(k * rho0, k * (1 - rho0)) restricted to theta > rho0. Small k spreads
# the prior towards large regressions (fast detection of 2x-5x error rates with few errors);
# tuned with benchmarks/detection.py.
ERROR_CONCENTRATION = 5.0
# Prior concentration of the traffic-split test: routing errors of interest are small
# relative deviations on many requests, so the prior sits closer to the configured share.
SPLIT_CONCENTRATION = 1000.0
# Normal-mixture precision of the latency bands in intrinsic time (requests / 4); the band is
# tightest around a few hundred to a few thousand requests per arm.
LATENCY_MIXTURE = 10.0
DEFAULT_MIN_REQUESTS = 100
# Dispersion of an error stream (see the module docstring): measured on stable's history at
# the check interval and at this many intervals; without a usable history the judges assume
# clusters of a few errors rather than independence.
DISPERSION_SCALES = (1, 6)
MIN_HISTORY_INTERVALS = 30
MIN_HISTORY_EVENTS = 10
FALLBACK_DISPERSION = 4.0
# Power: the regression the judges report the traffic they need for (canary 5xx rate this many
# times stable's, on top of the tolerance).
POWER_RATIO = 2.0


@dataclass
class Segment:
    """Counts observed while the configured canary share was constant.

    canary_share is the configured canary weight / 100 (rho), in (0, 1). Counts are
    cumulative over the segment; fractional counts (Prometheus increase() extrapolates) are
    rounded to whole requests.
    """

    canary_share: float
    stable_requests: int
    stable_errors: int
    canary_requests: int
    canary_errors: int
    started_at: float | None = None


# --- the statistics (vectorised over numpy arrays) -------------------------------------


def null_share(canary_share: float, tolerance: float = 0.0) -> float:
    """The canary's share of errors when its error rate is exactly (1 + tolerance) x stable's.

    With traffic share rho and error rates p_c, p_s, an error is on the canary with
    probability rho p_c / (rho p_c + (1 - rho) p_s); at p_c = (1 + tol) p_s this is
    rho (1 + tol) / (rho (1 + tol) + 1 - rho).
    """
    scaled = canary_share * (1.0 + tolerance)
    return scaled / (scaled + 1.0 - canary_share)


def error_log_bayes_factor(
    canary_errors: Any,
    stable_errors: Any,
    canary_share: float,
    *,
    tolerance: float = 0.0,
    concentration: float = ERROR_CONCENTRATION,
) -> Any:
    """Log Bayes factor of the one-sided error test (Lindon & Malek, restricted alternative).

    Each 5xx falls on the canary with probability theta. Null: theta <= rho0 =
    null_share(rho, tolerance), i.e. the canary's error rate is at most (1 + tolerance) times
    stable's. The evidence is the mixture likelihood ratio
        BF = E_pi[theta^X (1-theta)^Y] / (rho0^X (1-rho0)^Y),
    pi = Beta(k rho0, k (1 - rho0)) restricted to theta > rho0 (renormalised), X and Y the
    canary and stable error counts. This is the two-category case of the Dirichlet-multinomial
    Bayes factor B(a0 + N) / B(a0) / prod(rho_i^N_i), a0 = k rho, with the prior restricted to
    the alternative.

    Why it stays valid (type-I error <= alpha under continuous monitoring): for a fixed
    theta > rho0 one more error multiplies the ratio by theta/rho0 (canary) or
    (1-theta)/(1-rho0) (stable); under any true theta0 <= rho0 the expected factor is
    theta0 theta/rho0 + (1-theta0)(1-theta)/(1-rho0), which is linear in theta0, equals 1 at
    theta0 = rho0 and grows with theta0, so it is <= 1. Each ratio is a nonnegative
    supermartingale, so is their prior mixture, and Ville's inequality bounds the chance
    of ever reaching 1/alpha by alpha. Because the alternative only contains theta > rho0, a
    canary that is better than stable drives the evidence towards 0 and never fails.
    It also holds when both versions' error rates drift together over time: only where the
    errors fall is modelled.

    Works on numpy arrays of counts (canary_share and tolerance are scalars).
    """
    from scipy import special  # here: importing scipy costs every runbook kernel ~0.1-1 s

    rho0 = null_share(canary_share, tolerance)
    a, b = concentration * rho0, concentration * (1.0 - rho0)
    x = np.asarray(canary_errors, dtype=float)
    y = np.asarray(stable_errors, dtype=float)
    with np.errstate(divide="ignore"):
        numerator = special.betaln(a + x, b + y) + np.log(_upper_tail(a + x, b + y, rho0))
        denominator = special.betaln(a, b) + np.log(_upper_tail(a, b, rho0))
    return numerator - denominator - x * math.log(rho0) - y * math.log1p(-rho0)


def split_log_bayes_factor(
    canary_requests: Any,
    stable_requests: Any,
    canary_share: float,
    *,
    concentration: float = SPLIT_CONCENTRATION,
) -> Any:
    """Log Bayes factor of the two-sided sample-ratio-mismatch test (Lindon & Malek).

    Null: each request goes to the canary with probability rho (the configured share).
    BF = B(a + X, b + Y) / B(a, b) / (rho^X (1 - rho)^Y) with (a, b) = k (rho, 1 - rho):
    a Beta-mixture of likelihood ratios, a test martingale under the null.
    """
    from scipy import special

    a, b = concentration * canary_share, concentration * (1.0 - canary_share)
    x = np.asarray(canary_requests, dtype=float)
    y = np.asarray(stable_requests, dtype=float)
    return (special.betaln(a + x, b + y) - special.betaln(a, b)
            - x * math.log(canary_share) - y * math.log1p(-canary_share))


def retry_adjusted_split_log_bayes_factor(
    canary_requests: Any,
    stable_requests: Any,
    canary_errors: Any,
    stable_errors: Any,
    canary_share: float,
    *,
    concentration: float = SPLIT_CONCENTRATION,
) -> Any:
    """The least split Bayes factor over the request counts the clients may have sent.

    A proxy retries a 5xx (Istio retries 503 by default) on the same subset, and a
    destination-side count includes every attempt: a failing canary gets more requests
    than its share without any routing problem. The requests clients sent to a version lie
    between its non-5xx count and its total, so the test takes the smallest Bayes factor over
    that box. The true counts are in the box, so the least value is at most the test
    martingale of the true counts: still at most alpha under the null, at any time.
    log BF is convex along each edge of the box and has no interior minimum, so the
    minimum over the four edges (each found by bisection on the derivative) is exact.
    """
    from scipy import special

    a, b = concentration * canary_share, concentration * (1.0 - canary_share)
    x_hi = np.asarray(canary_requests, dtype=float)
    y_hi = np.asarray(stable_requests, dtype=float)
    x_lo = np.maximum(x_hi - np.asarray(canary_errors, dtype=float), 0.0)
    y_lo = np.maximum(y_hi - np.asarray(stable_errors, dtype=float), 0.0)

    def log_bf(x: Any, y: Any) -> Any:
        return split_log_bayes_factor(x, y, canary_share, concentration=concentration)

    def along(lo: Any, hi: Any, other: Any, own: float, log_p: float) -> Any:
        """argmin over [lo, hi] of the edge function, given the other count fixed."""
        def slope(v: Any) -> Any:
            return special.digamma(own + v) - special.digamma(a + b + v + other) - log_p
        lo, hi = np.broadcast_arrays(lo, hi)
        left, right = lo.astype(float), hi.astype(float)
        for _ in range(60):
            mid = (left + right) / 2
            rising = slope(mid) > 0
            right, left = np.where(rising, mid, right), np.where(rising, left, mid)
        return np.clip((left + right) / 2, lo, hi)

    log_rho, log_rest = math.log(canary_share), math.log1p(-canary_share)
    candidates = [log_bf(along(x_lo, x_hi, y, a, log_rho), y) for y in (y_lo, y_hi)]
    candidates += [log_bf(x, along(y_lo, y_hi, x, b, log_rest)) for x in (x_lo, x_hi)]
    return np.minimum.reduce(candidates)


def cdf_band_halfwidth(requests: Any, alpha: float, *, edges: int,
                       mixture: float = LATENCY_MIXTURE) -> Any:
    """Half-width of a time-uniform confidence band for a CDF at `edges` fixed points.

    At one edge x the indicators 1{latency <= x} are i.i.d. in [0, 1], so by Hoeffding's
    lemma exp(l S_n - l^2 n / 8) is a supermartingale for every l (S_n the centred count).
    Mixing l ~ N(0, 1/m) gives the normal-mixture (Robbins; Howard & Ramdas) boundary
        |S_n| < sqrt((V + m) log((V + m) / (m a^2))),  V = n / 4,
    which holds for all n at once with probability >= 1 - a (Ville's inequality). A union
    bound over the edges (a = alpha / edges) makes the band hold at every bucket edge and
    every time with probability >= 1 - alpha. This is a simple, provably valid stand-in for
    the time-uniform DKW band of Howard & Ramdas (2022), evaluated only where Prometheus
    histograms give exact empirical CDF values: the bucket edges.
    Returns 1 where there are no requests (nothing is known).
    """
    n = np.asarray(requests, dtype=float)
    per_edge = alpha / edges
    v = n / 4.0 + mixture
    with np.errstate(divide="ignore", invalid="ignore"):
        width = np.sqrt(v * np.log(v / (mixture * per_edge**2))) / n
    return np.where(n > 0, np.minimum(width, 1.0), 1.0)


def count_dispersion(requests: Any, events: Any, *,
                     scales: tuple[int, ...] = DISPERSION_SCALES) -> Any:
    """Dispersion phi of an event count stream: 1 for independent events, about E[C^2]/E[C]
    for clusters of size C. NaN where the history is too thin to tell.

    `requests` and `events` are per-interval counts along the last axis (time). At each scale
    s (intervals summed s at a time) the Pearson statistic of the events against a constant
    rate, sum (e - p r)^2 / (p (1 - p) r), is divided by the median of chi-square with its
    degrees of freedom (median-unbiased under independence); phi is the largest over the
    scales, and at least 1. Rate changes over the history (a shared incident, daily load)
    inflate it: conservative, never optimistic.
    """
    from scipy import stats

    r = np.asarray(requests, dtype=float)
    e = np.minimum(np.asarray(events, dtype=float), r)
    phi = np.ones(r.shape[:-1])
    for scale in scales:
        blocks = r.shape[-1] // scale
        if blocks < 2:
            continue
        cut = r.shape[-1] - blocks * scale  # the newest intervals are kept whole
        rb = r[..., cut:].reshape(r.shape[:-1] + (blocks, scale)).sum(-1)
        eb = e[..., cut:].reshape(e.shape[:-1] + (blocks, scale)).sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = eb.sum(-1, keepdims=True) / rb.sum(-1, keepdims=True)
            variance = p * (1.0 - p) * rb
            pearson = np.where(variance > 0, (eb - p * rb) ** 2 / variance, 0.0).sum(-1)
        df = (rb > 0).sum(-1) - 1
        median = stats.chi2.ppf(0.5, np.maximum(df, 1))
        phi = np.maximum(phi, np.where(df >= 1, pearson / median, 1.0))
    seen = (r > 0).sum(-1)
    total = e.sum(-1)
    enough = (seen >= MIN_HISTORY_INTERVALS) & (total >= MIN_HISTORY_EVENTS) & (
        r.sum(-1) - total >= MIN_HISTORY_EVENTS)
    return np.where(enough, phi, np.nan)


def latency_dispersion(bucket_counts: Any, *,
                       scales: tuple[int, ...] = DISPERSION_SCALES) -> Any:
    """Dispersion of a latency stream: the largest `count_dispersion` of the number of
    requests within each bucket edge. NaN where no edge has enough requests on both sides.

    `bucket_counts` are per-interval, per-bucket (not cumulative) counts, shape (..., time,
    buckets), the last bucket being +Inf. A burst of requests slowed together (a GC pause, a
    cold cache) shows up as overdispersion of the count above some edge.
    """
    counts = np.asarray(bucket_counts, dtype=float)
    requests = counts.sum(-1)
    within = counts[..., :-1].cumsum(-1)
    phi = np.full(requests.shape[:-1], np.nan)
    for edge in range(within.shape[-1]):
        found = count_dispersion(requests, within[..., edge], scales=scales)
        phi = np.fmax(phi, found)
    return phi


@dataclass
class Dispersion:
    """The dispersion the judges temper their evidence with, and where it came from."""

    value: float
    source: str  # "history", "fallback" or "configured"
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "note": self.note}


def estimate_dispersion(kind: str, estimate: float | None, *, history: str,
                        fallback: float = FALLBACK_DISPERSION) -> Dispersion:
    """A Dispersion from a `count_dispersion` / `latency_dispersion` result (NaN or None when
    the history was too thin), described for the judgement's reason."""
    if estimate is None or not math.isfinite(estimate):
        return Dispersion(fallback, "fallback",
                          f"{kind} dispersion {fallback:g} assumed: {history} too thin to "
                          f"measure it (fewer than {MIN_HISTORY_INTERVALS} intervals with "
                          f"traffic or {MIN_HISTORY_EVENTS} events)")
    value = max(1.0, float(estimate))
    return Dispersion(value, "history",
                      f"{kind} dispersion {value:.2f} measured on {history}")


def configured_dispersion(kind: str, value: float) -> Dispersion:
    return Dispersion(float(value), "configured", f"{kind} dispersion {value:g} as configured")


def _upper_tail(a: Any, b: Any, cut: float) -> Any:
    """P(theta > cut) for theta ~ Beta(a, b), via the symmetry I_{1-x}(b, a)."""
    from scipy import special

    return special.betainc(b, a, 1.0 - cut)


# --- the judges --------------------------------------------------------------------------


def error_rate_test(
    segments: list[Segment],
    *,
    alpha: float = 0.05,
    tolerance: float = 0.0,
    concentration: float = ERROR_CONCENTRATION,
    min_requests: int = DEFAULT_MIN_REQUESTS,
    dispersion: Dispersion | float = 1.0,
    remaining_seconds: float | None = None,
    canary_rate: float | None = None,
) -> Judgement:
    """Is the canary's 5xx rate more than (1 + tolerance) x stable's? Anytime-valid.

    FAIL when the chained Bayes factor reaches 1/alpha (however few requests: that much
    evidence is enough); INCONCLUSIVE with no data or fewer than `min_requests` canary
    requests; otherwise PASS, meaning no evidence of a regression so far.

    `dispersion` (phi >= 1) tempers the evidence for clustered errors: each error counts as
    1/phi (module docstring). Given the step's `remaining_seconds` and the canary's request
    rate, the judge says INCONCLUSIVE early when, before the step ends, the canary can neither
    reach `min_requests` (to PASS) nor the requests its power curve needs to catch a
    POWER_RATIO x regression (to FAIL), and says how much traffic it would need.

    Chaining across weight changes: segment j's Bayes factor uses that segment's share and
    starts afresh at 1. Given everything before the segment started, it is a supermartingale
    under the null, so the running product over segments is one too (the tower property),
    and Ville's inequality still bounds the false-rollback probability by alpha. Restarting
    at 1 instead would spend a fresh alpha at every weight change.
    """
    _check_alpha(alpha)
    _check_tolerance("tolerance", tolerance)
    _check_concentration(concentration)
    _check_min("min_requests", min_requests)
    spread = _as_dispersion("dispersion", dispersion)
    thresholds = {"alpha": alpha, "bayes_factor_threshold": 1.0 / alpha, "tolerance": tolerance,
                  "concentration": concentration, "min_requests": min_requests,
                  "dispersion": spread.value}
    segments = _check_segments(segments)
    if not segments:
        return Judgement("error-rate-sequential", Verdict.INCONCLUSIVE,
                         "no data: no traffic segments were measured",
                         _error_values([]), thresholds, critical=True)
    phi = spread.value
    per_segment = []
    for seg in segments:
        log_bf = float(error_log_bayes_factor(seg.canary_errors / phi, seg.stable_errors / phi,
                                              seg.canary_share, tolerance=tolerance,
                                              concentration=concentration))
        per_segment.append({"canary_share": seg.canary_share, "log_bayes_factor": log_bf,
                            "bayes_factor": _bf(log_bf), "canary_errors": seg.canary_errors,
                            "stable_errors": seg.stable_errors,
                            "null_error_share": null_share(seg.canary_share, tolerance)})
    log_bf = sum(s["log_bayes_factor"] for s in per_segment)
    values = _error_values(segments)
    evidence = {"log_bayes_factor": log_bf, "bayes_factor": _bf(log_bf),
                "p_value": _p_value(log_bf), "segments": per_segment,
                "dispersion": spread.to_dict()}
    power = _power(values, segments[-1].canary_share, alpha=alpha, tolerance=tolerance,
                   concentration=concentration, dispersion=phi)
    evidence["power"] = power
    rates = _rates_text(values)
    threshold = 1.0 / alpha
    tempered = f"; {spread.note}, each error counted as 1/{phi:.3g}" if phi > 1 else ""
    short = _short_of_budget(values["canary_requests"], min_requests, power,
                             remaining_seconds, canary_rate, segments[-1].canary_share)
    if log_bf >= math.log(threshold):
        reason = (f"canary 5xx {rates}: the errors fall on the canary more often than its "
                  f"traffic share allows (Bayes factor {_fmt_bf(log_bf)} >= 1/alpha = "
                  f"{threshold:g}, anytime-valid p = {evidence['p_value']:.2g}{tempered})")
        verdict = Verdict.FAIL
    elif short:
        evidence["decidable_in_budget"] = False
        reason, verdict = short, Verdict.INCONCLUSIVE
    elif values["canary_requests"] < max(min_requests, 1):
        reason = (f"only {_count(values['canary_requests'])} canary requests, fewer than the "
                  f"{min_requests:,} needed to judge the error rate (Bayes factor "
                  f"{_fmt_bf(log_bf)} < {threshold:g})")
        verdict = Verdict.INCONCLUSIVE
    else:
        reason = (f"no evidence of an error-rate regression so far: canary 5xx {rates} "
                  f"(Bayes factor {_fmt_bf(log_bf)} < {threshold:g}{tempered})")
        verdict = Verdict.PASS
    return Judgement("error-rate-sequential", verdict, reason, values, thresholds,
                     evidence=evidence, critical=True)


def traffic_split_test(
    segments: list[Segment],
    *,
    alpha: float = 0.05,
    concentration: float = SPLIT_CONCENTRATION,
    min_requests: int = DEFAULT_MIN_REQUESTS,
) -> Judgement:
    """Does the canary get the share of requests it is configured for? (sample ratio mismatch)

    FAIL when the chained Bayes factor reaches 1/alpha: routing does not follow the weights,
    so where errors fall says nothing about the canary. Requests a version got by retries of
    its own 5xx are allowed for (`retry_adjusted_split_log_bayes_factor`). The judgement is
    not critical: a routing problem is not evidence against the canary, and `decide` turns it
    into an INCONCLUSIVE step. INCONCLUSIVE below `min_requests` requests in total or with no data.
    """
    _check_alpha(alpha)
    _check_concentration(concentration)
    _check_min("min_requests", min_requests)
    thresholds = {"alpha": alpha, "bayes_factor_threshold": 1.0 / alpha,
                  "concentration": concentration, "min_requests": min_requests}
    segments = _check_segments(segments)
    canary = sum(s.canary_requests for s in segments)
    total = canary + sum(s.stable_requests for s in segments)
    expected = sum(s.canary_share * (s.canary_requests + s.stable_requests) for s in segments)
    values = {"canary_requests": canary, "total_requests": total,
              "observed_canary_share": canary / total if total else None,
              "expected_canary_share": expected / total if total else None,
              "configured_shares": [s.canary_share for s in segments]}
    if not segments:
        return Judgement("traffic-split", Verdict.INCONCLUSIVE,
                         "no data: no traffic segments were measured", values, thresholds,
                         critical=False)
    per_segment = []
    for seg in segments:
        log_bf = float(retry_adjusted_split_log_bayes_factor(
            seg.canary_requests, seg.stable_requests, seg.canary_errors, seg.stable_errors,
            seg.canary_share, concentration=concentration))
        per_segment.append({"canary_share": seg.canary_share, "log_bayes_factor": log_bf,
                            "bayes_factor": _bf(log_bf)})
    log_bf = sum(s["log_bayes_factor"] for s in per_segment)
    evidence = {"log_bayes_factor": log_bf, "bayes_factor": _bf(log_bf),
                "p_value": _p_value(log_bf), "segments": per_segment}
    threshold = 1.0 / alpha
    shares = "no requests"
    if total > 0:
        shares = (f"canary got {values['observed_canary_share']:.2%} of {_count(total)} "
                  f"requests, configured {values['expected_canary_share']:.2%}")
    if log_bf >= math.log(threshold):
        verdict, reason = Verdict.FAIL, (
            f"routing problem (sample ratio mismatch): {shares} (Bayes factor "
            f"{_fmt_bf(log_bf)} >= 1/alpha = {threshold:g})")
    elif total < max(min_requests, 1):
        verdict, reason = Verdict.INCONCLUSIVE, (
            f"only {_count(total)} requests, fewer than the {min_requests:,} needed to check "
            "the traffic split")
    else:
        verdict, reason = Verdict.PASS, (
            f"no evidence of a traffic split mismatch so far: {shares} (Bayes factor "
            f"{_fmt_bf(log_bf)} < {threshold:g})")
    return Judgement("traffic-split", verdict, reason, values, thresholds, evidence=evidence,
                     critical=False)


def latency_test(
    stable_buckets: list[tuple[float, float]],
    canary_buckets: list[tuple[float, float]],
    *,
    alpha: float = 0.05,
    tolerance: float = 0.05,
    min_requests: int = DEFAULT_MIN_REQUESTS,
    dispersion: Dispersion | float = 1.0,
) -> Judgement:
    """Is the canary slower than stable? Time-uniform bands on both latency CDFs.

    `dispersion` (phi >= 1) widens the bands for latency that comes in bursts: n requests
    count as n / phi independent ones (module docstring).

    Buckets are cumulative histograms [(le_ms, cumulative count), ..., (inf, total)] with the
    same edges for both versions (Prometheus `le` buckets, counted since the rollout began).
    At each finite edge x, F(x) is the share of requests answered within x ms. With both
    bands holding (probability >= 1 - alpha at every check, see `cdf_band_halfwidth`):
    - FAIL when for some edge the stable CDF's lower bound exceeds the canary CDF's upper
      bound by more than `tolerance`: at least `tolerance` more of the canary's requests are
      slower than x ms than stable's. A canary that is as fast or faster never fails (except
      with probability <= alpha).
    - otherwise PASS: no evidence of a latency regression so far; the evidence says whether
      a slowdown beyond the tolerance is already ruled out (`slowdown_ruled_out`).
    - INCONCLUSIVE without data or below `min_requests` requests in either version.
    """
    _check_alpha(alpha)
    _check_tolerance("tolerance", tolerance, upper=1.0)
    _check_min("min_requests", min_requests)
    spread = _as_dispersion("dispersion", dispersion)
    thresholds = {"alpha": alpha, "tolerance": tolerance, "min_requests": min_requests,
                  "dispersion": spread.value}
    name = "latency-sequential"
    edges_s, cum_s = _check_buckets("stable_buckets", stable_buckets)
    edges_c, cum_c = _check_buckets("canary_buckets", canary_buckets)
    values: dict[str, Any] = {"stable_requests": cum_s[-1] if len(cum_s) else None,
                              "canary_requests": cum_c[-1] if len(cum_c) else None}
    if not len(edges_s) or not len(edges_c):
        return Judgement(name, Verdict.INCONCLUSIVE, "no data: a latency histogram is missing",
                         values, thresholds)
    if len(edges_s) != len(edges_c) or not np.array_equal(edges_s, edges_c):
        raise BadInput("canary_buckets", [float(e) for e in edges_c],
                       "must have the same bucket edges as stable_buckets")
    n_s, n_c = float(cum_s[-1]), float(cum_c[-1])
    finite = np.isfinite(edges_s)
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        values[f"stable_{label}_ms"] = histogram_quantile(q, edges_s, cum_s)
        values[f"canary_{label}_ms"] = histogram_quantile(q, edges_c, cum_c)
    if n_s <= 0 or n_c <= 0 or not finite.any():
        return Judgement(name, Verdict.INCONCLUSIVE,
                         f"no data: {_count(n_s)} stable and {_count(n_c)} canary requests "
                         "in the latency histograms", values, thresholds)
    edges = edges_s[finite]
    cdf_s, cdf_c = cum_s[finite] / n_s, cum_c[finite] / n_c
    # Each version's band covers half of alpha; each splits it over the edges.
    phi = spread.value
    width_s = float(cdf_band_halfwidth(n_s / phi, alpha / 2.0, edges=len(edges)))
    width_c = float(cdf_band_halfwidth(n_c / phi, alpha / 2.0, edges=len(edges)))
    gap = cdf_s - cdf_c
    worst = int(np.argmax(gap))
    gap_low, gap_high = gap - width_s - width_c, gap + width_s + width_c
    values.update(max_cdf_gap=float(gap[worst]), max_cdf_gap_at_ms=float(edges[worst]),
                  stable_share_within_ms=float(cdf_s[worst]),
                  canary_share_within_ms=float(cdf_c[worst]))
    ruled_out = bool(np.all(gap_high <= tolerance))
    evidence = {"stable_band_halfwidth": width_s, "canary_band_halfwidth": width_c,
                "max_gap_lower_bound": float(np.max(gap_low)),
                "max_gap_upper_bound": float(np.max(gap_high)), "slowdown_ruled_out": ruled_out,
                "edges_ms": edges.tolist(), "stable_cdf": cdf_s.tolist(),
                "canary_cdf": cdf_c.tolist(), "dispersion": spread.to_dict()}
    at = f"{edges[worst]:g} ms"
    within = (f"{cdf_c[worst]:.1%} of canary vs {cdf_s[worst]:.1%} of stable requests "
              f"within {at}")
    if np.max(gap_low) > tolerance:
        failing = int(np.argmax(gap_low))
        verdict, reason = Verdict.FAIL, (
            f"canary slower: {cdf_c[failing]:.1%} of canary vs {cdf_s[failing]:.1%} of stable "
            f"requests within {edges[failing]:g} ms; the gap is at least "
            f"{gap_low[failing]:.1%} > tolerance {tolerance:.1%} at every time with "
            f"probability {1 - alpha:.1%} ({_count(n_c)} canary, {_count(n_s)} stable requests)")
    elif min(n_s, n_c) < max(min_requests, 1):
        verdict, reason = Verdict.INCONCLUSIVE, (
            f"only {_count(n_c)} canary and {_count(n_s)} stable requests, fewer than the "
            f"{min_requests:,} per version needed to judge latency")
    else:
        bound = ("a slowdown beyond the tolerance is ruled out" if ruled_out else
                 "a slowdown beyond the tolerance is not yet ruled out")
        verdict, reason = Verdict.PASS, (
            f"no evidence of a latency regression so far: {within} (largest gap "
            f"{gap[worst]:.1%}, band +-{width_s + width_c:.1%}, tolerance {tolerance:.1%}); "
            f"{bound}")
    return Judgement(name, verdict, reason, values, thresholds, evidence=evidence)


def judge_sequential(
    segments: list[Segment],
    stable_buckets: list[tuple[float, float]] | None,
    canary_buckets: list[tuple[float, float]] | None,
    *,
    alpha: float = 0.05,
    error_tolerance: float = 0.0,
    latency_tolerance: float = 0.05,
    min_requests: int = DEFAULT_MIN_REQUESTS,
    judge_latency: bool = True,
    error_concentration: float = ERROR_CONCENTRATION,
    split_concentration: float = SPLIT_CONCENTRATION,
    error_dispersion: Dispersion | float = 1.0,
    latency_dispersion: Dispersion | float = 1.0,
    remaining_seconds: float | None = None,
    canary_rate: float | None = None,
) -> list[Judgement]:
    """Run the sequential judges for one analysis step, alpha split across them.

    The dispersions temper the error and latency evidence for clustered streams;
    `remaining_seconds` and `canary_rate` let the error judge stop early when the step cannot
    be decided in time (see `error_rate_test`).

    Bonferroni: each of the m judges run (3, or 2 with judge_latency=False) gets alpha / m,
    so the chance that any of them ever fails a canary that is no worse stays <= alpha.
    Missing histograms (None or empty) make the latency judgement INCONCLUSIVE; pass
    judge_latency=False to not judge latency at all.

    When the traffic split test fails, the error-rate verdict becomes INCONCLUSIVE: the
    error test assumes each request reaches the canary with the configured share, so with a
    routing problem its evidence means nothing either way.
    """
    _check_alpha(alpha)
    count = 3 if judge_latency else 2
    share = alpha / count
    split = traffic_split_test(segments, alpha=share, concentration=split_concentration,
                               min_requests=min_requests)
    errors = error_rate_test(segments, alpha=share, tolerance=error_tolerance,
                             concentration=error_concentration, min_requests=min_requests,
                             dispersion=error_dispersion, remaining_seconds=remaining_seconds,
                             canary_rate=canary_rate)
    errors.thresholds["alpha_total"] = alpha
    split.thresholds["alpha_total"] = alpha
    if split.verdict == Verdict.FAIL:
        errors.evidence["verdict_without_routing_problem"] = errors.verdict.value
        errors.verdict = Verdict.INCONCLUSIVE
        errors.reason = (f"routing problem, error rate not judged: {split.reason}; "
                         f"the error test alone said: {errors.reason}")
    judgements = [errors, split]
    if judge_latency:
        latency = latency_test(stable_buckets or [], canary_buckets or [], alpha=share,
                               tolerance=latency_tolerance, min_requests=min_requests,
                               dispersion=latency_dispersion)
        latency.thresholds["alpha_total"] = alpha
        judgements.append(latency)
    return judgements


def histogram_quantile(q: float, edges: np.ndarray, cumulative: np.ndarray) -> float | None:
    """Prometheus' histogram_quantile on one cumulative histogram (linear within a bucket)."""
    if not len(edges) or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    index = int(np.searchsorted(cumulative, rank, side="left"))
    index = min(index, len(edges) - 1)
    if not math.isfinite(edges[index]):
        finite = edges[np.isfinite(edges)]
        return float(finite[-1]) if len(finite) else None
    lower_edge = edges[index - 1] if index > 0 else 0.0
    lower_count = cumulative[index - 1] if index > 0 else 0.0
    in_bucket = cumulative[index] - lower_count
    if in_bucket <= 0:
        return float(edges[index])
    return float(lower_edge + (edges[index] - lower_edge) * (rank - lower_count) / in_bucket)


# --- validation and formatting -----------------------------------------------------------


def _check_segments(segments: Any) -> list[Segment]:
    if segments is None:
        return []
    if not isinstance(segments, (list, tuple)):
        raise BadInput("segments", segments, "must be a list of Segment")
    checked = []
    for i, seg in enumerate(segments):
        if not isinstance(seg, Segment):
            raise BadInput(f"segments[{i}]", seg, "must be a Segment")
        share = seg.canary_share
        if not _is_number(share) or not 0 < share < 1:
            raise BadInput(f"segments[{i}].canary_share", share,
                           "must be a number strictly between 0 and 1 (weight / 100)")
        counts = {}
        for name in ("stable_requests", "stable_errors", "canary_requests", "canary_errors"):
            value = getattr(seg, name)
            if not _is_number(value) or value < 0:
                raise BadInput(f"segments[{i}].{name}", value, "must be a finite count >= 0")
            counts[name] = int(round(float(value)))
        for arm in ("stable", "canary"):
            if counts[f"{arm}_errors"] > counts[f"{arm}_requests"]:
                raise BadInput(f"segments[{i}].{arm}_errors", getattr(seg, f"{arm}_errors"),
                               f"must not exceed {arm}_requests "
                               f"({getattr(seg, f'{arm}_requests')})")
        checked.append(Segment(float(share), started_at=seg.started_at, **counts))
    return checked


def _check_buckets(name: str, buckets: Any) -> tuple[np.ndarray, np.ndarray]:
    if buckets is None:
        return np.array([]), np.array([])
    try:
        pairs = [(float(le), float(count)) for le, count in buckets]
    except (TypeError, ValueError):
        raise BadInput(name, buckets,
                       "must be a list of (le_ms, cumulative count) pairs") from None
    if not pairs:
        return np.array([]), np.array([])
    edges = np.array([p[0] for p in pairs])
    counts = np.array([p[1] for p in pairs])
    if np.isnan(edges).any() or np.any(np.diff(edges) <= 0):
        raise BadInput(name, [p[0] for p in pairs], "bucket edges must be strictly increasing")
    if not math.isinf(edges[-1]):
        raise BadInput(name, [p[0] for p in pairs], "the last bucket must be +Inf (the total)")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise BadInput(name, [p[1] for p in pairs], "counts must be finite and >= 0")
    # increase() on separate bucket series can dip slightly; Prometheus repairs it the same way.
    return edges, np.maximum.accumulate(counts)


def errors_to_detect(canary_share: float, *, ratio: float = POWER_RATIO, alpha: float = 0.05,
                     tolerance: float = 0.0, concentration: float = ERROR_CONCENTRATION,
                     dispersion: float = 1.0) -> float:
    """The power curve: how many 5xx (both versions) the error test needs, on average, to FAIL
    a canary whose 5xx rate is `ratio` x (1 + tolerance) x stable's.

    The expected counts under that alternative, put into the Bayes factor, reach 1/alpha at
    about this many errors (the test's log evidence grows linearly in them, so this is
    close to the median detection point of the simulations in benchmarks/detection.py).
    """
    theta = null_share(canary_share, (1.0 + tolerance) * ratio - 1.0)
    target = math.log(1.0 / alpha)

    def evidence(n: float) -> float:
        return float(error_log_bayes_factor(theta * n / dispersion, (1 - theta) * n / dispersion,
                                            canary_share, tolerance=tolerance,
                                            concentration=concentration))
    high = 1.0
    while evidence(high) < target:
        high *= 2.0
        if high > 1e12:
            return math.inf
    low = high / 2.0
    for _ in range(50):
        mid = (low + high) / 2.0
        low, high = (mid, high) if evidence(mid) < target else (low, mid)
    return high


def _power(values: dict[str, Any], canary_share: float, **test: Any) -> dict[str, Any]:
    """The canary requests needed to catch a POWER_RATIO x regression at stable's 5xx rate."""
    power: dict[str, Any] = {"ratio": POWER_RATIO, "canary_requests_needed": None}
    rate = values["stable_error_rate"]
    if not rate:
        power["note"] = "no stable 5xx measured yet: the traffic needed is not estimated"
        return power
    errors = errors_to_detect(canary_share, ratio=POWER_RATIO, **test)
    ratio = POWER_RATIO * (1.0 + test["tolerance"])
    per_canary_request = rate * (ratio + (1.0 - canary_share) / canary_share)
    power["errors_needed"] = errors
    power["canary_requests_needed"] = errors / per_canary_request
    return power


def _short_of_budget(canary_requests: int, min_requests: int, power: dict[str, Any],
                     remaining: float | None, rate: float | None, share: float) -> str:
    """Why the step cannot be decided before it ends at the observed traffic, or ''."""
    if remaining is None or rate is None or remaining <= 0:
        return ""
    projected = canary_requests + rate * remaining
    needed = float(max(min_requests, 1))
    detect = power.get("canary_requests_needed")
    if projected >= needed or (detect is not None and projected >= detect):
        return ""  # it can PASS in time, or FAIL if the canary is clearly worse
    per_second = (needed - canary_requests) / remaining
    could_fail = ("" if detect is None else
                  f"; a {POWER_RATIO:g}x 5xx rate would take ~{_count(detect)} canary requests "
                  "to catch")
    return (f"cannot decide in the {remaining:.0f}s left: at {rate:.3g} canary requests/s the "
            f"canary will have served ~{_count(projected)} requests, short of the "
            f"{min_requests:,} needed to judge{could_fail}; it would need >= {per_second:.3g} "
            f"canary requests/s (>= {per_second / share:.3g} requests/s to the service at "
            "this weight)")


def _as_dispersion(name: str, value: Any) -> Dispersion:
    if isinstance(value, Dispersion):
        number = value.value
    else:
        number = value
    if not _is_number(number) or number < 1:
        raise BadInput(name, number, "must be a number >= 1 (1 = independent errors)")
    if isinstance(value, Dispersion):
        return value
    return Dispersion(float(value), "configured", f"dispersion {float(value):g} as given")


def _check_alpha(alpha: Any) -> None:
    if not _is_number(alpha) or not 0 < alpha < 1:
        raise BadInput("alpha", alpha, "must be a number strictly between 0 and 1")


def _check_tolerance(name: str, value: Any, upper: float = math.inf) -> None:
    if not _is_number(value) or not 0 <= value < upper:
        raise BadInput(name, value, "must be a number >= 0" + ("" if math.isinf(upper) else
                                                               f" and < {upper:g}"))


def _check_concentration(value: Any) -> None:
    if not _is_number(value) or value <= 0:
        raise BadInput("concentration", value, "must be a number > 0")


def _check_min(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise BadInput(name, value, "must be a whole number >= 0")


def _error_values(segments: list[Segment]) -> dict[str, Any]:
    canary_req = sum(s.canary_requests for s in segments)
    canary_err = sum(s.canary_errors for s in segments)
    stable_req = sum(s.stable_requests for s in segments)
    stable_err = sum(s.stable_errors for s in segments)
    canary_rate = canary_err / canary_req if canary_req else None
    stable_rate = stable_err / stable_req if stable_req else None
    ratio = (canary_rate / stable_rate if canary_rate is not None and stable_rate else None)
    return {"canary_requests": canary_req, "canary_errors": canary_err,
            "stable_requests": stable_req, "stable_errors": stable_err,
            "canary_error_rate": canary_rate, "stable_error_rate": stable_rate,
            "error_rate_ratio": ratio,
            "canary_share": segments[-1].canary_share if segments else None}


def _rates_text(values: dict[str, Any]) -> str:
    def rate(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2%}"
    text = (f"{rate(values['canary_error_rate'])} of {_count(values['canary_requests'])} "
            f"requests vs stable {rate(values['stable_error_rate'])} of "
            f"{_count(values['stable_requests'])}")
    if values["error_rate_ratio"] is not None:
        text += f" ({values['error_rate_ratio']:.1f}x)"
    return text


def _bf(log_bf: float) -> float | None:
    """The Bayes factor as a number, capped at 1e300 (None below 1e-300 is reported as 0)."""
    if log_bf == -math.inf:
        return 0.0
    return math.exp(min(log_bf, 690.0))


def _p_value(log_bf: float) -> float:
    """Anytime-valid p-value: 1/BF (Ville), capped at 1."""
    return 1.0 if log_bf <= 0 else math.exp(-log_bf)


def _fmt_bf(log_bf: float) -> str:
    if log_bf > math.log(1e6):
        return f"1e{log_bf / math.log(10):.1f}"
    return f"{_bf(log_bf):.3g}"
