"""One timestamp format for everything canarykit writes: RFC 3339 in UTC with a Z.

The other forms derive from it, so a name, a report and a record never disagree on a moment:
`compact` for names (release folders), `display`/`display_minutes` for people, `plot_time`
for plotly.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime | float | None) -> datetime:
    """`moment` in UTC: a float is Unix seconds; None is now; a naive datetime is taken as UTC."""
    if moment is None:
        return utc_now()
    if isinstance(moment, int | float):
        return datetime.fromtimestamp(moment, UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def timestamp(moment: datetime | float | None = None, timespec: str = "seconds") -> str:
    """RFC 3339 UTC ("2026-11-27T09:48:53Z"); a float is Unix seconds; None is now."""
    return _utc(moment).isoformat(timespec=timespec).replace("+00:00", "Z")


def compact(moment: datetime | float | None = None) -> str:
    """The timestamp without separators ("20261127T094853Z"): safe in names and paths."""
    return _utc(moment).strftime("%Y%m%dT%H%M%SZ")


def display(moment: datetime | float, *, time_only: bool = False) -> str:
    """For people: "2026-11-27 09:48:53 UTC", or "09:48:53" when the day is clear already."""
    return _utc(moment).strftime("%H:%M:%S" if time_only else "%Y-%m-%d %H:%M:%S UTC")


def display_minutes(moment: datetime | float | None = None) -> str:
    """For people, to the minute: "2026-11-27 09:48 UTC" (None is now)."""
    return _utc(moment).strftime("%Y-%m-%d %H:%M UTC")


def plot_time(moment: datetime | float) -> str:
    """As plotly.js reads a time: UTC without a zone ("2026-11-27T09:48:53"); it ignores zones."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%S")


def parse_timestamp(text: str) -> datetime:
    """The inverse of `timestamp` (also accepts offsets; no offset is taken as UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
