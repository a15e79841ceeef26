"""Budget alerts: decided in the ledger's own transactions, delivered after commit.

- Thresholds (USAGE_ALERT_THRESHOLDS, per-user override): crossed when the cycle's settled
  spend reaches that percentage of the user's budget; users without a cap get none.
- usage.limit_reached: the first time in a cycle a message is refused for the budget or the
  message limit.
- usage.user_over_amount (USAGE_STAFF_ALERT_USD): the first time a user's cycle spend
  passes that amount; for staff, by mail and webhook.

Each (user, cycle, kind, threshold) is one Alert row, once: a unique constraint decides,
inside the transaction that settles or refuses, so 50 parallel settles crossing 80% make
one alert. The row is the outbox: after commit a background thread delivers it (mail to
the user or staff, signed webhook), and `manage.py send_alerts` retries what failed with
exponential backoff, so nothing is lost and each event may arrive more than once with the
same id.
"""

import hashlib
import hmac
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from chatusage.db import batch, require_transaction
from usage import budget, sql
from usage.cycles import Cycle
from usage.models import Alert, UsageAccount
from usage.pricing import usd_text

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 5  # seconds; a slower receiver is a failure to retry
MAX_BACKOFF = timedelta(hours=6)
LEASE = timedelta(minutes=5)  # a sender claims an alert for this long
SIGNATURE_HEADER = "X-Chatusage-Signature"

_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="alerts")


# --- deciding (inside the ledger's transactions) ------------------------------


def watches(account: UsageAccount) -> bool:
    """Whether settling a call of this account can raise an alert (so settle must look)."""
    capped = bool(account.effective_budget) and bool(budget.thresholds_for(account))
    return capped or settings.USAGE_STAFF_ALERT_USD is not None


def record(account, cycle, kind, threshold, spent, budget, refused_for="") -> None:
    """Record an alert once per (user, cycle, kind, threshold), delivered after commit."""
    now = timezone.now()
    (rows,) = batch(
        sql.record_alert(
            id=uuid.uuid4(),
            user_id=account.user_id,
            kind=kind,
            threshold=threshold,
            cycle_start=cycle.start_date,
            cycle_end=cycle.end_date,
            spent=spent,
            budget=budget,
            created_at=now,
            next_attempt_at=now,
            refused_for=refused_for,
        )
    )
    if rows:  # new: deliver after commit, off the request's path
        alert_id = rows[0][0]
        transaction.on_commit(lambda: dispatch(alert_id))


def after_settle(account: UsageAccount, cycle: Cycle, spent: Decimal, added: Decimal) -> None:
    """Record the thresholds this settle crossed: `spent` is the cycle's settled spend read
    after the rollup took `added`. Call inside the settle's transaction, with the account
    row locked."""
    require_transaction("after_settle()")
    before = spent - added
    cap = account.effective_budget
    if cap:
        for percent in budget.thresholds_for(account):
            line = cap * percent / 100
            if before < line <= spent:
                record(account, cycle, Alert.Kind.THRESHOLD, percent, spent, cap)
    amount = settings.USAGE_STAFF_ALERT_USD
    if amount is not None and before <= amount < spent:
        record(account, cycle, Alert.Kind.OVER_AMOUNT, amount, spent, cap)


def after_refusal(
    account: UsageAccount, cycle: Cycle, spent: Decimal, refused_for: str = "budget"
) -> None:
    """The first refusal of the cycle for the budget or the message limit (inside
    reserve()'s transaction, which commits it before the refusal is raised)."""
    require_transaction("after_refusal()")
    record(
        account, cycle, Alert.Kind.LIMIT, Decimal(0), spent, account.effective_budget, refused_for
    )


# --- delivering (after commit, and by send_alerts) ----------------------------


def dispatch(alert_id) -> None:
    """Deliver a newly committed alert in the background, never in the chat request."""
    _executor.submit(_deliver_in_thread, alert_id)


def _deliver_in_thread(alert_id) -> None:
    from django.db import connections

    try:
        deliver_due(Alert.objects.filter(pk=alert_id))
    except Exception:  # the outbox keeps it; send_alerts retries
        log.exception("Delivering alert %s failed", alert_id)
    finally:
        connections.close_all()


def payload(alert: Alert) -> dict:
    user = alert.user
    data = {
        "id": str(alert.pk),
        "type": alert.kind,
        "created_at": alert.created_at.isoformat(),
        "user": {"id": user.pk, "username": user.get_username(), "email": user.email},
        "spent": usd_text(alert.spent),
        "budget": str(alert.budget),
        "cycle": {"start": alert.cycle_start.isoformat(), "end": alert.cycle_end.isoformat()},
    }
    if alert.kind == Alert.Kind.THRESHOLD:
        data["threshold"] = float(alert.threshold)
    if alert.kind == Alert.Kind.OVER_AMOUNT:
        data["amount"] = str(alert.threshold)
    if alert.kind == Alert.Kind.LOW_BALANCE:  # prepaid credit (billing/credits.py)
        data["balance_usd"] = usd_text(alert.spent)
        data["low_balance_usd"] = str(alert.budget)
    return data


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, as Stripe signs: the time is
    signed with the body, so a receiver can refuse a captured delivery replayed later."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + body
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


