from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from usage.cycles import cycle_containing, cycle_for, earlier_cycles

UTCZ = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("anchor_day", "day", "start", "end"),
    [
        (15, date(2026, 3, 20), date(2026, 3, 15), date(2026, 4, 15)),
        (15, date(2026, 3, 14), date(2026, 2, 15), date(2026, 3, 15)),
        (15, date(2026, 3, 15), date(2026, 3, 15), date(2026, 4, 15)),  # half-open: start in
        (1, date(2026, 12, 31), date(2026, 12, 1), date(2027, 1, 1)),  # year end
        (31, date(2026, 2, 28), date(2026, 2, 28), date(2026, 3, 31)),  # clamps to Feb's last
        (31, date(2026, 2, 27), date(2026, 1, 31), date(2026, 2, 28)),
        (31, date(2026, 4, 30), date(2026, 4, 30), date(2026, 5, 31)),
        (30, date(2028, 2, 29), date(2028, 2, 29), date(2028, 3, 30)),  # leap year
        (29, date(2027, 2, 28), date(2027, 2, 28), date(2027, 3, 29)),  # not a leap year
        (29, date(2028, 2, 28), date(2028, 1, 29), date(2028, 2, 29)),
        (31, date(2027, 1, 15), date(2026, 12, 31), date(2027, 1, 31)),
    ],
)
def test_cycle_math_across_month_ends_and_leap_years(anchor_day, day, start, end):
    cycle = cycle_containing(anchor_day, day, UTCZ)
    assert (cycle.start_date, cycle.end_date) == (start, end)


def test_consecutive_cycles_tile_the_calendar_without_gaps_for_every_anchor_day():
    for anchor_day in range(1, 32):
        cycle = cycle_containing(anchor_day, date(2027, 1, 1), UTCZ)
        for _ in range(30):
            following = cycle_containing(anchor_day, cycle.end_date, UTCZ)
            assert following.start_date == cycle.end_date
            assert following.previous(anchor_day) == cycle
            assert 28 <= len(cycle.days) <= 31
            cycle = following


def test_cycles_start_at_local_midnight_across_dst():
    # Berlin switches to summer time on 29 March 2026: that cycle is 23 hours short.
    cycle = cycle_containing(15, date(2026, 3, 20), BERLIN)
    assert cycle.start == datetime(2026, 3, 14, 23, 0, tzinfo=UTC)
    assert cycle.end == datetime(2026, 4, 14, 22, 0, tzinfo=UTC)
    assert cycle.end - cycle.start == timedelta(days=31, hours=-1)
    assert len(cycle.days) == 31
    # New York's autumn change (1 Nov 2026) makes this cycle an hour longer.
    cycle = cycle_containing(20, date(2026, 11, 1), NEW_YORK)
    assert cycle.end - cycle.start == timedelta(days=31, hours=1)


def test_the_instant_decides_the_local_day(settings):
    settings.USAGE_TIME_ZONE = NEW_YORK
    account = SimpleNamespace(billing_anchor=date(2026, 1, 1))
    # 03:00 UTC on 1 March is still 28 February in New York.
    cycle = cycle_for(account, datetime(2026, 3, 1, 3, 0, tzinfo=UTC))
    assert cycle.start_date == date(2026, 2, 1)
    assert cycle.start <= datetime(2026, 3, 1, 3, 0, tzinfo=UTC) < cycle.end
    assert datetime(2026, 3, 1, 5, 0, tzinfo=UTC) >= cycle.end  # local midnight passed


def test_earlier_cycles_go_back_no_further_than_the_anchor(settings):
    settings.USAGE_TIME_ZONE = UTCZ
    account = SimpleNamespace(billing_anchor=date(2026, 9, 10))
    cycles = earlier_cycles(account, 12, at=datetime(2026, 11, 26, tzinfo=UTC))
    assert [c.start_date for c in cycles] == [
        date(2026, 11, 10),
        date(2026, 10, 10),
        date(2026, 9, 10),
    ]
