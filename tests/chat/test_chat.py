import json
import time
from datetime import timedelta
from decimal import Decimal

import httpx2
import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.utils import timezone

from chat import services
from chat.models import Conversation, Message
from tests.helpers import (
    API,
    OPENAI_COMPLETION,
    client_goes_away,
    hold_budget,
    post,
    set_budget,
    settled_today,
    sse_events,
    stream_directly,
)
from usage.models import Alert, DailyUsage, Generation


def test_a_message_is_answered_priced_and_recorded(alice_client, alice, openai_mock):
    openai_mock.answer(body=OPENAI_COMPLETION)
    response = post(alice_client, {"prompt": "What is the capital of France?"})
    assert response.status_code == 200
    data = response.json()
    assert data["response"] == "Paris is the capital of France."
    generation = Generation.objects.get(pk=data["generation_id"])
    assert generation.user == alice
    assert (generation.status, generation.model, generation.provider) == (
        "ok",
        "gpt-4o-mini",
        "openai",
    )
    assert (generation.input_tokens, generation.cached_input_tokens, generation.output_tokens) == (
        2000,
        1024,
        9,
    )
    # (2000 - 1024) x 0.15 + 1024 x 0.075 + 9 x 0.60, per 1M tokens
    assert generation.cost == Decimal("0.0002286")
    assert data["usage"]["cost_usd"] == "0.000229"  # the charge: the cost to 6 places
    conversation = Conversation.objects.get(pk=data["conversation_id"], user=alice)
    assert [(m.role, m.failed) for m in conversation.messages.all()] == [
        ("user", False),
        ("assistant", False),
    ]
    assert conversation.messages.last().generation_id == generation.pk
    sent = openai_mock.requests[0]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["max_completion_tokens"] == 500
    assert sent["messages"][0]["role"] == "system"
    assert sent["messages"][-1] == {"role": "user", "content": "What is the capital of France?"}


def test_the_conversation_history_goes_to_the_model(alice_client, openai_mock):
    first = post(alice_client, {"prompt": "My name is Alice."}).json()
    post(alice_client, {"prompt": "What is my name?", "conversation_id": first["conversation_id"]})
    history = openai_mock.requests[1]["messages"]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    assert history[1]["content"] == "My name is Alice."


def test_history_is_trimmed_to_its_byte_budget(alice_client, openai_mock, settings):
    settings.CHAT_HISTORY_BYTES = 3000
    first = post(alice_client, {"prompt": "a" * 2500}).json()
    post(alice_client, {"prompt": "short", "conversation_id": first["conversation_id"]})
    sent = openai_mock.requests[1]["messages"]
    assert all(m["content"] != "a" * 2500 for m in sent)
    assert sent[-1]["content"] == "short"


