"""Prepaid credits: granted by Stripe's signed webhook (once per Stripe object) or by staff,
spent by answers, held at their worst case while they run, never overdrawn."""

import json
import threading
import time
from datetime import date, timedelta
from decimal import Decimal
from urllib.parse import parse_qs

import pytest
import responses
from django.contrib.admin.models import LogEntry
from django.db import connection, connections
from django.test import Client
from django.utils import timezone

from billing import credits
from billing.credits import InsufficientCredits, balance_from
from billing.models import CreditGrant
from tests.helpers import checkout_session, set_budget, stripe_event, stripe_signature
from usage.limits import TokenUsage, reserve, settle
from usage.models import Generation, UsageAccount

STRIPE = "http://stripe.test"
SECRET = "whsec_test_secret"
MESSAGES = [{"role": "user", "content": "Hello!"}]


@pytest.fixture
def prepaid(settings, requests_mock):
    settings.BILLING_MODE = "prepaid"
    settings.STRIPE_API_KEY = "sk_test_chatusage"
    settings.STRIPE_API_BASE = STRIPE
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    return requests_mock


def signed(payload: dict, secret=SECRET, at=None) -> tuple[bytes, str]:
    """A webhook body and its Stripe-Signature, made the way Stripe makes them."""
    body = json.dumps(payload).encode()
    return body, stripe_signature(body, secret, at)


def event(kind: str, obj: dict, event_id="evt_1") -> dict:
    return stripe_event(kind, obj, event_id)


def session(user, cents=1000, paid=True, session_id="cs_test_1") -> dict:
    return checkout_session(user.pk, cents, paid, session_id)


def deliver(payload, secret=SECRET, at=None, client=None):
    body, signature = signed(payload, secret, at)
    return (client or Client()).post(
        "/billing/stripe/webhook/",
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature,
    )


def balance(user) -> Decimal:
    return credits.balance_for(user.pk).left


def given(user, amount, **extra):
    return credits.grant(user, Decimal(amount), CreditGrant.Kind.GRANT, "test", **extra)


# --- the balance ----------------------------------------------------------------------


def test_charges_burn_expiring_credit_first_and_what_expires_unused_is_shown():
    day = date(2026, 11, 1)
    grants = [
        ("10", None, day),  # paid: never expires
        ("3", day + timedelta(days=9), day),  # promotional, through 10 Nov
        ("2", day + timedelta(days=4), day),  # promotional, through 5 Nov: burnt first
    ]
    charges = [(day + timedelta(days=1), "1.5"), (day + timedelta(days=7), "2.25")]
    on_the_8th = balance_from(grants, charges, Decimal("0.5"), day + timedelta(days=7))
    # 1.50 from the 5 Nov grant (0.50 of it expires), 2.25 from the 10 Nov one.
    assert on_the_8th.expired == Decimal("0.5")
    assert on_the_8th.expiring == [(day + timedelta(days=9), Decimal("0.75"))]
    assert on_the_8th.left == Decimal("10.75")
    assert on_the_8th.available == Decimal("10.25")  # 0.50 held by a call in flight
    later = balance_from(grants, charges, Decimal(0), day + timedelta(days=20))
    assert (later.left, later.expired) == (Decimal("10"), Decimal("1.25"))


def test_without_grants_there_is_no_credit_and_no_call(alice, prepaid, dollar_model):
    with pytest.raises(InsufficientCredits) as refused:
        reserve(alice, dollar_model, MESSAGES, 100)
    assert refused.value.reason == "credits"
    assert "Top up" in str(refused.value)
    assert not Generation.objects.exists()


def test_a_balance_covers_exactly_what_it_holds(alice, prepaid, dollar_model):
    given(alice, "2.00")  # two worst cases of $1
    first = reserve(alice, dollar_model, MESSAGES, 100)
    reserve(alice, dollar_model, MESSAGES, 100)
    with pytest.raises(InsufficientCredits) as refused:
        reserve(alice, dollar_model, MESSAGES, 100)
    assert refused.value.as_dict()["held_usd"] == "2.000000"
    settle(first, TokenUsage(0, 0, 40))  # cost $0.40: 0.60 comes back
    assert balance(alice) == Decimal("1.60")
    with pytest.raises(InsufficientCredits):
        reserve(alice, dollar_model, MESSAGES, 100)  # 1.60 - 1.00 held < 1.00
    reserve(alice, dollar_model, MESSAGES, 50)  # a smaller worst case still fits


def test_the_tighter_of_budget_and_credit_refuses(alice, prepaid, dollar_model):
    given(alice, "50")
    set_budget(alice, "1.50")
    reserve(alice, dollar_model, MESSAGES, 100)
    with pytest.raises(Exception) as refused:
        reserve(alice, dollar_model, MESSAGES, 100)
    assert refused.value.reason == "budget"


