"""Budget alerts: exactly once per threshold and cycle, delivered at least once, signed."""

import json
import threading
import time
from decimal import Decimal
from io import StringIO

import pytest
import responses
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client
from django.utils import timezone

from tests.helpers import documented_verify, set_budget
from usage import alerts, budget
from usage.limits import TokenUsage, UsageLimitReached, reserve, settle
from usage.models import Alert, ModelPrice

MESSAGES = [{"role": "user", "content": "hi"}]
WEBHOOK = "https://hooks.example.test/chatusage"
SECRET = "whsec-test-secret"


@pytest.fixture
def cent_model(db):
    """Input is free, output costs $0.01 a token: n output tokens cost n cents."""
    ModelPrice.objects.create(
        model="cent-model", input_per_1m=0, cached_input_per_1m=0, output_per_1m=10_000
    )
    return "cent-model"


def spend_cents(user, model, cents, max_tokens=30):
    settle(reserve(user, model, MESSAGES, max_tokens), TokenUsage(0, 0, cents))


def test_a_signed_delivery_replayed_later_is_refused_by_the_documented_check():
    """Only the body was signed, so a captured delivery verified for ever."""
    verify = documented_verify()
    body = b'{"id":"x","type":"usage.limit_reached"}'
    now = int(time.time())
    assert verify(body, alerts.sign(body, SECRET, now), SECRET)
    assert not verify(body, alerts.sign(body, SECRET, now - 3600), SECRET)  # an hour old
    assert not verify(body + b" ", alerts.sign(body, SECRET, now), SECRET)
    forged = alerts.sign(body, SECRET, now - 3600).replace(f"t={now - 3600}", f"t={now}")
    assert not verify(body, forged, SECRET)  # the time cannot be changed on its own
    assert not verify(body, "sha256=" + "0" * 64, SECRET)


def test_crossing_50_then_80_then_a_refusal_gives_exactly_three_alerts(alice, cent_model):
    set_budget(alice, "1.00")
    spend_cents(alice, cent_model, 30)
    assert not Alert.objects.exists()
    spend_cents(alice, cent_model, 25)  # 55%
    spend_cents(alice, cent_model, 30)  # 85%
    for _ in range(2):  # 0.85 + a 0.30 worst case does not fit: refused, twice
        with pytest.raises(UsageLimitReached):
            reserve(alice, cent_model, MESSAGES, 30)
    kinds = sorted((a.kind, a.threshold) for a in Alert.objects.filter(user=alice))
    assert kinds == [
        ("usage.limit_reached", Decimal(0)),
        ("usage.threshold_crossed", Decimal(50)),
        ("usage.threshold_crossed", Decimal(80)),
    ]
    eighty = Alert.objects.get(threshold=80)
    assert (eighty.spent, eighty.budget) == (Decimal("0.85"), Decimal("1.00"))


def test_users_without_a_cap_get_no_threshold_alerts(alice, cent_model):
    set_budget(alice, "0")
    spend_cents(alice, cent_model, 30)
    assert not Alert.objects.exists()


def test_a_per_user_override_replaces_the_default_thresholds(alice, cent_model):
    set_budget(alice, "1.00")
    alice.usage_account.alert_thresholds = "20"
    alice.usage_account.save()
    spend_cents(alice, cent_model, 25)
    spend_cents(alice, cent_model, 30)
    assert [a.threshold for a in Alert.objects.all()] == [Decimal(20)]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL row locks")
