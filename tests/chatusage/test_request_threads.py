"""chatusage/asgi.py's request threads: a request's sync code has a thread to itself, as
Django requires, and the thread is an idle one taken back from an earlier request instead of
a new one started (and another to join it) for every request."""

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync
from django.core.signals import request_started

from chatusage import asgi

pytestmark = pytest.mark.django_db(transaction=True)


def _scope(path="/favicon.ico"):
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _get() -> int:
    sent, body = [], [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if body:
            return body.pop()
        await asyncio.Event().wait()  # the client stays until the answer

    async def send(message):
        sent.append(message)

    await asgi.application(_scope(), receive, send)
    return sent[0]["status"]


@pytest.fixture
def sync_threads():
    """The thread each request's sync code ran on (Django's request_started receivers run
    there, as every sync step of the request does)."""
    seen = []

    def record(sender, **kwargs):
        seen.append(threading.get_ident())

    request_started.connect(record)
    yield seen
    request_started.disconnect(record)


def test_requests_one_after_another_reuse_one_thread(sync_threads):
    async def three():
        return [await _get() for _ in range(3)]

    assert async_to_sync(three)() == [301, 301, 301]
    assert len(sync_threads) == 3
    assert len(set(sync_threads)) == 1  # Django's default: three new threads
    assert threading.get_ident() not in sync_threads


def test_requests_at_once_never_share_a_thread(sync_threads):
    # Each request's sync code waits in its thread until the other's arrives: were the
    # two on one thread, the second could never start and the barrier would break.
    barrier = threading.Barrier(2, timeout=10)

    def meet(sender, **kwargs):
        barrier.wait()

    request_started.connect(meet)
    try:

        async def two():
            return await asyncio.gather(_get(), _get())

        assert async_to_sync(two)() == [301, 301]
    finally:
        request_started.disconnect(meet)
    assert len(set(sync_threads)) == 2


def test_idle_threads_past_the_limit_are_stopped():
    threads = asgi.RequestThreads(keep=1)
    first, second = threads.take(), threads.take()
    assert first is not second
    threads.give_back(first)
    threads.give_back(second)  # one idle thread is kept; this one is shut down
    assert threads.take() is first
    with pytest.raises(RuntimeError):
        second.submit(print)


def test_a_settle_that_outlives_its_request_still_runs_its_steps():
    """A stop can end a request while the shielded settle of what it delivered still runs:
    that settle's database steps must still run (asgiref would refuse them)."""
    from chatusage.db import step

    async def scenario():
        go = asyncio.Event()

        async def settle():
            await go.wait()
            return await step(threading.get_ident)

        executor = asgi.request_threads.take()
        async with asgi._RequestContext(executor=executor):
            late = asyncio.ensure_future(settle())
        asgi.request_threads.give_back(executor)
        go.set()
        return await late

    assert async_to_sync(scenario)() != threading.get_ident()