def test_a_chat_refused_for_credit_answers_402_and_shows_the_top_up_card(
    alice_client, alice, prepaid
):
    response = alice_client.post(
        "/api/chat/", {"prompt": "Hello there"}, content_type="application/json"
    )
    assert response.status_code == 402
    body = response.json()
    assert body["code"] == "insufficient_credits" and body["balance_usd"] == "0.000000"
    page = alice_client.get("/").content.decode()
    assert 'id="credit-empty"' in page and "Top up to keep chatting" in page
    assert 'id="chat-form" hidden' in page
    # Without JavaScript the form posts: the page answers 402 and the prompt is kept.
    plain = alice_client.post("/", {"prompt": "Keep this prompt"})
    assert plain.status_code == 402
    assert "Keep this prompt" in plain.content.decode()


def test_sign_up_credit_is_granted_once_in_prepaid_mode(settings, django_user_model, prepaid):
    settings.BILLING_SIGNUP_CREDIT_USD = Decimal("2.50")
    user = django_user_model.objects.create_user("newbie", "n@example.com", "x")
    user.save()
    [grant] = CreditGrant.objects.filter(user=user)
    assert (grant.kind, grant.amount) == ("signup", Decimal("2.50"))
    settings.BILLING_MODE = "off"
    django_user_model.objects.create_user("other", "o@example.com", "x")
    assert CreditGrant.objects.count() == 1


# --- the webhook ----------------------------------------------------------------------


def test_a_paid_checkout_grants_its_amount_once(alice, prepaid):
    paid = event("checkout.session.completed", session(alice, 1250))
    assert deliver(paid).status_code == 200
    assert deliver(paid).status_code == 200  # Stripe retries: nothing more
    again = event("checkout.session.async_payment_succeeded", session(alice, 1250), "evt_2")
    assert deliver(again).status_code == 200  # the same session: nothing more
    [grant] = CreditGrant.objects.all()
    assert (grant.kind, grant.amount, grant.stripe_object_id) == (
        "purchase",
        Decimal("12.50"),
        "cs_test_1",
    )
    assert balance(alice) == Decimal("12.50")


def test_an_unpaid_checkout_waits_for_async_success(alice, prepaid):
    pending = session(alice, 2000, paid=False)
    assert deliver(event("checkout.session.completed", pending)).status_code == 200
    assert not CreditGrant.objects.exists()
    succeeded = event("checkout.session.async_payment_succeeded", {**pending}, "evt_2")
    assert deliver(succeeded).status_code == 200
    assert balance(alice) == Decimal("20")


def test_refunds_take_credit_back_once_and_may_go_below_zero(alice, prepaid, dollar_model):
    UsageAccount.objects.filter(user=alice).update(stripe_customer_id="cus_alice")
    deliver(event("checkout.session.completed", session(alice, 500)))
    settle(reserve(alice, dollar_model, MESSAGES, 100), TokenUsage(0, 0, 100))  # $1 spent
    charge = {
        "id": "ch_1",
        "object": "charge",
        "customer": "cus_alice",
        "amount": 500,
        "amount_refunded": 300,
        "metadata": {},
    }
    assert deliver(event("charge.refunded", charge, "evt_r1")).status_code == 200
    assert deliver(event("charge.refunded", charge, "evt_r1")).status_code == 200
    assert balance(alice) == Decimal("1")  # 5 - 1 spent - 3 refunded
    full = {**charge, "amount_refunded": 500}
    deliver(event("charge.refunded", full, "evt_r2"))
    assert balance(alice) == Decimal("-1")  # refunded what was spent: chat stops
    assert sorted(CreditGrant.objects.filter(kind="refund").values_list("amount", flat=True)) == [
        Decimal("-3"),
        Decimal("-2"),
    ]
    with pytest.raises(InsufficientCredits):
        reserve(alice, dollar_model, MESSAGES, 1)


@pytest.mark.parametrize(
    "how",
    ["wrong secret", "no signature", "tampered body", "expired timestamp"],
)
def test_a_bad_signature_answers_400_and_writes_nothing(alice, prepaid, how):
    paid = event("checkout.session.completed", session(alice, 1000))
    if how == "wrong secret":
        response = deliver(paid, secret="whsec_other")
    elif how == "expired timestamp":
        response = deliver(paid, at=time.time() - 301)  # past Stripe's default 5 minutes
    else:
        body, signature = signed(paid)
        headers = {} if how == "no signature" else {"HTTP_STRIPE_SIGNATURE": signature}
        if how == "tampered body":
            body = body.replace(b"1000", b"9000")
        response = Client().post(
            "/billing/stripe/webhook/", body, content_type="application/json", **headers
        )
    assert response.status_code == 400
    assert not CreditGrant.objects.exists()


