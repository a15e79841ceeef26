"""Long model calls: every way a call can end settles its reservation exactly once, the
deadline holds across retries and streaming, and a slow call keeps its budget hold."""

import asyncio
import contextlib
import time
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import httpx2
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.management import call_command
from django.db import OperationalError

from chat import demo, llm, services, spool, views
from chat.models import Message
from chatusage.db import step
from tests.e2e.harness.servers import endless_frames
from tests.helpers import (
    api_request,
    client_goes_away,
    parse_sse,
    post,
    set_budget,
    stream_directly,
)
from usage import limits
from usage.models import DailyUsage, Generation, ModelPrice

pytestmark = pytest.mark.django_db


def paced(delay: float, fail_at: int | None = None):
    """A model that streams the demo answer one frame every `delay` s (breaking at a frame)."""

    async def handler(request):
        frames = demo.reply(request.content, request.url.path).frames

        async def body():
            for index, frame in enumerate(frames):
                if index == fail_at:
                    raise httpx2.ReadError("connection reset by peer")
                if index:
                    await asyncio.sleep(delay)
                yield frame

        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    return handler


def read_all(response) -> list[tuple[str, dict]]:
    async def read():
        return b"".join([part async for part in response])

    return parse_sse(async_to_sync(read)().decode())


def stream_events(user, prompt="Tell me something") -> list[tuple[str, dict]]:
    async def scenario():
        response = await stream_directly(user, prompt)
        events = parse_sse(b"".join([p async for p in response]).decode())
        await client_goes_away(response)
        return events

    return async_to_sync(scenario)()


def only_generation(user) -> Generation:
    [generation] = Generation.objects.filter(user=user)
    return generation


def test_a_failure_after_partial_output_bills_what_arrived_and_keeps_it(alice, openai_mock):
    openai_mock.handler = paced(0, fail_at=6)
    events = stream_events(alice)
    kind, data = events[-1]
    assert (kind, data["code"]) == ("error", "provider_disconnected")
    delivered = "".join(d["text"] for k, d in events if k == "delta")
    assert delivered and data["response"] == delivered and data["interrupted"]
    generation = only_generation(alice)
    assert (generation.status, generation.cost_estimated) == ("ok", True)
    assert generation.cost > 0 and generation.cost <= generation.reserved_cost
    prompt, answer = Message.objects.order_by("created_at", "id")
    assert not prompt.failed  # answered in part: a retry is a new, visible turn
    assert (answer.content, answer.interrupted) == (delivered, True)
    assert "broke off" in answer.error


def test_the_deadline_cuts_a_slow_stream_and_bills_what_arrived(alice, openai_mock, settings):
    # The deadline leaves room for a cold first request (imports, a new client) on a slow
    # machine: some text must have arrived when it strikes.
    settings.OPENAI_DEADLINE = 1.2
    openai_mock.handler = paced(0.2)  # the whole answer would take several seconds
    started = time.monotonic()
    events = stream_events(alice)
    assert time.monotonic() - started < 4
    kind, data = events[-1]
    assert (kind, data["code"]) == ("error", "deadline_exceeded")
    assert "1.2 seconds" in data["error"]
    generation = only_generation(alice)
    assert (generation.status, generation.cost_estimated) == ("ok", True)
    assert generation.cost <= generation.reserved_cost
    assert Message.objects.get(role="assistant").interrupted


def test_the_deadline_holds_across_retry_after_waits(alice_client, alice, openai_mock, settings):
    settings.OPENAI_DEADLINE = 0.5
    openai_mock.answer(429, {"error": {"message": "slow down"}}, headers={"retry-after": "60"})
    started = time.monotonic()
    response = post(alice_client, {"prompt": "Are you there?"})
    assert time.monotonic() - started < 5  # not the 60 s the provider asked for
    assert (response.status_code, response.json()["code"]) == (504, "deadline_exceeded")
    generation = only_generation(alice)
    assert (generation.status, generation.cost) == ("error", 0)
    prompt = Message.objects.get()
    assert (prompt.content, prompt.failed) == ("Are you there?", True)


def test_a_response_closed_before_its_stream_began_settles_at_zero(alice, openai_mock):
    async def scenario():
        response = await stream_directly(alice, "Tell me something")
        await client_goes_away(response)  # the client left before the first byte

    async_to_sync(scenario)()
    generation = only_generation(alice)
    assert (generation.status, generation.cost) == ("error", 0)
    assert openai_mock.requests == []


