"""Durations: Go's form (Istio) read, and one written form Istio and PromQL both accept."""

from __future__ import annotations

import math

import pytest

from canarykit.core.durations import format_duration, parse_duration
from canarykit.core.errors import BadInput


@pytest.mark.parametrize(("seconds", "text"), [
    (600, "600s"), (1.5, "1500ms"), (0.001, "1ms"), (90.0, "90s"), (0.0996, "100ms"),
])
def test_durations_are_written_in_whole_seconds_or_milliseconds(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(round(seconds, 3))


@pytest.mark.parametrize("seconds", [0, -1, 0.0004, math.nan, math.inf, True, "10s"])
def test_only_a_positive_duration_of_at_least_1ms_is_written(seconds):
    with pytest.raises(BadInput) as refused:
        format_duration(seconds, "window")
    assert refused.value.field == "window"


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h30m", 5400), ("100ms", 0.1), ("1.5s", 1.5), ("0", 0), ("-2s", -2)])
def test_go_durations_are_read_in_seconds(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "1d", "s", "1.5.s"])
def test_anything_else_is_refused_naming_the_field(text):
    with pytest.raises(BadInput) as refused:
        parse_duration(text, "timeout")
    assert refused.value.field == "timeout"