def test_unknown_events_are_ignored_with_200(alice, prepaid):
    response = deliver(event("customer.created", {"id": "cus_1", "object": "customer"}))
    assert response.status_code == 200
    assert not CreditGrant.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite's test database is one")
@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_replays_grant_once(django_user_model, prepaid):
    user = django_user_model.objects.create_user("payer", "p@example.com", "x")
    paid = event("checkout.session.completed", session(user, 700))
    barrier = threading.Barrier(20)
    statuses = []

    def replay():
        try:
            barrier.wait(timeout=30)
            statuses.append(deliver(paid).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=replay) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * 20
    assert CreditGrant.objects.filter(user=user).count() == 1
    assert balance(user) == Decimal("7")


# --- top-up, pages, JSON, admin -------------------------------------------------------


def test_a_top_up_goes_through_stripe_checkout_and_credits_nothing_on_the_way_back(
    alice_client, alice, prepaid, settings
):
    settings.SITE_URL = "https://chat.example.com"
    UsageAccount.objects.filter(user=alice).update(stripe_customer_id="cus_alice")
    prepaid.add(
        responses.POST,
        f"{STRIPE}/v1/checkout/sessions",
        json={"id": "cs_1", "object": "checkout.session", "url": "https://checkout.test/cs_1"},
    )
    response = alice_client.post("/billing/top-up/", {"amount": "20"})
    assert response.status_code == 303 and response["Location"] == "https://checkout.test/cs_1"
    [call] = prepaid.calls
    sent = {key: values[0] for key, values in parse_qs(call.request.body).items()}
    assert sent == {
        "mode": "payment",
        "customer": "cus_alice",
        "line_items[0][quantity]": "1",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "2000",
        "line_items[0][price_data][product_data][name]": "chatusage credit ($20.00)",
        "client_reference_id": str(alice.pk),
        "metadata[chatusage_user_id]": str(alice.pk),
        "success_url": "https://chat.example.com/billing/?top_up=paid",
        "cancel_url": "https://chat.example.com/billing/?top_up=cancelled",
    }
    back = alice_client.get("/billing/?top_up=paid").content.decode()
    assert "being confirmed by Stripe" in back
    assert balance(alice) == 0


@pytest.mark.parametrize("amount", ["4.99", "500.01", "ten", "", "12.345", "NaN"])
def test_a_top_up_out_of_bounds_is_refused_on_the_page(alice_client, prepaid, amount):
    response = alice_client.post("/billing/top-up/", {"amount": amount})
    assert response.status_code == 400
    assert 'id="top-up-error"' in response.content.decode()


def test_the_billing_page_and_json_show_balance_holds_and_grants(
    alice_client, alice, prepaid, dollar_model
):
    given(alice, "5", expires_on=timezone.localdate() + timedelta(days=3))
    deliver(event("checkout.session.completed", session(alice, 1000)))
    reserve(alice, dollar_model, MESSAGES, 100)  # $1 held
    page = alice_client.get("/billing/").content.decode()
    assert "$15.0000" in page and "$1.0000</span> held" in page
    assert "expires after" in page
    for preset in ("$5", "$10", "$20", "$50"):
        assert f">{preset}</button>" in page
    data = alice_client.get("/api/billing/").json()
    assert data["mode"] == "prepaid"
    assert (data["balance_usd"], data["held_usd"]) == ("15.000000", "1.000000")
    assert {g["kind"] for g in data["grants"]} == {"grant", "purchase"}
    assert data["statements"] == []


def test_the_billing_json_is_the_users_own_and_needs_a_login(alice_client, bob, prepaid):
    given(bob, "9")
    assert alice_client.get("/api/billing/").json()["balance_usd"] == "0.000000"
    assert Client().get("/api/billing/").status_code == 401