def test_a_turn_reads_its_conversation_in_one_round_trip(alice, openai_mock):
    """The conversation (scoped to its user) and its messages are one batch: two statements,
    then the ledger's; a failed prompt is not history."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    first = services.start_turn(alice, "My name is Alice.")
    services.limits.settle(first.reservation, error="left failed: not history")
    second = services.start_turn(alice, "Hello", conversation_id=str(first.conversation.pk))
    services.limits.settle(second.reservation, error="again")
    with CaptureQueriesContext(connection) as queries:
        turn = services.start_turn(alice, "Hello", conversation_id=str(first.conversation.pk))
    reads = [q["sql"] for q in queries if "chat_" in q["sql"] and q["sql"].startswith("SELECT")]
    assert len(reads) == 2
    assert "user_id" in reads[0] and "user_id" in reads[1]  # both scoped to the user
    # The retry reused the failed "Hello"; the earlier failed prompt is left out.
    assert turn.prompt.pk == second.prompt.pk
    assert [m["content"] for m in turn.messages[1:]] == ["Hello"]
    assert turn.prompt.created_at == Message.objects.get(pk=second.prompt.pk).created_at
    assert Message.objects.filter(conversation=first.conversation).count() == 2


@pytest.mark.parametrize("bad", ["not-a-uuid", " ", "12345"])
def test_a_malformed_conversation_id_is_not_found(alice_client, openai_mock, bad):
    response = post(alice_client, {"prompt": "hi", "conversation_id": bad})
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    assert not Generation.objects.exists()


def test_the_generation_event_carries_the_users_id_and_prices(
    alice_client, alice, openai_mock, posthog_capture
):
    openai_mock.answer(body=OPENAI_COMPLETION)
    data = post(alice_client, {"prompt": "What is the capital of France?"}).json()
    [event] = posthog_capture.generations()
    props = event["properties"]
    assert event["distinct_id"] == str(alice.pk)
    assert props["$ai_trace_id"] == data["conversation_id"]
    assert props["generation_id"] == data["generation_id"]
    assert props["conversation_id"] == data["conversation_id"]
    assert props["$ai_model"] == "gpt-4o-mini"
    assert props["$ai_provider"] == "openai"
    assert (props["$ai_input_tokens"], props["$ai_output_tokens"]) == (2000, 9)
    assert props["$ai_cache_read_input_tokens"] == 1024
    assert props["$ai_input_token_price"] == 1.5e-07
    assert props["$ai_output_token_price"] == 6e-07
    assert props["$ai_cache_read_token_price"] == 7.5e-08
    assert props["$ai_http_status"] == 200
    # Privacy mode (the default): neither the prompt nor the answer leaves the server.
    raw = json.dumps(event)
    assert "capital of France" not in raw
    assert "Paris" not in raw


def test_prompts_reach_posthog_only_when_privacy_mode_is_off(
    alice_client, openai_mock, posthog_capture, settings
):
    settings.POSTHOG_PRIVACY_MODE = False
    openai_mock.answer(body=OPENAI_COMPLETION)
    post(alice_client, {"prompt": "What is the capital of France?"})
    [event] = posthog_capture.generations()
    assert "capital of France" in json.dumps(event["properties"]["$ai_input"])


@pytest.mark.parametrize("privacy", [True, False])
@pytest.mark.parametrize("stream", [False, True])
def test_the_model_and_posthog_get_what_the_sdks_own_form_sends(
    alice, openai_mock, posthog_capture, settings, privacy, stream
):
    """With privacy mode on the messages skip the SDK's per-message walk (chat/llm.py): the
    request body and the captured event are the same as with `messages=` itself."""
    import datetime
    import uuid

    from chat import llm
    from usage.pricing import price_for

    settings.POSTHOG_PRIVACY_MODE = privacy
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    context = {
        "user_id": alice.pk,
        "generation_id": uuid.uuid4(),
        "conversation_id": uuid.uuid4(),
        "price": price_for("gpt-4o-mini"),
        "reserved_at": datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC),
        "markup_percent": Decimal(20),
    }

    async def both():
        if stream:
            async for _ in await llm.stream(messages, until=llm.deadline(), **context):
                pass
        else:
            await llm.complete(messages, until=llm.deadline(), **context)
        options = llm._call_options(llm.current_provider(), messages, **context)
        options.pop("extra_body", None)
        options["messages"] = messages
        if stream:
            options["stream"] = True
        answer = await llm.client().chat.completions.create(**options)
        if stream:
            async for _ in answer:
                pass

    async_to_sync(both)()
    ours, sdks = openai_mock.requests
    assert ours == sdks
    assert ours["messages"] == messages
    first, second = (event["properties"] for event in posthog_capture.generations())
    varying = {"$ai_latency", "$ai_time_to_first_token", "$process_person_profile"}
    assert {k: v for k, v in first.items() if k not in varying} == {
        k: v for k, v in second.items() if k not in varying
    }
    assert (first["$ai_input"] is None) is privacy


def test_a_streamed_answer_arrives_in_pieces_and_settles(
    alice_client, alice, openai_mock, posthog_capture, settings
):
    settings.DEMO_STREAM_DELAY = 0.005  # words arrive apart, as a model sends them
    response = post(alice_client, {"prompt": "Tell me something", "stream": True})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = sse_events(response)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("delta") > 10
    streamed = "".join(data["text"] for kind, data in events if kind == "delta")
    done = events[-1][1]
    assert done["response"] == streamed
    generation = Generation.objects.get(user=alice)
    assert generation.status == "ok"
    assert not generation.cost_estimated
    assert generation.output_tokens == done["usage"]["output_tokens"] > 0
    assert openai_mock.requests[0]["stream_options"] == {"include_usage": True}
    [event] = posthog_capture.generations()
    assert event["distinct_id"] == str(alice.pk)
    assert event["properties"]["generation_id"] == str(generation.pk)
    assert event["properties"]["$ai_output_tokens"] == generation.output_tokens
    assert "Tell me something" not in json.dumps(event)


def test_a_stream_the_client_leaves_still_settles_and_keeps_the_partial_answer(
    alice, openai_mock, settings
):
    settings.DEMO_STREAM_DELAY = 0.01  # the model is still sending when the browser leaves

    async def scenario():
        response = await stream_directly(alice, "Tell me something")
        parts = aiter(response)
        for _ in range(4):  # start and a few deltas, then the browser goes away
            await anext(parts)
        await client_goes_away(response, parts)

    async_to_sync(scenario)()
    generation = Generation.objects.get(user=alice)
    assert generation.status == "ok"
    assert generation.cost_estimated
    answer = Message.objects.get(role="assistant")
    assert answer.interrupted and answer.content


def test_a_stream_that_never_started_settles_at_zero(alice, openai_mock):
    async def scenario():
        response = await stream_directly(alice, "Tell me something")
        parts = aiter(response)
        await anext(parts)  # the start event only
        await client_goes_away(response, parts)

    async_to_sync(scenario)()
    generation = Generation.objects.get(user=alice)
    assert (generation.status, generation.cost) == ("error", 0)


def test_the_demo_model_answers_without_any_key(alice_client, alice, settings):
    settings.OPENAI_API_KEY = ""
    data = post(alice_client, {"prompt": "hello demo"}).json()
    assert "offline demo model" in data["response"]
    generation = Generation.objects.get(user=alice)
    assert (generation.provider, generation.model) == ("demo", settings.DEMO_MODEL)
    assert generation.cost > 0
    assert Message.objects.get(role="assistant").demo
    page = alice_client.get(f"/chat/{data['conversation_id']}/").content.decode()
    assert "Demo mode" in page and "demo</span>" in page


def test_an_openai_compatible_server_is_recorded_as_its_provider(
    alice_client, alice, settings, posthog_capture
):
    settings.OPENAI_API_KEY = "ollama"
    settings.OPENAI_BASE_URL = "http://llm.internal:11434/v1"
    from chat import demo, llm

    seen = []

    async def handler(request):
        seen.append(request)
        return await demo.handle(request)

    llm.use_http_client(httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))
    post(alice_client, {"prompt": "hi"})
    assert str(seen[0].url) == "http://llm.internal:11434/v1/chat/completions"
    assert json.loads(seen[0].content)["max_tokens"] == 500
    assert Generation.objects.get(user=alice).provider == "llm.internal"
    [event] = posthog_capture.generations()
    assert event["properties"]["$ai_provider"] == "llm.internal"


FAILURES = [
    (
        "401",
        lambda m: m.answer(401, {"error": {"message": "Incorrect API key provided: sk-te**"}}),
        502,
        "provider_auth",
        1,
    ),
    (
        "429",
        lambda m: m.answer(
            429, {"error": {"message": "Rate limit"}}, headers={"retry-after-ms": "1"}
        ),
        502,
        "provider_rate_limited",
        2,
    ),
    (
        "500",
        lambda m: m.answer(500, {"error": {"message": "boom"}}, headers={"retry-after-ms": "1"}),
        502,
        "provider_error",
        2,
    ),
    ("timeout", lambda m: m.raise_(httpx2.ReadTimeout("slow")), 504, "provider_timeout", 2),
    (
        "connection",
        lambda m: m.raise_(httpx2.ConnectError("refused")),
        502,
        "provider_unreachable",
        2,
    ),
    (
        "malformed",
        lambda m: m.answer(
            200, content=b"<html>not json", headers={"content-type": "application/json"}
        ),
        502,
        "provider_bad_response",
        1,
    ),
]


@pytest.mark.parametrize(
    ("name", "arrange", "status", "code", "attempts"), FAILURES, ids=[f[0] for f in FAILURES]
)
def test_provider_failures_give_a_clear_error_cost_nothing_and_keep_the_prompt(
    alice_client, alice, openai_mock, posthog_capture, name, arrange, status, code, attempts
):
    arrange(openai_mock)
    response = post(alice_client, {"prompt": "Will this work?"})
    assert response.status_code == status
    data = response.json()
    assert data["code"] == code
    assert "sk-" not in data["error"]
    # Transient failures are retried once, client errors never.
    assert len(openai_mock.requests) == attempts
    generation = Generation.objects.get(user=alice)
    assert (generation.status, generation.cost) == ("error", 0)
    assert DailyUsage.objects.get(user=alice).errors == 1
    prompt = Message.objects.get(conversation_id=data["conversation_id"])
    assert (prompt.content, prompt.failed) == ("Will this work?", True)
    # PostHog still hears about the failure, with the user's id.
    [event] = posthog_capture.generations()
    assert event["properties"]["$ai_is_error"] is True


def test_an_answer_of_an_unexpected_shape_is_logged_with_where_it_broke(
    alice_client, alice, openai_mock, caplog
):
    """A provider's answer our reading of it did not expect (here `choices` a string) is a
    clear error to the user, and the server's log has the traceback: a broken provider and
    a fault of ours look alike without it. JSON that does not parse is logged without one."""
    openai_mock.answer(200, {"id": "chatcmpl-x", "object": "chat.completion", "choices": "?"})
    response = post(alice_client, {"prompt": "What shape?"})
    assert (response.status_code, response.json()["code"]) == (502, "provider_bad_response")
    [record] = [r for r in caplog.records if r.name == "chat.llm"]
    assert record.exc_info[0] is AttributeError
    caplog.clear()
    openai_mock.answer(200, content=b"{not json", headers={"content-type": "application/json"})
    response = post(alice_client, {"prompt": "And now?"})
    assert response.json()["code"] == "provider_bad_response"
    [record] = [r for r in caplog.records if r.name == "chat.llm"]
    assert not record.exc_info


def test_a_streamed_failure_is_an_error_event_and_costs_nothing(alice_client, alice, openai_mock):
    openai_mock.answer(500, {"error": {"message": "boom"}}, headers={"retry-after-ms": "1"})
    response = post(alice_client, {"prompt": "Will this work?", "stream": True})
    kind, data = sse_events(response)[-1]
    assert (kind, data["code"]) == ("error", "provider_error")
    assert Generation.objects.get(user=alice).status == "error"


def test_a_retry_reuses_the_failed_prompt(alice_client, openai_mock):
    openai_mock.answer(500, {"error": {"message": "boom"}}, headers={"retry-after-ms": "1"})
    failed = post(alice_client, {"prompt": "Again?"}).json()
    openai_mock.answer(body=OPENAI_COMPLETION)
    ok = post(alice_client, {"prompt": "Again?", "conversation_id": failed["conversation_id"]})
    assert ok.status_code == 200
    messages = Message.objects.filter(conversation_id=failed["conversation_id"])
    assert [(m.role, m.content, m.failed) for m in messages] == [
        ("user", "Again?", False),
        ("assistant", "Paris is the capital of France.", False),
    ]


def test_a_refused_retry_leaves_the_failed_prompt_as_it_was(alice_client, alice, openai_mock):
    openai_mock.answer(500, {"error": {"message": "boom"}}, headers={"retry-after-ms": "1"})
    failed = post(alice_client, {"prompt": "Again?"}).json()
    prompt = Message.objects.get(conversation_id=failed["conversation_id"])
    set_budget(alice, "0.01")
    hold_budget(alice, "0.0099999")
    refused = post(alice_client, {"prompt": "Again?", "conversation_id": failed["conversation_id"]})
    assert refused.status_code == 429
    again = Message.objects.get(conversation_id=failed["conversation_id"])
    assert (again.pk, again.failed, again.generation_id) == (prompt.pk, True, prompt.generation_id)
    assert Generation.objects.get(pk=prompt.generation_id).status == "error"


@pytest.mark.parametrize("in_a_conversation", [False, True])
def test_a_turn_that_first_releases_a_stuck_hold_saves_its_prompt_once(alice, in_a_conversation):
    """reserve() decides again after releasing a hold whose turn stopped (a killed worker):
    the prompt sent with the reservation is taken back and saved once, with the new one."""
    conversation_id = None
    if in_a_conversation:
        first = services.start_turn(alice, "first")
        services.limits.settle(first.reservation, error="not this test's point")
        conversation_id = str(first.conversation.pk)
    stuck = hold_budget(alice, "0.01")
    lapsed = timezone.now() - timedelta(seconds=1)
    Generation.objects.filter(pk=stuck.pk).update(lease_until=lapsed)
    turn = services.start_turn(alice, "Hello", conversation_id)
    assert Generation.objects.get(pk=stuck.pk).status == "abandoned"
    prompts = Message.objects.filter(role="user", content="Hello")
    assert [(m.pk, m.generation_id) for m in prompts] == [
        (turn.prompt.pk, turn.reservation.generation_id)
    ]
    assert Conversation.objects.count() == 1
    assert Generation.objects.get(pk=turn.reservation.generation_id).status == "pending"


def test_a_posthog_outage_never_affects_chat(
    alice_client, alice, openai_mock, settings, requests_mock
):
    settings.POSTHOG_API_KEY = "phc_test"
    settings.POSTHOG_HOST = "https://ph.example.test"
    requests_mock.add("POST", "https://ph.example.test/batch/", status=503)
    response = post(alice_client, {"prompt": "still works?"})
    assert response.status_code == 200
    assert Generation.objects.get(user=alice).status == "ok"
    # PostHog refused the batch at least once...
    deadline = time.monotonic() + 10
    while not any(
        c.response is not None and c.response.status_code == 503 for c in requests_mock.calls
    ):
        assert time.monotonic() < deadline, "the capture client never tried to send"
        time.sleep(0.05)
    # ...then comes back: the SDK's retries deliver the queued event.
    requests_mock.replace("POST", "https://ph.example.test/batch/", json={"status": 1})
    from chatusage import analytics

    analytics.client().flush()
    delivered = [
        c for c in requests_mock.calls if c.response is not None and c.response.status_code == 200
    ]
    assert delivered


def test_the_usage_limit_answers_429_with_spent_budget_and_reset(alice_client, alice, openai_mock):
    set_budget(alice, "0.01")
    hold_budget(alice, "0.0099999")
    response = post(alice_client, {"prompt": "one more"})
    assert response.status_code == 429
    data = response.json()
    assert data["code"] == "usage_limit_reached"
    assert data["budget"] == "0.01"
    assert "spent" in data and "resets_at" in data
    assert openai_mock.requests == []
    # A refused turn writes nothing: no conversation, no message, no ledger row.
    assert "conversation_id" not in data
    assert not Conversation.objects.exists() and not Message.objects.exists()
    assert Generation.objects.filter(user=alice).count() == 1  # the hold only


def test_a_refusal_in_a_conversation_adds_nothing_to_it(alice_client, alice, openai_mock):
    conversation_id = post(alice_client, {"prompt": "first"}).json()["conversation_id"]
    set_budget(alice, "0.01")
    hold_budget(alice, "0.0099999")
    response = post(alice_client, {"prompt": "second", "conversation_id": conversation_id})
    assert response.status_code == 429
    assert response.json()["conversation_id"] == conversation_id
    assert [m.content for m in Message.objects.filter(conversation_id=conversation_id)] == [
        "first",
        Message.objects.get(role="assistant").content,
    ]


def test_a_refused_form_post_keeps_the_prompt_and_writes_nothing(alice_client, alice):
    set_budget(alice, "0.01")
    hold_budget(alice, "0.0099999")
    response = alice_client.post("/chat/", {"prompt": "Please keep me"})
    assert response.status_code == 429
    assert ">Please keep me</textarea>" in response.content.decode()
    assert not Conversation.objects.exists()


def test_a_model_without_a_price_is_refused(alice_client, openai_mock, settings):
    settings.OPENAI_MODEL = "gpt-unpriced"
    response = post(alice_client, {"prompt": "hi"})
    assert response.status_code == 503
    assert response.json()["code"] == "model_not_priced"
    assert openai_mock.requests == []
    assert not Conversation.objects.exists() and not Generation.objects.exists()


def test_too_many_requests_are_rate_limited(alice_client, openai_mock, settings):
    settings.CHAT_RATE_LIMIT = "2/60"
    assert post(alice_client, {"prompt": "1"}).status_code == 200
    assert post(alice_client, {"prompt": "2"}).status_code == 200
    response = post(alice_client, {"prompt": "3"})
    assert (response.status_code, response.json()["code"]) == (429, "rate_limited")
    assert not Message.objects.filter(content="3").exists()


def test_the_api_needs_a_login_and_post(client, alice_client, db):
    assert post(client, {"prompt": "hi"}).status_code == 401
    response = alice_client.get(API)
    assert (response.status_code, response.json()["code"]) == (405, "method_not_allowed")


def test_an_outsider_cannot_read_or_post_into_someone_elses_conversation(
    alice_client, outsider, openai_mock
):
    conversation_id = post(alice_client, {"prompt": "private"}).json()["conversation_id"]
    intruder = Client()
    intruder.force_login(outsider)
    assert intruder.get(f"/chat/{conversation_id}/").status_code == 404
    assert intruder.post(f"/chat/{conversation_id}/", {"prompt": "hi"}).status_code == 404
    response = post(intruder, {"prompt": "hi", "conversation_id": conversation_id})
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    assert "private" not in intruder.get("/chat/").content.decode()
    assert Message.objects.filter(conversation_id=conversation_id).count() == 2


def test_the_form_works_without_javascript(alice_client, openai_mock):
    openai_mock.answer(body=OPENAI_COMPLETION)
    response = alice_client.post("/chat/", {"prompt": "Capital of France?"})
    assert response.status_code == 302
    page = alice_client.get(response.url).content.decode()
    assert "Capital of France?" in page and "Paris is the capital of France." in page


def test_the_form_keeps_the_prompt_when_the_call_fails(alice_client, openai_mock):
    openai_mock.answer(401, {"error": {"message": "bad key"}})
    response = alice_client.post("/chat/", {"prompt": "Please keep me"})
    assert response.status_code == 502
    page = response.content.decode()
    assert "refused this server&#x27;s credentials" in page
    assert ">Please keep me</textarea>" in page


def test_shutdown_delivers_queued_events(
    alice_client, alice, openai_mock, posthog_capture, requests_mock
):
    from chatusage import analytics
    from tests.helpers import batched_events

    post(alice_client, {"prompt": "flush me"})
    analytics.shutdown()  # what atexit and gunicorn's worker_exit call
    assert [
        e["distinct_id"] for e in batched_events(requests_mock) if e["event"] == "$ai_generation"
    ] == [str(alice.pk)]


def test_an_answer_without_usage_is_recorded_at_a_flagged_estimate(
    alice_client, alice, openai_mock
):
    body = {k: v for k, v in OPENAI_COMPLETION.items() if k != "usage"}
    openai_mock.answer(body=body)
    response = post(alice_client, {"prompt": "Capital of France?"})
    assert response.status_code == 200
    assert response.json()["usage"]["estimated"] is True
    generation = Generation.objects.get(user=alice)
    assert generation.status == "ok" and generation.cost_estimated
    assert generation.output_tokens == 8  # 31 bytes of answer at ~4 bytes a token
    assert generation.cost > 0


def test_a_refused_chat_message_still_records_its_alert(alice_client, alice, openai_mock):
    """The refusal is raised after the turn's transaction commits what reserve() recorded."""
    set_budget(alice, "0.01")
    hold_budget(alice, "0.0099999")
    assert post(alice_client, {"prompt": "one more"}).status_code == 429
    assert Alert.objects.filter(user=alice, kind=Alert.Kind.LIMIT).count() == 1


