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
