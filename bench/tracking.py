"""Tracking overhead per chat call: the full tracked path against the bare OpenAI client.

Both use the same offline demo transport in the same process, interleaved call by call:
bare = openai.OpenAI().chat.completions.create(); tracked = reserve() + PostHog's wrapped
client (capture on, to a local sink) + settle(). The difference is what tracking costs.
"""

import sys

from bench.common import emit, median_ms, setup_django, timed

CALLS = 300


def main(database_url=None, label="sqlite"):
    from tests.e2e.servers import CaptureSink

    sink = CaptureSink()
    setup_django(database_url, POSTHOG_API_KEY="phc_bench", POSTHOG_HOST=sink.url)
    import openai
    from django.conf import settings
    from django.contrib.auth.models import User

    from chat import demo, llm
    from usage import limits
    from usage.pricing import price_for

    user = User.objects.create_user("bench")
    messages = [
        {"role": "system", "content": settings.CHAT_SYSTEM_PROMPT},
        {"role": "user", "content": "How much does a tracked call cost compared to a bare one?"},
    ]
    bare = openai.OpenAI(
        api_key="demo", base_url=demo.DEMO_BASE_URL, http_client=demo.http_client(), max_retries=0
    )
    price = price_for(settings.DEMO_MODEL)

    def bare_call():
        response = bare.chat.completions.create(
            model=settings.DEMO_MODEL, messages=messages, max_tokens=500
        )
        assert response.usage.completion_tokens > 0

    def tracked_call():
        reservation = limits.reserve(user, settings.DEMO_MODEL, messages, 500, provider="demo")
        completion = llm.complete(
            messages,
            user_id=user.pk,
            generation_id=reservation.generation_id,
            conversation_id=reservation.generation_id,
            price=price,
        )
        limits.settle(reservation, completion.usage, latency_ms=completion.latency_ms)

    for _ in range(20):  # warm up both paths (client construction, first queries)
        bare_call()
        tracked_call()
    bare_samples, tracked_samples = [], []
    for _ in range(CALLS):
        bare_samples.append(timed(bare_call))
        tracked_samples.append(timed(tracked_call))
    llm.client()  # keep the tracked client alive until here
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
        events_captured=len(sink.generations()),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
