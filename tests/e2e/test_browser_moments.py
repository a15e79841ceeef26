"""The chat page at the moments that matter, in Chromium: while an answer streams, when it
is stopped or fails, in a long conversation, on a phone. Nothing typed is lost, nothing new
hides behind the composer, and what a refusal or the estimate says is what the server does."""

import re
from decimal import Decimal

import httpx2
import pytest

from chat import llm, services
from chat.models import Conversation, Message
from tests.e2e.harness.browser import ARTIFACTS, PASSWORD, login, read_when_free
from tests.e2e.test_browser_chat import streaming_model
from usage import limits
from usage.models import UsageAccount

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ivy(django_user_model):
    user = django_user_model.objects.create_user("ivy", "ivy@example.com", PASSWORD)
    UsageAccount.objects.filter(user=user).update(budget_usd=Decimal(0))  # no cap
    return user


def slow_model(settings, answer, delay):
    settings.OPENAI_API_KEY = "sk-test"
    settings.OPENAI_MODEL = "gpt-4o-mini"
    llm.use_http_client(
        httpx2.AsyncClient(transport=httpx2.MockTransport(streaming_model(answer, delay)))
    )


def streaming(page):
    """Wait until some words of an answer are on the page and more are coming."""
    page.locator(
        ".message-assistant.streaming .content", has_text=re.compile(r"\w+ \w+ \w+", re.S)
    ).wait_for()


def test_the_box_empties_on_send_and_what_is_typed_meanwhile_stays(
    page, asgi_server, ivy, settings
):
    slow_model(settings, "word " * 60, 0.05)
    try:
        login(page, asgi_server, "ivy", PASSWORD)
        page.fill("#prompt", "First question")
        page.click("#send")
        assert page.input_value("#prompt") == ""  # sent: it left the box at once
        streaming(page)
        page.type("#prompt", "my next question")
        page.locator(".message-assistant .answer-meta").wait_for()
        assert page.input_value("#prompt") == "my next question"
    finally:
        llm.use_http_client(None)


def test_escape_stops_a_streaming_answer(page, asgi_server, ivy, settings):
    slow_model(settings, "word " * 400, 0.05)
    try:
        login(page, asgi_server, "ivy", PASSWORD)
        page.fill("#prompt", "Tell me a lot")
        page.click("#send")
        streaming(page)
        page.keyboard.press("Escape")
        page.locator("text=Stopped. What arrived is kept").wait_for()
        assert page.is_visible("#send")
    finally:
        llm.use_http_client(None)


def long_conversation(user, turns=25):
    conversation = Conversation.objects.create(user=user, title="A long one")
    for n in range(turns):
        Message.objects.create(conversation=conversation, role="user", content=f"Question {n}")
        Message.objects.create(
            conversation=conversation,
            role="assistant",
            content=f"Answer {n}: " + "a fairly long line of text to fill the page " * 3,
        )
    return conversation


def composer_top(page) -> float:
    return page.locator("#chat-form").bounding_box()["y"]


def test_in_a_long_conversation_the_newest_content_stays_above_the_composer(
    page, asgi_server, ivy, settings
):
    conversation = long_conversation(ivy)
    slow_model(settings, "line of the answer\n\n" * 40, 0.05)
    try:
        login(page, asgi_server, "ivy", PASSWORD)
        page.goto(f"{asgi_server}/chat/{conversation.pk}/")
        page.fill("#prompt", "One more question")
        page.click("#send")
        mine = page.locator(".message-user").last
        assert mine.bounding_box()["y"] + mine.bounding_box()["height"] <= composer_top(page) + 1
        streaming(page)
        answer = page.locator(".message-assistant.streaming")
        page.locator(
            ".message-assistant.streaming .content", has_text=re.compile(r"(line.*){8}", re.S)
        ).wait_for()
        box = answer.bounding_box()
        assert box["y"] + box["height"] <= composer_top(page) + 1  # followed, not hidden
        page.screenshot(path=ARTIFACTS / "chat-long-conversation-streaming.png")

        page.mouse.wheel(0, -1500)  # the user scrolls up to read: the page stops following
        page.locator("#jump-latest").wait_for(state="visible")
        page.locator(".message-assistant .answer-meta").last.wait_for()
        assert page.is_visible("#jump-latest")
        page.click("#jump-latest")
        meta = page.locator(".message-assistant .answer-meta").last
        box = meta.bounding_box()
        assert box["y"] + box["height"] <= composer_top(page) + 1
        assert page.is_hidden("#jump-latest")
    finally:
        llm.use_http_client(None)