def test_staff_grant_and_take_back_credit_with_a_reason_in_the_users_history(
    staff_client, alice, prepaid
):
    response = staff_client.post(
        "/admin/billing/creditgrant/add/",
        {"user": alice.pk, "kind": "grant", "amount": "3", "reason": "Sorry for the outage"},
    )
    assert response.status_code == 302, response.content.decode()[-2000:]
    staff_client.post(
        "/admin/billing/creditgrant/add/",
        {"user": alice.pk, "kind": "take_back", "amount": "1", "reason": "Duplicate grant"},
    )
    assert balance(alice) == Decimal("2")
    history = list(
        LogEntry.objects.filter(object_id=str(alice.pk)).values_list("change_message", flat=True)
    )
    assert "Granted 3.00 USD credit: Sorry for the outage" in history
    assert "Took back 1.00 USD credit: Duplicate grant" in history
    page = staff_client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()
    assert "$2.0000</strong> left" in page
    listing = staff_client.get(f"/admin/billing/creditgrant/?user__id__exact={alice.pk}")
    assert listing.status_code == 200


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL row locks")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("top_up_midway", [False, True])
def test_fifty_parallel_calls_never_overdraw_the_balance(
    django_user_model, prepaid, dollar_model, top_up_midway
):
    """A balance covering exactly k worst cases: 50 calls at once give exactly k answers
    (k + 3 when a $3 top-up lands among them, at most), never below zero."""
    k = 7
    user = django_user_model.objects.create_user("racer", "r@example.com", "x")
    set_budget(user, "0")  # no cycle budget: the credit alone limits
    given(user, str(k))
    barrier = threading.Barrier(50 + top_up_midway)
    outcomes = []

    def call():
        try:
            barrier.wait(timeout=30)
            try:
                reservation = reserve(user, dollar_model, MESSAGES, 100)
            except InsufficientCredits:
                outcomes.append("refused")
                return
            assert credits.balance_for(user.pk).available >= 0
            settle(reservation, TokenUsage(0, 0, 100))  # the worst case, really charged
            outcomes.append("ok")
        finally:
            connections.close_all()

    def top_up():
        try:
            barrier.wait(timeout=30)
            deliver(event("checkout.session.completed", session(user, 300)))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=call) for _ in range(50)]
    if top_up_midway:
        threads.append(threading.Thread(target=top_up))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    answered = outcomes.count("ok")
    assert len(outcomes) == 50
    final = credits.balance_for(user.pk)
    assert final.left >= 0 and final.held == 0
    if top_up_midway:
        assert k <= answered <= k + 3
        assert final.left == k + 3 - answered
    else:
        assert answered == k and final.left == 0


def test_a_low_balance_alerts_once_each_time_it_falls_below_the_line(
    alice,
    alice_client,
    prepaid,
    dollar_model,
    monkeypatch,
    settings,
    mailoutbox,
    django_capture_on_commit_callbacks,
):
    from usage import alerts
    from usage.models import Alert

    monkeypatch.setattr(alerts, "dispatch", lambda alert_id: None)  # delivered below
    settings.BILLING_LOW_BALANCE_USD = Decimal("1")
    set_budget(alice, "0")
    given(alice, "3")

    def spend(output_tokens):
        with django_capture_on_commit_callbacks(execute=True):
            reservation = reserve(alice, dollar_model, MESSAGES, output_tokens)
            settle(reservation, TokenUsage(0, 0, output_tokens))

    spend(100)
    spend(100)  # $1 left: not below the line
    assert not Alert.objects.exists()
    spend(50)  # $0.50
    spend(10)  # $0.40: still below, no second alert
    [alert] = Alert.objects.all()
    assert alert.kind == "credits.low_balance" and alert.spent == Decimal("0.4") or Decimal("0.5")
    alerts.deliver(alert)
    [mail] = mailoutbox
    assert "credit is running low" in mail.subject
    assert "/billing/" in mail.body
    assert alerts.payload(alert)["type"] == "credits.low_balance"
    assert "Your credit is running low" in alice_client.get("/").content.decode()

    deliver(event("checkout.session.completed", session(alice, 500)))  # back above the line
    spend(100)
    spend(100)
    spend(100)
    spend(100)  # $1.40
    assert Alert.objects.count() == 1
    spend(50)  # $0.90: below again, after a top-up
    assert Alert.objects.count() == 2


def test_a_prepaid_statement_shows_credit_bought_granted_used_and_the_closing_balance(
    alice, alice_client, prepaid
):
    from datetime import datetime

    from billing.statements import close_cycles
    from usage.models import DailyUsage

    UsageAccount.objects.filter(user=alice).update(billing_anchor=date(2026, 9, 10))

    def granted(kind, amount, day):
        CreditGrant.objects.create(
            user=alice,
            kind=kind,
            amount=Decimal(amount),
            created_on=day,
            created_at=timezone.make_aware(datetime.combine(day, datetime.min.time())),
        )

    granted("signup", "1", date(2026, 9, 10))
    granted("purchase", "10", date(2026, 9, 20))
    granted("purchase", "5", date(2026, 10, 12))  # the next cycle's
    DailyUsage.objects.create(
        user=alice, day=date(2026, 9, 25), model="m", generations=2, cost="2.5", charge="2.5"
    )
    [statement] = close_cycles(date(2026, 10, 10)).created
    data = alice_client.get(f"/billing/statements/{statement.number}/?format=json").json()
    assert data["credit"] == {
        "bought_usd": "10.000000",
        "granted_usd": "1.000000",
        "taken_back_usd": "0.000000",
        "used_usd": "2.500000",
        "closing_balance_usd": "8.500000",
    }
    page = alice_client.get(f"/billing/statements/{statement.number}/").content.decode()
    assert "Balance at the end of the cycle" in page and "$8.5000" in page
