"""The budget's states, defined once. The usage page, the chat page, /api/usage/, the admin's
filter, list and panel, the staff summary and the alerts all read them from here.

- No cap: a budget of 0.
- Over: settled spend at or past 100 % of the budget. The budget is used up: a message that
  costs anything is refused.
- Near: from the highest alert threshold below 100 % (USAGE_ALERT_THRESHOLDS, 50,80 by
  default: from 80 %), the last warning before the limit.
"""

from decimal import Decimal

from django.conf import settings

from chatusage.parsing import percentages

OVER = Decimal(100)


def near_from() -> Decimal | None:
    """The percentage from which a user is near their budget (None: thresholds give none)."""
    below = [t for t in settings.USAGE_ALERT_THRESHOLDS if t < OVER]
    return max(below) if below else None


def state(percent: Decimal | None) -> str:
    """ok, near or over for a spend of `percent` of the budget (None: no cap, always ok)."""
    if percent is None:
        return "ok"
    if percent >= OVER:
        return "over"
    near = near_from()
    return "near" if near is not None and percent >= near else "ok"


def thresholds_for(account) -> list[Decimal]:
    """The account's alert thresholds: its own (staff set them) or the default."""
    if account.alert_thresholds.strip():
        return percentages(account.alert_thresholds)
    return list(settings.USAGE_ALERT_THRESHOLDS)


def validate_thresholds(value: str) -> None:
    """The model's validator: what staff type is parsed as settle() will parse it."""
    from django.core.exceptions import ValidationError

    try:
        percentages(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc
