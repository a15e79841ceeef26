"""Tracking overhead: what the ledger and PostHog capture add, side by side in one process,
interleaved one by one so that both sides see the same machine.

call (SQLite; target <= 1.0 ms): the tracked path as the chat view runs it (reserve() in the
request's thread, PostHog's wrapped async client with capture on, settle() in the thread)
against a bare openai.AsyncOpenAI call, both on the offline demo transport.

request (PostgreSQL, target <= 2.0 ms; SQLite): a whole non-streamed POST /api/chat/ through
Django's ASGI handler (session, middleware, prompt and answer saved, budget line read) against
the same request with the ledger and capture off: reserve() and settle() replaced by
stand-ins that touch no database, and the model called through the bare client.

The capture sink runs in a process of its own; users have the default budget, so settles
also watch for alerts, as in production.
"""

import asyncio
import contextlib
import sys
import time
import uuid
from decimal import Decimal
from types import SimpleNamespace

import requests

from bench.common import emit, postgres_database, server_process, setup_django, spread_ms

CALLS = 300
WARM_UP = 20
PROMPT = "How much does a tracked call cost compared to a bare one?"


def bare_client():
    import openai

    from chat import demo

    return openai.AsyncOpenAI(
        api_key="demo", base_url=demo.DEMO_BASE_URL, http_client=demo.http_client(), max_retries=0
    )


def untracked():
    """A context manager: the chat path with the ledger and capture off (see the module's
    docstring). Built outside the event loop, since it reads the price once."""
    from django.utils import timezone

    from chat import llm
    from chatusage.db import batch
    from usage import limits
    from usage.pricing import price_for

    price = price_for(llm.current_provider().model)
    bare = bare_client()

    def reserve(user, model, messages, max_tokens, provider="openai", *_, generation_id=None, **__):
        return limits.Reservation(
            generation_id or uuid.uuid4(),
            user.pk,
            model,
            provider,
            price,
            0,
            0,
            max_tokens,
            timezone.now(),
        )

    def reserve_with(user, model, messages, max_tokens, provider="openai", *args, also=(), **kw):
        # The chat's own statements (the prompt, a new conversation) still run.
        reservation = reserve(user, model, messages, max_tokens, provider, *args, **kw)
        return reservation, batch(*also) if also else []

    def settle(reservation, usage=None, *, error="", latency_ms=None, http_status=None):
        return limits.Settlement(
            reservation.generation_id,
            reservation.user_id,
            reservation.model,
            "ok",
            Decimal(0),
            Decimal(0),
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens,
            False,
            False,
            latency_ms,
            http_status,
            timezone.now(),
        )

    def settle_with(reservation, usage=None, *, also=(), standing=False, **fields):
        # The chat's own statements (the answer, the standing it shows) still run.
        now = timezone.now()
        reads = limits.standing_reads(reservation.user_id, now) if standing else []
        rows = batch(*also, *reads) if also or reads else []
        spend = limits.standing_from(reservation.user_id, now, *rows[-2:]) if reads else None
        return settle(reservation, usage, **fields), rows[: len(also)], spend

    async def create(**options):
        options = {k: v for k, v in options.items() if not k.startswith("posthog_")}
        return await bare.chat.completions.create(**options)

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))

    @contextlib.contextmanager
    def swapped():
        stand_ins = {
            "reserve": reserve,
            "reserve_with": reserve_with,
            "settle": settle,
            "settle_with": settle_with,
        }
        saved = {name: getattr(limits, name) for name in stand_ins}, llm.client
        for name, stand_in in stand_ins.items():
            setattr(limits, name, stand_in)
        llm.client = lambda: client
        try:
            yield
        finally:
            for name, original in saved[0].items():
                setattr(limits, name, original)
            llm.client = saved[1]

    return swapped


async def side_by_side(bare_call, tracked_call):
    async def timed(call) -> float:
        started = time.perf_counter()
        await call()
        return time.perf_counter() - started

    for _ in range(WARM_UP):  # client construction, first queries, prepared statements
        await bare_call()
        await tracked_call()
    bare, tracked = [], []
    for _ in range(CALLS):
        bare.append(await timed(bare_call))
        tracked.append(await timed(tracked_call))
    return bare, tracked


def calls(user):
    from django.conf import settings

    from chat import llm
    from chatusage.db import step
    from usage import limits
    from usage.pricing import price_for

    messages = [
        {"role": "system", "content": settings.CHAT_SYSTEM_PROMPT},
        {"role": "user", "content": PROMPT},
    ]
    price = price_for(settings.DEMO_MODEL)

    async def measure():
        bare = bare_client()

        async def bare_call():
            response = await bare.chat.completions.create(
                model=settings.DEMO_MODEL, messages=messages, max_tokens=500
            )
            assert response.usage.completion_tokens > 0

        async def tracked_call():
            reservation = await step(
                limits.reserve, user, settings.DEMO_MODEL, messages, 500, provider="demo"
            )
            completion = await llm.complete(
                messages,
                until=llm.deadline(),
                user_id=user.pk,
                generation_id=reservation.generation_id,
                conversation_id=reservation.generation_id,
                price=price,
                reserved_at=reservation.reserved_at,
                markup_percent=reservation.markup_percent,
            )
            await step(
                limits.settle, reservation, completion.usage, latency_ms=completion.latency_ms
            )

        return await side_by_side(bare_call, tracked_call)

    return asyncio.run(measure())


def chat_requests(user):
    from django.test import AsyncClient

    client = AsyncClient()
    client.force_login(user)
    off = untracked()

    async def post():
        response = await client.post(
            "/api/chat/", {"prompt": PROMPT}, content_type="application/json"
        )
        assert response.status_code == 200, response.content[:300]

    async def untracked_request():
        with off():
            await post()

    return asyncio.run(side_by_side(untracked_request, post))


def main(kind="call", db="sqlite"):
    databases = postgres_database() if db == "postgres" else contextlib.nullcontext(None)
    with server_process("sink") as sink, databases as database_url:
        setup_django(database_url, POSTHOG_API_KEY="phc_bench", POSTHOG_HOST=sink)
        from django.contrib.auth.models import User

        from chatusage import analytics
        from usage.models import Generation

        user = User.objects.create_user("bench")
        bare, tracked = calls(user) if kind == "call" else chat_requests(user)
        analytics.shutdown()
        captured = requests.get(f"{sink}/stats", timeout=10).json()["generations"]
        # Only the tracked side reaches the ledger: the stand-ins are the ones the chat calls.
        assert Generation.objects.count() == len(tracked) + WARM_UP, "untracked calls were held"
    bare_figures, tracked_figures = spread_ms(bare, "bare_"), spread_ms(tracked, "tracked_")
    emit(
        bench="tracking",
        kind=kind,
        db=db,
        overhead_ms=round(tracked_figures["tracked_ms"] - bare_figures["bare_ms"], 3),
        **bare_figures,
        **tracked_figures,
        events_captured=captured,
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
