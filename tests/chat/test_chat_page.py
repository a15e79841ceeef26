"""The chat page keeps money in view: each answer's cost, the budget left, a clear card
when it is used up, and the most the next message can cost, with or without JavaScript."""

import json
import re
from decimal import ROUND_HALF_UP, Decimal

import pytest

from tests.helpers import OPENAI_COMPLETION, hold_budget, post, set_budget, settled_today
from usage import limits
from usage.models import Generation

pytestmark = pytest.mark.django_db


def test_every_answer_shows_its_tokens_and_cost_after_a_reload(alice_client, openai_mock):
    body = json.loads(json.dumps(OPENAI_COMPLETION))
    body["choices"][0]["finish_reason"] = "length"
    openai_mock.answer(body=body)
    data = post(alice_client, {"prompt": "Tell me"}).json()
    assert data["usage"]["truncated"] is True
    page = alice_client.get(f"/chat/{data['conversation_id']}/").content.decode()
    meta = re.search(r'<small class="answer-meta">(.*?)</small>', page).group(1)
    assert meta == "2,009 tokens · $0.0002 · cut at the length limit"


def test_the_form_without_javascript_shows_the_cost_too(alice_client, alice, openai_mock):
    body = {k: v for k, v in OPENAI_COMPLETION.items() if k != "usage"}  # no usage: estimated
    openai_mock.answer(body=body)
    response = alice_client.post("/chat/", {"prompt": "Capital of France?"}, follow=True)
    assert "· estimated</small>" in response.content.decode()


def test_the_budget_line_says_what_is_left_and_when_it_resets(alice_client, alice):
    set_budget(alice, "1.00")
    hold_budget(alice, "0.25")
    page = alice_client.get("/chat/").content.decode()
    line = re.search(
        r'<p class="budget-line budget-(\w+) small" id="budget-line">\s*(.*?)\s*</p>', page, re.S
    )
    assert line.group(1) == "ok"
    assert line.group(2).startswith("$0.75 left of $1.00 · resets ")


def test_from_80_percent_the_line_turns_amber(alice_client, alice):
    set_budget(alice, "1.00")
    settled_today(alice, "0.82")
    assert 'class="budget-line budget-near small"' in alice_client.get("/chat/").content.decode()


def test_with_nothing_left_a_card_replaces_the_composer(alice_client, alice, openai_mock):
    set_budget(alice, "0.01")
    hold_budget(alice, "0.0099999")
    page = alice_client.get("/chat/").content.decode()
    assert "This cycle's budget is used up" in page
    assert "Chat resumes on" in page and "See what you used" in page
    assert re.search(r'<form method="post" id="chat-form"[^>]*\shidden', page)


def test_users_without_a_cap_see_no_budget_line(alice_client, alice):
    set_budget(alice, "0")
    assert 'id="budget-line" hidden' in alice_client.get("/chat/").content.decode()


def test_the_answer_brings_the_new_budget_along(alice_client, alice, openai_mock):
    set_budget(alice, "1.00")
    openai_mock.answer(body=OPENAI_COMPLETION)
    budget = post(alice_client, {"prompt": "hi"}).json()["budget"]
    assert budget["budget"] == "1.00" and budget["state"] == "ok"
    left = Decimal("1.00") - Generation.objects.get().cost
    assert Decimal(budget["left"]) == left.quantize(Decimal("0.000001"))


def test_the_pre_send_estimate_is_the_hold_reserve_places(alice_client, alice, settings):
    page = alice_client.get("/chat/").content.decode()
    line = re.search(
        r'id="estimate-line" aria-live="off" data-base-tokens="(\d+)" '
        r'data-input-price="([\d.E-]+)" data-output-cost="([\d.E-]+)" '
        r'data-markup-percent="([\d.]+)"',
        page,
    )
    base, input_price, output_cost = int(line[1]), Decimal(line[2]), Decimal(line[3])
    markup = Decimal(line[4])
    prompt = "What does a message cost? ünïcode"
    # What the page's script computes for this prompt (the charge, to 6 places)...
    cost = (base + len(prompt.encode())) * input_price + output_cost
    shown = (cost * (1 + markup / 100)).quantize(Decimal("0.000001"), ROUND_HALF_UP)
    # ...is what reserve() holds for it.
    from chat.services import history

    held = limits.worst_case(settings.DEMO_MODEL, history(None, prompt), settings.OPENAI_MAX_TOKENS)
    assert shown == held


def test_a_conversation_can_be_renamed_only_by_its_owner(alice_client, outsider, openai_mock):
    from django.test import Client

    conversation_id = post(alice_client, {"prompt": "first words"}).json()["conversation_id"]
    intruder = Client()
    intruder.force_login(outsider)
    assert intruder.post(f"/chat/{conversation_id}/rename/", {"title": "mine"}).status_code == 404
    alice_client.post(f"/chat/{conversation_id}/rename/", {"title": "  Trip   plans "})
    page = alice_client.get(f"/chat/{conversation_id}/").content.decode()
    assert "<title>Trip plans · chatusage</title>" in page


def test_deleting_a_conversation_keeps_what_it_cost(alice_client, alice, outsider, openai_mock):
    from django.test import Client

    from chat.models import Conversation, Message

    conversation_id = post(alice_client, {"prompt": "forget me"}).json()["conversation_id"]
    intruder = Client()
    intruder.force_login(outsider)
    assert intruder.post(f"/chat/{conversation_id}/delete/").status_code == 404
    response = alice_client.post(f"/chat/{conversation_id}/delete/", follow=True)
    assert "Its costs stay in your usage" in response.content.decode()
    assert not Conversation.objects.exists() and not Message.objects.exists()
    generation = Generation.objects.get(user=alice)
    assert generation.status == "ok" and generation.cost > 0
    assert alice_client.get("/api/usage/").json()["usage"] == 1


def test_conversations_are_searchable_and_paged(alice_client, alice):
    from chat.models import Conversation

    Conversation.objects.bulk_create(
        Conversation(user=alice, title=f"topic {n}") for n in range(55)
    )
    Conversation.objects.create(user=alice, title="Holiday in Lisbon")
    first = alice_client.get("/chat/").content.decode()
    assert "page 1 of 2" in first and "Older</a>" in first
    found = alice_client.get("/chat/?q=lisbon").content.decode()
    assert "Holiday in Lisbon" in found and "topic 3<" not in found


def test_pages_have_a_skip_link_a_favicon_and_follow_the_systems_theme(alice_client):
    page = alice_client.get("/chat/").content.decode()
    assert '<a class="skip-link" href="#main">' in page and 'id="main"' in page
    assert 'rel="icon"' in page
    assert "data-theme" not in page  # Pico follows prefers-color-scheme
    assert 'id="messages" aria-live' not in page  # one announcement per answer, not per token
    assert alice_client.get("/favicon.ico").status_code == 301
