"""Custom PromQL metrics of the plan's `analysis.metrics` (Flagger's MetricTemplate).

A template names its series with placeholders instead of repeating the service's labels:
`{{ selector }}` is the canary's label matchers (those the built-in queries use, plus its
version), `{{ stable_selector }}` the stable's and `{{ range }}` the analysis window as a PromQL
duration. Label values come from the validated selector and are escaped as PromQL string
literals, so no value can end its matcher. A template is checked when the plan is loaded: an
unknown placeholder, a selector outside a series' braces, a range outside brackets or
unbalanced brackets are refused there, naming `metrics[N].query`, never found mid-rollout.

The query is evaluated for the canary at each check and must give one number; no number is
INCONCLUSIVE (never PASS). A `dry_run` metric is measured and shown but never decides.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

from canarykit.analysis import judges
from canarykit.analysis import metrics as m
from canarykit.core.durations import format_duration
from canarykit.core.errors import BadInput
from canarykit.core.names import is_dns1123_label

PLACEHOLDERS = ("selector", "stable_selector", "range")
# Inside each placeholder only a name: `{{{ selector }}}` is a brace around `{{ selector }}`.
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_SENTINEL = "\0"  # stands in for a placeholder while the brackets are checked
_CLOSING = {")": "(", "]": "[", "}": "{"}
# Where each placeholder may stand: inside a series' {...} or a range's [...].
_INSIDE = {"selector": "{", "stable_selector": "{", "range": "["}
MAX_QUERY = 10_000  # characters: a template is a query, not a document


@dataclass
class MetricTemplate:
    """One custom metric: its PromQL template and the canary's limits (`min` and/or `max`)."""

    name: str
    query: str
    min: float | None = None
    max: float | None = None
    dry_run: bool = False

    @property
    def judge(self) -> str:
        return f"metric:{self.name}"

    def validate(self, path: str = "metrics") -> MetricTemplate:
        """Refuse what cannot be measured, naming `path.FIELD` (e.g. metrics[0].query)."""
        if not is_dns1123_label(self.name):
            raise BadInput(f"{path}.name", self.name,
                           "must be lower-case letters, digits and '-', at most 63 characters, "
                           "starting and ending with a letter or digit")
        check_query(f"{path}.query", self.query)
        for bound in ("min", "max"):
            value = getattr(self, bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                raise BadInput(f"{path}.{bound}", value, "must be a number")
        if self.min is None and self.max is None:
            raise BadInput(f"{path}.max", None, "give max, min or both: the canary's limits")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise BadInput(f"{path}.min", self.min, f"must not be above max {self.max:g}")
        if not isinstance(self.dry_run, bool):
            raise BadInput(f"{path}.dry_run", self.dry_run, "must be true or false")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_dict(cls, data: Any, path: str = "metrics") -> MetricTemplate:
        if isinstance(data, MetricTemplate):
            return data.validate(path)
        if not isinstance(data, dict):
            raise BadInput(path, data, "must be a mapping with name, query and max and/or min")
        known = [item.name for item in fields(cls)]
        for key, value in data.items():
            if key not in known:
                raise BadInput(f"{path}.{key}", value,
                               "is not a metric field (known: " + ", ".join(known) + ")")
        for key in ("name", "query"):
            if key not in data:
                raise BadInput(f"{path}.{key}", None, "is required")
        values = dict(data)
        for bound in ("min", "max"):  # YAML's 1 is the number 1.0
            if type(values.get(bound)) is int:
                try:
                    values[bound] = float(values[bound])
                except OverflowError:
                    raise BadInput(f"{path}.{bound}", values[bound], "is too large") from None
        return cls(**values).validate(path)

    def render(self, selector: m.MetricsSelector, *, range_seconds: float) -> str:
        """The PromQL for this canary: placeholders filled, label values escaped."""
        values = {"selector": version_matchers(selector, selector.canary),
                  "stable_selector": version_matchers(selector, selector.stable),
                  "range": format_duration(range_seconds, "range")}
        return _PLACEHOLDER.sub(lambda found: values[found.group(1)], self.query)


def version_matchers(selector: m.MetricsSelector, version: str) -> str:
    """The label matchers (inside `{}`) of one version's series of the selected service."""
    label, value = selector.version_label, m.escape_label_value(version)
    return f'{selector.matchers()},{label}="{value}"'


def check_query(field: str, query: Any) -> str:
    """A template whose placeholders are known and stand where they can, its brackets
    balanced (string literals and comments aside); refused naming `field`."""
    if not isinstance(query, str) or not query.strip():
        raise BadInput(field, query, "must be a PromQL template")
    if len(query) > MAX_QUERY:
        raise BadInput(field, f"{len(query):,} characters", f"is longer than {MAX_QUERY:,}")
    if _SENTINEL in query:
        raise BadInput(field, query.replace(_SENTINEL, "\\0"), "must not hold a NUL character")
    found = [match.group(1) for match in _PLACEHOLDER.finditer(query)]
    for name in found:
        if name not in PLACEHOLDERS:
            raise BadInput(field, "{{ " + name + " }}", "is not a placeholder (known: "
                           + ", ".join("{{ " + known + " }}" for known in PLACEHOLDERS) + ")")
    _check_brackets(field, _PLACEHOLDER.sub(_SENTINEL, query), found)
    return query


def _check_brackets(field: str, text: str, names: list[str]) -> None:
    """Walk the query once: brackets must pair up outside strings and comments, no `{{` or
    `}}` may be left, and each placeholder stands inside the bracket it belongs in."""
    stack: list[str] = []
    names = list(names)
    quote, index = "", 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == _SENTINEL:
                raise BadInput(field, "{{ " + names[0] + " }}",
                               "must not stand inside a string literal")
            if char == "\\" and quote != "`":
                index += 1  # the escaped character is part of the string
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char == "#":  # a comment runs to the end of the line
            end = text.find("\n", index)
            index = len(text) if end < 0 else end
            continue
        elif char == _SENTINEL:
            name = names.pop(0)
            if not stack or stack[-1] != _INSIDE[name]:
                where = "a series' braces, e.g. metric{ {{ selector }} }" if name != "range" \
                    else "a range's brackets, e.g. [{{ range }}]"
                raise BadInput(field, "{{ " + name + " }}", f"must stand inside {where}")
        elif text.startswith(("{{", "}}"), index):
            raise BadInput(field, text[index:index + 2],
                           "is a malformed placeholder: write {{ selector }}, "
                           "{{ stable_selector }} or {{ range }}")
        elif char in "([{":
            stack.append(char)
        elif char in _CLOSING:
            if not stack or stack[-1] != _CLOSING[char]:
                raise BadInput(field, char, f"is unbalanced: a closing bracket at character "
                               f"{index + 1} without its opening one")
            stack.pop()
        index += 1
    if quote:
        raise BadInput(field, quote, "is unbalanced: a string is never closed")
    if stack:
        raise BadInput(field, stack[-1], "is unbalanced: a bracket is never closed")


# ---------------------------------------------------------------- measuring


def measure(client: m.Client, metric: MetricTemplate, selector: m.MetricsSelector, *,
            window_seconds: float, at: float) -> judges.Judgement:
    """The canary's value over the window ending at `at`, judged against its limits: FAIL
    outside them, INCONCLUSIVE without one number."""
    outcome = m.query_at(client, metric.render(selector, range_seconds=window_seconds), at)
    value, problem = m.single_number(outcome)
    judgement = judges.check_metric_range(metric.name, value, min_value=metric.min,
                                          max_value=metric.max)
    judgement.judge = metric.judge
    judgement.dry_run = metric.dry_run
    judgement.queries = [outcome.query]
    if value is None:
        judgement.reason = f"no data: metric {metric.name}: {problem}"
    return judgement


def samples(client: m.Client, metric: MetricTemplate, selector: m.MetricsSelector, *,
            start: float, end: float, step_seconds: float) -> list[tuple[float, float]]:
    """(time, value) of the canary per step over [start, end] ({{ range }} is one step), for
    the charts; [] when the query does not give one series."""
    query = metric.render(selector, range_seconds=step_seconds)
    outcome = m.query_range(client, query, start, end, step_seconds)
    if not outcome.ok or len(outcome.result) != 1:
        return []
    points = [(float(stamp), float(value)) for stamp, value in outcome.result[0]["values"]]
    return [(stamp, value) for stamp, value in points if math.isfinite(value)]
