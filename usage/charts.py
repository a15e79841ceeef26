"""A server-side SVG bar chart of daily cost: no JavaScript, works offline and in print."""

from dataclasses import dataclass
from decimal import Decimal

WIDTH = 720
HEIGHT = 200
PAD_LEFT = 48
PAD_BOTTOM = 22
PAD_TOP = 8


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    title: str
    show_label: bool


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    max_label: str
    baseline: float
    plot_left: int


def daily_cost_chart(daily) -> Chart:
    """`daily` is the report's [(day, Totals)], one per day of the cycle."""
    peak = max((t.cost for _, t in daily), default=Decimal(0)) or Decimal(1)
    plot_w = WIDTH - PAD_LEFT
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = plot_w / max(len(daily), 1)
    step = max(1, len(daily) // 10)
    bars = []
    for i, (day, totals) in enumerate(daily):
        h = float(totals.cost / peak) * plot_h if totals.cost else 0.0
        bars.append(
            Bar(
                x=round(PAD_LEFT + i * slot + slot * 0.15, 2),
                y=round(PAD_TOP + plot_h - h, 2),
                width=round(slot * 0.7, 2),
                height=round(h, 2),
                label=day.strftime("%d %b"),
                title=(
                    f"{day:%a %d %b}: {totals.messages} messages, "
                    f"{totals.total_tokens:,} tokens, ${totals.cost:.4f}"
                ),
                show_label=i % step == 0,
            )
        )
    max_label = f"${peak:.4f}" if any(t.cost for _, t in daily) else "$0"
    return Chart(WIDTH, HEIGHT, bars, max_label, HEIGHT - PAD_BOTTOM, PAD_LEFT)
