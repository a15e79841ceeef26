"""CSV exports stream a page at a time and a user runs only a few at once (B8: 300,000
generations were built in memory: the first byte after 10.5 s, +64 MB per worker)."""

import csv
import io
from datetime import timedelta

from asgiref.sync import async_to_sync
from django.utils import timezone

from tests.helpers import close_response, streamed
from usage import exports
from usage.cycles import cycle_for
from usage.models import Generation, UsageAccount


def many_generations(user, count, same_time_every=7):
    """`count` settled generations this cycle; runs of them share a created_at (ties). From
    the cycle's first second: an hour back from now is the last cycle just after midnight."""
    now = timezone.now()
    start = cycle_for(UsageAccount.objects.for_user(user), now).start
    Generation.objects.bulk_create(
        Generation(
            user=user,
            model="gpt-4o-mini",
            provider="openai",
            status="ok",
            cost=1,
            price_input_per_1m=0,
            price_cached_input_per_1m=0,
            price_output_per_1m=0,
            created_at=start + timedelta(seconds=n // same_time_every),
            settled_at=now,
        )
        for n in range(count)
    )


def test_an_export_streams_page_by_page_with_every_generation_once(alice_client, alice):
    many_generations(alice, 2 * exports.PAGE_SIZE + 1)
    response = alice_client.get("/usage/export.csv")
    content = response.streaming_content
    assert hasattr(content, "__aiter__")  # ASGI sends it as it is read, not read whole first

    async def first_chunk():
        return await anext(aiter(content))

    first = async_to_sync(first_chunk)().decode()
    assert first.count("\n") == exports.PAGE_SIZE + 1  # the header and one page
    close_response(response)
    rows = list(
        csv.DictReader(io.StringIO(streamed(alice_client.get("/usage/export.csv")).decode()))
    )
    ids = [row["generation_id"] for row in rows]
    assert len(ids) == len(set(ids)) == 2 * exports.PAGE_SIZE + 1  # none lost, none twice


def test_a_user_runs_two_exports_at_once_and_a_third_waits(alice_client, alice):
    first = alice_client.get("/usage/export.csv")
    second = alice_client.get("/usage/export.csv")
    third = alice_client.get("/usage/export.csv")
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert third["Retry-After"]
    close_response(first)  # done (or the download was cancelled): its slot is free again
    fourth = alice_client.get("/usage/export.csv")
    assert fourth.status_code == 200
    close_response(second)
    close_response(fourth)
