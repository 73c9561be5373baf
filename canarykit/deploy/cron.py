"""Cron schedules as the Kubernetes CronJob controller reads them: the five standard fields.

The manifests need the shortest time between two runs of a schedule: a job must end (its
`activeDeadlineSeconds`) before the next one is due, or `concurrencyPolicy: Forbid` skips
runs and the rollout stalls.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from canarykit.core.errors import BadInput

# (name, lowest, highest) of each field, in order.
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
          ("day of week", 0, 7))  # 0 and 7 are both Sunday
MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *",
          "@annually": "0 0 1 1 *"}


def _field(schedule: str, text: str, name: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                start, end = low, high
            elif "-" in span:
                first, last = span.split("-", 1)
                start, end = int(first), int(last)
            else:
                start = end = int(span)
                if step_text:
                    end = high
        except ValueError:
            raise BadInput("--schedule", schedule, f"has a bad {name} field {text!r}") from None
        if step < 1 or not low <= start <= end <= high:
            raise BadInput("--schedule", schedule,
                           f"has a {name} field {text!r} outside {low}-{high}")
        values.update(range(start, end + 1, step))
    if name == "day of week" and 7 in values:
        values = (values - {7}) | {0}
    return values


def parse(schedule: str) -> list[set[int]]:
    """The allowed values of each field; BadInput naming the schedule when it is not cron."""
    text = MACROS.get(schedule.strip(), schedule.strip())
    parts = text.split()
    if len(parts) != 5:
        raise BadInput("--schedule", schedule,
                       "must have five fields (minute hour day-of-month month day-of-week), "
                       "e.g. */5 * * * *")
    return [_field(schedule, part, *spec) for part, spec in zip(parts, FIELDS, strict=True)]


def shortest_interval(schedule: str) -> timedelta:
    """The least time between two consecutive runs, over a leap year's worth of minutes at
    most (a schedule that fires at least once a year)."""
    minutes, hours, days, months, weekdays = parse(schedule)
    day_restricted = len(days) < 31
    weekday_restricted = len(weekdays) < 7
    previous: datetime | None = None
    shortest: timedelta | None = None
    moment = datetime(2025, 1, 1, tzinfo=UTC)  # a common year: February has 28 days
    end = moment + timedelta(days=366 + 7)
    while moment < end:
        day_ok = moment.day in days
        weekday_ok = (moment.weekday() + 1) % 7 in weekdays
        # cron's rule: with both day fields restricted, either one may match
        matches_day = ((day_ok or weekday_ok) if day_restricted and weekday_restricted
                       else day_ok and weekday_ok)
        if moment.month not in months or not matches_day:
            moment = (moment + timedelta(days=1)).replace(hour=0, minute=0)
            continue
        if moment.hour not in hours:
            moment = (moment + timedelta(hours=1)).replace(minute=0)
            continue
        if moment.minute in minutes:
            if previous is not None:
                gap = moment - previous
                shortest = gap if shortest is None else min(shortest, gap)
                if shortest == timedelta(minutes=1):
                    break
            previous = moment
        moment += timedelta(minutes=1)
    if shortest is None:
        raise BadInput("--schedule", schedule, "never runs twice within a year")
    return shortest
