"""Stripe metered billing (BILLING_MODE=metered): every charge reaches Stripe exactly once.

- Each settled answer with a charge above 0 gets one outbox row, written by settle()'s own
  transaction (usage/hooks.py: usage never imports billing), so a charge is in the outbox
  if and only if it is in the ledger. The row's unique generation id makes a second
  settle, a retry or a replay from the spool write nothing more.
- Staff corrections (credits and charges, billing/admin.py) get one row each, written with
  the correction, sent as an invoice item. Charges recorded after their cycle closed are
  not: their meter event went out when they settled, so Stripe has them already.
- After commit one background thread delivers what is due, off the chat's path;
  `manage.py send_meter_events` (cron, or --loop) delivers the rest. Each request carries
  the row's identifier as Idempotency-Key, and a meter event's identifier is the
  generation's id, so a retry after a lost answer is never counted twice.
- Stripe failing or hanging: the row waits, retried with backoff. Stripe refusing it for
  good (an event older than Stripe accepts, no customer): the row is parked, listed for
  staff in admin ("Stripe outbox", status parked), where it can be sent again.
"""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import stripe
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from billing import stripe_api
from billing.models import Correction, StripeOutbox
from chatusage.db import batch, params, postgres
from usage import sql
from usage.models import Generation

log = logging.getLogger(__name__)

# Stripe accepts meter events up to 35 days old; a little margin for the request's trip.
METER_EVENT_MAX_AGE = timedelta(days=35) - timedelta(minutes=10)
LEASE = timedelta(minutes=2)  # a sender claims a row for this long
MAX_BACKOFF = timedelta(hours=1)
BATCH = 200

OUTBOX = StripeOutbox._meta.db_table
# ruff: noqa: S608 (table names from the models; every value is a parameter)
# Recorded with the settle (usage/sql.py's `settled`: the ledger row as it settled). If
# another settle won, its values (and its outbox row) stand.
METER_EVENT_SQL = f"""
INSERT INTO {OUTBOX} (kind, user_id, generation_id, amount, occurred_at, status, attempts,
                      next_attempt_at, last_error, stripe_id, created_at)
SELECT %(meter_kind)s, settled.user_id, settled.id, settled.charge, settled.settled_at,
       %(meter_pending)s, 0, %(meter_now)s, '', '', %(meter_now)s
  FROM settled
 WHERE settled.status = %(meter_ok)s AND settled.charge > 0
ON CONFLICT (generation_id) DO NOTHING
"""
# Claim the due rows (and read their users' Stripe customers) in one statement.
CLAIM_SQL = f"""
UPDATE {OUTBOX} SET next_attempt_at = %s, attempts = attempts + 1
 WHERE id IN (SELECT d.id FROM {OUTBOX} d
               WHERE d.status = %s AND d.next_attempt_at <= %s
               ORDER BY d.next_attempt_at LIMIT %s{{lock}})
RETURNING {", ".join(field.column for field in StripeOutbox._meta.concrete_fields)},
          (SELECT a.stripe_customer_id FROM {sql.ACCOUNT} a
            WHERE a.user_id = {OUTBOX}.user_id) AS customer
"""
SENT_SQL = f"UPDATE {OUTBOX} SET status = %s, sent_at = %s, last_error = '' WHERE id IN ({{ids}})"


def metered() -> bool:
    return settings.BILLING_MODE == "metered" and stripe_api.enabled()


class MeterEventOutbox:
    """Registered in usage.hooks.settle_outboxes (billing/apps.py)."""

    def statements(self, fields: dict) -> list:
        if not metered() or fields["status"] != Generation.Status.OK or fields["charge"] <= 0:
            return []
        values = {
            "meter_kind": StripeOutbox.Kind.METER_EVENT.value,
            "meter_pending": StripeOutbox.Status.PENDING.value,
            "meter_now": timezone.now(),
            "meter_ok": Generation.Status.OK.value,
        }
        return [(METER_EVENT_SQL, values)]

    def committed(self) -> None:
        if settings.STRIPE_SEND_AFTER_COMMIT:
            kick()


def record_correction(correction: Correction) -> StripeOutbox | None:
    """A staff correction, to go to Stripe as an invoice item (in the correction's
    transaction)."""
    if not metered() or not correction.amount:
        return None
    now = timezone.now()
    item = StripeOutbox.objects.create(
        kind=StripeOutbox.Kind.INVOICE_ITEM,
        user_id=correction.user_id,
        correction=correction,
        amount=correction.amount,
        occurred_at=correction.created_at or now,
        next_attempt_at=now,
        created_at=now,
    )
    transaction.on_commit(kick)
    return item


# --- delivering ---------------------------------------------------------------------

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stripe-outbox")
_lock = threading.Lock()
_queued = False


def kick() -> None:
    """Deliver what is due in the background, never in the request: one pass queued at a
    time (a pass takes every row due when it starts, so kicks during a pass queue one
    more)."""
    global _queued
    with _lock:
        if _queued:
            return
        _queued = True
    _executor.submit(_pass)


def _pass() -> None:
    global _queued
    with _lock:
        _queued = False
    try:
        deliver_due()
    except Exception:  # the rows stay due: the next kick or send_meter_events retries them
        log.exception("Delivering the Stripe outbox failed")
    finally:
        connections.close_all()


def idle() -> None:
    """Wait until the background deliveries queued so far are done (tests, shutdown)."""
    _executor.submit(lambda: None).result()


