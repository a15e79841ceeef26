"""axe-core (WCAG 2 A and AA rules) finds nothing on the pages people use, light and dark."""

import pytest

from tests.e2e.harness.browser import ARTIFACTS, PASSWORD, login, violations
from tests.helpers import hold_budget

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


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


def test_the_billing_pages_pass_axe_and_a_statement_prints_alone(
    scheme_page, live_server, django_user_model
):
    from datetime import date
    from decimal import Decimal

    from billing.statements import close_cycles
    from usage.models import DailyUsage, UsageAccount

    page = scheme_page
    user = django_user_model.objects.create_user("gina", "gina@example.com", PASSWORD)
    UsageAccount.objects.filter(user=user).update(billing_anchor=date(2026, 9, 10))
    DailyUsage.objects.create(
        user=user,
        day=date(2026, 9, 12),
        model="gpt-4o-mini",
        generations=3,
        output_tokens=900,
        cost=Decimal("0.42"),
        charge=Decimal("0.42"),
    )
    [statement] = close_cycles(date(2026, 10, 10)).created
    login(page, live_server.url, "gina", PASSWORD)
    page.wait_for_url(f"{live_server.url}/chat/")
    page.goto(live_server.url + "/billing/")
    check(page, "billing")
    page.goto(f"{live_server.url}/billing/statements/{statement.number}/")
    check(page, "statement")
    page.emulate_media(media="print")
    assert not page.locator("nav").first.is_visible()  # the site's navigation is not printed
    page.screenshot(path=ARTIFACTS / f"statement-print-{page.scheme}.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.emulate_media(media="screen")
    check(page, "statement-phone")


def test_the_states_that_matter_pass_axe(scheme_page, live_server, django_user_model):
    """Banners, notices and cards are where contrast failed in dark mode: draw each."""
    from decimal import Decimal

    from django.utils import timezone

    from usage.cycles import cycle_for
    from usage.models import Alert, UsageAccount

    page = scheme_page
    warned = django_user_model.objects.create_user("kim", "kim@example.com", PASSWORD)
    account = UsageAccount.objects.get(user=warned)
    cycle = cycle_for(account)
    Alert.objects.create(
        user=warned,
        kind=Alert.Kind.THRESHOLD,
        threshold=Decimal(80),
        cycle_start=cycle.start_date,
        cycle_end=cycle.end_date,
        spent=Decimal("4.10"),
        budget=Decimal("5.00"),
        created_at=timezone.now(),
        next_attempt_at=timezone.now(),
    )
    paused = django_user_model.objects.create_user("lou", "lou@example.com", PASSWORD)
    UsageAccount.objects.filter(user=paused).update(blocked=True)
    unconfirmed = django_user_model.objects.create_user("max", "max@example.com", PASSWORD)
    UsageAccount.objects.filter(user=unconfirmed).update(email_verified=False)
    for name, where in [
        ("kim", "chat-alert-banner"),
        ("lou", "chat-blocked"),
        ("max", "chat-unverified"),
    ]:
        page.context.clear_cookies()
        login(page, live_server.url, name, PASSWORD)
        page.wait_for_url(f"{live_server.url}/chat/")
        check(page, where)
    page.context.clear_cookies()
    login(page, live_server.url, "kim", PASSWORD)
    page.wait_for_url(f"{live_server.url}/chat/")
    page.goto(live_server.url + "/usage/")
    check(page, "usage-alert-banner")


def test_the_admin_pages_this_project_styles_pass_axe(scheme_page, live_server, django_user_model):
    page = scheme_page
    django_user_model.objects.create_user(
        "staffer", "s@example.com", PASSWORD, is_staff=True, is_superuser=True
    )
    user = django_user_model.objects.create_user("nia", "nia@example.com", PASSWORD)
    hold_budget(user, "4.50")  # near the budget: the amber figures
    page.goto(live_server.url + "/admin/login/")
    page.fill("input[name=username]", "staffer")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    check(page, "admin-index")
    page.goto(live_server.url + "/admin/auth/user/")
    check(page, "admin-users")
    page.goto(f"{live_server.url}/admin/auth/user/{user.pk}/change/")
    check(page, "admin-user")
