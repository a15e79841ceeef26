"""A per-key fixed-window request limit in the Django cache (Redis in production)."""

import time

from django.conf import settings
from django.core.cache import cache


def parse_rate(rate: str) -> tuple[int, int]:
    """'20/60' -> (20 requests, 60 seconds)."""
    count, _, seconds = rate.partition("/")
    return int(count), int(seconds or 60)


def hit(key: str, rate: str | None = None) -> bool:
    """Count one request for `key`; False once the window's allowance is used up."""
    limit, window = parse_rate(rate or settings.CHAT_RATE_LIMIT)
    if limit <= 0:
        return True
    bucket = f"ratelimit:{key}:{int(time.time() // window)}"
    # add() is atomic: only the first request of a window creates the counter.
    cache.add(bucket, 0, timeout=window + 1)
    try:
        count = cache.incr(bucket)
    except ValueError:  # expired between add and incr
        cache.add(bucket, 1, timeout=window + 1)
        count = 1
    return count <= limit
