"""The chat page in Chromium against the app under uvicorn: answers stream, render as
markdown, never run what a model writes, and Stop settles what arrived."""

import json
import re

import httpx2
import pytest

from chat import demo, llm
from chat.models import Message
from tests.e2e.harness.browser import (
    ARTIFACTS,
    HANG_GUARD_MS,
    PASSWORD,
    login,
    read_when_free,
)
from tests.e2e.harness.client import wait_for
from usage.models import Generation

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HOSTILE = (
    "## Result\n\n```python\nprint('hi')\n```\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n- one\n- two\n\n"
    "[docs](https://example.com) <script>document.title='pwned'</script> "
    "<img src=x onerror=\"document.title='pwned'\"> [x](javascript:document.title='pwned')"
)


def streaming_model(answer: str, delay: float = 0.0):
    """An OpenAI-compatible stream of `answer`, a word every `delay` seconds."""

    async def handler(request):
        body = json.loads(request.content)
        frames = list(
            demo.stream_chunks("chatcmpl-x", body["model"], 0, answer, "stop", None, False)
        )
        return httpx2.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=demo._paced(frames, delay),
        )

    return handler


@pytest.fixture
def page(browser, settings):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(HANG_GUARD_MS)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs
    yield page
    context.close()


@pytest.fixture
def erin(django_user_model):
    return django_user_model.objects.create_user("erin", "erin@example.com", PASSWORD)


def test_a_markdown_answer_renders_streamed_and_after_reload_and_runs_nothing(
    page, asgi_server, erin, settings
):
    settings.OPENAI_API_KEY = "sk-test"
    settings.OPENAI_MODEL = "gpt-4o-mini"
    llm.use_http_client(
        httpx2.AsyncClient(transport=httpx2.MockTransport(streaming_model(HOSTILE)))
    )
    try:
        login(page, asgi_server, "erin", PASSWORD)
        page.fill("#prompt", "Format something")
        page.click("#send")
        page.locator(".message-assistant .answer-meta").wait_for()
        for _ in range(2):  # as streamed, then after a reload
            answer = page.locator(".message-assistant .content").last
            assert answer.locator("pre.highlight code.language-python").count() == 1
            assert answer.locator("table td").first.inner_text() == "1"
            assert answer.locator("ul li").count() == 2
            link = answer.locator("a[href='https://example.com']")
            assert link.get_attribute("rel") == "noopener nofollow"
            assert answer.locator("script, img").count() == 0
            assert "<script>" in answer.inner_text()  # shown as text
            assert answer.locator("pre .copy-code").count() == 1
            assert "pwned" not in page.title() and page.dialogs == []
            assert "tokens · $" in page.locator(".answer-meta").last.inner_text()
            page.screenshot(path=ARTIFACTS / "chat-markdown.png", full_page=True)
            page.reload()
        assert page.title().startswith("Format something")
    finally:
        llm.use_http_client(None)


def test_stop_ends_the_stream_and_settles_what_arrived(page, asgi_server, erin, settings):
    settings.DEMO_STREAM_DELAY = 0.1  # a slow answer, some seconds long
    login(page, asgi_server, "erin", PASSWORD)
    page.fill("#prompt", "Tell me everything")
    page.click("#send")
    streaming = page.locator(".message-assistant.streaming .content")
    streaming.wait_for()
    # Some words in, more to come (a locator's text filter, which the page's CSP allows).
    page.locator(
        ".message-assistant.streaming .content", has_text=re.compile(r".{20}", re.S)
    ).wait_for()
    page.click("#stop")
    page.locator("text=Stopped. What arrived is kept").wait_for()
    assert page.is_visible("#send")
    # Then the page shows the stopped answer as the server saved and billed it, cost and
    # all: what a reload shows (it showed no cost until a reload).
    page.locator(".message-assistant .answer-meta", has_text="estimated").wait_for()
    live = page.inner_text(".message-assistant")
    settled = wait_for(
        lambda: read_when_free(
            lambda: not Generation.objects.filter(user=erin, status="pending").exists()
        ),
        60,
    )
    assert settled, "the stopped call was never settled"
    generation = read_when_free(lambda: Generation.objects.get(user=erin))
    assert (generation.status, generation.cost_estimated) == ("ok", True)
    answer = read_when_free(lambda: Message.objects.get(role="assistant"))
    assert answer.interrupted and answer.content
    page.reload()
    assert "Interrupted before the end" in page.inner_text(".message-assistant")
    assert page.inner_text(".message-assistant") == live


WIDER_THAN_VIEWPORT = """() => [...document.querySelectorAll("body *")]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
  .slice(0, 5).map(e => e.tagName + "." + e.className + " " + e.getBoundingClientRect().right
    + " " + e.textContent.trim().slice(0, 40))"""
SIZES = [(1366, 900, "light"), (1366, 900, "dark"), (390, 844, "light"), (390, 844, "dark")]
LONG_NAME = "a-rather-long-username-of-30ch"


@pytest.mark.parametrize(("width", "height", "scheme"), SIZES)
def test_screenshots_of_chat_light_and_dark_desktop_and_phone(
    browser,  # noqa: F811
    asgi_server,
    django_user_model,
    settings,
    width,
    height,
    scheme,
):
    settings.DEMO_STREAM_DELAY = 0
    django_user_model.objects.create_user(LONG_NAME, "l@example.com", PASSWORD)
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)
    page = context.new_page()
    try:
        login(page, asgi_server, LONG_NAME, PASSWORD)
        page.fill("#prompt", "Write some python code")
        page.click("#send")
        page.locator(".message-assistant .answer-meta").wait_for()
        # Nothing scrolls sideways, even with a 30-character username in the header.
        wide = page.evaluate(WIDER_THAN_VIEWPORT)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), wide
        page.screenshot(path=ARTIFACTS / f"chat-{width}-{scheme}.png")  # what the screen shows
    finally:
        context.close()
