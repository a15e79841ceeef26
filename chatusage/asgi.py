"""The ASGI application: Django behind a guard on request bodies.

Django's ASGI handler reads a whole request body (spooling it to a temporary file) before
any view or size check runs, so a logged-out client could make the server write a 1 GiB
file and wait as long as it liked to send it. The guard answers 413 at once for a declared
length above DATA_UPLOAD_MAX_MEMORY_SIZE, stops a chunked body at the same size, and gives
a body REQUEST_BODY_TIMEOUT seconds to arrive (408 after that). Only then does Django read
the body, from memory.

Each request's sync code (Django's signals, session and user loads, the ledger steps) runs
on a thread of its own, as Django requires; here that thread is taken from a pool of idle
ones instead of started for the request (see RequestThreads).

GET /healthz is answered here, before Django's request cycle (see _health).
"""

import asyncio
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.asgi import get_asgi_application

from chatusage import errors

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatusage.settings")

django_application = get_asgi_application()


async def _refuse(send, code: str) -> None:
    body = json.dumps(errors.body(code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": errors.status(code),
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


TOO_LARGE = "body_too_large"
TOO_SLOW = "body_timeout"


async def _read_body(receive, limit: int) -> tuple[list[dict], str | None]:
    """The body's messages, read up to `limit` bytes, or why it was refused."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # the client went away
            return messages, None
        size += len(message.get("body", b""))
        if size > limit:
            return messages, TOO_LARGE
        if not message.get("more_body", False):
            return messages, None


class RequestThreads:
    """Single-thread executors for requests, reused from one request to the next.

    Django's ASGI handler gives every request a ThreadSensitiveContext, and asgiref then
    starts a thread for the request's first sync call and, when the request ends, a second
    thread to join it: two threads started and stopped for every request. A context given
    an executor of ours uses it instead (asgiref >= 3.10), so a request still has its sync
    code to itself on one thread, but the thread was already running. At most `keep` idle
    threads are kept after a burst.
    """

    def __init__(self, keep: int = 64):
        self.keep = keep
        self._idle: deque[ThreadPoolExecutor] = deque()

    def take(self) -> ThreadPoolExecutor:
        try:
            return self._idle.pop()
        except IndexError:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        if len(self._idle) < self.keep:
            self._idle.append(executor)
        else:
            executor.shutdown(wait=False)


request_threads = RequestThreads()


class _RequestContext(ThreadSensitiveContext):
    """The request's context, on a thread from RequestThreads.

    asgiref refuses a thread-sensitive call from a task that outlives a context given an
    executor. A settle can outlive its request: a stop that cancels a request a second time
    ends it while the settle of what was delivered still runs (services._settle shields
    it). That settle must still save the answer, so, as in the context Django makes
    itself, such a late call gets a thread of its own instead.
    """

    async def __aexit__(self, *exc_info):
        await super().__aexit__(*exc_info)
        self._exited = False


async def application(scope, receive, send):
    if scope["type"] != "http":
        return await django_application(scope, receive, send)
    if scope["path"] == "/healthz" and scope["method"] == "GET":
        return await _health(send)
    executor = request_threads.take()
    try:
        async with _RequestContext(executor=executor):
            return await _guarded(scope, receive, send)
    finally:
        request_threads.give_back(executor)


# The health check's own thread: its checks never wait behind requests' threads, and a
# flood of probes queues here instead of starting threads.
_health_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healthz")
HEALTH_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"max-age=0, no-cache, no-store, must-revalidate, private"),
    (b"x-content-type-options", b"nosniff"),
]


async def _health(send):
    """GET /healthz without Django's request cycle, which hands back to the event loop
    several times (the view's thread, the response's close, on another thread again); a
    worker busy relaying a burst of streams makes each of those a wait, and a load balancer
    reads a slow answer as a dead server. Here the checks run on a thread of their own and
    the answer goes out at once: the same views.health(). No host check (Django's
    ALLOWED_HOSTS), so a load balancer may probe a server by its address."""
    loop = asyncio.get_running_loop()
    status, body = await loop.run_in_executor(_health_thread, _checked_health)
    payload = json.dumps(body).encode()
    headers = [*HEALTH_HEADERS, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _checked_health() -> tuple[int, dict]:
    from django.db import connections

    from chatusage import views

    try:
        return views.health()
    finally:
        connections.close_all()  # SQLite's check used this thread's connection


async def _guarded(scope, receive, send):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    for name, value in scope["headers"]:  # the server already refused a malformed length
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return await _refuse(send, TOO_LARGE)
    try:
        async with asyncio.timeout(settings.REQUEST_BODY_TIMEOUT):
            messages, refused = await _read_body(receive, limit)
    except TimeoutError:
        refused = TOO_SLOW
    if refused:
        return await _refuse(send, refused)

    async def replay():
        # The body from memory, then the connection's own events (the client going away).
        return messages.pop(0) if messages else await receive()

    return await django_application(scope, replay, send)
