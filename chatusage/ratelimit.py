"""A per-key fixed-window request limit in the Django cache (Redis in production).

It fails open: when the cache is down or slow, requests pass with a logged warning.
The budget itself is enforced by a row lock in the database, so money stays safe; only
the smoothing of bursts is lost while the cache is away.
"""

import logging
import math
import time

from django.conf import settings

from chatusage.cache import CACHE_ERRORS, RedisCache, shared

log = logging.getLogger(__name__)


def parse_rate(rate: str) -> tuple[int, int]:
    """'20/60' -> (20 requests, 60 seconds)."""
    count, _, seconds = rate.partition("/")
    return int(count), int(seconds or 60)


def _count(cache, key: str, timeout: int) -> int:
    """One more request in the window's counter; the count so far."""
    if isinstance(cache, RedisCache):  # production: one round trip
        return cache.count(key, timeout)
    # add() is atomic: only the first request of a window creates the counter.
    cache.add(key, 0, timeout=timeout)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=timeout)
        return 1


def wait_seconds(key: str, rate: str | None = None) -> int:
    """Count one request for `key`: 0 if it may go ahead, else seconds until the window ends."""
    limit, window = parse_rate(rate or settings.CHAT_RATE_LIMIT)
    if limit <= 0:
        return 0
    now = time.time()
    bucket = f"ratelimit:{key}:{int(now // window)}"
    cache = shared()
    try:
        count = _count(cache, bucket, window + 1)
    except CACHE_ERRORS as exc:
        log.warning("Rate limit not applied: the cache did not answer (%s).", type(exc).__name__)
        return 0
    if count <= limit:
        return 0
    return max(1, math.ceil(window - now % window))
