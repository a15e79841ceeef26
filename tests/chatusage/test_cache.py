"""The Redis cache backend production uses (chatusage.cache.RedisCache), against a real Redis,
and the rate limit's one-round-trip counter on it."""

import socket
import uuid

import pytest
from django.test import override_settings

from chatusage import cache as shared_cache
from chatusage import ratelimit


def _redis_answers() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


def _backend(location: str) -> dict:
    return {
        "default": {
            "BACKEND": "chatusage.cache.RedisCache",
            "LOCATION": location,
            "KEY_PREFIX": f"test-{uuid.uuid4().hex}",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }


@pytest.fixture
def redis_cache():
    if not _redis_answers():
        pytest.skip("Redis is not answering on 127.0.0.1:6379")
    shared_cache.shared.cache_clear()
    # Database 9: the end-to-end servers use 7 and empty it when they start.
    with override_settings(CACHES=_backend("redis://127.0.0.1:6379/9")):
        yield shared_cache.shared()
    shared_cache.shared.cache_clear()


def test_the_rate_limit_counts_each_request_once_in_its_window_on_redis(redis_cache):
    assert isinstance(redis_cache, shared_cache.RedisCache)
    key = f"chat:{uuid.uuid4().hex}"
    waits = [ratelimit.wait_seconds(key, "3/60") for _ in range(5)]
    assert waits[:3] == [0, 0, 0]
    assert all(1 <= wait <= 60 for wait in waits[3:])
    # The counter is Django's own integer: the cache API reads the same count.
    (bucket,) = [k for k in _keys(redis_cache) if key in k]
    assert redis_cache.get(bucket.split(":", 2)[2]) == 5
    assert 0 < _ttl(redis_cache, bucket) <= 61  # it goes with its window


def test_a_new_window_starts_counting_from_one(redis_cache):
    key = f"bucket-{uuid.uuid4().hex}"
    assert redis_cache.count(key, 60) == 1
    assert redis_cache.count(key, 60) == 2
    redis_cache.delete(key)  # the window ended
    assert redis_cache.count(key, 60) == 1


def test_cache_calls_share_one_client_and_keep_working(redis_cache):
    redis_cache.set("a", {"x": 1}, 30)
    client = redis_cache._cache.get_client("a")
    assert redis_cache._cache.get_client("b") is client
    assert redis_cache.get("a") == {"x": 1}
    assert redis_cache.add("a", 2, 30) is False
    assert redis_cache.count("n", 30) == 1
    assert redis_cache.incr("n") == 2  # Django's incr() on count()'s counter


def test_the_rate_limit_lets_requests_through_while_redis_is_down():
    shared_cache.shared.cache_clear()
    try:
        with override_settings(CACHES=_backend("redis://127.0.0.1:1/0")):  # nothing there
            assert [ratelimit.wait_seconds("chat:1", "1/60") for _ in range(3)] == [0, 0, 0]
    finally:
        shared_cache.shared.cache_clear()


def _keys(cache) -> list[str]:
    return [k.decode() for k in cache._cache.get_client().keys(f"{cache.key_prefix}*")]


def _ttl(cache, key: str) -> int:
    return cache._cache.get_client().ttl(key)