def _backoff(attempts: int) -> timedelta:
    return min(timedelta(seconds=10 * 2 ** min(attempts - 1, 12)), MAX_BACKOFF)


def _finish(item: StripeOutbox, status: str, error: str = "") -> str:
    """Record a try that did not simply succeed (or an invoice item, which has an id)."""
    now = timezone.now()
    item.status = status
    item.last_error = error
    if status == StripeOutbox.Status.SENT:
        item.sent_at = now
    elif status == StripeOutbox.Status.PENDING:
        item.next_attempt_at = now + _backoff(item.attempts)
        log.warning("Stripe outbox %s: will retry (attempt %s): %s", item.pk, item.attempts, error)
    else:
        log.error("Stripe outbox %s parked: %s", item.pk, error)
    item.save(update_fields=["status", "last_error", "sent_at", "next_attempt_at", "stripe_id"])
    return status


def _failed(item: StripeOutbox, error: stripe.StripeError, what: str = "") -> str:
    """A try Stripe answered with an error: retried later if it may pass then, else parked."""
    status = (
        StripeOutbox.Status.PENDING if stripe_api.retryable(error) else StripeOutbox.Status.PARKED
    )
    return _finish(item, status, what + stripe_api.describe(error))


def _already_there(error: stripe.StripeError) -> bool:
    """Stripe's answer that an event with this identifier exists: it was delivered."""
    message = (error.user_message or "").lower()
    return error.code == "resource_already_exists" or "already exists" in message


def _send(item: StripeOutbox, customers: dict[int, str]) -> str | None:
    """One try at delivering a claimed `item`: None when Stripe took it (the caller marks
    such rows sent together), else the status it was left in (pending to retry, parked)."""
    kind = item.kind
    if (
        kind == StripeOutbox.Kind.METER_EVENT
        and item.occurred_at < timezone.now() - METER_EVENT_MAX_AGE
    ):
        return _finish(
            item,
            StripeOutbox.Status.PARKED,
            "Older than the 35 days Stripe accepts meter events for: bill it with a correction.",
        )
    customer = customers.get(item.user_id)
    if customer is None:
        try:
            customer = customers[item.user_id] = stripe_api.customer_id(item.user_id)
        except stripe.StripeError as error:
            return _failed(item, error, "No Stripe customer: ")
    options = {"idempotency_key": item.identifier}
    try:
        if kind == StripeOutbox.Kind.METER_EVENT:
            stripe_api.client().v1.billing.meter_events.create(
                params={
                    "event_name": settings.STRIPE_METER_EVENT_NAME,
                    "identifier": item.identifier,
                    "timestamp": int(item.occurred_at.timestamp()),
                    "payload": {
                        "stripe_customer_id": customer,
                        "value": str(stripe_api.micro_usd(item.amount)),
                    },
                },
                options=options,
            )
        else:
            correction = item.correction
            invoice_item = stripe_api.client().v1.invoice_items.create(
                params={
                    "customer": customer,
                    "amount": stripe_api.cents(item.amount),
                    "currency": stripe_api.CURRENCY,
                    "description": f"Correction: {correction.reason}"[:500],
                    "metadata": {
                        "chatusage_user_id": str(item.user_id),
                        "chatusage_correction_id": str(correction.pk),
                    },
                },
                options=options,
            )
            item.stripe_id = invoice_item.id
            return _finish(item, StripeOutbox.Status.SENT)
    except stripe.StripeError as error:
        if kind == StripeOutbox.Kind.METER_EVENT and _already_there(error):
            return None
        return _failed(item, error)
    return None


def _claim(now) -> tuple[list[StripeOutbox], dict[int, str]]:
    """Take up to BATCH due rows for a while, counting the try, in one statement: the
    background sender and the cron job never send one row at the same moment (if they
    did, the Idempotency-Key would still make Stripe count it once). Also the Stripe
    customers of their users, where known."""
    lock = " FOR UPDATE SKIP LOCKED" if postgres() else ""  # SQLite: the database's lock
    values = [now + LEASE, StripeOutbox.Status.PENDING.value, now, BATCH]
    claimed = StripeOutbox.objects.raw(CLAIM_SQL.format(lock=lock), params(values))
    items = sorted(claimed, key=lambda item: item.pk)
    customers = {item.user_id: item.customer for item in items if item.customer}
    return items, customers


def deliver_due() -> dict[str, int]:
    """Send every due row: counts by new status."""
    counts = {"sent": 0, "pending": 0, "parked": 0}
    if not stripe_api.enabled():
        return counts
    while True:
        items, customers = _claim(timezone.now())
        taken = []
        for item in items:
            status = _send(item, customers)
            if status is None:
                taken.append(item.pk)
            else:
                counts[status] += 1
        if taken:  # meter events Stripe took: marked sent together
            marks = ", ".join(["%s"] * len(taken))
            values = [StripeOutbox.Status.SENT.value, timezone.now(), *taken]
            batch((SENT_SQL.format(ids=marks), params(values)))
            counts["sent"] += len(taken)
        # A shorter claim took every row due when it ran; a row settled since has kicked
        # a pass of its own.
        if len(items) < BATCH:
            return counts


def retry_parked(queryset) -> int:
    """Staff's "send again" for parked rows (after fixing the customer, say)."""
    return queryset.filter(status=StripeOutbox.Status.PARKED).update(
        status=StripeOutbox.Status.PENDING, next_attempt_at=timezone.now()
    )
