"""The usage page and the support admin in Chromium, on the seeded demo: a user with a full
history, kenji (near his budget), maria (over hers), a new user with nothing yet, and staff.
Screenshots for people to look at; axe-core for what they cannot see."""

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from tests.e2e.harness.browser import ARTIFACTS, HANG_GUARD_MS, PASSWORD, login, violations
from tests.e2e.test_browser_chat import WIDER_THAN_VIEWPORT

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

VIEWS = [
    ("desktop", 1366, 900, "light"),
    ("phone", 390, 844, "light"),
    ("desktop", 1366, 900, "dark"),
]


@pytest.fixture
def seeded(django_user_model):
    call_command("seed_demo", "--force", stdout=open("/dev/null", "w"))  # noqa: SIM115
    django_user_model.objects.create_user("newcomer", "new@example.com", PASSWORD)


def open_page(browser, server, username, password, width, height, scheme):  # noqa: F811
    context = browser.new_context(
        viewport={"width": width, "height": height}, color_scheme=scheme, bypass_csp=True
    )
    page = context.new_page()
    page.set_default_timeout(HANG_GUARD_MS)
    login(page, server, username, password)
    return context, page


@pytest.mark.parametrize(
    ("username", "state"),
    [("demo", None), ("kenji", "near"), ("maria", "over"), ("newcomer", "ok")],
)
def test_usage_reads_at_a_glance_for_each_kind_of_user(
    browser,  # noqa: F811
    live_server,
    seeded,
    username,
    state,  # noqa: F811
):
    password = PASSWORD if username == "newcomer" else django_settings.DEMO_PASSWORD
    for device, width, height, scheme in VIEWS:
        context, page = open_page(
            browser, live_server.url, username, password, width, height, scheme
        )
        try:
            page.goto(f"{live_server.url}/usage/")
            card = page.locator("#budget-card")
            if state:
                assert f"budget-{state}" in card.get_attribute("class")
            if state == "over":
                assert "over by $" in card.inner_text()
            wider = page.evaluate(WIDER_THAN_VIEWPORT)
            assert wider == [], wider  # nothing wider than the screen
            page.screenshot(
                path=ARTIFACTS / f"usage-{username}-{device}-{scheme}.png", full_page=True
            )
            if device == "desktop":
                assert violations(page) == []
        finally:
            context.close()


def test_the_support_admin_pages_read_well_and_pass_axe(browser, live_server, seeded):  # noqa: F811
    from django.contrib.auth.models import User

    kenji = User.objects.get(username="kenji")
    context, page = open_page(
        browser, live_server.url, "admin", django_settings.DEMO_PASSWORD, 1366, 900, "light"
    )
    try:
        # The whole user page: its dates are read-only and its permissions plain labelled
        # selects, where Django's own widgets carried violations.
        for name, path, include in [
            ("admin-index", "/admin/", None),
            ("admin-user", f"/admin/auth/user/{kenji.pk}/change/", None),
            ("admin-generations", "/admin/usage/generation/", None),
        ]:
            page.goto(live_server.url + path)
            page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
            # Fits a laptop: no sideways scroll on the generations list.
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), name
            assert violations(page, include) == [], name
    finally:
        context.close()


def test_the_daily_chart_is_one_tab_stop_with_arrow_keys_between_days(
    browser,  # noqa: F811
    live_server,
    seeded,
):
    context, page = open_page(
        browser, live_server.url, "demo", django_settings.DEMO_PASSWORD, 1366, 900, "light"
    )
    try:
        page.goto(f"{live_server.url}/usage/")
        chart = page.locator("#daily-chart svg.chart-wide")
        assert chart.locator(".day[tabindex='0']").count() == 1  # one stop, not thirty
        latest = chart.locator(".day[tabindex='0']").get_attribute("aria-label")
        chart.locator(".day[tabindex='0']").focus()
        page.keyboard.press("ArrowLeft")
        focused = page.evaluate("document.activeElement.getAttribute('aria-label')")
        assert focused != latest and focused  # the day before
        ring = page.evaluate(
            "getComputedStyle(document.activeElement.querySelector('.hit')).strokeWidth"
        )
        assert ring == "3px"  # a visible focus ring
        page.keyboard.press("End")
        assert page.evaluate("document.activeElement.getAttribute('aria-label')") == latest
        page.keyboard.press("Home")
        first = page.evaluate("document.activeElement.getAttribute('aria-label')")
        assert first == chart.locator(".day").first.get_attribute("aria-label")
        page.keyboard.press("Tab")  # one Tab leaves the chart
        assert page.evaluate("!document.activeElement.closest('#daily-chart svg')")
        page.screenshot(path=ARTIFACTS / "usage-chart-keyboard.png")
    finally:
        context.close()
