"""Hostile bodies on the JSON endpoints: each gets its status and a JSON error, never a 500."""

import json

import pytest
import responses
from django.test import Client

from chat.models import Conversation, Message
from usage.cycles import cycle_for
from usage.limits import TokenUsage, reserve, settle
from usage.models import Generation

API_CHAT = "/api/chat/"


def chat(client, body, content_type="application/json"):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(API_CHAT, data, content_type=content_type)


CHAT_CASES = [
    ("empty body", b"", "application/json", 400, "invalid_json"),
    ("not json", b"prompt=hi", "application/json", 400, "invalid_json"),
    ("form encoded", b"prompt=hi", "application/x-www-form-urlencoded", 400, "invalid_json"),
    ("json array", [1, 2], "application/json", 400, "invalid_json"),
    ("json string", '"hi"', "application/json", 400, "invalid_json"),
    ("non utf-8", b'{"prompt": "\xff\xfe"}', "application/json", 400, "invalid_json"),
    ("no prompt", {}, "application/json", 400, "invalid_prompt"),
    ("blank prompt", {"prompt": "   "}, "application/json", 400, "empty_prompt"),
    ("prompt null", {"prompt": None}, "application/json", 400, "invalid_prompt"),
    ("prompt list", {"prompt": ["a"]}, "application/json", 400, "invalid_prompt"),
    ("prompt object", {"prompt": {"$gt": ""}}, "application/json", 400, "invalid_prompt"),
    ("prompt nul", {"prompt": "a\u0000b"}, "application/json", 400, "invalid_prompt"),
    ("prompt lone surrogate", b'{"prompt": "\\ud800"}', "application/json", 400, "invalid_prompt"),
    ("deeply nested", b"[" * 100_000, "application/json", 400, "invalid_json"),
    (
        "deeply nested object",
        b'{"prompt": ' + b"[" * 100_000,
        "application/json",
        400,
        "invalid_json",
    ),
    ("prompt too long", {"prompt": "é" * 8001}, "application/json", 400, "prompt_too_long"),
    (
        "huge body",
        b'{"prompt": "' + b"a" * 400_000 + b'"}',
        "application/json",
        413,
        "body_too_large",
    ),
    (
        "stream string",
        {"prompt": "hi", "stream": "true"},
        "application/json",
        400,
        "invalid_stream",
    ),
    (
        "conversation int",
        {"prompt": "hi", "conversation_id": 1},
        "application/json",
        400,
        "invalid_conversation_id",
    ),
    (
        "conversation not uuid",
        {"prompt": "hi", "conversation_id": "../../etc"},
        "application/json",
        404,
        "not_found",
    ),
    (
        "conversation sql",
        {"prompt": "hi", "conversation_id": "1' OR '1'='1"},
        "application/json",
        404,
        "not_found",
    ),
    (
        "unknown conversation",
        {"prompt": "hi", "conversation_id": "00000000-0000-0000-0000-000000000000"},
        "application/json",
        404,
        "not_found",
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "content_type", "status", "code"), CHAT_CASES, ids=[c[0] for c in CHAT_CASES]
)
def test_hostile_chat_bodies(
    alice_client, alice, openai_mock, name, body, content_type, status, code
):
    response = chat(alice_client, body, content_type)
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == code
    assert openai_mock.requests == []
    assert not Generation.objects.exists()


def test_another_users_conversation_id_is_not_found(alice_client, bob, openai_mock):
    theirs = Conversation.objects.create(user=bob, title="bob's")
    response = chat(alice_client, {"prompt": "let me in", "conversation_id": str(theirs.pk)})
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    assert not Message.objects.filter(conversation=theirs).exists()


def test_missing_csrf_is_a_json_403(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = chat(client, {"prompt": "hi"})
    assert response.status_code == 403
    assert response.json()["code"] == "csrf_failed"


def test_anonymous_requests_are_401(client, db):
    assert chat(client, {"prompt": "hi"}).json()["code"] == "not_authenticated"
    assert client.get("/api/usage/").status_code == 401


CYCLE_QUERIES = [
    "?cycle=not-a-date",
    "?cycle=2026-13-45",
    "?cycle=9999-01-01",
    "?cycle=%00",
    "?cycle=0001-01-01",  # year 0 is out of range one cycle earlier
    "?cycle=2020-01-01",  # before the account's first cycle
]


@pytest.mark.parametrize("query", CYCLE_QUERIES)
def test_hostile_usage_queries_are_400s_and_never_reach_posthog(
    alice_client, alice, posthog_query, requests_mock, query
):
    requests_mock.add(responses.POST, posthog_query, json={"results": [], "columns": []})
    response = alice_client.get(f"/api/usage/{query}")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_cycle"
    export = alice_client.get(f"/usage/export.csv{query}")
    assert export.status_code == 400 and export["Content-Type"].startswith("text/plain")
    assert len(requests_mock.calls) == 0  # neither asked PostHog anything
    # The page says why and shows the current cycle instead (PostHog is asked for that one).
    page = alice_client.get(f"/usage/{query}")
    assert page.status_code == 400
    current = cycle_for(alice.usage_account)
    for call in requests_mock.calls:
        sent = json.loads(call.request.body)["query"]["values"]
        assert sent["start"] == current.start.strftime("%Y-%m-%d %H:%M:%S")


def test_other_users_ids_are_ignored_by_the_usage_api(alice_client, alice, bob):
    settle(
        reserve(bob, "gpt-4o", [{"role": "user", "content": "mine"}], 500), TokenUsage(10, 0, 10)
    )
    bob_client = Client()
    bob_client.force_login(bob)
    assert bob_client.get("/api/usage/").json()["totals"]["messages"] == 1
    for param in ("userId", "user_id", "user", "distinct_id"):
        data = alice_client.get(f"/api/usage/?{param}={bob.pk}").json()
        assert data["totals"]["messages"] == 0


def test_the_usage_api_refuses_other_methods(alice_client):
    response = alice_client.post("/api/usage/")
    assert (response.status_code, response.json()["code"]) == (405, "method_not_allowed")


def test_unknown_api_paths_are_json_404(alice_client):
    response = alice_client.get("/api/nothing-here/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
