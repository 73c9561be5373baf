"""Judges: turn measured numbers into PASS / FAIL / INCONCLUSIVE with the reason why.

Judges are pure functions over numbers. Each returns a `Judgement` that carries the reason
(one sentence with the numbers), the measured values, the thresholds and, once `analysis.py`
has filled them in, the resolved PromQL, so a report can show exactly why a step passed.

Two families live here:
- threshold checks with Flagger's semantics (success rate, latency quantile, custom ranges);
- a comparative judge with Kayenta's semantics (Mann-Whitney U per metric, weighted score).

The anytime-valid sequential judges are in `sequential.py`; `decide` combines any of them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from canarykit.core.errors import BadInput


class Verdict(enum.StrEnum):
    """The outcome of a judge or of an analysis step."""

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass
class Judgement:
    """One judge's verdict with everything a report needs to show why."""

    judge: str
    verdict: Verdict
    reason: str
    values: dict[str, Any]
    thresholds: dict[str, Any]
    queries: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    critical: bool = True
    required: bool = True
    dry_run: bool = False  # measured and shown, never deciding (argo-rollouts#1617)

    def to_dict(self) -> dict:
        """A JSON/YAML-safe dict (NaN and infinities become None, numpy scalars plain numbers);
        `dry_run` only when set, so records of deciding judges stay as they were."""
        return {
            "judge": self.judge,
            "verdict": Verdict(self.verdict).value,
            "reason": self.reason,
            "values": json_safe(self.values),
            "thresholds": json_safe(self.thresholds),
            "queries": list(self.queries),
            "evidence": json_safe(self.evidence),
            "critical": bool(self.critical),
            "required": bool(self.required),
            **({"dry_run": True} if self.dry_run else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Judgement:
        """Rebuild a Judgement written by `to_dict`."""
        if not isinstance(data, dict):
            raise BadInput("judgement", data, "must be a mapping")
        for key in ("judge", "verdict", "reason"):
            if key not in data:
                raise BadInput(f"judgement.{key}", None, "is required")
        return cls(
            judge=str(data["judge"]),
            verdict=_verdict(data["verdict"], "judgement.verdict"),
            reason=str(data["reason"]),
            values=dict(data.get("values") or {}),
            thresholds=dict(data.get("thresholds") or {}),
            queries=list(data.get("queries") or []),
            evidence=dict(data.get("evidence") or {}),
            critical=bool(data.get("critical", True)),
            required=bool(data.get("required", True)),
            dry_run=data.get("dry_run") is True,
        )


@dataclass
class Decision:
    """The verdict of one analysis step and the judgements it was made from."""

    verdict: Verdict
    reason: str
    judgements: list[Judgement]

    def to_dict(self) -> dict:
        """A JSON/YAML-safe dict."""
        return {
            "verdict": Verdict(self.verdict).value,
            "reason": self.reason,
            "judgements": [j.to_dict() for j in self.judgements],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Decision:
        """Rebuild a Decision written by `to_dict`."""
        if not isinstance(data, dict):
            raise BadInput("decision", data, "must be a mapping")
        for key in ("verdict", "reason"):
            if key not in data:
                raise BadInput(f"decision.{key}", None, "is required")
        return cls(
            verdict=_verdict(data["verdict"], "decision.verdict"),
            reason=str(data["reason"]),
            judgements=[Judgement.from_dict(j) for j in data.get("judgements") or []],
        )


def decide(judgements: list[Judgement]) -> Decision:
    """Combine the judgements of one analysis step into one verdict.

    Rules, in order:
    1. any FAIL of a critical judge -> FAIL (roll back);
    2. no judgements at all -> INCONCLUSIVE (never promote on missing data);
    3. a FAIL of a non-critical judge -> INCONCLUSIVE: something is wrong (for example the
       traffic split), but not with enough certainty to blame the canary, and never a PASS;
    4. any INCONCLUSIVE of a required judge -> INCONCLUSIVE (missing data, too few requests);
    5. no required judge at all -> INCONCLUSIVE (nothing was required to pass);
    6. otherwise every required judge passed -> PASS.
    A limit on consecutive INCONCLUSIVE steps is the caller's policy, not decided here.
    Dry-run judgements are kept in the decision (and named in its reason) but take no part in
    these rules: whatever they say, the verdict is the one the others give.
    """
    deciding = [j for j in judgements if not j.dry_run]
    dry = [j for j in judgements if j.dry_run]
    decision = _decide(deciding) if deciding or not dry else Decision(
        Verdict.INCONCLUSIVE, "no deciding judgement: only dry-run judges ran", [])
    if dry:
        decision.reason += "; dry-run (does not decide): " + ", ".join(
            f"{j.judge} {Verdict(j.verdict).value}" for j in dry)
    decision.judgements = list(judgements)
    return decision


def _decide(judgements: list[Judgement]) -> Decision:
    critical_fails = [j for j in judgements if j.verdict == Verdict.FAIL and j.critical]
    if critical_fails:
        return Decision(Verdict.FAIL, "failed: " + _join(critical_fails), judgements)
    if not judgements:
        return Decision(Verdict.INCONCLUSIVE, "no judgements: nothing was measured", judgements)
    other_fails = [j for j in judgements if j.verdict == Verdict.FAIL]
    if other_fails:
        return Decision(
            Verdict.INCONCLUSIVE, "non-critical failure, not promoting: " + _join(other_fails),
            judgements,
        )
    required = [j for j in judgements if j.required]
    waiting = [j for j in required if j.verdict == Verdict.INCONCLUSIVE]
    if waiting:
        return Decision(Verdict.INCONCLUSIVE, "inconclusive: " + _join(waiting), judgements)
    if not required:
        return Decision(
            Verdict.INCONCLUSIVE, "no required judge: nothing was required to pass", judgements
        )
    names = ", ".join(j.judge for j in required)
    return Decision(Verdict.PASS, f"all required judges passed ({names})", judgements)


# --- threshold checks (Flagger parity) ---------------------------------------------------


def check_success_rate(
    requests: float | None,
    errors: float | None,
    *,
    min_success_rate: float,
    min_requests: int,
) -> Judgement:
    """Flagger's request-success-rate check: the canary's non-5xx share in percent >= minimum.

    INCONCLUSIVE (never PASS) when a count is missing or there are fewer than `min_requests`,
    because a success rate over a handful of requests says nothing.
    """
    _check_range("min_success_rate", min_success_rate, 0, 100)
    _check_count("min_requests", min_requests)
    thresholds = {"min_success_rate": float(min_success_rate), "min_requests": int(min_requests)}
    requests_v, errors_v = _number_or_none(requests), _number_or_none(errors)
    _check_counts("requests", requests_v, "errors", errors_v)
    values: dict[str, Any] = {"requests": requests_v, "errors": errors_v, "success_rate": None}
    if requests_v is None or errors_v is None:
        return Judgement("success-rate", Verdict.INCONCLUSIVE,
                         "no data: the request or 5xx count is missing", values, thresholds)
    if requests_v <= 0 or requests_v < min_requests:
        return Judgement(
            "success-rate", Verdict.INCONCLUSIVE,
            f"only {_count(requests_v)} canary requests, fewer than the {min_requests:,} "
            "needed to judge the success rate", values, thresholds)
    rate = 100.0 * (requests_v - errors_v) / requests_v
    values["success_rate"] = rate
    if rate < min_success_rate:
        return Judgement(
            "success-rate", Verdict.FAIL,
            f"canary success rate {_pct(rate)} < minimum {_pct(min_success_rate)} over "
            f"{_count(requests_v)} requests", values, thresholds)
    return Judgement(
        "success-rate", Verdict.PASS,
        f"canary success rate {_pct(rate)} >= minimum {_pct(min_success_rate)} over "
        f"{_count(requests_v)} requests", values, thresholds)


def check_latency(
    p99_ms: float | None,
    *,
    max_ms: float,
    requests: float | None,
    min_requests: int,
    quantile: float = 0.99,
) -> Judgement:
    """Flagger's request-duration check: the canary's latency quantile in ms <= maximum.

    `p99_ms` is the measured quantile (named for the default; `quantile` says which one).
    INCONCLUSIVE when the quantile or the request count is missing or too few requests.
    """
    _check_range("quantile", quantile, 0, 1, inclusive=False)
    if not _is_number(max_ms) or max_ms <= 0:
        raise BadInput("max_ms", max_ms, "must be a positive number of milliseconds")
    _check_count("min_requests", min_requests)
    name = f"latency-p{_quantile_label(quantile)}"
    thresholds = {"max_ms": float(max_ms), "quantile": float(quantile),
                  "min_requests": int(min_requests)}
    value, requests_v = _number_or_none(p99_ms), _number_or_none(requests)
    _check_counts("requests", requests_v, None, None)
    values = {"latency_ms": value, "requests": requests_v}
    label = f"p{_quantile_label(quantile)}"
    if value is None or requests_v is None:
        return Judgement(name, Verdict.INCONCLUSIVE,
                         f"no data: the canary {label} latency or request count is missing",
                         values, thresholds)
    if requests_v <= 0 or requests_v < min_requests:
        return Judgement(
            name, Verdict.INCONCLUSIVE,
            f"only {_count(requests_v)} canary requests, fewer than the {min_requests:,} "
            f"needed to judge the {label} latency", values, thresholds)
    if value > max_ms:
        return Judgement(name, Verdict.FAIL,
                         f"canary {label} latency {value:,.1f} ms > maximum {max_ms:,.1f} ms "
                         f"over {_count(requests_v)} requests", values, thresholds)
    return Judgement(name, Verdict.PASS,
                     f"canary {label} latency {value:,.1f} ms <= maximum {max_ms:,.1f} ms "
                     f"over {_count(requests_v)} requests", values, thresholds)


def check_metric_range(
    name: str,
    value: float | None,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
) -> Judgement:
    """A custom metric (Flagger's thresholdRange): FAIL outside [min, max], INCONCLUSIVE
    when the value is missing."""
    if not isinstance(name, str) or not name.strip():
        raise BadInput("name", name, "must be a non-empty metric name")
    if min_value is None and max_value is None:
        raise BadInput("min_value/max_value", None, "give at least one bound")
    for label, bound in (("min_value", min_value), ("max_value", max_value)):
        if bound is not None and not _is_number(bound):
            raise BadInput(label, bound, "must be a number")
    if min_value is not None and max_value is not None and min_value > max_value:
        raise BadInput("min_value", min_value, f"must not exceed max_value {max_value}")
    judge = f"custom:{name}"
    thresholds = {"min_value": _number_or_none(min_value), "max_value": _number_or_none(max_value)}
    measured = _number_or_none(value)
    values = {"value": measured}
    if measured is None:
        return Judgement(judge, Verdict.INCONCLUSIVE, f"no data: metric {name} is missing",
                         values, thresholds)
    if min_value is not None and measured < min_value:
        return Judgement(judge, Verdict.FAIL, f"{name} {measured:g} < minimum {min_value:g}",
                         values, thresholds)
    if max_value is not None and measured > max_value:
        return Judgement(judge, Verdict.FAIL, f"{name} {measured:g} > maximum {max_value:g}",
                         values, thresholds)
    bounds = f"[{_bound(min_value, '-inf')}, {_bound(max_value, 'inf')}]"
    reason = f"{name} {measured:g} within {bounds}"
    return Judgement(judge, Verdict.PASS, reason, values, thresholds)


# --- comparative judge (Kayenta parity) --------------------------------------------------

DIRECTIONS = ("increase", "decrease", "either")
NAN_STRATEGIES = ("none", "remove", "replace")


@dataclass
class CompareMetric:
    """How one metric is compared, canary against stable (Kayenta's metric config).

    direction: which change is bad ("increase", "decrease" or "either").
    allowed_increase_ratio: effect tolerance on the ratio of means, e.g. 0.1 lets the canary's
        mean be up to 10% worse before a significant difference counts (applied to decreases
        for direction "decrease").
    nan_strategy: "none" or "remove" drop missing intervals (NoData if fewer than min_samples
        remain), "replace" counts them as 0.
    """

    name: str
    direction: str = "increase"
    critical: bool = False
    weight: float = 1.0
    allowed_increase_ratio: float = 0.0
    nan_strategy: str = "none"


def compare_samples(
    samples: dict[str, tuple[list[float], list[float]]],
    metrics: list[CompareMetric],
    *,
    confidence: float = 0.95,
    pass_score: float = 95,
    marginal_score: float = 75,
    min_samples: int = 5,
) -> Judgement:
    """Kayenta-style comparison of per-interval samples, `samples[name] = (stable, canary)`.

    Per metric: a two-sided Mann-Whitney U test (normal approximation with tie correction),
    the Hodges-Lehmann shift (canary - stable) with its confidence interval, and the ratio of
    means. A metric is High (Low) when the test is significant at 1 - confidence, the canary
    tends larger (smaller), and the ratio of means exceeds 1 + allowed_increase_ratio (is
    below 1 - allowed_increase_ratio); Pass otherwise; NoData with fewer than `min_samples`.
    A High is bad for direction increase/either, a Low for decrease/either.

    The score is the weighted percentage of metrics with data that are not bad. Verdict:
    FAIL when a critical metric is bad or the score is below `marginal_score`; INCONCLUSIVE
    when any metric has no data (never PASS on missing data) or the score is marginal;
    PASS when the score reaches `pass_score`.
    """
    _check_range("confidence", confidence, 0, 1, inclusive=False)
    _check_range("pass_score", pass_score, 0, 100)
    _check_range("marginal_score", marginal_score, 0, 100)
    if marginal_score > pass_score:
        raise BadInput("marginal_score", marginal_score, f"must not exceed pass_score {pass_score}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise BadInput("min_samples", min_samples, "must be a whole number >= 1")
    if not metrics:
        raise BadInput("metrics", metrics, "list at least one metric to compare")
    seen: set[str] = set()
    for metric in metrics:
        check_compare_metric(metric)
        if metric.name in seen:
            raise BadInput("metrics.name", metric.name, "is listed twice")
        seen.add(metric.name)
    if not isinstance(samples, dict):
        raise BadInput("samples", samples, "must map metric names to (stable, canary) lists")

    rows = [_compare_one(m, samples.get(m.name), confidence, min_samples) for m in metrics]
    with_data = [r for r in rows if r["classification"] != "NoData"]
    total_weight = sum(r["weight"] for r in with_data)
    score = (100.0 * sum(r["weight"] for r in with_data if not r["bad"]) / total_weight
             if total_weight > 0 else None)
    thresholds = {"confidence": confidence, "pass_score": float(pass_score),
                  "marginal_score": float(marginal_score), "min_samples": min_samples}
    values = {"score": score,
              "classifications": {r["metric"]: r["classification"] for r in rows}}
    evidence = {"metrics": rows}
    summary = "; ".join(f"{r['metric']} {r['classification']}" for r in rows)
    critical_bad = [r["metric"] for r in rows if r["bad"] and r["critical"]]
    no_data = [r["metric"] for r in rows if r["classification"] == "NoData"]

    def judgement(verdict: Verdict, reason: str) -> Judgement:
        return Judgement("mann-whitney", verdict, reason, values, thresholds, evidence=evidence)

    if critical_bad:
        return judgement(Verdict.FAIL, f"critical metric {', '.join(critical_bad)} is worse on "
                         f"the canary ({summary})")
    if score is None:
        return judgement(Verdict.INCONCLUSIVE, f"no data for any metric ({summary})")
    if score < marginal_score:
        return judgement(Verdict.FAIL, f"score {score:.1f} < marginal {marginal_score:g} "
                         f"({summary})")
    if no_data:
        return judgement(Verdict.INCONCLUSIVE, f"no data for {', '.join(no_data)} "
                         f"(score {score:.1f} over the rest; {summary})")
    if score < pass_score:
        return judgement(Verdict.INCONCLUSIVE, f"marginal score {score:.1f}: >= "
                         f"{marginal_score:g} but < pass {pass_score:g} ({summary})")
    return judgement(Verdict.PASS, f"score {score:.1f} >= pass {pass_score:g} ({summary})")


def mann_whitney_p_value(stable: np.ndarray, canary: np.ndarray) -> tuple[float, float]:
    """Two-sided Mann-Whitney U p-value (normal approximation, tie and continuity corrected)
    and the canary's U statistic; p is 1 when every value is the same."""
    if np.all(np.concatenate([stable, canary]) == stable[0]):
        return 1.0, len(stable) * len(canary) / 2.0
    from scipy import stats  # here: scipy.stats takes ~1.5 s to import, most runs never need it

    result = stats.mannwhitneyu(canary, stable, alternative="two-sided", method="asymptotic")
    p_value = float(result.pvalue)
    return (1.0 if math.isnan(p_value) else p_value), float(result.statistic)


def hodges_lehmann(stable: np.ndarray, canary: np.ndarray, confidence: float
                   ) -> tuple[float, float, float]:
    """Hodges-Lehmann shift (median of canary - stable differences) and its confidence
    interval from the order statistics of the pairwise differences (Mann-Whitney inversion)."""
    diffs = np.sort(np.subtract.outer(canary, stable).ravel())
    n1, n2 = len(canary), len(stable)
    from scipy import stats

    z = stats.norm.ppf(0.5 + confidence / 2.0)
    k = int(math.floor(n1 * n2 / 2.0 - z * math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)))
    k = min(max(k, 0), len(diffs) - 1)
    return float(np.median(diffs)), float(diffs[k]), float(diffs[len(diffs) - 1 - k])


def _compare_one(metric: CompareMetric, pair: Any, confidence: float, min_samples: int) -> dict:
    row: dict[str, Any] = {
        "metric": metric.name, "direction": metric.direction, "critical": metric.critical,
        "weight": float(metric.weight), "classification": "NoData", "bad": False,
        "n_stable": 0, "n_canary": 0, "stable_mean": None, "canary_mean": None,
        "mean_ratio": None, "p_value": None, "u_statistic": None, "hl_shift": None,
        "hl_ci_low": None, "hl_ci_high": None,
    }
    if pair is None:
        return row
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise BadInput(f"samples.{metric.name}", pair, "must be a (stable, canary) pair of lists")
    stable = _clean_samples(pair[0], metric, "stable")
    canary = _clean_samples(pair[1], metric, "canary")
    row["n_stable"], row["n_canary"] = len(stable), len(canary)
    if len(stable) < min_samples or len(canary) < min_samples:
        return row
    stable_mean, canary_mean = float(np.mean(stable)), float(np.mean(canary))
    ratio = mean_ratio(stable_mean, canary_mean)
    p_value, u_canary = mann_whitney_p_value(stable, canary)
    shift, low, high = hodges_lehmann(stable, canary, confidence)
    significant = p_value < 1.0 - confidence
    half = len(stable) * len(canary) / 2.0
    tolerance = metric.allowed_increase_ratio
    if significant and u_canary > half and ratio > 1.0 + tolerance:
        classification = "High"
    elif significant and u_canary < half and ratio < 1.0 - tolerance:
        classification = "Low"
    else:
        classification = "Pass"
    bad = (classification == "High" and metric.direction in ("increase", "either")) or (
        classification == "Low" and metric.direction in ("decrease", "either"))
    row.update(classification=classification, bad=bad, stable_mean=stable_mean,
               canary_mean=canary_mean, mean_ratio=ratio, p_value=p_value,
               u_statistic=u_canary, hl_shift=shift, hl_ci_low=low, hl_ci_high=high)
    return row


def mean_ratio(stable_mean: float, canary_mean: float) -> float:
    """canary / stable means; a zero stable mean gives 1 for a zero canary mean, else inf."""
    if stable_mean == 0:
        return 1.0 if canary_mean == 0 else math.copysign(math.inf, canary_mean)
    return canary_mean / stable_mean


def _clean_samples(values: Any, metric: CompareMetric, arm: str) -> np.ndarray:
    try:
        array = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError):
        raise BadInput(f"samples.{metric.name}.{arm}", values,
                       "must be a list of numbers") from None
    if np.isinf(array).any():
        raise BadInput(f"samples.{metric.name}.{arm}", values, "must not contain infinities")
    if metric.nan_strategy == "replace":
        return np.nan_to_num(array, nan=0.0)
    return array[~np.isnan(array)]


def check_compare_metric(metric: CompareMetric, where: str = "metrics") -> None:
    """Refuse a comparison that cannot be scored, naming `where`.NAME.FIELD."""
    if not isinstance(metric, CompareMetric):
        raise BadInput(where, metric, "must be CompareMetric entries")
    if not isinstance(metric.name, str) or not metric.name:
        raise BadInput(f"{where}.name", metric.name, "must be a non-empty name")
    if metric.direction not in DIRECTIONS:
        raise BadInput(f"{where}.{metric.name}.direction", metric.direction,
                       f"must be one of {', '.join(DIRECTIONS)}")
    if metric.nan_strategy not in NAN_STRATEGIES:
        raise BadInput(f"{where}.{metric.name}.nan_strategy", metric.nan_strategy,
                       f"must be one of {', '.join(NAN_STRATEGIES)}")
    if not isinstance(metric.critical, bool):
        raise BadInput(f"{where}.{metric.name}.critical", metric.critical,
                       "must be true or false")
    if not _is_number(metric.weight) or metric.weight <= 0:
        raise BadInput(f"{where}.{metric.name}.weight", metric.weight, "must be > 0")
    if not _is_number(metric.allowed_increase_ratio) or metric.allowed_increase_ratio < 0:
        raise BadInput(f"{where}.{metric.name}.allowed_increase_ratio",
                       metric.allowed_increase_ratio, "must be a number >= 0")


# --- helpers -----------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def _verdict(value: Any, field_name: str) -> Verdict:
    try:
        return Verdict(value)
    except ValueError:
        raise BadInput(field_name, value, "must be PASS, FAIL or INCONCLUSIVE") from None


def _join(judgements: list[Judgement]) -> str:
    return "; ".join(f"{j.judge}: {j.reason}" for j in judgements)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool) and math.isfinite(float(value)))


