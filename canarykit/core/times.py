"""One timestamp format for everything canarykit writes: RFC 3339 in UTC with a Z."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def timestamp(moment: datetime | float | None = None, timespec: str = "seconds") -> str:
    """RFC 3339 UTC ("2026-11-27T09:48:53Z"); a float is Unix seconds; None is now."""
    if moment is None:
        moment = utc_now()
    elif isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """The inverse of `timestamp` (also accepts offsets; no offset is taken as UTC)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
