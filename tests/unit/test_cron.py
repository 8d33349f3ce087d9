"""Cron expressions and time zones of schedules: fields, macros, intervals, DST."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import stemd
from stemd._cron import parse_cron, zone


def _ticks(expression: str, tz: str, start: datetime, n: int) -> list[str]:
    cron, zone_info = parse_cron(expression), zone(tz)
    out, at = [], start
    for _ in range(n):
        nxt = cron.next_after(at, zone_info)
        assert nxt is not None
        out.append(nxt.astimezone(zone_info).isoformat())
        at = nxt
    return out


def test_five_six_fields_macros_and_names() -> None:
    """Five fields, six with seconds first, @daily and named weekdays give the ticks
    crontab would."""
    start = datetime(2026, 12, 4, 0, 0, 30, tzinfo=UTC)  # a Friday
    assert _ticks("*/20 * * * * *", "UTC", start, 3) == [
        "2026-12-04T00:00:40+00:00",
        "2026-12-04T00:01:00+00:00",
        "2026-12-04T00:01:20+00:00",
    ]
    assert _ticks("0 9 * * MON-FRI", "America/New_York", start, 3) == [
        "2026-12-04T09:00:00-05:00",
        "2026-12-07T09:00:00-05:00",
        "2026-12-08T09:00:00-05:00",
    ]
    assert _ticks("@daily", "UTC", start, 1) == ["2026-12-05T00:00:00+00:00"]
    assert _ticks("0 0 1,15 * 0", "UTC", start, 2) == [  # day 1 or 15, or a Sunday
        "2026-12-06T00:00:00+00:00",
        "2026-12-13T00:00:00+00:00",
    ]


def test_an_interval_ticks_on_multiples_since_the_epoch() -> None:
    """'@every 10s' ticks at whole multiples of ten seconds, whatever the zone."""
    start = datetime(2026, 12, 4, 0, 0, 1, tzinfo=UTC)
    assert _ticks("@every 10s", "Asia/Kolkata", start, 2) == [
        "2026-12-04T05:30:10+05:30",
        "2026-12-04T05:30:20+05:30",
    ]


def test_a_wall_time_skipped_by_dst_runs_once_an_hour_later() -> None:
    """Clocks going forward: 02:30 does not exist that day and ticks at 03:30, once."""
    start = datetime(2026, 3, 27, tzinfo=UTC)
    assert _ticks("30 2 * * *", "Europe/Paris", start, 4) == [
        "2026-03-27T02:30:00+01:00",
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:30:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_a_repeated_wall_time_ticks_once_unless_the_hour_is_a_wildcard() -> None:
    """Clocks going back: a daily 02:30 ticks once; an hourly schedule ticks in both
    occurrences of the repeated hour."""
    assert _ticks("30 2 * * *", "Europe/Paris", datetime(2026, 10, 24, 12, tzinfo=UTC), 2) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    start = datetime(2026, 10, 24, 23, 30, tzinfo=UTC)
    assert _ticks("0 * * * *", "Europe/Paris", start, 3) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]


def test_every_minute_through_both_dst_changes_is_every_real_minute() -> None:
    """'* * * * *' in a DST zone ticks every 60 real seconds across both changes."""
    cron, tz = parse_cron("* * * * *"), zone("Europe/Paris")
    for start in (datetime(2026, 3, 29, 0, tzinfo=UTC), datetime(2026, 10, 25, 0, tzinfo=UTC)):
        at = start
        for _ in range(200):
            nxt = cron.next_after(at, tz)
            assert nxt is not None
            assert (nxt - at).total_seconds() == 60
            at = nxt


def test_an_impossible_date_has_no_tick() -> None:
    """February 30 never comes: no next tick (and no endless search)."""
    assert (
        parse_cron("0 0 30 2 *").next_after(datetime(2026, 1, 1, tzinfo=UTC), zone("UTC")) is None
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "* * *"}, "expected 5 fields"),
        ({"cron": "61 * * * *"}, "minute: 61 is out of range 0-59"),
        ({"cron": "5-2 * * * *"}, "runs backwards"),
        ({"cron": "@every 0s"}, "at least 1s"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"name": "has space"}, "letters, digits"),
        ({"overlap": "sometimes"}, "overlap must be"),
        ({"catch_up": "maybe"}, "catch_up must be"),
    ],
)
def test_a_bad_schedule_is_a_clear_error(kwargs: dict[str, str], message: str) -> None:
    """A malformed cron expression, time zone, name or policy raises ScheduleError
    naming what is wrong."""
    args = {"name": "s", "workflow": "w", "cron": "@daily", **kwargs}
    with pytest.raises(stemd.ScheduleError, match=message):
        stemd.Schedule(**args)  # type: ignore[arg-type]
