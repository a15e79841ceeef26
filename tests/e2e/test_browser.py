"""A person's path through the product in headless Chromium (Debian's), driven by Playwright.

Screenshots land in test-artifacts/ (git-ignored) for a human to look at.
"""

import re

import pytest

from chat import services
from tests.e2e.harness.browser import ARTIFACTS, PASSWORD, login
from tests.helpers import hold_budget

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_sign_up_chat_see_the_cost_and_log_out(page, live_server, django_user_model):
    base = live_server.url
    page.goto(f"{base}/accounts/signup/")
    page.fill("#id_username", "carol")
    page.fill("#id_email", "carol@example.com")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/chat/")

    page.fill("#prompt", "How much does this answer cost?")
    with page.expect_response(lambda r: r.url.endswith("/api/chat/")) as answer:
        page.click("#send")
    assert answer.value.headers["content-type"] == "text/event-stream"
    assistant = page.locator(".message-assistant .content").last
    assistant.wait_for()
    meta = page.locator(".message-assistant .answer-meta").last
    meta.wait_for()
    assert "offline demo model" in assistant.inner_text()
    assert re.fullmatch(r"\d+ tokens · \$0\.\d{4,6}", meta.inner_text())
    assert re.fullmatch(
        r"\$5\.00 left of \$5\.00 · resets \d{1,2} \w{3}", page.inner_text("#budget-line")
    )
    assert re.fullmatch(rf"{base}/chat/[0-9a-f-]{{36}}/", page.url)  # the conversation's URL
    assert page.input_value("#prompt") == ""
    assert "How much does this answer cost?" in page.inner_text(".conversations")
    page.screenshot(path=ARTIFACTS / "chat.png", full_page=True)

    page.click("header nav a[href='/usage/']")
    page.wait_for_url(f"{base}/usage/")
    assert page.inner_text("#stat-messages") == "1"
    assert re.fullmatch(r"\$0\.\d+", page.inner_text("#stat-cost"))
    assert page.inner_text("#stat-cost") != "$0.0000"
    assert "chatusage-demo" in page.inner_text("#models")
    page.screenshot(path=ARTIFACTS / "usage.png", full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=ARTIFACTS / "usage-phone.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 860})

    page.click("details.dropdown summary")
    page.click("text=Log out")
    page.wait_for_url(f"{base}/accounts/login/")
    page.goto(f"{base}/usage/")
    assert "/accounts/login/" in page.url

    # Staff see carol and her usage in the admin.
    django_user_model.objects.create_user(
        "sam", "sam@example.com", PASSWORD, is_staff=True, is_superuser=True
    )
    login(page, base, "sam", PASSWORD)
    page.goto(f"{base}/admin/auth/user/?q=carol")
    row = page.locator("#result_list tbody tr").first
    assert "carol" in row.inner_text()
    assert row.locator(".field-messages_this_cycle").inner_text() == "1"
    assert row.locator(".field-cost_this_cycle").inner_text().startswith("$0.0")
    page.screenshot(path=ARTIFACTS / "admin-users.png", full_page=True)


def test_a_refused_message_keeps_the_prompt_and_writes_nothing(
    page, live_server, django_user_model
):
    user = django_user_model.objects.create_user("dave", "dave@example.com", PASSWORD)
    user.usage_account.budget_usd = "0.01"
    user.usage_account.save()
    # Calls in flight hold all but enough for a short message, not for a long one.
    hold_budget(user, "0.00965")
    assert services.budget_view(user).state != "empty"  # the composer is there
    login(page, live_server.url, "dave", PASSWORD)
    page.fill("#prompt", "Keep this prompt, please. " * 40)
    page.click("#send")
    page.locator("#chat-error").wait_for(state="visible")
    assert "Usage limit reached" in page.inner_text("#chat-error-text")
    assert page.input_value("#prompt") == ("Keep this prompt, please. " * 40).strip()
    # The same message would be refused again: no Retry, no sent bubble, nothing saved.
    assert not page.is_visible("#retry")
    assert page.locator(".message-user").count() == 0
    assert not user.conversations.exists()
    page.screenshot(path=ARTIFACTS / "chat-limit.png", full_page=True)