def test_answers_keep_list_markers_and_whole_numbers_in_tables_on_a_phone(
    page, asgi_server, ivy, settings
):
    answer = (
        "Steps:\n\n- first step\n- second step\n\n1. one\n2. two\n\n"
        "| model | input per 1M | output per 1M | cached per 1M |\n"
        "|---|---|---|---|\n"
        "| gpt-4o-mini-2024-07-18 | 0.150000 | 0.600000 | 0.075000 |\n"
    )
    slow_model(settings, answer, 0)
    try:
        page.set_viewport_size({"width": 390, "height": 844})
        login(page, asgi_server, "ivy", PASSWORD)
        page.fill("#prompt", "Prices please")
        page.click("#send")
        page.locator(".message-assistant .answer-meta").wait_for()
        content = page.locator(".message-assistant .content").last
        markers = content.locator("li").evaluate_all(
            "items => items.map(li => getComputedStyle(li).listStyleType)"
        )
        assert markers == ["disc", "disc", "decimal", "decimal"]
        cells = content.locator("td").evaluate_all(
            """cells => cells.map(td => { const r = document.createRange();
                 r.selectNodeContents(td); return r.getClientRects().length; })"""
        )
        assert cells and set(cells) == {1}, cells  # every number on one line
        page.screenshot(path=ARTIFACTS / "chat-table-phone.png", full_page=True)
    finally:
        llm.use_http_client(None)


def test_deleting_a_conversation_asks_first(page, asgi_server, ivy):
    conversation = long_conversation(ivy, turns=1)
    login(page, asgi_server, "ivy", PASSWORD)
    page.goto(f"{asgi_server}/chat/{conversation.pk}/")
    page.click("summary:has-text('Rename or delete')")
    page.click("text=Delete this conversation…")
    page.locator("h1", has_text="Delete “A long one”?").wait_for()
    page.click("text=Keep it")
    page.wait_for_url(f"{asgi_server}/chat/{conversation.pk}/")
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    page.goto(f"{asgi_server}/chat/{conversation.pk}/delete/")
    page.click("button.danger")
    page.locator("text=Conversation deleted").wait_for()
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_a_paused_account_sees_why_and_an_unverified_one_a_disabled_composer(
    page, asgi_server, ivy, django_user_model
):
    UsageAccount.objects.filter(user=ivy).update(blocked=True, budget_usd=Decimal(5))
    login(page, asgi_server, "ivy", PASSWORD)
    page.locator("#blocked-card").wait_for()
    assert page.is_hidden("#chat-form")
    assert "left of" not in page.inner_text("#chat")  # no "$5.00 left" for a paused account
    page.screenshot(path=ARTIFACTS / "chat-blocked.png")
    page.click("text=ivy")
    page.click("text=Log out")
    newbie = django_user_model.objects.create_user("newbie", "new@example.com", PASSWORD)
    UsageAccount.objects.filter(user=newbie).update(email_verified=False)
    login(page, asgi_server, "newbie", PASSWORD)
    page.locator("#verify-notice").wait_for()
    assert page.is_disabled("#prompt") and page.is_disabled("#send")
    assert page.is_visible("#verify-notice button")  # the resend link beside it


def test_the_estimate_follows_the_growing_history(page, asgi_server, ivy, settings):
    slow_model(settings, "a long answer that grows the history " * 30, 0)
    try:
        login(page, asgi_server, "ivy", PASSWORD)
        page.fill("#prompt", "Hello")
        before = page.inner_text("#estimate-line")
        page.click("#send")
        page.locator(".message-assistant .answer-meta").wait_for()
        page.fill("#prompt", "Hello")
        after = page.inner_text("#estimate-line")
        assert after != before
        conversation = Conversation.objects.get(user=ivy)
        held = limits.worst_case(
            "gpt-4o-mini", services.history(conversation, "Hello"), settings.OPENAI_MAX_TOKENS
        )
        assert f"at most ${held:.4f} for this message" in after
    finally:
        llm.use_http_client(None)


