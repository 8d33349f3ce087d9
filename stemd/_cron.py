"""Cron expressions: parsing, and the instants they name in a time zone.

An expression is one of:

- five fields, ``minute hour day-of-month month day-of-week`` (as crontab(5));
- six fields, ``second minute hour day-of-month month day-of-week`` (a seconds field first);
- a macro: ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily``
  (``@midnight``), ``@hourly``;
- an interval, ``@every 30s`` (units ``s``, ``m``, ``h``, ``d``, combinable: ``1h30m``):
  the instants that are whole multiples of it since the Unix epoch, whatever the zone.

A field is ``*``, a value, a range ``a-b``, any of these with a step ``/n``, or a
comma-separated list of them; months and weekdays may be named (``JAN``, ``MON``);
weekday 0 and 7 are Sunday; ``?`` is ``*``. When both the day of month and the day of
week are restricted, a day matching either matches (as crontab).

Times are wall-clock times of the zone. Across a daylight-saving change:

- a wall time that does not exist (skipped when clocks go forward) is taken as the same
  time at the offset before the change, that is, as long after the change as the
  time was into the gap (``02:30`` becomes ``03:30`` the day clocks go from 02:00 to
  03:00); an instant named twice counts once;
- a wall time that exists twice (clocks go back) is taken once, at its first occurrence,
  unless the hour field is ``*``: then both occurrences are ticks (``*/10 * * * *``
  ticks every ten real minutes through the repeated hour).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stemd._errors import StemError

__all__ = ["CronError", "CronSchedule", "ScheduleError", "parse_cron", "zone"]


class ScheduleError(StemError, ValueError):
    """A schedule, cron expression or time zone that stemd cannot use."""


CronError = ScheduleError


_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTHS = {m: i + 1 for i, m in enumerate(_MONTH_NAMES)}
_DAYS = {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"(?:(\d+)([smhd]))+")
_PART = re.compile(r"(\d+)([smhd])")
# (name, low, high, names) of the six fields, seconds first.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
# How far from a daylight-saving change wall times and instants may disagree in order.
_MARGIN = timedelta(hours=3)
# A search that finds nothing this many years ahead finds nothing (``0 0 30 2 *``).
_YEARS = 8
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def zone(name: str) -> tzinfo:
    """The IANA time zone ``name``.

    Raises:
        CronError: there is no such zone.
    """
    if not isinstance(name, str) or not name:
        raise CronError(f"not a time zone: {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if name in ("UTC", "Etc/UTC"):
            return UTC  # no time zone database here (pip install tzdata): UTC needs none
        raise CronError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Paris')"
        ) from None


def _value(text: str, low: int, high: int, names: dict[str, int], what: str) -> int:
    upper = text.upper()
    if upper in names:
        return names[upper]
    if not text.isdigit():
        raise CronError(f"{what}: {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{what}: {value} is out of range {low}-{high}")
    return value


def _field(text: str, index: int) -> frozenset[int]:
    what, low, high, names = _FIELDS[index]
    out: set[int] = set()
    for part in text.split(","):
        body, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"{what}: bad step {step_text!r}")
            step = int(step_text)
        if body in ("*", "?"):
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first = _value(a, low, high, names, what)
            last = _value(b, low, high, names, what)
            if first > last:
                raise CronError(f"{what}: range {body!r} runs backwards")
        else:
            first = _value(body, low, high, names, what)
            last = high if slash else first
        out.update(range(first, last + 1, step))
    if index == 5 and 7 in out:
        out = (out - {7}) | {0}
    return frozenset(out)


def parse_cron(expression: str) -> CronSchedule:
    """The schedule an expression names.

    Raises:
        CronError: the expression is malformed, naming the field at fault.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise CronError(f"not a cron expression: {expression!r}")
    text = " ".join(expression.split())
    if text.startswith("@every"):
        return CronSchedule(text, every=_interval(text[len("@every") :].strip()))
    fields = _MACROS.get(text.lower(), text).split(" ")
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise CronError(
            f"cron expression {expression!r}: expected 5 fields (minute hour day month "
            "weekday), 6 (with seconds first), a macro such as @daily, or '@every 30s'"
        )
    try:
        sets = [_field(f, i) for i, f in enumerate(fields)]
    except CronError as exc:
        raise CronError(f"cron expression {expression!r}: {exc}") from None
    return CronSchedule(
        text,
        sets=sets,
        any_dom=fields[3] in ("*", "?"),
        any_dow=fields[5] in ("*", "?"),
        any_hour=fields[2] in ("*", "?"),
    )


