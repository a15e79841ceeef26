"""Stripe metered billing: every charge goes to Stripe's meter once, from an outbox written
with the settle; Stripe failing, hanging or refusing never loses or doubles a charge."""

import threading
from datetime import timedelta
from decimal import Decimal
from io import StringIO
from urllib.parse import parse_qs

import pytest
import responses
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone

from billing import meters
from billing.models import Correction, StripeOutbox
from usage.limits import TokenUsage, reserve, settle
from usage.models import Generation, UsageAccount

STRIPE = "http://stripe.test"
MESSAGES = [{"role": "user", "content": "Hello!"}]


@pytest.fixture
def stripe_on(settings, requests_mock, monkeypatch):
    """Metered billing against a `responses`-mocked Stripe; deliveries run when a test
    says so (deliver_due), not in the background, unless it takes the kick back."""
    settings.BILLING_MODE = "metered"
    settings.STRIPE_API_KEY = "sk_test_chatusage"
    settings.STRIPE_API_BASE = STRIPE
    settings.STRIPE_METER_ID = "mtr_test_1"
    kicks = []
    monkeypatch.setattr(meters, "kick", lambda: kicks.append(1))
    return requests_mock


def a_customer(mock, customer="cus_alice"):
    return mock.add(
        responses.POST, f"{STRIPE}/v1/customers", json={"id": customer, "object": "customer"}
    )


def meter_answers(mock, *answers):
    """Register Stripe's answers to meter events, in order: status codes or (status, body)."""
    for answer in answers:
        status, body = answer if isinstance(answer, tuple) else (answer, None)
        mock.add(
            responses.POST,
            f"{STRIPE}/v1/billing/meter_events",
            status=status,
            json=body or {"object": "billing.meter_event", "event_name": "chatusage_usage"},
        )


def form(call) -> dict:
    return {key: values[0] for key, values in parse_qs(call.request.body).items()}


def calls_to(mock, path):
    return [call for call in mock.calls if call.request.url.startswith(f"{STRIPE}{path}")]


def answered(user, output_tokens=100, model="gpt-4o-mini"):
    reservation = reserve(user, model, MESSAGES, 500)
    settle(reservation, TokenUsage(20, 0, output_tokens))
    return Generation.objects.get(pk=reservation.generation_id)


def test_a_settled_answer_is_written_to_the_outbox_once_with_its_charge(alice, stripe_on):
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    settle(reservation, TokenUsage(20, 0, 100))
    settle(reservation, TokenUsage(20, 0, 300))  # a retried settle changes nothing
    generation = Generation.objects.get(pk=reservation.generation_id)
    [item] = StripeOutbox.objects.all()
    assert item.kind == StripeOutbox.Kind.METER_EVENT
    assert (item.generation_id, item.user_id) == (generation.pk, alice.pk)
    assert item.amount == generation.charge > 0
    assert item.occurred_at == generation.settled_at
    assert item.status == StripeOutbox.Status.PENDING


def test_failed_and_free_answers_and_billing_off_write_nothing(alice, stripe_on, settings):
    settle(reserve(alice, "gpt-4o-mini", MESSAGES, 500), error="Provider failed")
    settle(reserve(alice, "gpt-4o-mini", MESSAGES, 500), TokenUsage(0, 0, 0))
    settings.BILLING_MODE = "off"
    answered(alice)
    settings.BILLING_MODE = "metered"
    settings.STRIPE_API_KEY = ""
    answered(alice)
    assert not StripeOutbox.objects.exists()


