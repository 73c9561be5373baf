"""Cron schedules: the shortest interval between runs, which bounds a job's deadline."""

from __future__ import annotations

from datetime import timedelta

import pytest

from canarykit.core.errors import BadInput
from canarykit.deploy import cron


@pytest.mark.parametrize(("schedule", "minutes"), [
    ("*/5 * * * *", 5),
    ("0 * * * *", 60),
    ("15,45 * * * *", 30),
    ("*/2 9-17 * * 1-5", 2),
    ("0 9 * * 1-5", 24 * 60),  # weekdays at 9: Monday to Tuesday is the shortest gap
    ("@daily", 24 * 60),
    ("0 0 1 * *", 28 * 24 * 60),  # monthly: February is the shortest month
    ("0 12 * * 0,7", 7 * 24 * 60),  # 7 is Sunday too
])
def test_the_shortest_interval_between_two_runs(schedule, minutes):
    assert cron.shortest_interval(schedule) == timedelta(minutes=minutes)


@pytest.mark.parametrize("schedule", [
    "* * * *", "*/0 * * * *", "61 * * * *", "a * * * *", "* * 0 * *", "0 0 31 2 *",
])
def test_a_schedule_that_is_not_cron_or_never_repeats_is_refused_naming_the_flag(schedule):
    with pytest.raises(BadInput) as caught:
        cron.shortest_interval(schedule)
    assert (caught.value.field, caught.value.value) == ("--schedule", schedule)
