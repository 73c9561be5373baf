"""The analysis settings, declared once: each field's default, help text and check.

The plan's `analysis` sections, `canarykit analyze` (its flags and its `--config FILE`) and the
analysis parameters of the analyze and shadow runbooks are all this one dataclass, so a
default or a limit cannot differ between them. Each field says where it applies
(`metadata["where"]`): the one-shot CLI has no use for re-checking until a verdict, and a plan
step sets the canary weight itself.

Flagger's analysis options are here too: `iterations` checks per step of which `threshold`
failed ones fail it, custom PromQL `metrics` (templates with `{{ selector }}`, see
`analysis.templates`) and `dry_run_judges`, measured and shown but never deciding. A runbook
takes `metrics` as JSON text and the judge lists as comma-separated text.

Defaults are chosen for a real mesh (Prometheus scraping every 15-30 s): a 10 minute window of
1 minute intervals, at least 100 canary requests, and the three judges that decide from counts
and histograms (Mann-Whitney needs many intervals, so it is opt-in).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from canarykit.analysis import judges as j
from canarykit.analysis import metrics as m
from canarykit.analysis import templates as t
from canarykit.core import yamlsafe
from canarykit.core.durations import parse_duration
from canarykit.core.errors import BadInput
from canarykit.mesh import versions

JUDGE_NAMES = ("success-rate", "latency", "mann-whitney", "sequential")
CLI, PLAN, RUNBOOK = "cli", "plan", "runbook"  # the CLI means its flags and its --config file
EVERYWHERE = (CLI, PLAN, RUNBOOK)
REPEAT = (PLAN, RUNBOOK)  # re-checking until a verdict: the analyze runbook only

Check = Callable[[str, Any], None]
# Go's longest duration (what Istio's CRDs and the runbooks' timers can hold), and the largest
# whole number a setting takes: values beyond are refused, not overflowed somewhere later.
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
MAX_WHOLE = 2**31 - 1
MAX_CONFIG_CHARACTERS = 1_000_000  # a settings file is short: a larger one is refused unread


def _setting(default: Any, help: str, check: Check, where: tuple[str, ...] = EVERYWHERE) -> Any:
    metadata = {"help": help, "check": check, "where": where}
    if isinstance(default, list):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------- checks of one value


def _duration(name: str, value: Any) -> None:
    if not isinstance(value, str) or parse_duration(value, name) <= 0:
        raise BadInput(name, value, "must be a positive duration such as 30s, 1m or 10m")
    if parse_duration(value, name) > MAX_DURATION_SECONDS:
        raise BadInput(name, value, "must be at most 2562047h (the longest Go duration)")


def _number(low: float, high: float | None = None, *, open_low: bool = False,
            open_high: bool = False) -> Check:
    def check(name: str, value: Any) -> None:
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and (isinstance(value, int) or math.isfinite(value))
              and (value > low if open_low else value >= low)
              and (high is None or (value < high if open_high else value <= high)))
        if not ok:
            lo, hi = "(" if open_low else "[", ")" if open_high else "]"
            span = f"{lo}{low:g}, {'inf' if high is None else format(high, 'g')}{hi}"
            raise BadInput(name, value, f"must be a number in {span}")
    return check


def _whole(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WHOLE:
        raise BadInput(name, value, f"must be a whole number from 1 to {MAX_WHOLE}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise BadInput(name, value, "must be true or false")


def _judges(name: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise BadInput(name, value, "must list at least one of " + ", ".join(JUDGE_NAMES))
    for judge in value:
        if judge not in JUDGE_NAMES:
            raise BadInput(name, judge, "must be one of " + ", ".join(JUDGE_NAMES))
        if value.count(judge) > 1:
            raise BadInput(name, judge, "is listed twice")


def _dispersion(name: str, value: Any) -> None:
    dispersion_value(name, value)


def dispersion_value(name: str, value: Any) -> float | None:
    """A dispersion setting as a number, None for "auto" (measured on stable's history)."""
    if value == "auto":
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = value
    ok = (isinstance(number, int | float) and not isinstance(number, bool)
          and (isinstance(number, int) or math.isfinite(number)) and 1 <= number <= 1e9)
    if not ok:
        raise BadInput(name, value, "must be auto or a number from 1 (independent events) to "
                       "1e9")
    return float(number)


def _canary_weight(name: str, value: Any) -> None:
    if value is not None:
        _number(0, 100, open_low=True, open_high=True)(name, value)


def _compare_metrics(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise BadInput(name, value, "must be a list")
    for metric in value:
        j.check_compare_metric(metric, name)


def _custom_metrics(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise BadInput(name, value, "must be a list")
    names: set[str] = set()
    for metric in value:
        if not isinstance(metric, m.CustomMetric):
            raise BadInput(name, metric, "each entry must be a mapping")
        metric.validate()
        if metric.name in names:
            raise BadInput(f"{name}.name", metric.name, "is used twice")
        names.add(metric.name)


def _metric_templates(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise BadInput(name, value, "must be a list of metrics")
    names: set[str] = set()
    for index, metric in enumerate(value):
        path = f"{name}[{index}]"
        if not isinstance(metric, t.MetricTemplate):
            raise BadInput(path, metric, "must be a mapping with name, query and max and/or min")
        metric.validate(path)
        if metric.name in names:
            raise BadInput(f"{path}.name", metric.name, "is the name of an earlier metric")
        names.add(metric.name)


def _dry_run_judges(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise BadInput(name, value, "must list judges: " + ", ".join(JUDGE_NAMES))
    for judge in value:
        if judge not in JUDGE_NAMES:
            raise BadInput(name, judge, "must be one of " + ", ".join(JUDGE_NAMES))
        if value.count(judge) > 1:
            raise BadInput(name, judge, "is listed twice")


def _label_key(name: str, value: Any) -> None:
    versions.check_label_key(name, value)


def _default_compare() -> list[j.CompareMetric]:
    return [
        j.CompareMetric("success-rate", direction="decrease"),
        j.CompareMetric("latency-p99", direction="increase", allowed_increase_ratio=0.1),
    ]


# ---------------------------------------------------------------- the settings


@dataclass
class AnalysisSettings:
    """How a canary is judged; `from_dict` / `to_dict` round-trip through YAML."""

    window: str = _setting("10m", "analysis window, a duration such as 30s, 1m or 10m",
                           _duration)
    interval: str = _setting("1m", "per-interval sample length and metrics resolution",
                             _duration)
    judges: list[str] = _setting(["success-rate", "latency", "sequential"],
                                 "judges to run; mann-whitney is the fourth",
                                 _judges)
    min_success_rate: float = _setting(99.0, "minimum canary success rate in percent (non-5xx)",
                                       _number(0, 100))
    max_p99_ms: float = _setting(500.0, "maximum canary p99 latency in milliseconds",
                                 _number(0, open_low=True))
    min_requests: int = _setting(100, "fewer canary requests is INCONCLUSIVE, never PASS",
                                 _whole)
    alpha: float = _setting(0.05, "false-rollback probability of the sequential judges",
                            _number(0, 1, open_low=True, open_high=True))
    error_tolerance: float = _setting(0.0, "sequential: tolerated rise of the canary 5xx rate",
                                      _number(0))
    latency_tolerance: float = _setting(0.05, "sequential: tolerated latency CDF shift (0-1)",
                                        _number(0, 1))
    error_dispersion: str = _setting(
        "auto", "sequential: 5xx clustering (auto: from stable's history)", _dispersion)
    latency_dispersion: str = _setting(
        "auto", "sequential: slow-request clustering (auto: from history)", _dispersion)
    dispersion_history: str = _setting(
        "1h", "sequential: stable's history measuring the clustering", _duration)
    confidence: float = _setting(0.95, "Mann-Whitney: confidence of the comparison",
                                 _number(0, 1, open_low=True, open_high=True))
    pass_score: float = _setting(95.0, "Mann-Whitney: lowest score (0-100) that passes",
                                 _number(0, 100))
    marginal_score: float = _setting(75.0, "Mann-Whitney: below this score fails",
                                     _number(0, 100))
    min_samples: int = _setting(5, "Mann-Whitney: fewest intervals per version", _whole)
    canary_weight: float | None = _setting(
        None, "configured canary weight in percent (empty: the observed share stands in)",
        _canary_weight, (CLI,))
    compare_metrics: list[j.CompareMetric] = field(
        default_factory=_default_compare,
        metadata={"help": "Mann-Whitney: metrics compared interval by interval",
                  "check": _compare_metrics, "where": (CLI,)})
    custom_metrics: list[m.CustomMetric] = _setting(
        [], "business metrics from PromQL templates, each with its limits", _custom_metrics,
        (CLI,))
    version_label_key: str = _setting(
        "", "subset label giving the metrics' version (empty: Istio's precedence)",
        _label_key)
    metrics: list[t.MetricTemplate] = _setting(
        [], "custom PromQL checks, as JSON: [{name, query, max, min, dry_run}]",
        _metric_templates)
    dry_run_judges: list[str] = _setting(
        [], "judges measured and shown, never deciding, e.g. latency,sequential",
        _dry_run_judges)
    until_verdict: bool = _setting(False, "re-check until PASS or FAIL (or max_duration)",
                                   _flag, REPEAT)
    check_every: str = _setting("30s", "time between checks with until_verdict", _duration,
                                REPEAT)
    max_duration: str = _setting("20m", "with until_verdict: longest wait for a verdict",
                                 _duration, REPEAT)
    iterations: int = _setting(1, "checks per step, one window each (Flagger's iterations)",
                               _whole, REPEAT)
    threshold: int = _setting(1, "failed checks that fail the step (Flagger's threshold)",
                              _whole, REPEAT)

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window, "window")

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval, "interval")

    @property
    def dispersion_history_seconds(self) -> float:
        return parse_duration(self.dispersion_history, "dispersion_history")

    def validate(self) -> AnalysisSettings:
        """Refuse settings that cannot be judged, naming the field and the value."""
        for item in fields(self):
            item.metadata["check"](item.name, getattr(self, item.name))
        if self.interval_seconds > self.window_seconds:
            raise BadInput("interval", self.interval,
                           f"must not be longer than the window {self.window}")
        if self.marginal_score > self.pass_score:
            raise BadInput("marginal_score", self.marginal_score,
                           f"must not be above pass_score {self.pass_score:g}")
        if self.until_verdict and parse_duration(self.max_duration) < self.window_seconds:
            raise BadInput("max_duration", self.max_duration,
                           f"must be at least the window {self.window}")
        if self.threshold > self.iterations:
            raise BadInput("threshold", self.threshold,
                           f"must not exceed iterations {self.iterations}: the step could "
                           "never fail by count")
        for judge in self.dry_run_judges:
            if judge not in self.judges:
                raise BadInput("dry_run_judges", judge,
                               "is not among the judges run (" + ", ".join(self.judges) + ")")
        if not self.deciding():
            raise BadInput("dry_run_judges", self.dry_run_judges,
                           "marks every judge dry-run and no metric decides: nothing would "
                           "decide the step")
        known = set(m.STANDARD_METRICS) | {metric.name for metric in self.custom_metrics}
        for metric in self.compare_metrics:
            if metric.name not in known:
                raise BadInput("compare_metrics.name", metric.name,
                               "must be a standard metric (" + ", ".join(m.STANDARD_METRICS)
                               + ") or the name of a custom metric")
        return self

    def deciding(self) -> list[str]:
        """The judges and metrics whose verdict counts (those not dry-run)."""
        return ([name for name in self.judges if name not in self.dry_run_judges]
                + [metric.judge for metric in self.metrics if not metric.dry_run]
                + [f"custom:{metric.name}" for metric in self.custom_metrics])

    def to_dict(self, where: str | None = None) -> dict[str, Any]:
        """Plain YAML/JSON values; with `where`, only the settings that apply there."""
        out = {}
        for name in setting_names(where):
            value = getattr(self, name)
            if name in ("compare_metrics", "custom_metrics"):
                value = [asdict(metric) for metric in value]
            elif name == "metrics":
                value = [metric.to_dict() for metric in value]
            out[name] = copy.deepcopy(value)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, base: AnalysisSettings | None = None,
                  where: str | None = None, path: str = "") -> AnalysisSettings:
        """`base` (default: the defaults) with `data` applied, checked. Errors name the field,
        prefixed with `path` (e.g. "steps[2].analysis.window")."""
        if not isinstance(data, dict):
            raise BadInput(path or "analysis", data, "must be a mapping of analysis settings")
        try:
            return cls._from_dict(data, base or cls(), where)
        except BadInput as exc:
            if not path:
                raise
            raise BadInput(f"{path}.{exc.field}", exc.value, exc.problem) from None

    @classmethod
    def _from_dict(cls, data: dict, base: AnalysisSettings, where: str | None) -> AnalysisSettings:
        known = setting_names(where)
        for key, value in data.items():
            if key not in known:
                raise BadInput(str(key), value, "is not an analysis setting"
                               + (f" of the {where}" if where else "")
                               + f" (known: {', '.join(known)})")
        values = {**base.to_dict(), **copy.deepcopy(data)}
        for name in ("judges", "dry_run_judges"):  # "success-rate,latency": flag or parameter
            if isinstance(values[name], str):
                values[name] = [part.strip() for part in values[name].split(",") if part.strip()]
        values["metrics"] = [t.MetricTemplate.from_dict(item, f"metrics[{index}]")
                             for index, item in enumerate(_metric_list(values["metrics"]))]
        values["compare_metrics"] = [
            _compare_metric(item) for item in _list("compare_metrics", values["compare_metrics"])]
        values["custom_metrics"] = [
            m.CustomMetric.from_dict(_mapping("custom_metrics", item))
            for item in _list("custom_metrics", values["custom_metrics"])]
        for item in fields(cls):
            value = values[item.name]
            if item.type in ("float", "float | None") and type(value) is int:
                try:
                    values[item.name] = float(value)
                except OverflowError:
                    raise BadInput(item.name, value, "is too large a number") from None
        return cls(**values).validate()


def setting_names(where: str | None = None) -> tuple[str, ...]:
    """The settings, in declaration order; with `where`, those that apply there."""
    return tuple(item.name for item in fields(AnalysisSettings)
                 if where is None or where in item.metadata["where"])


def setting_help(name: str) -> str:
    return AnalysisSettings.__dataclass_fields__[name].metadata["help"]


def _list(name: str, value: Any) -> list:
    if not isinstance(value, list):
        raise BadInput(name, value, "must be a list")
    return value


def _metric_list(value: Any) -> list:
    """The metrics as given: a list, or its JSON text (how a runbook parameter holds it)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text else []
        except (ValueError, RecursionError):
            raise BadInput("metrics", _cut_text(value), 'must be a JSON list such as [{"name": '
                           '"errors", "query": "...", "max": 0.01}]') from None
    return _list("metrics", value)


def _mapping(name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise BadInput(name, value, "each entry must be a mapping")
    return value


def _compare_metric(item: Any) -> j.CompareMetric:
    if isinstance(item, j.CompareMetric):
        return item
    known = set(j.CompareMetric.__dataclass_fields__)
    unknown = sorted(set(_mapping("compare_metrics", item)) - known)
    if unknown:
        raise BadInput(f"compare_metrics.{unknown[0]}", item[unknown[0]], "is not a known field")
    m.check_required(j.CompareMetric, item, "compare_metrics.")
    return j.CompareMetric(**item)


# ---------------------------------------------------------------- config files


def read_config_file(path: str) -> dict[str, Any]:
    """The mapping of analysis settings in a YAML file, read by the one bounded loader
    (duplicate keys, alias bombs, deep nesting refused) for `analyze` and `replay`."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise BadInput("--config", _cut_text(path), f"cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise BadInput("--config", _cut_text(path), "is not UTF-8 text") from None
    if len(text) > MAX_CONFIG_CHARACTERS:
        raise BadInput("--config", f"{len(text):,} characters",
                       f"is too large for analysis settings (at most {MAX_CONFIG_CHARACTERS:,})")
    data = yamlsafe.load(text, "--config") or {}
    if not isinstance(data, dict):
        raise BadInput("--config", _cut_text(path), "must hold a mapping of analysis settings")
    return data


def settings_from(data: dict[str, Any], **options: Any) -> AnalysisSettings:
    """AnalysisSettings from a config mapping; a refusal shows its field and value cut."""
    try:
        return AnalysisSettings.from_dict(data, **options)
    except BadInput as exc:
        shown = exc.value if len(repr(exc.value)) <= 80 else repr(exc.value)[:80] + "..."
        raise BadInput(_cut_text(exc.field), shown, _cut_text(exc.problem, 400)) from None


def _cut_text(text: Any, limit: int = 80) -> Any:
    """Text as an error shows it: on one line (escapes visible), cut."""
    if not isinstance(text, str):
        return text
    text = text[:limit + 1]
    if not text.isprintable():
        text = json.dumps(text)[1:-1]
    return text[:limit] + "..." if len(text) > limit else text