def test_a_meter_event_carries_the_documented_fields_and_its_identifier_as_key(
    alice, stripe_on, settings
):
    settings.BILLING_MARKUP_PERCENT = Decimal(25)
    generation = answered(alice, output_tokens=1234)
    a_customer(stripe_on)
    meter_answers(stripe_on, 200)
    assert meters.deliver_due() == {"sent": 1, "pending": 0, "parked": 0}

    [customer] = calls_to(stripe_on, "/v1/customers")
    assert form(customer) == {
        "email": "alice@example.com",
        "name": "alice",
        "metadata[chatusage_user_id]": str(alice.pk),
    }
    assert customer.request.headers["Idempotency-Key"] == f"chatusage-customer-{alice.pk}"
    assert customer.request.headers["Authorization"] == "Bearer sk_test_chatusage"
    assert UsageAccount.objects.get(user=alice).stripe_customer_id == "cus_alice"

    [event] = calls_to(stripe_on, "/v1/billing/meter_events")
    micro = int(generation.charge * 1_000_000)
    assert micro == generation.charge * 1_000_000  # the charge in micro-USD, exactly
    assert form(event) == {
        "event_name": "chatusage_usage",
        "identifier": str(generation.pk),
        "timestamp": str(int(generation.settled_at.timestamp())),
        "payload[stripe_customer_id]": "cus_alice",
        "payload[value]": str(micro),
    }
    assert event.request.headers["Idempotency-Key"] == str(generation.pk)
    item = StripeOutbox.objects.get()
    assert (item.status, item.attempts, item.last_error) == ("sent", 1, "")

    answered(alice)  # the customer is made once
    meter_answers(stripe_on, 200)
    meters.deliver_due()
    assert len(calls_to(stripe_on, "/v1/customers")) == 1


def test_stripe_failing_then_answering_delivers_once_with_the_same_key(alice, stripe_on):
    generation = answered(alice)
    UsageAccount.objects.filter(user=alice).update(stripe_customer_id="cus_alice")
    meter_answers(stripe_on, 500, 200)
    assert meters.deliver_due() == {"sent": 0, "pending": 1, "parked": 0}
    item = StripeOutbox.objects.get()
    assert item.status == "pending" and item.next_attempt_at > timezone.now()
    assert "Stripe 500" in item.last_error
    assert meters.deliver_due()["sent"] == 0  # backing off: not due yet
    StripeOutbox.objects.update(next_attempt_at=timezone.now())
    assert meters.deliver_due()["sent"] == 1
    tries = calls_to(stripe_on, "/v1/billing/meter_events")
    assert [call.request.headers["Idempotency-Key"] for call in tries] == [str(generation.pk)] * 2
    assert StripeOutbox.objects.get().status == "sent"


def test_a_lost_connection_is_retried_too(alice, stripe_on):
    answered(alice)
    UsageAccount.objects.filter(user=alice).update(stripe_customer_id="cus_alice")
    # Nothing registered for the meter: `responses` refuses the connection.
    assert meters.deliver_due()["pending"] == 1
    assert "no answer" in StripeOutbox.objects.get().last_error
    stripe_on.calls.reset()  # the refused connection was this test's point


def test_an_identifier_stripe_already_has_counts_as_delivered(alice, stripe_on):
    answered(alice)
    UsageAccount.objects.filter(user=alice).update(stripe_customer_id="cus_alice")
    duplicate = {
        "error": {
            "type": "invalid_request_error",
            "code": "resource_already_exists",
            "message": "A meter event with this identifier already exists.",
        }
    }
    meter_answers(stripe_on, (400, duplicate))
    assert meters.deliver_due()["sent"] == 1


def test_more_rows_due_than_one_claim_takes_are_all_sent_once(alice, bob, stripe_on, monkeypatch):
    monkeypatch.setattr(meters, "BATCH", 2)
    for user, customer in ((alice, "cus_alice"), (bob, "cus_bob")):
        UsageAccount.objects.filter(user=user).update(stripe_customer_id=customer)
    generations = [answered(alice), answered(bob), answered(alice), answered(bob), answered(alice)]
    meter_answers(stripe_on, *[200] * 5)
    assert meters.deliver_due() == {"sent": 5, "pending": 0, "parked": 0}
    sent = [form(call) for call in calls_to(stripe_on, "/v1/billing/meter_events")]
    by_identifier = {event["identifier"]: event["payload[stripe_customer_id]"] for event in sent}
    assert by_identifier == {
        str(g.pk): "cus_alice" if g.user_id == alice.pk else "cus_bob" for g in generations
    }
    assert len(sent) == 5
    assert set(StripeOutbox.objects.values_list("status", "attempts")) == {("sent", 1)}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL row locks")
