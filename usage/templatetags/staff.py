from django import template

from usage import reports

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

    from usage.admin import with_cycle_usage

    users = with_cycle_usage(get_user_model().objects.all())
    return {
        "total": users.aggregate(total=Sum("cycle_cost"))["total"] or 0,
        "top": list(users.filter(cycle_cost__gt=0).order_by("-cycle_cost")[:5]),
        "near": users.filter(budget_pct__gte=80, budget_pct__lt=100).count(),
        "over": users.filter(budget_pct__gte=100).count(),
    }