def test_a_prompt_that_cannot_be_saved_holds_no_budget(alice, openai_mock, monkeypatch):
    """Reservation and prompt commit together: a failed save leaves neither behind."""

    from django.db import DatabaseError

    from chat import sql as chat_sql

    # A new conversation: its row goes in, then the prompt's INSERT fails.
    starting = chat_sql.start_conversation
    broken_insert = (f"INSERT INTO {chat_sql.MESSAGE} (role) VALUES (NULL) RETURNING id", [])
    monkeypatch.setattr(
        chat_sql, "start_conversation", lambda c, values: [starting(c, values)[0], broken_insert]
    )
    with pytest.raises(DatabaseError):
        services.start_turn(alice, "Hello")
    assert not Generation.objects.exists()
    assert not Conversation.objects.exists()
    monkeypatch.undo()

    # An existing conversation.
    turn = services.start_turn(alice, "Hello")
    services.limits.settle(turn.reservation, error="not this test's point")

    monkeypatch.setattr(chat_sql, "save_prompt", lambda values: broken_insert)
    with pytest.raises(DatabaseError):
        services.start_turn(alice, "Again", conversation_id=str(turn.conversation.pk))
    assert Generation.objects.count() == 1
    assert turn.conversation.messages.count() == 1


def test_an_answer_that_cannot_be_saved_is_still_billed(alice, openai_mock, monkeypatch):
    """Settle and answer share a transaction; if it fails, the call is settled on its own."""
    from django.db import DatabaseError

    from chat import sql as chat_sql

    turn = services.start_turn(alice, "Hello")
    # The answer's INSERT fails (a constraint), after the settle in the same batch.
    broken = (f"INSERT INTO {chat_sql.MESSAGE} (role) VALUES (NULL) RETURNING id", [])
    monkeypatch.setattr(chat_sql, "save_answer", lambda answer, prompt_id: [broken])
    with pytest.raises(DatabaseError):
        async_to_sync(services.answer)(turn)
    generation = Generation.objects.get(pk=turn.reservation.generation_id)
    assert generation.status == "ok" and generation.cost > 0
    assert DailyUsage.objects.get(user=alice).generations == 1
    assert not Message.objects.filter(role=Message.Role.ASSISTANT).exists()
    assert not Message.objects.get(pk=turn.prompt.pk).failed  # billed: Retry would bill again


