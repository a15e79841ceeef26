"""Billing through Stripe under the production command, against a Stripe API on the
loopback: metered (every answer one meter event, once, whatever Stripe does) and prepaid
(refused, topped up through Checkout and the signed webhook, then spent)."""

import json
import threading
from decimal import Decimal

import pytest
import requests

from tests.e2e.harness.client import chat, clone, wait_for
from tests.e2e.harness.launch import fake_model_env, gunicorn_app, manage, postgres_answers
from tests.e2e.harness.servers import FakeModel, FakeStripe
from tests.helpers import checkout_session, stripe_event, stripe_signature

pytestmark = pytest.mark.e2e

USERS = [f"payer{n}" for n in range(5)]
WEBHOOK_SECRET = "whsec_e2e"


@pytest.fixture(scope="module")
def stripe_app(tmp_path_factory):
    if not postgres_answers():
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
    model, stripe = FakeModel(stream_seconds=0.2), FakeStripe()
    env = fake_model_env(
        model.url,
        BILLING_MODE="metered",
        STRIPE_API_KEY="sk_test_e2e",
        STRIPE_API_BASE=stripe.url,
        STRIPE_TIMEOUT="60",
    )
    try:
        with gunicorn_app(tmp_path_factory.mktemp("stripe"), env, [(u, "0") for u in USERS]) as app:
            app.stripe = stripe
            yield app
    finally:
        stripe.release.set()
        model.stop()
        stripe.stop()


def in_parallel(app, count_per_user, stream=False) -> list[int]:
    sessions = {user: app.login(user) for user in USERS}
    statuses, lock = [], threading.Lock()

    def one(user, n):
        status, _ = chat(clone(sessions[user]), app.url, f"message {n}", stream=stream)
        with lock:
            statuses.append(status)

    threads = [
        threading.Thread(target=one, args=(user, n))
        for user in USERS
        for n in range(count_per_user)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return statuses


def due_now(app):
    """Skip the backoff: what is waiting is due now."""
    app.sql(
        "UPDATE billing_stripeoutbox SET next_attempt_at = now()"
        " WHERE status = 'pending' RETURNING id"
    )


def ledger(app):
    return app.sql("SELECT id::text, charge FROM usage_generation WHERE status = 'ok'")


def test_fifty_parallel_chats_give_fifty_meter_events_summing_to_the_ledger(stripe_app):
    app = stripe_app
    statuses = in_parallel(app, 10, stream=True)
    assert statuses == [200] * 50
    assert wait_for(lambda: len(app.stripe.meter_events) == 50, 60)
    events = app.stripe.meter_events
    rows = ledger(app)
    assert len({e["identifier"] for e in events}) == 50
    assert {e["identifier"] for e in events} == {gid for gid, _ in rows}
    assert sum(int(e["payload[value]"]) for e in events) == sum(
        int(Decimal(charge) * 1_000_000) for _, charge in rows
    )
    customers = {e["payload[stripe_customer_id]"] for e in events}
    assert customers == {f"cus_e2e_{uid}" for uid in app.user_ids.values()}
    [(sent,)] = app.sql("SELECT count(*) FROM billing_stripeoutbox WHERE status = 'sent'")
    assert sent == 50


def test_stripe_failing_for_a_while_loses_and_duplicates_nothing(stripe_app):
    app = stripe_app
    before = len(app.stripe.meter_events)
    app.stripe.mode = "fail"
    assert in_parallel(app, 2) == [200] * 10  # chat goes on while Stripe fails
    assert wait_for(
        lambda: (
            app.sql(
                "SELECT count(*) FROM billing_stripeoutbox"
                " WHERE status = 'pending' AND last_error <> ''"  # tried, failed, recorded
            )[0][0]
            == 10
        ),
        60,
    )
    app.stripe.mode = "ok"
    due_now(app)
    output = manage(app.env, "send_meter_events")
    assert "Sent 10," in output
    manage(app.env, "send_meter_events")  # again: nothing more
    events = app.stripe.meter_events[before:]
    assert len(events) == 10 and len({e["identifier"] for e in events}) == 10
    assert len({e["identifier"] for e in app.stripe.meter_events}) == len(ledger(app))


def test_chat_is_not_held_up_while_stripe_hangs(stripe_app):
    app = stripe_app
    app.stripe.mode = "hang"
    app.stripe.release.clear()
    try:
        session = app.login(USERS[0])
        assert chat(session, app.url, "while Stripe hangs")[0] == 200
        assert wait_for(lambda: app.stripe.hanging >= 1, 60)
        # Stripe still has not answered the first event; the next answers come all the same.
        for n in range(3):
            assert chat(session, app.url, f"still hanging {n}", stream=n % 2 == 0)[0] == 200
        assert not app.stripe.release.is_set()
    finally:
        app.stripe.mode = "ok"
        app.stripe.release.set()
    # The sender that hung goes on by itself once Stripe answers: everything arrives once.
    assert wait_for(
        lambda: (
            app.sql("SELECT count(*) FROM billing_stripeoutbox WHERE status <> 'sent'")[0][0] == 0
        ),
        60,
    )
    identifiers = [e["identifier"] for e in app.stripe.meter_events]
    assert len(identifiers) == len(set(identifiers)) == len(ledger(app))


def test_prepaid_refused_then_topped_up_through_checkout_and_the_webhook(tmp_path):
    if not postgres_answers():
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
    model, stripe = FakeModel(), FakeStripe()
    env = fake_model_env(
        model.url,
        BILLING_MODE="prepaid",
        STRIPE_API_KEY="sk_test_e2e",
        STRIPE_API_BASE=stripe.url,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        SITE_URL="http://127.0.0.1",
    )
    try:
        with gunicorn_app(tmp_path, env, [("buyer", "0")]) as app:
            session = app.login("buyer")
            status, data = chat(session, app.url, "no credit yet")
            assert (status, data["code"]) == (402, "insufficient_credits")

            top_up = session.post(
                f"{app.url}/billing/top-up/", data={"amount": "10"}, allow_redirects=False
            )
            assert top_up.status_code == 303
            checkout_id = top_up.headers["Location"].rsplit("/", 1)[1]
            sent = stripe.sessions[checkout_id]
            assert sent["line_items[0][price_data][unit_amount]"] == "1000"
            user_id = sent["client_reference_id"]
            assert session.get(f"{app.url}/api/billing/").json()["balance_usd"] == "0.000000"

            # Stripe confirms the payment: the signed webhook, once and then a retry.
            payload = stripe_event(
                "checkout.session.completed", checkout_session(user_id, 1000, True, checkout_id)
            )
            body = json.dumps(payload).encode()
            for _ in range(2):
                answer = requests.post(
                    f"{app.url}/billing/stripe/webhook/",
                    data=body,
                    headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": stripe_signature(body, WEBHOOK_SECRET),
                    },
                    timeout=30,
                )
                assert answer.status_code == 200
            forged = requests.post(
                f"{app.url}/billing/stripe/webhook/",
                data=body,
                headers={"Stripe-Signature": stripe_signature(body, "whsec_forged")},
                timeout=30,
            )
            assert forged.status_code == 400

            assert chat(session, app.url, "now with credit")[0] == 200
            assert chat(session, app.url, "and again", stream=True)[0] == 200
            billing = session.get(f"{app.url}/api/billing/").json()
            [(charged,)] = app.sql("SELECT sum(charge) FROM usage_generation")
            assert Decimal(billing["balance_usd"]) == Decimal(10) - charged
            assert [g["kind"] for g in billing["grants"]] == ["purchase"]
    finally:
        model.stop()
        stripe.stop()