def test_regenerate_and_edit_make_new_turns(page, asgi_server, ivy, settings):
    from usage.models import Generation

    slow_model(settings, "An answer.", 0)
    try:
        login(page, asgi_server, "ivy", PASSWORD)
        page.fill("#prompt", "What is a ledger?")
        page.click("#send")
        page.locator(".message-assistant .answer-meta").wait_for()
        page.click(".message-assistant .regenerate")
        page.locator(".message-assistant .answer-meta").nth(1).wait_for()
        questions = page.locator(".message-user .content").all_inner_texts()
        assert questions == ["What is a ledger?", "What is a ledger?"]  # shown as a new turn
        assert page.locator(".regenerate").count() == 1  # only on the last answer
        page.click(".message-user .edit-prompt")
        assert page.input_value("#prompt") == "What is a ledger?"
        page.fill("#prompt", "What is a ledger, briefly?")
        page.click("#send")
        page.locator(".message-assistant .answer-meta").nth(2).wait_for()
        assert read_when_free(lambda: Generation.objects.filter(user=ivy).count()) == 3  # billed
        page.reload()
        assert page.locator(".message-user").count() == 3  # as after a reload
    finally:
        llm.use_http_client(None)


def test_conversations_are_grouped_by_date_and_a_drawer_on_a_phone(page, asgi_server, ivy):
    from datetime import timedelta

    from django.utils import timezone

    old = long_conversation(ivy, turns=1)
    Conversation.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(days=3))
    Conversation.objects.create(user=ivy, title="Fresh one")
    login(page, asgi_server, "ivy", PASSWORD)
    page.wait_for_url(f"{asgi_server}/chat/")
    groups = page.locator(".conversation-group").all_inner_texts()
    assert [g.lower() for g in groups] == ["today", "previous 7 days"]
    assert page.is_hidden("#conversation-drawer > summary")  # no drawer on a desktop
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert not page.locator("#conversation-drawer").evaluate("d => d.open")
    assert page.is_hidden("text=Fresh one")
    page.click("#conversation-drawer > summary")
    assert page.is_visible("text=Fresh one")
    composer = page.locator("#chat-form").bounding_box()
    assert composer["height"] <= 844 / 4 + 1  # a quarter of the screen at most
    page.screenshot(path=ARTIFACTS / "chat-phone-drawer.png")


def test_markdown_renders_while_it_streams_and_stays_safe(page, asgi_server, ivy, settings):
    answer = (
        "Here is **the plan**:\n\n- first item\n- second item\n\n"
        "<img src=x onerror=\"document.title='pwned'\"> [x](javascript:document.title='pwned')\n\n"
        + "and more words to come "
        * 60
    )
    slow_model(settings, answer, 0.03)
    try:
        login(page, asgi_server, "ivy", PASSWORD)
        page.fill("#prompt", "Plan please")
        page.click("#send")
        items = page.locator(".message-assistant.streaming .content ul li")
        items.nth(1).wait_for()  # a list while the answer is still streaming
        streaming = page.locator(".message-assistant.streaming .content")
        assert streaming.locator("strong", has_text="the plan").count() == 1
        assert "- first item" not in streaming.inner_text()
        assert streaming.locator("img").count() == 0
        assert streaming.locator("a[href^='javascript']").count() == 0
        page.locator(".message-assistant .answer-meta").wait_for()
        assert "pwned" not in page.title()
    finally:
        llm.use_http_client(None)


def test_a_stream_that_breaks_after_words_arrived_shows_as_cut_short_like_a_reload(
    page, asgi_server, ivy
):
    """The browser's connection ends with no closing event: the words that arrived stay,
    marked cut short, with no Retry (they were billed), then the page shows the answer as
    the server saved it. Playwright answers the request itself, cut off after a delta."""
    import json as jsonlib

    conversation = Conversation.objects.create(user=ivy, title="Cut")
    Message.objects.create(conversation=conversation, role="user", content="Tell me")
    Message.objects.create(
        conversation=conversation, role="assistant", content="Partial words", interrupted=True
    )
    start = {"conversation_id": str(conversation.pk), "generation_id": "g"}
    body = (
        f"event: start\ndata: {jsonlib.dumps(start)}\n\n"
        'event: delta\ndata: {"text": "Partial words"}\n\n'
    )
    page.route(
        "**/api/chat/",
        lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=body
        ),
    )
    login(page, asgi_server, "ivy", PASSWORD)
    page.wait_for_url(f"{asgi_server}/chat/")
    page.fill("#prompt", "Tell me")
    page.click("#send")
    page.locator(".message-assistant", has_text="Interrupted before the end").wait_for()
    assert page.input_value("#prompt") == ""  # not offered again: it was answered, in part
    assert page.is_hidden("#retry")
    live = page.inner_text("#messages")
    page.reload()
    assert page.inner_text("#messages") == live