def test_an_unexpected_failure_in_a_call_is_recorded_as_itself_not_as_a_client_gone(
    alice, openai_mock, monkeypatch
):
    """Any exception in a non-streamed call was recorded as "The client went away before
    an answer.", which sent whoever read the ledger looking in the wrong place."""

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(services.llm, "complete", broken)
    turn = services.start_turn(alice, "Hello")
    with pytest.raises(RuntimeError):
        async_to_sync(services.answer)(turn)
    generation = Generation.objects.get(pk=turn.reservation.generation_id)
    assert (generation.status, generation.cost) == ("error", 0)
    assert generation.error == "Failed: RuntimeError"


def test_a_conversation_too_long_for_what_is_left_is_not_called_a_used_up_budget(
    alice_client, alice, openai_mock, settings, mailoutbox
):
    """$0.02 of $0.05 left, refused because a long conversation's worst case did not fit,
    then told by banner and mail "You have reached this cycle's limit" while a new chat
    worked."""
    from usage.models import ModelPrice

    ModelPrice.objects.create(  # input at $0.00001 a token, output free: history is the cost
        model="input-model", input_per_1m=10, cached_input_per_1m=10, output_per_1m=0
    )
    settings.OPENAI_MODEL = "input-model"
    settings.CHAT_HISTORY_BYTES = 24000
    set_budget(alice, "0.05")
    settled_today(alice, "0.03")
    conversation = Conversation.objects.create(user=alice, title="long")
    for _ in range(8):  # 16 KB of history: up to $0.16 of input, where $0.02 is left
        Message.objects.create(conversation=conversation, role="user", content="x" * 2000)
    openai_mock.answer(body=OPENAI_COMPLETION)
    refused = post(alice_client, {"prompt": "one more", "conversation_id": str(conversation.pk)})
    data = refused.json()
    assert (refused.status_code, data["code"]) == (429, "conversation_too_long")
    assert (
        "too long for what is left" in data["error"] and "A new chat costs at most" in data["error"]
    )
    assert "Retry-After" not in refused
    assert not Alert.objects.filter(user=alice).exists()  # no "limit reached" alert, no mail
    assert mailoutbox == []
    fresh = post(alice_client, {"prompt": "one more"})  # as the refusal said: a new chat works
    assert fresh.status_code == 200


