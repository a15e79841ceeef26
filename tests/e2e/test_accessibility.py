"""axe-core (WCAG 2 A and AA rules) finds nothing on the pages people use, light and dark."""

from pathlib import Path

import pytest

from tests.conftest import hold_budget
from tests.e2e.test_browser import (  # noqa: F401
    ARTIFACTS,
    CHROMIUM_ARGS,
    PASSWORD,
    browser,  # noqa: F401 - the fixture
    login,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
RUN = """async (include) => {
  const context = include ? {include: include.map(s => [s])} : document;
  const result = await axe.run(context, {runOnly: ["wcag2a", "wcag2aa", "wcag21aa"]});
  const where = v => v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(", ");
  return result.violations.map(v => v.id + ": " + where(v));
}"""


def violations(page, include: list[str] | None = None) -> list[str]:
    """axe's WCAG 2 A/AA violations on the page, or only inside the `include` selectors."""
    page.add_script_tag(path=str(AXE))
    return page.evaluate(RUN, include)


@pytest.fixture(params=["light", "dark"])
def scheme_page(request, browser, settings):  # noqa: F811
    settings.DEMO_STREAM_DELAY = 0
    ARTIFACTS.mkdir(exist_ok=True)
    # axe is injected as an inline script, which the app's CSP rightly refuses.
    context = browser.new_context(
        viewport={"width": 1280, "height": 860}, color_scheme=request.param, bypass_csp=True
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.scheme = request.param
    yield page
    context.close()


def check(page, name):
    found = violations(page)
    page.screenshot(path=ARTIFACTS / f"axe-{name}-{page.scheme}.png", full_page=True)
    assert found == [], f"{name}: {found}"


def test_the_public_pages_pass_axe(scheme_page, live_server):
    page = scheme_page
    for name, path in [
        ("login", "/accounts/login/"),
        ("signup", "/accounts/signup/"),
        ("password-reset", "/accounts/password_reset/"),
    ]:
        page.goto(live_server.url + path)
        check(page, name)


def test_the_chat_usage_and_password_pages_pass_axe(scheme_page, live_server, django_user_model):
    page = scheme_page
    user = django_user_model.objects.create_user("erin", "erin@example.com", PASSWORD)
    login(page, live_server.url, "erin", PASSWORD)
    page.wait_for_url(f"{live_server.url}/chat/")
    check(page, "chat-empty")
    page.fill("#prompt", "Show me a table of prices")
    page.click("#send")
    page.locator(".message-assistant .answer-meta").wait_for()
    check(page, "chat-answered")
    page.goto(live_server.url + "/usage/")
    check(page, "usage")
    page.goto(live_server.url + "/accounts/password_change/")
    check(page, "password-change")
    user.usage_account.budget_usd = "0.01"
    user.usage_account.save()
    hold_budget(user, "0.01")
    page.goto(live_server.url + "/chat/")
    page.locator("#budget-empty").wait_for()
    check(page, "chat-budget-used-up")


def test_a_refused_message_passes_axe(scheme_page, live_server, django_user_model):
    page = scheme_page
    user = django_user_model.objects.create_user("fred", "fred@example.com", PASSWORD)
    user.usage_account.budget_usd = "0.01"
    user.usage_account.save()
    hold_budget(user, "0.00965")  # room for a short message, not for this long one
    login(page, live_server.url, "fred", PASSWORD)
    page.wait_for_url(f"{live_server.url}/chat/")
    page.fill("#prompt", "Keep this prompt, please. " * 40)
    page.click("#send")
    page.locator("#chat-error").wait_for(state="visible")
    check(page, "chat-refused")
