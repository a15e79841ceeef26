"""Strict parsers for values staff and operators type, shared by settings (which must not
import the product apps) and the apps' own validators: one definition each."""

from decimal import Decimal, InvalidOperation


def percentages(raw: str) -> list[Decimal]:
    """Parse "50, 80.5" into [50, 80.5], sorted and without repeats. Raises ValueError, with
    a message fit for whoever typed it, for anything but positive numbers and commas."""
    parts = [part.strip() for part in raw.split(",")]
    if not any(parts):
        return []
    try:
        values = sorted({Decimal(part) for part in parts})
    except InvalidOperation as exc:
        raise ValueError("Percentages separated by commas, such as 50,80.") from exc
    if any(not value.is_finite() or value <= 0 for value in values):
        raise ValueError("Percentages must be above 0, such as 50,80.")
    return values