def test_a_budget_used_up_is_still_called_that_in_a_conversation(alice_client, alice, openai_mock):
    set_budget(alice, "0.05")
    settled_today(alice, "0.05")
    openai_mock.answer(body=OPENAI_COMPLETION)
    conversation = Conversation.objects.create(user=alice, title="short")
    refused = post(alice_client, {"prompt": "hello", "conversation_id": str(conversation.pk)})
    assert refused.json()["code"] == "usage_limit_reached"  # a new chat would not fit either
    assert Alert.objects.filter(user=alice, kind="usage.limit_reached").exists()


def test_each_generation_tells_posthog_its_markup_and_the_user_sees_the_charge(
    alice_client, alice, openai_mock, posthog_capture, settings
):
    settings.BILLING_MARKUP_PERCENT = Decimal("25")
    openai_mock.answer(body=OPENAI_COMPLETION)
    data = post(alice_client, {"prompt": "What is the capital of France?"}).json()
    generation = Generation.objects.get(pk=data["generation_id"])
    assert generation.charge == (generation.cost * Decimal("1.25")).quantize(Decimal("0.000001"))
    assert Decimal(data["usage"]["cost_usd"]) == generation.charge
    [event] = posthog_capture.generations()
    assert event["properties"]["chatusage_markup_percent"] == 25.0


def test_the_answer_statement_names_every_column_of_a_message():
    """chat/sql.py lists a message's columns by hand: a new field must be placed in it."""
    from chat import sql as chat_sql
    from chat.models import Conversation, Message

    columns = {field.column for field in Message._meta.concrete_fields}
    assert columns == {*chat_sql.MESSAGE_FIELDS, "id"}
    conversation = {field.column for field in Conversation._meta.concrete_fields}
    assert conversation == set(chat_sql.CONVERSATION_FIELDS)