def _interval(text: str) -> int:
    if not _INTERVAL.fullmatch(text):
        raise CronError(f"'@every {text}': expected an interval such as 30s, 5m or 1h30m")
    total = sum(int(n) * _UNITS[u] for n, u in _PART.findall(text))
    if total < 1:
        raise CronError(f"'@every {text}': the interval must be at least 1s")
    return total


class CronSchedule:
    """The ticks of a cron expression: :meth:`next_after` gives the next one."""

    def __init__(
        self,
        expression: str,
        *,
        sets: list[frozenset[int]] | None = None,
        every: int | None = None,
        any_dom: bool = True,
        any_dow: bool = True,
        any_hour: bool = True,
    ) -> None:
        self.expression = expression
        self.every = every
        lists = [sorted(s) for s in sets or [frozenset({0})] * 6]
        self._seconds, self._minutes, self._hours, self._doms, self._months, self._dows = lists
        self._any_dom = any_dom
        self._any_dow = any_dow
        self._any_hour = any_hour

    def next_after(self, after: datetime, tz: tzinfo) -> datetime | None:
        """The first tick strictly after ``after`` (aware), in UTC; ``None`` if there is
        none within years (an impossible date such as February 30)."""
        after = after.astimezone(UTC)
        if self.every is not None:
            elapsed = int((after - _EPOCH).total_seconds() // self.every) + 1
            return _EPOCH + timedelta(seconds=elapsed * self.every)
        # A wall time w is the instant w - offset: a tick after ``after`` is a wall time
        # after ``after`` + the smallest offset around, and one before ``best`` is a wall
        # time before ``best`` + the largest (the two differ only near a change).
        offsets = _offsets(after, tz)
        start = (after + min(offsets)).replace(tzinfo=None, microsecond=0)
        best: datetime | None = None
        stop: datetime | None = None
        for wall in self._walls_from(start):
            if stop is not None and wall > stop:
                break
            for instant in self._instants(wall, tz):
                if instant > after and (best is None or instant < best):
                    best = instant
            if best is not None and stop is None:
                stop = (best + max(offsets | _offsets(best, tz))).replace(tzinfo=None)
        return best

    def _instants(self, wall: datetime, tz: tzinfo) -> list[datetime]:
        first = wall.replace(tzinfo=tz, fold=0)
        second = wall.replace(tzinfo=tz, fold=1)
        if first.utcoffset() == second.utcoffset():
            return [first.astimezone(UTC)]
        exists = first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall
        if exists and self._any_hour:
            return [first.astimezone(UTC), second.astimezone(UTC)]  # repeated: both
        # Repeated: its first occurrence; skipped: at the offset before the change.
        return [first.astimezone(UTC)]

    def _day_matches(self, day: date) -> bool:
        dom = day.day in self._doms
        dow = (day.isoweekday() % 7) in self._dows
        if self._any_dom or self._any_dow:
            return dom and dow
        return dom or dow

    def _walls_from(self, t: datetime) -> _Walls:
        return _Walls(self, t)


class _Walls:
    """The wall-clock times matching a schedule, from ``t`` on, in order."""

    def __init__(self, cron: CronSchedule, t: datetime) -> None:
        self.cron = cron
        self.t = t
        self.limit = t.year + _YEARS

    def __iter__(self) -> _Walls:
        return self

    def __next__(self) -> datetime:
        c = self.cron
        t = self.t
        while t.year <= self.limit:
            if t.month not in c._months:
                m = _first_at_least(c._months, t.month)
                t = datetime(t.year + (m is None), m or c._months[0], 1)
                continue
            if not c._day_matches(t.date()):
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                continue
            h = _first_at_least(c._hours, t.hour)
            if h is None:
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                continue
            if h != t.hour:
                t = t.replace(hour=h, minute=0, second=0)
            m = _first_at_least(c._minutes, t.minute)
            if m is None:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if m != t.minute:
                t = t.replace(minute=m, second=0)
            s = _first_at_least(c._seconds, t.second)
            if s is None:
                t = t.replace(second=0) + timedelta(minutes=1)
                continue
            t = t.replace(second=s)
            self.t = t + timedelta(seconds=1)
            return t
        raise StopIteration


def _first_at_least(values: list[int], v: int) -> int | None:
    i = bisect_left(values, v)
    return values[i] if i < len(values) else None


def _offsets(instant: datetime, tz: tzinfo) -> set[timedelta]:
    """The zone's UTC offsets within :data:`_MARGIN` of ``instant`` (one, unless it changes)."""
    found = set()
    for at in (instant - _MARGIN, instant, instant + _MARGIN):
        offset = at.astimezone(tz).utcoffset()
        assert offset is not None
        found.add(offset)
    return found
