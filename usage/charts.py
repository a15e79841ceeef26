"""Server-side SVG charts of a cycle: no JavaScript, work offline and in print.

Each chart is drawn twice, wide and narrow; CSS shows the one that fits, so its labels
render at a readable size on a desktop and on a phone alike.
"""

import math
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import NamedTuple

HEIGHT = 220
PAD_LEFT = 72  # room for "$0.00006" at the axis
PAD_RIGHT = 8
PAD_BOTTOM = 24
PAD_TOP = 12
SIZES = {"wide": 720, "narrow": 360}  # viewBox widths; the narrow one is for phones


def nice_step(peak: Decimal, ticks: int = 3) -> Decimal:
    """A round step (1, 2 or 5 × 10^n) that covers `peak` in about `ticks` gridlines."""
    if peak <= 0:
        return Decimal("0.01")
    raw = float(peak) / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return Decimal(str(factor * power))
    raise AssertionError("unreachable")


def money_label(amount: Decimal) -> str:
    if amount == 0:
        return "$0"
    places = max(2, -Decimal(amount).normalize().as_tuple().exponent)
    return f"${amount:,.{min(places, 6)}f}"


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


PALETTE = ["#0172ad", "#b26a00", "#2e7d32", "#8e24aa", "#c62828", "#00838f"]


@dataclass(frozen=True)
class Segment:
    y: float
    height: float
    colour: str


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    segments: list[Segment]  # one a model, stacked, in the legend's colours
    label: str  # the day, under the axis
    tip: str  # shown on hover and keyboard focus
    show_label: bool
    future: bool
    today: bool
    tab_stop: bool = False  # the chart's one tab stop (the latest day); arrows move from it


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    ticks: list[Tick]
    baseline: float
    plot_left: int
    today_x: float | None
    legend: list[tuple[str, str]]  # (model, colour), the most expensive first


class _Frame(NamedTuple):
    """What both charts share: a round top value and its step, the plot's size, the
    width of one day, and how many days apart labels stand."""

    top: Decimal
    step: Decimal
    plot_h: float
    slot: float
    every: int


def _frame(peak: Decimal, width: int, days: int) -> _Frame:
    step = nice_step(peak)
    top = step * max(1, math.ceil(peak / step)) if peak else step * 3
    slot = (width - PAD_LEFT - PAD_RIGHT) / max(days, 1)
    # Labels ("30 Nov" is about 40 units wide) at least 56 units apart, so they never touch:
    # every other day or so wide, every fourth or fifth on a phone.
    every = max(1, math.ceil(56 / slot))
    return _Frame(top, step, HEIGHT - PAD_BOTTOM - PAD_TOP, slot, every)


def _ticks(top: Decimal, step: Decimal, plot_h: float) -> list[Tick]:
    count = int(top / step)
    return [
        Tick(round(PAD_TOP + plot_h - float(step * n / top) * plot_h, 2), money_label(step * n))
        for n in range(count + 1)
    ]


