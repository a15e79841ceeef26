"""Prepaid credit in a real browser: a message refused for credit is kept, the top-up goes
to Stripe Checkout (a loopback Stripe), the signed webhook credits it, and the kept message
is back in the box to send. Light and dark, and a phone; axe finds nothing on the way."""

import json
import re
from decimal import Decimal

import pytest
import requests

from billing import credits
from billing.models import CreditGrant
from tests.e2e.harness.browser import ARTIFACTS, PASSWORD, login, violations
from tests.e2e.harness.servers import FakeStripe
from tests.helpers import checkout_session, stripe_event, stripe_signature

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SECRET = "whsec_browser"


def check(page, name):
    found = violations(page)
    page.screenshot(path=ARTIFACTS / f"axe-{name}-{page.scheme}.png", full_page=True)
    assert found == [], f"{name}: {found}"


def webhook(base, payload) -> int:
    body = json.dumps(payload).encode()
    return requests.post(
        f"{base}/billing/stripe/webhook/",
        data=body,
        headers={"Stripe-Signature": stripe_signature(body, SECRET)},
        timeout=30,
    ).status_code


@pytest.fixture
def stripe(settings):
    fake = FakeStripe()
    settings.BILLING_MODE = "prepaid"
    settings.STRIPE_API_KEY = "sk_test_browser"
    settings.STRIPE_API_BASE = fake.url
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.BILLING_LOW_BALANCE_USD = Decimal(0)
    yield fake
    fake.stop()


def test_refused_for_credit_top_up_through_checkout_and_send_the_kept_message(
    scheme_page, live_server, django_user_model, stripe, settings, requests_mock
):
    page = scheme_page
    requests_mock.add_passthru(live_server.url)  # Stripe's webhook, to the app
    settings.SITE_URL = live_server.url
    user = django_user_model.objects.create_user("hana", "hana@example.com", PASSWORD)
    credits.grant(user, Decimal("0.000001"), CreditGrant.Kind.GRANT, "A crumb")
    login(page, live_server.url, "hana", PASSWORD)
    page.wait_for_url(f"{live_server.url}/chat/")
    prompt = "What does a prepaid balance protect me from?"
    page.fill("#prompt", prompt)
    page.click("#send")
    page.locator("#credit-empty").wait_for(state="visible")
    assert page.locator("#chat-error-text").inner_text().startswith("Not enough credit")
    assert page.locator("#chat-form").is_hidden()
    check(page, "chat-no-credit")

    page.click("#credit-empty a")
    page.wait_for_url(re.compile(r".*/billing/#top-up$"))
    check(page, "billing-prepaid")
    page.click("button[name=amount][value='10']")
    page.wait_for_url(re.compile(re.escape(stripe.url) + "/pay/cs_e2e_.*"))
    checkout_id = page.url.rsplit("/", 1)[1]
    assert stripe.sessions[checkout_id]["line_items[0][price_data][unit_amount]"] == "1000"

    # Back from Stripe before its webhook arrived: nothing is credited on the way back.
    page.goto(f"{live_server.url}/billing/?top_up=paid")
    page.get_by_text("being confirmed by Stripe").wait_for()
    assert page.locator("#credit-balance").inner_text() == "$0.000001"
    paid = stripe_event("checkout.session.completed", checkout_session(user.pk, 1000), "evt_b")
    assert webhook(live_server.url, paid) == 200
    page.reload()
    assert page.locator("#credit-balance").inner_text() == "$10.0000"
    check(page, "billing-topped-up")

    page.goto(f"{live_server.url}/chat/")
    assert page.input_value("#prompt") == prompt  # kept while the user topped up
    page.click("#send")
    page.locator(".message-assistant .answer-meta").wait_for()
    page.goto(f"{live_server.url}/billing/")
    left = Decimal(page.locator("#credit-balance").inner_text().lstrip("$"))
    assert Decimal(0) < left < Decimal("10.000001")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    check(page, "billing-prepaid-phone")