@pytest.mark.django_db(transaction=True)
def test_a_row_another_sender_holds_is_left_to_it(django_user_model, stripe_on):
    """Two senders (the background one and the cron job's) never take the same row: one
    that another transaction holds is skipped, not waited for and not sent."""
    user = django_user_model.objects.create_user("held", email="held@example.com")
    UsageAccount.objects.filter(user=user).update(stripe_customer_id="cus_held")
    held, free = answered(user), answered(user)
    holding, done = threading.Event(), threading.Event()

    def other_sender():
        try:
            with transaction.atomic():
                list(StripeOutbox.objects.select_for_update().filter(generation_id=held.pk))
                holding.set()
                done.wait(timeout=60)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_sender)
    thread.start()
    try:
        assert holding.wait(timeout=60)
        meter_answers(stripe_on, 200)
        assert meters.deliver_due() == {"sent": 1, "pending": 0, "parked": 0}
    finally:
        done.set()
        thread.join(timeout=60)
    [call] = calls_to(stripe_on, "/v1/billing/meter_events")
    assert form(call)["identifier"] == str(free.pk)
    statuses = dict(StripeOutbox.objects.values_list("generation_id", "status"))
    assert statuses == {held.pk: "pending", free.pk: "sent"}


def test_stripe_is_reached_through_the_proxy_the_environment_sets(
    alice, stripe_on, settings, monkeypatch, tmp_path
):
    """Proxy settings are read once per client, not on every request: the proxy still
    applies (and NO_PROXY still exempts), and ~/.netrc never replaces Stripe's key."""
    settings.STRIPE_API_KEY = "sk_test_behind_a_proxy"  # a client of its own
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "")
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine stripe.test login someone password not-the-key\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    answered(alice)
    UsageAccount.objects.filter(user=alice).update(stripe_customer_id="cus_alice")
    meter_answers(stripe_on, 200, 200)
    assert meters.deliver_due()["sent"] == 1
    [call] = calls_to(stripe_on, "/v1/billing/meter_events")
    assert call.request.req_kwargs["proxies"]["http"] == "http://proxy.internal:3128"
    assert call.request.headers["Authorization"] == "Bearer sk_test_behind_a_proxy"

    settings.STRIPE_API_KEY = "sk_test_next_to_stripe"
    monkeypatch.setenv("NO_PROXY", "stripe.test")
    answered(alice)
    assert meters.deliver_due()["sent"] == 1
    call = calls_to(stripe_on, "/v1/billing/meter_events")[-1]
    assert not call.request.req_kwargs["proxies"]


def test_events_stripe_refuses_for_good_are_parked_for_staff_never_dropped(
    alice, bob, stripe_on, staff_client
):
    old = answered(alice)
    Generation.objects.filter(pk=old.pk).update(settled_at=timezone.now() - timedelta(days=36))
    StripeOutbox.objects.filter(generation_id=old.pk).update(
        occurred_at=timezone.now() - timedelta(days=36)
    )
    answered(bob)
    UsageAccount.objects.filter(user__in=[alice, bob]).update(stripe_customer_id="cus_gone")
    missing = {
        "error": {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "message": "No such customer: 'cus_gone'",
        }
    }
    meter_answers(stripe_on, (400, missing))  # bob's; alice's is not even sent
    assert meters.deliver_due() == {"sent": 0, "pending": 0, "parked": 2}
    assert len(calls_to(stripe_on, "/v1/billing/meter_events")) == 1
    errors = dict(StripeOutbox.objects.values_list("user__username", "last_error"))
    assert "35 days" in errors["alice"]
    assert "No such customer" in errors["bob"]
    assert meters.deliver_due()["parked"] == 0  # parked rows are not retried by themselves

    page = staff_client.get("/admin/billing/stripeoutbox/?status__exact=parked")
    assert page.status_code == 200
    assert "No such customer" in page.content.decode()
    bobs = StripeOutbox.objects.get(user=bob)
    staff_client.post(
        "/admin/billing/stripeoutbox/",
        {"action": "send_again", "_selected_action": [bobs.pk]},
    )
    UsageAccount.objects.filter(user=bob).update(stripe_customer_id="cus_bob")
    meter_answers(stripe_on, 200)
    assert meters.deliver_due()["sent"] == 1
    assert StripeOutbox.objects.get(user=bob).status == "sent"


