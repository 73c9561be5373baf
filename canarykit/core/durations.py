"""Durations in the Go `time.ParseDuration` form that Istio's CRDs validate (`duration(self)`)."""

from __future__ import annotations

import math
import re

from canarykit.core.errors import BadInput

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str, field: str = "duration") -> float:
    """Return seconds for a duration such as `1.5s`, `100ms` or `1h30m`.

    Raises BadInput naming `field` when the text is not a Go duration.
    """
    if not isinstance(text, str) or not text:
        raise BadInput(field, text, "must be a duration such as 100ms, 1.5s or 1h30m")
    body = text[1:] if text[0] in "+-" else text
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _PART.match(body, pos)
        if not m:
            raise BadInput(field, text, "must be a duration such as 100ms, 1.5s or 1h30m")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise BadInput(field, text, "must be a duration such as 100ms, 1.5s or 1h30m")
    return -total if text[0] == "-" else total


def format_duration(seconds: float, field: str = "duration") -> str:
    """`600s` or `1500ms`: a form both Go durations (Istio) and PromQL ranges accept.

    Rounded to whole milliseconds, PromQL's finest unit. Raises BadInput naming `field` for
    anything but a positive number of seconds of at least 1ms.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
            or not math.isfinite(seconds) or seconds <= 0:
        raise BadInput(field, seconds, "must be a positive duration")
    ms = round(seconds * 1000)
    if ms <= 0:
        raise BadInput(field, seconds, "must be at least 1ms")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