@pytest.mark.django_db(transaction=True)
def test_fifty_parallel_settles_crossing_80_percent_give_one_alert(django_user_model, cent_model):
    user = django_user_model.objects.create_user("racer", "racer@example.com", "x")
    set_budget(user, "3.00")
    for cents in (30, 30, 30, 30, 30, 30, 30, 25):  # $2.35: past 50%, not yet 80% ($2.40)
        spend_cents(user, cent_model, cents)
    # One model each, so no two settles share a rollup row that would queue them anyway.
    models = [f"cent-model-{n}" for n in range(50)]
    ModelPrice.objects.bulk_create(
        ModelPrice(model=m, input_per_1m=0, cached_input_per_1m=0, output_per_1m=10_000)
        for m in models
    )
    reservations = [reserve(user, model, MESSAGES, 1) for model in models]
    barrier = threading.Barrier(len(reservations))

    def race(reservation):
        try:
            barrier.wait(timeout=30)
            settle(reservation, TokenUsage(0, 0, 1))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=race, args=(r,)) for r in reservations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert Alert.objects.filter(user=user, threshold=80).count() == 1
    assert Alert.objects.filter(user=user, threshold=50).count() == 1


def test_a_failed_webhook_is_retried_with_the_same_id_and_a_valid_signature(
    alice, cent_model, settings, requests_mock, mailoutbox
):
    settings.ALERT_WEBHOOK_URL = WEBHOOK
    settings.ALERT_WEBHOOK_SECRET = SECRET
    requests_mock.add(responses.POST, WEBHOOK, status=500)
    requests_mock.add(responses.POST, WEBHOOK, status=200)
    set_budget(alice, "1.00")
    spend_cents(alice, cent_model, 55)
    alert = Alert.objects.get()
    assert alerts.deliver_due() == (0, 1)
    alert.refresh_from_db()
    assert alert.delivered_at is None and "HTTP 500" in alert.last_error
    assert alert.next_attempt_at > timezone.now()  # backed off
    assert alert.email_sent_at is not None  # the mail went; only the webhook is owed
    Alert.objects.update(next_attempt_at=timezone.now())
    out = StringIO()
    call_command("send_alerts", stdout=out)
    assert "Delivered 1 alert(s), 0 failed" in out.getvalue()
    alert.refresh_from_db()
    assert alert.delivered_at is not None
    calls = [c for c in requests_mock.calls if c.request.url == WEBHOOK]
    assert len(calls) == 2
    bodies = [json.loads(c.request.body) for c in calls]
    assert bodies[0]["id"] == bodies[1]["id"] == str(alert.pk)
    verify = documented_verify()
    for call in calls:
        header = call.request.headers["X-Chatusage-Signature"]
        assert verify(call.request.body, header, SECRET)
        assert not verify(call.request.body, header, "another-secret")
    payload = bodies[0]
    assert payload["type"] == "usage.threshold_crossed"
    assert payload["threshold"] == 50.0
    assert (payload["spent"], payload["budget"]) == ("0.550000", "1.00")
    assert payload["user"] == {"id": alice.pk, "username": "alice", "email": "alice@example.com"}
    assert set(payload["cycle"]) == {"start", "end"}
    assert len(mailoutbox) == 1  # the retry did not mail again


def test_the_user_gets_a_mail_with_the_percentage_spend_and_reset(
    alice, cent_model, mailoutbox, settings
):
    settings.SITE_URL = "https://chat.example.com"
    set_budget(alice, "1.00")
    spend_cents(alice, cent_model, 30)
    spend_cents(alice, cent_model, 55)  # crosses 50 and 80 at once
    alerts.deliver_due()
    subjects = sorted(m.subject for m in mailoutbox)
    assert subjects == [
        "You have used 50% of your $1.00 budget",
        "You have used 80% of your $1.00 budget",
    ]
    body = mailoutbox[0].body
    assert "$0.8500 of $1.00" in body
    assert "resets on" in body and settings.USAGE_TIME_ZONE.key in body
    assert "https://chat.example.com/usage/" in body
    assert mailoutbox[0].to == ["alice@example.com"]
    # A threshold is a warning: chat still works, so the mail must not say it stopped.
    assert "chat works again" not in body and "You can go on chatting" in body


def test_the_limit_mail_names_the_limit_that_was_reached(alice, cent_model, mailoutbox):
    """It said "this cycle's budget or message limit is used up", whichever it was."""
    set_budget(alice, "0", message_limit=1)
    spend_cents(alice, cent_model, 1)
    with pytest.raises(UsageLimitReached):
        reserve(alice, cent_model, MESSAGES, 30)
    alerts.deliver_due()
    [mail] = mailoutbox
    assert mail.subject == "You have used this cycle's chatusage messages"
    assert "you have sent the 1 messages this cycle allows" in mail.body
    assert "chat works again from then on" in mail.body