def test_a_stream_cancelled_while_waiting_on_the_model_settles_what_arrived(alice, openai_mock):
    """The ASGI handler cancels the request's task when the client disconnects."""
    openai_mock.handler = paced(0.05)

    async def scenario():
        response = await stream_directly(alice, "Tell me something")
        parts = aiter(response)

        words = asyncio.Event()

        async def consume():
            async for part in parts:
                if b"event: delta" in part:
                    words.set()

        task = asyncio.create_task(consume())
        await words.wait()  # the answer is under way
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client_goes_away(response, parts)

    async_to_sync(scenario)()
    generation = only_generation(alice)
    assert (generation.status, generation.cost_estimated) == ("ok", True)
    answer = Message.objects.get(role="assistant")
    assert answer.interrupted and answer.content


def test_a_plain_call_cancelled_while_waiting_on_the_model_costs_nothing(alice, openai_mock):
    asked = asyncio.Event()

    async def slow(request):
        asked.set()
        await asyncio.Event().wait()  # a model that never answers

    openai_mock.handler = slow

    async def scenario():
        request = await sync_to_async(api_request)(alice, {"prompt": "hello"})
        task = asyncio.create_task(views.api_chat(request))
        await asyncio.wait_for(asked.wait(), 60)  # the model is working on it
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async_to_sync(scenario)()
    generation = only_generation(alice)
    assert (generation.status, generation.cost) == ("error", 0)


def test_a_call_slower_than_the_old_expiry_keeps_its_hold(alice, openai_mock, settings):
    """A call far slower than its per-read timeout keeps its hold: a second call is refused."""
    settings.OPENAI_TIMEOUT = 0.1
    settings.OPENAI_DEADLINE = 20
    settings.OPENAI_MODEL = "dollar-model"
    ModelPrice.objects.create(  # output at $0.01 a token: 500 max tokens hold $5.00
        model="dollar-model", input_per_1m=0, cached_input_per_1m=0, output_per_1m=10_000
    )
    openai_mock.handler = paced(0.02)

    async def scenario():
        response = await stream_directly(alice, "Tell me something")
        parts = aiter(response)
        await anext(parts)
        await anext(parts)  # the first call is streaming
        first = await Generation.objects.aget(user=alice)
        # Far older than its per-read timeout: only its lease may say whether it holds.
        await Generation.objects.filter(pk=first.pk).aupdate(
            created_at=first.created_at - timedelta(hours=1)
        )
        budget = first.reserved_cost * Decimal("1.5")  # room for one call, not two
        await step(set_budget, alice, budget)
        with pytest.raises(services.ChatError) as refused:
            await services.astart_turn(alice, "A second message at once")
        async for _ in parts:
            pass
        await client_goes_away(response, parts)
        return refused.value, budget

    refused, budget = async_to_sync(scenario)()
    assert refused.code == "usage_limit_reached"
    generation = only_generation(alice)
    assert generation.status == "ok"
    assert generation.cost <= budget


def endless(delay: float):
    """A model that streams past any max_tokens, a chunk every `delay` s (0: as fast as it can)."""

    async def handler(request):
        async def body():
            for frame in endless_frames():
                if delay:
                    await asyncio.sleep(delay)
                yield frame

        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    return handler


async def settled_row(generation_id, within: float = 60.0) -> Generation:
    """The generation once it is no longer pending (waits on that, for at most `within` s)."""
    give_up = time.monotonic() + within
    while True:
        generation = await Generation.objects.aget(pk=generation_id)
        if generation.status != "pending" or time.monotonic() > give_up:
            return generation
        await asyncio.sleep(0.05)


def test_a_client_that_stops_reading_cannot_keep_a_call_past_its_deadline(
    alice, openai_mock, dollar_model, settings
):
    """B1: the budget held one call; a stream read by nobody kept its hold past the deadline
    until age expiry released it, and a second call overshot the budget."""
    settings.OPENAI_MODEL = dollar_model
    settings.OPENAI_MAX_TOKENS = 100
    settings.OPENAI_DEADLINE = 1.0
    set_budget(alice, "1.00")  # exactly one worst case
    openai_mock.handler = endless(0.02)

    async def scenario():
        response = await stream_directly(alice, "Tell me everything")
        parts = aiter(response)
        await anext(parts)  # start
        await anext(parts)  # the first words; then the client reads nothing more
        first = await Generation.objects.filter(user=alice).aget()
        settled = await settled_row(first.pk)
        with pytest.raises(services.ChatError) as refused:
            await services.astart_turn(alice, "A second message")
        await client_goes_away(response, parts)
        return settled, refused.value

    settled, refused = async_to_sync(scenario)()
    assert settled.status == "ok" and settled.cost_estimated
    assert 0 < settled.cost <= settled.reserved_cost
    assert refused.code == "usage_limit_reached"
    assert Generation.objects.filter(user=alice).count() == 1
    answer = Message.objects.get(role="assistant")
    assert answer.interrupted and answer.content.startswith("more more")


