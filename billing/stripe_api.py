"""The one Stripe client (the official `stripe` package's StripeClient), and the calls
billing makes with it. Off without STRIPE_API_KEY; STRIPE_API_BASE points it at a local
Stripe mock. The client never retries by itself: the outbox (billing/meters.py) decides
what is retried and when, and every POST that creates something carries an
Idempotency-Key, so a retry can never create it twice.
"""

import logging
import threading
from decimal import Decimal

import requests
import stripe
from django.conf import settings
from django.contrib.auth import get_user_model

from usage.models import UsageAccount

log = logging.getLogger(__name__)

CURRENCY = "usd"


class NotConfigured(RuntimeError):
    """A Stripe feature was used without STRIPE_API_KEY."""


def enabled() -> bool:
    return bool(settings.STRIPE_API_KEY)


_local = threading.local()


def _client(api_key: str, base: str, timeout: float) -> stripe.StripeClient:
    """This thread's client for a key and base (a requests Session is not made to be
    shared between threads)."""
    clients = _local.__dict__.setdefault("clients", {})
    if (api_key, base, timeout) not in clients:
        # requests reads the environment's proxy settings and ~/.netrc on every request when
        # it trusts the environment: a fifth of a meter event's CPU. They are read here,
        # once, for Stripe's address (HTTPS_PROXY, NO_PROXY); .netrc is not for Stripe, whose
        # key goes in a header.
        session = requests.Session()
        session.trust_env = False
        clients[api_key, base, timeout] = stripe.StripeClient(
            api_key,
            base_addresses={"api": base, "connect": base, "files": base, "meter_events": base},
            max_network_retries=0,
            http_client=stripe.RequestsClient(
                timeout=timeout,
                session=session,
                proxy=_proxies(base),
            ),
        )
    return clients[api_key, base, timeout]


def _proxies(base: str) -> dict | None:
    """The proxies the environment sets for `base`, as requests would find them."""
    found = requests.utils.get_environ_proxies(base)
    return {scheme: found[scheme] for scheme in ("http", "https") if scheme in found} or None


def client() -> stripe.StripeClient:
    """The client for the current settings (made once per key and base in each thread)."""
    if not enabled():
        raise NotConfigured("Stripe is off: set STRIPE_API_KEY.")
    return _client(settings.STRIPE_API_KEY, settings.STRIPE_API_BASE, settings.STRIPE_TIMEOUT)


def retryable(error: stripe.StripeError) -> bool:
    """Whether a failed call may succeed later as it is: Stripe or the network failing,
    rate limits, a request with the same key still in flight. Anything else Stripe refused
    (bad parameters, a missing customer, an event too old) fails the same way again."""
    status = error.http_status
    return (
        isinstance(error, stripe.APIConnectionError)
        or status is None
        or status in (409, 429)
        or status >= 500
    )


def describe(error: stripe.StripeError) -> str:
    """What Stripe said, for logs and admin: its status, code and message (never the key)."""
    status = error.http_status or "no answer"
    code = f" {error.code}" if error.code else ""
    return f"Stripe {status}{code}: {error.user_message or type(error).__name__}"[:2000]


def cents(amount: Decimal) -> int:
    """USD as Stripe's integer cents, rounded half-up (Stripe amounts have no finer unit)."""
    return int((amount * 100).quantize(Decimal(1), rounding="ROUND_HALF_UP"))


def micro_usd(amount: Decimal) -> int:
    """USD as whole micro-dollars: a charge has 6 decimals, so this is exact."""
    return int((amount * 1_000_000).to_integral_value(rounding="ROUND_HALF_UP"))


def customer_id(user_id: int) -> str:
    """The user's Stripe customer, created on first need (or pasted by staff in admin).

    The Idempotency-Key is derived from the user id: two processes creating it at once,
    or a retry after a lost answer, get the same customer back from Stripe.
    """
    account = UsageAccount.objects.for_user(get_user_model().objects.get(pk=user_id))
    if account.stripe_customer_id:
        return account.stripe_customer_id
    user = account.user
    customer = client().v1.customers.create(
        params={
            "email": user.email,
            "name": user.get_full_name() or user.get_username(),
            "metadata": {"chatusage_user_id": str(user.pk)},
        },
        options={"idempotency_key": f"chatusage-customer-{user.pk}"},
    )
    UsageAccount.objects.filter(pk=account.pk, stripe_customer_id="").update(
        stripe_customer_id=customer.id
    )
    account.refresh_from_db(fields=["stripe_customer_id"])
    log.info("Created Stripe customer %s for user %s", account.stripe_customer_id, user.pk)
    return account.stripe_customer_id


def portal_url(user) -> str:
    """A Stripe customer portal session for the user, returning to /billing/."""
    session = client().v1.billing_portal.sessions.create(
        params={"customer": customer_id(user.pk), "return_url": f"{settings.SITE_URL}/billing/"}
    )
    return session.url


def checkout_url(user, amount: Decimal) -> str:
    """A Stripe Checkout Session that sells `amount` USD of credit to the user: its url.
    Nothing is credited here or on the way back: only the signed webhook grants credit."""
    back = f"{settings.SITE_URL}/billing/"
    session = client().v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "customer": customer_id(user.pk),
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": CURRENCY,
                        "unit_amount": cents(amount),
                        "product_data": {"name": f"chatusage credit (${amount:.2f})"},
                    },
                }
            ],
            "client_reference_id": str(user.pk),
            "metadata": {"chatusage_user_id": str(user.pk)},
            "success_url": f"{back}?top_up=paid",
            "cancel_url": f"{back}?top_up=cancelled",
        }
    )
    return session.url
