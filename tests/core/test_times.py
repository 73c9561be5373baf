"""One moment, written every way canarykit shows it: each form derives from the same UTC time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from canarykit.core import times

MOMENT = datetime(2026, 11, 27, 10, 43, 26, 123456, tzinfo=UTC)


def test_timestamp_is_rfc3339_utc_with_a_z_and_parses_back():
    assert times.timestamp(MOMENT) == "2026-11-27T10:43:26Z"
    assert times.timestamp(MOMENT, timespec="microseconds") == "2026-11-27T10:43:26.123456Z"
    assert times.parse_timestamp(times.timestamp(MOMENT)) == MOMENT.replace(microsecond=0)


def test_every_form_converts_other_zones_and_unix_seconds_to_utc():
    berlin = MOMENT.astimezone(timezone(timedelta(hours=1)))
    for moment in (berlin, MOMENT.timestamp()):
        assert times.timestamp(moment) == "2026-11-27T10:43:26Z"
        assert times.compact(moment) == "20261127T104326Z"
        assert times.display(moment) == "2026-11-27 10:43:26 UTC"
        assert times.plot_time(moment) == "2026-11-27T10:43:26"


def test_a_naive_time_is_taken_as_utc_as_parse_timestamp_does():
    naive = MOMENT.replace(tzinfo=None)
    assert times.compact(naive) == "20261127T104326Z"
    assert times.parse_timestamp("2026-11-27T10:43:26") == MOMENT.replace(microsecond=0)


def test_compact_is_the_timestamp_without_separators_for_names():
    assert times.compact(MOMENT) == times.timestamp(MOMENT).replace("-", "").replace(":", "")
    assert len(times.compact()) == len("20261127T104326Z")


def test_display_forms_for_people():
    assert times.display(MOMENT, time_only=True) == "10:43:26"
    assert times.display_minutes(MOMENT) == "2026-11-27 10:43 UTC"
    assert times.display_minutes().endswith(" UTC")
