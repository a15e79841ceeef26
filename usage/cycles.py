"""Monthly billing cycles anchored per user, in USAGE_TIME_ZONE, half-open [start, end).

A cycle starts at 00:00 on the anchor's day of month; a month without that day
(the 29th-31st) starts it on its last day instead. Boundaries are computed as
local dates first and only then turned into aware datetimes, so DST changes
move the UTC instant of midnight but never the day a cycle starts on.
"""

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone


@dataclass(frozen=True)
class Cycle:
    start_date: date  # first local day in the cycle
    end_date: date  # first local day after it
    tz: ZoneInfo

    @property
    def start(self) -> datetime:
        return _midnight(self.start_date, self.tz)

    @property
    def end(self) -> datetime:
        return _midnight(self.end_date, self.tz)

    @property
    def days(self) -> list[date]:
        return [
            self.start_date + timedelta(days=n)
            for n in range((self.end_date - self.start_date).days)
        ]

    def previous(self, anchor_day: int) -> "Cycle":
        return cycle_containing(anchor_day, self.start_date - timedelta(days=1), self.tz)


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    # In UTC: Python subtracts two datetimes sharing one tzinfo by wall clock, not elapsed time.
    return datetime.combine(day, time.min, tzinfo=tz).astimezone(UTC)


def _start_in_month(anchor_day: int, year: int, month: int) -> date:
    return date(year, month, min(anchor_day, calendar.monthrange(year, month)[1]))


def _shift_month(year: int, month: int, by: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + by
    return index // 12, index % 12 + 1


def cycle_containing(anchor_day: int, day: date, tz: ZoneInfo | None = None) -> Cycle:
    """The cycle that the local calendar day `day` belongs to."""
    tz = tz or settings.USAGE_TIME_ZONE
    year, month = day.year, day.month
    start = _start_in_month(anchor_day, year, month)
    if day < start:
        year, month = _shift_month(year, month, -1)
        start = _start_in_month(anchor_day, year, month)
    end = _start_in_month(anchor_day, *_shift_month(year, month, 1))
    return Cycle(start, end, tz)


def local_day(moment: datetime, tz: ZoneInfo | None = None) -> date:
    return moment.astimezone(tz or settings.USAGE_TIME_ZONE).date()


def cycle_for(account, at: datetime | None = None) -> Cycle:
    """The cycle of a UsageAccount that contains the instant `at` (default: now)."""
    tz = settings.USAGE_TIME_ZONE
    return cycle_containing(account.billing_anchor.day, local_day(at or timezone.now(), tz), tz)


def _anchors(account) -> list[tuple[date, date | None]]:
    """The account's anchors, oldest first: (first day, the next anchor's first day or None
    for the current one). A staff restart (UsageAccount.restart_cycle) adds one."""
    from usage.models import PastAnchor

    user_id = getattr(account, "user_id", None)
    past = PastAnchor.objects.filter(user_id=user_id).values_list("anchor", "ended_on")
    return [*(past if user_id else []), (account.billing_anchor, None)]


def _cycle_under(anchor: date, ends: date | None, day: date, tz: ZoneInfo) -> Cycle:
    """The cycle containing `day` under one anchor; the last one before a restart ends on
    the restart's day."""
    cycle = cycle_containing(anchor.day, day, tz)
    if ends is not None and cycle.end_date > ends:
        cycle = Cycle(cycle.start_date, ends, tz)
    return cycle


def _containing(anchors, day: date, tz: ZoneInfo) -> Cycle:
    """The cycle containing `day` (on or after the first anchor) among `anchors`."""
    anchor, ends = [(a, e) for a, e in anchors if a <= day][-1]
    return _cycle_under(anchor, ends, day, tz)


class NoSuchCycle(ValueError):
    """A day outside the cycles the account has had (before its first, after its current)."""


def account_cycle(account, day: date, at: datetime | None = None) -> Cycle:
    """The account's cycle containing local `day`: the one definition of a valid cycle."""
    current = cycle_for(account, at)
    if day >= current.end_date:
        raise NoSuchCycle("That cycle has not started yet.")
    anchors = _anchors(account)
    if day < anchors[0][0]:
        first = _containing(anchors, anchors[0][0], current.tz)
        raise NoSuchCycle(
            f"Usage starts with the cycle of {first.start_date:%-d %b %Y}; there is none before."
        )
    return _containing(anchors, day, current.tz)


def earlier_cycles(account, count: int, at: datetime | None = None) -> list[Cycle]:
    """The current cycle and up to `count - 1` before it, newest first, none before the first."""
    anchors = _anchors(account)
    cycle = cycle_for(account, at)
    first_day = anchors[0][0]
    cycles = [cycle]
    while len(cycles) < count and cycle.start_date > first_day:
        cycle = _containing(anchors, cycle.start_date - timedelta(days=1), cycle.tz)
        cycles.append(cycle)
    return cycles


def cycles_ended_by(account, last_day: date) -> list[Cycle]:
    """The account's cycles that ended on or before local day `last_day`, oldest first (one
    that a staff restart ended early among them)."""
    anchors = _anchors(account)
    tz = settings.USAGE_TIME_ZONE
    cycles, cycle = [], _containing(anchors, anchors[0][0], tz)
    while cycle.end_date <= last_day:
        cycles.append(cycle)
        cycle = _containing(anchors, cycle.end_date, tz)
    return cycles


def current_cycle_bounds_by_anchor_day(at: datetime | None = None) -> dict[int, Cycle]:
    """For each possible anchor day (1-31), the cycle containing `at`.

    Lets SQL pick every user's current cycle with one CASE over the anchor's day
    (the admin's user list) instead of one query per user.
    """
    tz = settings.USAGE_TIME_ZONE
    today = local_day(at or timezone.now(), tz)
    return {day: cycle_containing(day, today, tz) for day in range(1, 32)}
