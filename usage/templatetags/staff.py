from django import template

from usage import budget, reports
from usage.reports import with_cycle_usage

register = template.Library()


@register.simple_tag
def posthog_health():
    """The last PostHog query's outcome and whether PostHog is the wanted source."""
    return {"wanted": reports.wanted_source() == "posthog", "last": reports.posthog_health()}


@register.simple_tag
def cycle_summary():
    """This cycle across users (each in their own cycle): spend, top spenders, near/over."""
    from django.contrib.auth import get_user_model
    from django.db.models import Sum

    users = with_cycle_usage(get_user_model().objects.all())
    near = budget.near_from()
    totals = {
        key: value or 0
        for key, value in users.aggregate(
            total=Sum("cycle_charge"), total_cost=Sum("cycle_cost")
        ).items()
    }
    return {
        **totals,
        "margin": totals["total"] - totals["total_cost"],
        "top": list(users.filter(cycle_charge__gt=0).order_by("-cycle_charge")[:5]),
        "near_from": near,
        "near": (
            users.filter(budget_pct__gte=near, budget_pct__lt=budget.OVER).count()
            if near is not None
            else 0
        ),
        "over": users.filter(budget_pct__gte=budget.OVER).count(),
    }