def _post_webhook(alert: Alert) -> None:
    body = json.dumps(payload(alert), separators=(",", ":")).encode()
    response = requests.post(
        settings.ALERT_WEBHOOK_URL,
        data=body,
        headers={
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, settings.ALERT_WEBHOOK_SECRET),
        },
        timeout=WEBHOOK_TIMEOUT,
    )
    if not 200 <= response.status_code < 300:
        raise RuntimeError(f"webhook answered HTTP {response.status_code}")


def _mail_context(alert: Alert) -> dict:
    tz = settings.USAGE_TIME_ZONE
    resets = Cycle(alert.cycle_start, alert.cycle_end, tz).end.astimezone(tz)
    percent = alert.threshold.normalize() if alert.kind == Alert.Kind.THRESHOLD else None
    return {
        "alert": alert,
        "user": alert.user,
        "percent": f"{percent:f}" if percent is not None else "",
        "resets": resets,
        "zone": tz.key,
        "usage_url": f"{settings.SITE_URL}/usage/",
        "billing_url": f"{settings.SITE_URL}/billing/",
        "message_limit": alert.user.usage_account.effective_message_limit,
        "admin_url": f"{settings.SITE_URL}/admin/auth/user/{alert.user_id}/change/",
    }


def _send_mail(alert: Alert) -> None:
    context = _mail_context(alert)
    if alert.kind == Alert.Kind.OVER_AMOUNT:
        template = "usage/alert_staff.txt"
        staff = get_user_model().objects.filter(is_staff=True, is_active=True)
        to = [email for email in staff.values_list("email", flat=True) if email]
    else:
        template = "usage/alert_user.txt"
        to = [alert.user.email] if alert.user.email else []
    if not to:
        return
    subject, _, body = render_to_string(template, context).partition("\n")
    send_mail(subject.strip(), body.lstrip(), None, to)


def _backoff(attempts: int) -> timedelta:
    return min(timedelta(minutes=2 ** min(attempts, 12)), MAX_BACKOFF)


def deliver(alert: Alert) -> bool:
    """Send what this alert still owes (mail, webhook); True when it owes nothing more."""
    now = timezone.now()
    errors = []
    if alert.email_sent_at is None:
        try:
            _send_mail(alert)
            alert.email_sent_at = now
        except Exception as exc:  # SMTP errors are many; any of them means "try again"
            errors.append(f"email: {type(exc).__name__}: {exc}")
    if settings.ALERT_WEBHOOK_URL and alert.webhook_sent_at is None:
        try:
            _post_webhook(alert)
            alert.webhook_sent_at = now
        except (requests.RequestException, RuntimeError) as exc:
            errors.append(f"webhook: {exc}")
    alert.attempts += 1
    if errors:
        alert.last_error = "; ".join(errors)[:2000]
        alert.next_attempt_at = now + _backoff(alert.attempts)
        log.warning("Alert %s not delivered (attempt %s): %s", alert.pk, alert.attempts, errors)
    else:
        alert.delivered_at = now
        alert.last_error = ""
    alert.save(
        update_fields=[
            "email_sent_at",
            "webhook_sent_at",
            "delivered_at",
            "attempts",
            "next_attempt_at",
            "last_error",
        ]
    )
    return not errors


def deliver_due(queryset=None) -> tuple[int, int]:
    """Deliver the due, undelivered alerts of `queryset`: (delivered, failed)."""
    now = timezone.now()
    queryset = (queryset if queryset is not None else Alert.objects.all()).filter(
        delivered_at__isnull=True, next_attempt_at__lte=now
    )
    delivered = failed = 0
    for alert_id in queryset.values_list("pk", flat=True):
        # Claim it for a while: the background sender and the cron job never send one
        # alert at the same moment (a crash between sending and saving may still repeat
        # it, which the stable id lets receivers drop).
        claimed = Alert.objects.filter(
            pk=alert_id, delivered_at__isnull=True, next_attempt_at__lte=now
        ).update(next_attempt_at=now + LEASE)
        if not claimed:
            continue
        alert = Alert.objects.select_related("user").get(pk=alert_id)
        if deliver(alert):
            delivered += 1
        else:
            failed += 1
    return delivered, failed


def banner_alerts(user, cycle: Cycle) -> list[Alert]:
    """The user's alerts of this cycle still to show (staff alerts are not the user's)."""
    alerts = Alert.objects.filter(
        user=user,
        cycle_start=cycle.start_date,
        dismissed_at__isnull=True,
        kind__in=[Alert.Kind.THRESHOLD, Alert.Kind.LIMIT, Alert.Kind.LOW_BALANCE],
    )
    # The most telling one: a refusal, then low credit, else the highest threshold crossed.
    order = {Alert.Kind.LIMIT: 0, Alert.Kind.LOW_BALANCE: 1}
    return sorted(alerts, key=lambda a: (order.get(a.kind, 2), -a.threshold))[:1]
