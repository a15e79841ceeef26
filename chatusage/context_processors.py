from django.conf import settings


def product(request):
    """What every page's navigation needs to know about the running product."""
    return {
        "demo_mode": not settings.OPENAI_API_KEY,
        "max_prompt_chars": settings.CHAT_MAX_PROMPT_CHARS,
        "usage_time_zone": settings.USAGE_TIME_ZONE.key,
        "signup_open": settings.ACCOUNTS_SIGNUP == "open",  # the zone every page shows times in
    }
