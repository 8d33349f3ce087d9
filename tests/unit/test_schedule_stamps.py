"""The times a server-side schedule is published with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from stemd._broker.jetstream_schedules import _due, _due_of, _stamp

times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(times)
def test_the_schedule_header_is_never_before_the_due_time(at: datetime) -> None:
    """The header has milliseconds: it rounds up, so the server never fires early by it."""
    stamp = datetime.fromisoformat(_stamp(at))
    assert at <= stamp < at + timedelta(milliseconds=1)


@given(times)
def test_the_message_carries_its_due_time_to_the_microsecond(at: datetime) -> None:
    """The body of the schedule, which the fired message keeps, reads back as ``at``."""
    assert _due_of(_due(at)) == at


def test_a_due_time_in_another_zone_is_the_same_instant() -> None:
    """A due time of another zone is stamped in UTC, rounded up to the millisecond."""
    at = datetime(2026, 12, 4, 5, 6, 7, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert _stamp(at) == "2026-12-04T03:06:07.124Z"
    assert _due_of(_due(at)) == at


def test_a_message_without_a_readable_due_time_is_fired_as_it_comes() -> None:
    """Schedules published before due times were carried, or garbled ones, have none."""
    assert _due_of(b"") is None
    assert _due_of(b"not a time") is None
    assert _due_of(b"\xff\xfe") is None
    # A time without a zone cannot be compared with the clock's: none either.
    assert _due_of(b"2026-12-04T03:06:07.123456") is None
