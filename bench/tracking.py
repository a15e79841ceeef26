"""Tracking overhead per chat call: the full tracked path against the bare OpenAI client.

Both use the same offline demo transport in the same process, interleaved call by call:
bare = openai.AsyncOpenAI().chat.completions.create(); tracked = reserve() + PostHog's
wrapped async client (capture on, to a local sink) + settle(), the ledger steps in threads as
the chat view runs them. The difference is what tracking costs.
"""

import sys
import time

from bench.common import emit, median_ms, setup_django, spread_ms

CALLS = 300


def main(database_url=None, label="sqlite"):
    from tests.e2e.servers import CaptureSink

    sink = CaptureSink()
    setup_django(database_url, POSTHOG_API_KEY="phc_bench", POSTHOG_HOST=sink.url)
    import asyncio

    import openai
    from django.conf import settings
    from django.contrib.auth.models import User

    from chat import demo, llm
    from chatusage.db import step
    from usage import limits
    from usage.pricing import price_for

    user = User.objects.create_user("bench")
    messages = [
        {"role": "system", "content": settings.CHAT_SYSTEM_PROMPT},
        {"role": "user", "content": "How much does a tracked call cost compared to a bare one?"},
    ]
    price = price_for(settings.DEMO_MODEL)

    async def measure():
        bare = openai.AsyncOpenAI(
            api_key="demo",
            base_url=demo.DEMO_BASE_URL,
            http_client=demo.http_client(),
            max_retries=0,
        )

        async def bare_call():
            response = await bare.chat.completions.create(
                model=settings.DEMO_MODEL, messages=messages, max_tokens=500
            )
            assert response.usage.completion_tokens > 0

        async def tracked_call():
            # The chat view's steps: reserve in a thread, the wrapped call, settle in a thread.
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
            )
            await step(
                limits.settle, reservation, completion.usage, latency_ms=completion.latency_ms
            )

        async def timed_call(call) -> float:
            started = time.perf_counter()
            await call()
            return time.perf_counter() - started

        for _ in range(20):  # warm up both paths (client construction, first queries)
            await bare_call()
            await tracked_call()
        bare_samples, tracked_samples = [], []
        for _ in range(CALLS):
            bare_samples.append(await timed_call(bare_call))
            tracked_samples.append(await timed_call(tracked_call))
        return bare_samples, tracked_samples

    bare_samples, tracked_samples = asyncio.run(measure())
    from chatusage import analytics

    analytics.shutdown()
    sink.stop()
    bare_ms, tracked_ms = median_ms(bare_samples), median_ms(tracked_samples)
    emit(
        bench="tracking",
        db=label,
        calls=CALLS,
        bare_ms=round(bare_ms, 3),
        tracked_ms=round(tracked_ms, 3),
        overhead_ms=round(tracked_ms - bare_ms, 3),
        **spread_ms(bare_samples, "bare_"),
        **spread_ms(tracked_samples, "tracked_"),
        events_captured=len(sink.generations()),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
