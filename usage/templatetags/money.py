from datetime import timedelta
from decimal import Decimal

from django import template

register = template.Library()


@register.filter
def usd(value, places: int = 4) -> str:
    """$0.0123 for small amounts; more places when a cost would otherwise show as $0.0000."""
    if value is None or value == "":
        return "—"
    amount = Decimal(value)
    if amount and abs(amount) < Decimal(10) ** -places:
        places = 6
    return f"${amount:,.{places}f}"


@register.filter
def cycle_range(cycle) -> str:
    """A cycle as the days it covers, end included: "7 Nov – 6 Dec 2026"."""
    first, last = cycle.start_date, cycle.end_date - timedelta(days=1)
    if first.year != last.year:
        return f"{first:%-d %b %Y} – {last:%-d %b %Y}"
    return f"{first:%-d %b} – {last:%-d %b %Y}"