def test_a_staff_correction_goes_to_stripe_as_an_invoice_item(alice, staff, stripe_on):
    staff_client = Client()
    staff_client.force_login(staff)
    response = staff_client.post(
        "/admin/billing/correction/add/",
        {"user": alice.pk, "amount": "-2.50", "reason": "Outage on 3 Oct"},
    )
    assert response.status_code == 302
    correction = Correction.objects.get()
    item = StripeOutbox.objects.get(correction=correction)
    assert item.kind == StripeOutbox.Kind.INVOICE_ITEM
    a_customer(stripe_on)
    stripe_on.add(
        responses.POST,
        f"{STRIPE}/v1/invoiceitems",
        json={"id": "ii_1", "object": "invoiceitem"},
    )
    assert meters.deliver_due()["sent"] == 1
    [call] = calls_to(stripe_on, "/v1/invoiceitems")
    assert form(call) == {
        "customer": "cus_alice",
        "amount": "-250",
        "currency": "usd",
        "description": "Correction: Outage on 3 Oct",
        "metadata[chatusage_user_id]": str(alice.pk),
        "metadata[chatusage_correction_id]": str(correction.pk),
    }
    assert call.request.headers["Idempotency-Key"] == f"chatusage-correction-{correction.pk}"
    assert StripeOutbox.objects.get().stripe_id == "ii_1"


def test_manage_billing_opens_stripes_customer_portal(alice_client, alice, stripe_on, settings):
    settings.SITE_URL = "https://chat.example.com"
    assert "Manage billing" in alice_client.get("/billing/").content.decode()
    UsageAccount.objects.filter(user=alice).update(stripe_customer_id="cus_alice")
    stripe_on.add(
        responses.POST,
        f"{STRIPE}/v1/billing_portal/sessions",
        json={"id": "bps_1", "object": "billing_portal.session", "url": "https://portal.test/s"},
    )
    response = alice_client.post("/billing/portal/")
    assert response.status_code == 302 and response["Location"] == "https://portal.test/s"
    [call] = calls_to(stripe_on, "/v1/billing_portal/sessions")
    assert form(call) == {
        "customer": "cus_alice",
        "return_url": "https://chat.example.com/billing/",
    }
    assert alice_client.get("/billing/portal/").status_code == 405


def test_the_portal_failing_says_so_on_the_billing_page(alice_client, alice, stripe_on):
    UsageAccount.objects.filter(user=alice).update(stripe_customer_id="cus_alice")
    stripe_on.add(responses.POST, f"{STRIPE}/v1/billing_portal/sessions", status=503, json={})
    response = alice_client.post("/billing/portal/", follow=True)
    assert response.redirect_chain[-1][0] == "/billing/"
    assert "could not open your billing settings" in response.content.decode()


def test_without_stripe_there_is_no_portal(alice_client):
    assert "Manage billing" not in alice_client.get("/billing/").content.decode()
    assert alice_client.post("/billing/portal/").status_code == 404


def summaries(mock, value):
    mock.add(
        responses.GET,
        f"{STRIPE}/v1/billing/meters/mtr_test_1/event_summaries",
        json={
            "object": "list",
            "has_more": False,
            "url": "/v1/billing/meters/mtr_test_1/event_summaries",
            "data": [
                {
                    "id": "mtrusg_1",
                    "object": "billing.meter_event_summary",
                    "aggregated_value": value,
                    "meter": "mtr_test_1",
                }
            ],
        },
    )