def test_a_provider_that_streams_past_max_tokens_is_cut_and_billed_within_the_hold(
    alice, openai_mock
):
    openai_mock.handler = endless(0)  # every chunk is already there: no wait to time out
    events = stream_events(alice)
    kind, data = events[-1]
    assert (kind, data["code"]) == ("error", "provider_overflow")
    generation = only_generation(alice)
    assert generation.status == "ok" and generation.cost_estimated
    assert generation.cost <= generation.reserved_cost
    assert len(data["response"]) <= llm.max_answer_chars() + len("more ")


def test_consecutive_deltas_that_arrived_together_go_out_as_one_event(alice, openai_mock):
    openai_mock.answer(content=b"".join(demo.reply(b'{"stream": true, "messages": []}').frames))
    events = stream_events(alice)
    deltas = [data["text"] for kind, data in events if kind == "delta"]
    assert events[-1][0] == "done"
    assert "".join(deltas) == events[-1][1]["response"]


def failing_saves(monkeypatch, times: int, exc=None):
    """AnswerRecord.save raises `exc` (the database is away) `times` times, then works."""
    original = services.AnswerRecord.save
    calls = {"failed": 0}

    def save(record):
        if calls["failed"] < times:
            calls["failed"] += 1
            raise exc or OperationalError("connection to server lost")
        return original(record)

    monkeypatch.setattr(services.AnswerRecord, "save", save)
    return calls


def test_a_short_database_outage_at_settle_is_waited_out(alice, openai_mock, monkeypatch):
    """B3: a 15-s cut: the text reached the user, the stream ended with neither done nor
    error, nothing was saved and the prompt stayed "failed" (Retry billed again)."""
    calls = failing_saves(monkeypatch, 3)
    events = stream_events(alice)
    assert calls["failed"] == 3
    kind, data = events[-1]
    assert kind == "done" and data["response"]
    generation = only_generation(alice)
    assert generation.status == "ok" and generation.cost > 0
    prompt, answer = Message.objects.order_by("created_at", "id")
    assert not prompt.failed and answer.content == data["response"]


def test_an_answer_the_database_cannot_take_waits_on_disk_and_is_saved_once_later(
    alice, openai_mock, monkeypatch, settings, tmp_path
):
    """B3: a 40-s cut: the rows were abandoned at $0 while the answers had been delivered."""
    settings.SETTLE_RETRY_SECONDS = 0.5
    settings.CHAT_SPOOL_DIR = str(tmp_path)
    failing_saves(monkeypatch, 10**6)
    events = stream_events(alice)
    kind, data = events[-1]
    assert (kind, data["code"]) == ("error", "answer_not_saved")
    delivered = "".join(d["text"] for k, d in events if k == "delta")
    assert data["response"] == delivered
    assert only_generation(alice).status == "pending"
    assert len(spool.kept()) == 1

    monkeypatch.undo()  # the database is back
    settings.CHAT_SPOOL_DIR = str(tmp_path)
    out = StringIO()
    call_command("settle_spooled", stdout=out)
    assert "Saved 1 kept answer(s); 0 still waiting." in out.getvalue()
    generation = only_generation(alice)
    assert generation.status == "ok" and generation.cost > 0 and not generation.cost_estimated
    prompt, answer = Message.objects.order_by("created_at", "id")
    assert not prompt.failed and answer.content == delivered
    assert spool.kept() == []


def test_saving_the_same_answer_twice_bills_and_shows_it_once(alice, openai_mock):
    turn = services.start_turn(alice, "Hello")
    completion = llm.Completion("Hi there.", limits.TokenUsage(20, 0, 5), latency_ms=10)
    record = services.AnswerRecord.of(turn, completion, False, None)
    first, answer, _ = record.save()
    second, again, _ = record.save()  # a retry after a commit whose outcome was lost
    assert answer.pk == again.pk and first.cost == second.cost
    assert Message.objects.filter(role="assistant").count() == 1
    assert DailyUsage.objects.get(user=alice).generations == 1


def test_a_stream_always_closes_even_when_saving_fails_for_another_reason(
    alice, openai_mock, monkeypatch
):
    failing_saves(monkeypatch, 10**6, RuntimeError("a bug"))
    kind, data = stream_events(alice)[-1]
    assert (kind, data["code"]) == ("error", "internal")
