from django import template

from usage import reports

register = template.Library()


@register.simple_tag
def posthog_health():
    """The last PostHog query's outcome and whether PostHog is the wanted source."""
    return {"wanted": reports.wanted_source() == "posthog", "last": reports.posthog_health()}