def _number_or_none(value: Any) -> float | None:
    """None for missing data (None or NaN); a float otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise BadInput("value", value, "must be a number or None")
    number = float(value)
    return None if math.isnan(number) else number


def _check_range(name: str, value: Any, low: float, high: float, *, inclusive: bool = True) -> None:
    ok = _is_number(value) and (low <= value <= high if inclusive else low < value < high)
    if not ok:
        brackets = ("[", "]") if inclusive else ("(", ")")
        raise BadInput(name, value, f"must be a number in {brackets[0]}{low:g}, {high:g}"
                                    f"{brackets[1]}")


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise BadInput(name, value, "must be a whole number >= 0")


def _check_counts(name: str, count: float | None, part_name: str | None,
                  part: float | None) -> None:
    if count is not None and (count < 0 or math.isinf(count)):
        raise BadInput(name, count, "must be a finite count >= 0")
    if part_name is not None and part is not None:
        if part < 0 or math.isinf(part):
            raise BadInput(part_name, part, "must be a finite count >= 0")
        if count is not None and part > count * (1 + 1e-9) + 1e-9:
            raise BadInput(part_name, part, f"must not exceed {name} ({count:g})")


def _quantile_label(quantile: float) -> str:
    text = f"{quantile * 100:.3f}".rstrip("0").rstrip(".")
    return text.replace(".", "")


def _pct(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") + "%"


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _bound(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else f"{value:g}"