def daily_cost_chart(daily, today: date | None, width: int, by_model=None, models=()) -> Chart:
    """`daily` is the report's [(day, Totals)], one per day of the cycle; days after
    `today` are drawn as empty slots. With `by_model` (day -> {model: cost}) each bar is
    stacked by model, coloured in the order of `models` (the report's, costliest first)."""
    by_model = by_model or {}
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    peak = max((t.cost for _, t in daily), default=Decimal(0))
    top, step, plot_h, slot, every = _frame(peak, width, len(daily))
    bars, today_x = [], None
    for i, (day, totals) in enumerate(daily):
        h = float(totals.cost / top) * plot_h if totals.cost else 0.0
        x = PAD_LEFT + i * slot
        if day == today:
            today_x = round(x + slot / 2, 2)
        segments, base = [], PAD_TOP + plot_h
        for model in models:
            cost = by_model.get(day, {}).get(model)
            if cost:
                part = float(cost / top) * plot_h
                base -= part
                segments.append(Segment(round(base, 2), round(part, 2), colours[model]))
        bars.append(
            Bar(
                x=round(x + slot * 0.12, 2),
                y=round(PAD_TOP + plot_h - h, 2),
                width=round(slot * 0.76, 2),
                height=round(h, 2),
                segments=segments,
                label=f"{day:%-d %b}",
                tip=f"{day:%a %-d %b}: {money_label(totals.cost)}, {totals.messages} messages",
                show_label=i % every == 0,
                future=today is not None and day > today,
                today=day == today,
            )
        )
    drawn = [i for i, bar in enumerate(bars) if not bar.future]
    if drawn:
        bars[drawn[-1]] = replace(bars[drawn[-1]], tab_stop=True)
    return Chart(
        width,
        HEIGHT,
        bars,
        _ticks(top, step, plot_h),
        HEIGHT - PAD_BOTTOM,
        PAD_LEFT,
        today_x,
        [(m, colours[m]) for m in models],
    )


@dataclass(frozen=True)
class Pace:
    """Spend so far against the budget, and where the cycle is heading at this pace."""

    width: int
    height: int
    points: str  # the cumulative line, "x,y x,y …"
    forecast: str  # dashed, from today to the cycle's last day
    budget_y: float | None
    ticks: list[Tick]
    baseline: float
    plot_left: int
    projected: Decimal  # at the average daily spend so far, by the cycle's end
    last_day: date
    labels: list[tuple[float, str]] = field(default_factory=list)
    # The day the running total reaches the budget at this pace (None: it does not, or it
    # has already); and whether the budget is drawn (it is left out, and said, when it is
    # so far above what was spent that the line would lie flat along the axis).
    reaches_budget: date | None = None
    budget_shown: bool = True


def pace_chart(daily, today: date | None, budget: Decimal, width: int) -> Pace:
    """The running total by day, the budget as a line, and a forecast: the average daily
    spend of the days so far (today included), carried on to the cycle's last day."""
    days = [d for d, _ in daily]
    elapsed = len([d for d in days if today is None or d <= today]) or 1
    running, total = [], Decimal(0)
    for _day, totals in daily[:elapsed]:
        total += totals.cost
        running.append(total)
    projected = (total / elapsed * len(days)).quantize(Decimal("0.000001"))
    # Scaled to what is drawn: the budget joins the scale only when the spend comes within
    # a third of it, so a light user's line is not a flat line along a $5 axis.
    spent_top = max(projected, total)
    budget_shown = bool(budget) and budget <= spent_top * 3
    top_value = max(spent_top, budget if budget_shown else Decimal(0))
    top, step, plot_h, slot, every = _frame(top_value, width, len(days))
    reaches = None
    if budget and total < budget < projected:
        average = total / elapsed
        reaches = days[min(len(days) - 1, math.ceil(budget / average) - 1)]

    def xy(i, value):
        return round(PAD_LEFT + (i + 0.5) * slot, 2), round(
            PAD_TOP + plot_h - float(value / top) * plot_h, 2
        )

    points = " ".join(f"{x},{y}" for x, y in (xy(i, v) for i, v in enumerate(running)))
    fx, fy = xy(elapsed - 1, total)
    ex, ey = xy(len(days) - 1, projected)
    labels = [(xy(i, 0)[0], f"{d:%-d %b}") for i, d in enumerate(days) if i % every == 0]
    return Pace(
        width=width,
        height=HEIGHT,
        points=points,
        forecast=f"{fx},{fy} {ex},{ey}",
        budget_y=xy(0, budget)[1] if budget_shown else None,
        ticks=_ticks(top, step, plot_h),
        baseline=HEIGHT - PAD_BOTTOM,
        plot_left=PAD_LEFT,
        projected=projected,
        last_day=days[-1],
        labels=labels,
        reaches_budget=reaches,
        budget_shown=budget_shown,
    )
