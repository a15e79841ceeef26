"""Stripe's webhook (POST /billing/stripe/webhook/): the only way paid credit arrives.

The Stripe-Signature header is verified with STRIPE_WEBHOOK_SECRET by the `stripe`
package's own helper (default tolerance: 5 minutes); a bad or missing signature answers
400 and writes nothing. Each Stripe object is applied once (CreditGrant.stripe_object_id is
unique), so replays and retries answer 200 and change nothing; unknown event types answer
200 and are ignored.
"""

import logging
from decimal import Decimal

import stripe
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import credits
from billing.models import CreditGrant
from usage.models import UsageAccount

log = logging.getLogger(__name__)


def _user(user_id):
    return get_user_model().objects.filter(pk=user_id).first() if user_id else None


def paid_checkout(session) -> str:
    """checkout.session.completed (paid) or .async_payment_succeeded: grant amount_total."""
    if session.get("mode") != "payment" or session.get("currency") != "usd":
        return "ignored: not a USD payment"
    user_id = session.get("client_reference_id") or (session.get("metadata") or {}).get(
        "chatusage_user_id"
    )
    user = _user(user_id if str(user_id).isdigit() else None)
    if user is None:
        log.warning("Stripe Checkout Session %s names no user of ours", session.get("id"))
        return "ignored: no such user"
    amount = Decimal(session["amount_total"]) / 100
    made = credits.grant(
        user,
        amount,
        CreditGrant.Kind.PURCHASE,
        "Top-up through Stripe Checkout",
        stripe_object_id=session["id"],
    )
    return "granted" if made else "already applied"


def refunded(charge) -> str:
    """charge.refunded: take back what was refunded since the last refund we applied (its
    amount_refunded is the charge's running total). The balance may go below zero."""
    user_id = credits.user_for_customer(charge.get("customer"), charge.get("metadata"))
    user = _user(user_id)
    if user is None:
        log.warning("Stripe charge %s names no user of ours", charge.get("id"))
        return "ignored: no such user"
    total = Decimal(charge["amount_refunded"]) / 100
    prefix = f"{charge['id']}:refunded:"
    with transaction.atomic():
        # One refund of a charge at a time: each reads what the ones before it took back.
        UsageAccount.objects.select_for_update().filter(user=user).first()
        taken = -(
            CreditGrant.objects.filter(stripe_object_id__startswith=prefix).aggregate(
                total=Sum("amount")
            )["total"]
            or Decimal(0)
        )
        if total <= taken:
            return "already applied"
        made = credits.grant(
            user,
            -(total - taken),
            CreditGrant.Kind.REFUND,
            "Top-up refunded through Stripe",
            stripe_object_id=f"{prefix}{charge['amount_refunded']}",
        )
    return "taken back" if made else "already applied"


HANDLERS = {
    "checkout.session.completed": lambda s: (
        paid_checkout(s) if s.get("payment_status") == "paid" else "ignored: not paid yet"
    ),
    "checkout.session.async_payment_succeeded": paid_checkout,
    "charge.refunded": refunded,
}


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        return HttpResponseBadRequest("Stripe webhooks are not configured.")
    try:
        event = stripe.Webhook.construct_event(
            request.body, request.headers.get("Stripe-Signature", ""), secret
        )
    except (ValueError, stripe.SignatureVerificationError):
        return HttpResponseBadRequest("Bad Stripe signature.")
    event = event.to_dict()  # verified: plain dicts from here on
    handler = HANDLERS.get(event["type"])
    if handler is None:
        return HttpResponse("ignored")
    outcome = handler(event["data"]["object"])
    log.info("Stripe event %s (%s): %s", event.get("id"), event["type"], outcome)
    return HttpResponse(outcome)