def test_staff_hear_once_when_a_user_passes_the_staff_amount(
    alice, staff, cent_model, settings, requests_mock, mailoutbox
):
    settings.USAGE_STAFF_ALERT_USD = Decimal("0.50")
    settings.ALERT_WEBHOOK_URL = WEBHOOK
    settings.ALERT_WEBHOOK_SECRET = SECRET
    requests_mock.add(responses.POST, WEBHOOK, status=204)
    set_budget(alice, "0")  # no cap: no threshold alerts, the staff rule still applies
    spend_cents(alice, cent_model, 30)
    spend_cents(alice, cent_model, 30)
    spend_cents(alice, cent_model, 30)
    [alert] = Alert.objects.all()
    assert alert.kind == "usage.user_over_amount"
    alerts.deliver_due()
    [mail] = mailoutbox
    assert mail.to == ["staff@example.com"]
    assert "alice has spent more than $0.50" in mail.subject
    [call] = requests_mock.calls
    body = json.loads(call.request.body)
    assert (body["type"], body["amount"]) == ("usage.user_over_amount", "0.50")


def test_the_banner_shows_until_dismissed_and_never_another_users(
    alice, bob, cent_model, alice_client
):
    set_budget(alice, "1.00")
    spend_cents(alice, cent_model, 55)
    page = alice_client.get("/chat/").content.decode()
    assert "You have used 50% of your $1.00 budget" in page
    assert "You have used 50%" in alice_client.get("/usage/").content.decode()
    alert = Alert.objects.get()
    bob_client = Client()
    bob_client.force_login(bob)
    bob_client.post(f"/usage/alerts/{alert.pk}/dismiss/")
    alert.refresh_from_db()
    assert alert.dismissed_at is None  # not bob's to dismiss
    assert "You have used" not in bob_client.get("/chat/").content.decode()
    response = alice_client.post(f"/usage/alerts/{alert.pk}/dismiss/", {"next": "/chat/"})
    assert response.url == "/chat/"
    assert "You have used" not in alice_client.get("/chat/").content.decode()


def test_the_banner_ends_with_its_cycle(alice, cent_model, alice_client):
    set_budget(alice, "1.00")
    spend_cents(alice, cent_model, 55)
    alert = Alert.objects.get()
    Alert.objects.update(
        cycle_start=alert.cycle_start.replace(year=alert.cycle_start.year - 1),
        cycle_end=alert.cycle_end.replace(year=alert.cycle_end.year - 1),
    )
    assert "You have used" not in alice_client.get("/chat/").content.decode()


def test_staff_can_see_and_resend_alerts(alice, cent_model, staff_client, mailoutbox):
    set_budget(alice, "1.00")
    spend_cents(alice, cent_model, 55)
    alerts.deliver_due()
    alert = Alert.objects.get()
    assert "threshold_crossed" in staff_client.get("/admin/usage/alert/").content.decode()
    response = staff_client.post(
        "/admin/usage/alert/",
        {"action": "send_again", "_selected_action": [str(alert.pk)]},
        follow=True,
    )
    assert "Sent 1 alert(s) again" in response.content.decode()
    assert len(mailoutbox) == 2


def test_a_malformed_per_user_threshold_is_refused_in_admin(alice, staff_client):
    from django.core.exceptions import ValidationError

    account = alice.usage_account
    account.alert_thresholds = "50, eighty"
    with pytest.raises(ValidationError):
        account.full_clean()
    account.alert_thresholds = " 50, 80.5 "
    account.full_clean()
    assert budget.thresholds_for(account) == [Decimal(50), Decimal("80.5")]
    account.alert_thresholds = "0, 50"  # the settings refuse 0, and so does the model
    with pytest.raises(ValidationError):
        account.full_clean()