def test_reconcile_billing_compares_stripes_meter_with_the_ledger(alice, stripe_on):
    first, second = answered(alice), answered(alice, output_tokens=7)
    UsageAccount.objects.filter(user=alice).update(stripe_customer_id="cus_alice")
    ledger = int((first.charge + second.charge) * 1_000_000)
    day = timezone.localdate().isoformat()

    summaries(stripe_on, ledger)
    out = StringIO()
    call_command("reconcile_billing", "--cycle", day, stdout=out)
    assert "Checked 1 customer(s): 0 with differences." in out.getvalue()
    [call] = calls_to(stripe_on, "/v1/billing/meters/mtr_test_1/event_summaries")
    query = parse_qs(call.request.url.partition("?")[2])
    assert query["customer"] == ["cus_alice"]
    cycle = UsageAccount.objects.get(user=alice)
    from usage.cycles import cycle_for

    bounds = cycle_for(cycle)
    assert query["start_time"] == [str(int(bounds.start.timestamp()))]
    assert query["end_time"] == [str(int(bounds.end.timestamp()))]

    summaries(stripe_on, ledger - int(second.charge * 1_000_000))  # one never arrived
    out = StringIO()
    with pytest.raises(CommandError, match="1 customer"):
        call_command("reconcile_billing", "--cycle", day, stdout=out)
    assert f"difference {int(second.charge * 1_000_000)}" in out.getvalue()
    assert "2 not sent yet" in out.getvalue()  # the outbox still holds both


@pytest.mark.django_db(transaction=True)
def test_stripe_hanging_never_holds_up_a_settle(django_user_model, stripe_on, monkeypatch):
    """The delivery after commit runs in the background: a settle returns while Stripe has
    not answered, and the event is sent once it does."""
    monkeypatch.undo()  # the real kick: deliver in the background after commit
    stripe_on.calls.reset()
    user = django_user_model.objects.create_user("hanger", email="h@example.com")
    UsageAccount.objects.filter(user=user).update(stripe_customer_id="cus_h")
    release, arrived = threading.Event(), threading.Event()

    def hanging(request):
        arrived.set()
        release.wait(timeout=60)
        return 200, {}, '{"object": "billing.meter_event"}'

    stripe_on.add_callback(responses.POST, f"{STRIPE}/v1/billing/meter_events", hanging)
    try:
        generation = answered(user)  # returns although Stripe has not answered
        assert arrived.wait(timeout=60)
        assert StripeOutbox.objects.get(generation_id=generation.pk).status == "pending"
        answered(user)  # and so does the next one, while the sender is still stuck
    finally:
        release.set()
    meters.idle()
    meters.deliver_due()  # the second, if the pass that hung had started before it
    assert set(StripeOutbox.objects.values_list("status", flat=True)) == {"sent"}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL row locks")
@pytest.mark.django_db(transaction=True)
def test_fifty_parallel_settles_write_each_charge_once(django_user_model, stripe_on):
    """50 answers from 5 users, each settled twice at once (a retry racing the first): 50
    outbox rows, one per generation, their amounts the ledger's charges."""
    users = [
        django_user_model.objects.create_user(f"u{n}", email=f"u{n}@example.com") for n in range(5)
    ]
    reservations = [reserve(users[n % 5], "gpt-4o-mini", MESSAGES, 500) for n in range(50)]
    barrier = threading.Barrier(20)

    def settle_all(part):
        try:
            barrier.wait(timeout=30)
            for reservation in part:
                settle(reservation, TokenUsage(20, 0, 100 + reservation.generation_id.int % 50))
        finally:
            connections.close_all()

    halves = [reservations[n::10] for n in range(10)]
    threads = [threading.Thread(target=settle_all, args=(part,)) for part in halves + halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    rows = StripeOutbox.objects.all()
    assert rows.count() == 50
    assert {row.generation_id for row in rows} == {r.generation_id for r in reservations}
    ledger = Generation.objects.filter(status="ok")
    assert sum(row.amount for row in rows) == sum(g.charge for g in ledger)
