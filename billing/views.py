"""/billing/: the user's statements and the open cycle's running total; each statement as a
printable page, JSON or CSV. Every lookup is the user's own: anyone else's is 404."""

import csv
import io
import logging
from decimal import Decimal, InvalidOperation

import stripe
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from billing import credits, stripe_api
from billing.models import CreditGrant, Statement
from billing.statements import lines_of
from chatusage.api import api_view
from usage import reports
from usage.cycles import cycle_for
from usage.pricing import usd_text

log = logging.getLogger(__name__)


def statement_for(user, number: str) -> Statement:
    """The user's own statement, or 404: the one scoping helper for statements."""
    try:
        return Statement.objects.get(number=number, user=user)
    except Statement.DoesNotExist as exc:
        raise Http404("No such statement.") from exc


def as_dict(statement: Statement) -> dict:
    return {
        "number": statement.number,
        "cycle": {
            "start": statement.cycle_start.isoformat(),
            "end": statement.cycle_end.isoformat(),
            "time_zone": statement.time_zone,
        },
        "lines": [
            {
                "kind": line.kind,
                "description": line.description,
                "model": line.model,
                "messages": line.messages,
                "input_tokens": line.input_tokens,
                "cached_input_tokens": line.cached_input_tokens,
                "output_tokens": line.output_tokens,
                "charge_usd": usd_text(line.charge),
                "adjusts": line.adjusts.number if line.adjusts else None,
            }
            for line in lines_of(statement)
        ],
        "usage_usd": usd_text(statement.usage_total),
        "adjustments_usd": usd_text(statement.adjustments_total),
        "total_usd": usd_text(statement.total),
        "closed_at": statement.closed_at.isoformat(),
        **({"credit": _credit_dict(statement)} if credits.prepaid() else {}),
    }


def _credit_dict(statement: Statement) -> dict:
    summary = credits.cycle_credit(statement)
    return {
        "bought_usd": usd_text(summary.bought),
        "granted_usd": usd_text(summary.granted),
        "taken_back_usd": usd_text(summary.taken_back),
        "used_usd": usd_text(summary.used),
        "closing_balance_usd": usd_text(summary.closing_balance),
    }


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return _page(request)


def _page(request: HttpRequest, top_up_error: str = "", status: int = 200) -> HttpResponse:
    account = reports.account_for(request.user)
    report = reports.report_for(request.user, cycle_for(account), account=account)
    return render(
        request,
        "billing/index.html",
        {
            "statements": Statement.objects.filter(user=request.user),
            "open": report,
            "mode": settings.BILLING_MODE,
            "portal": settings.BILLING_MODE == "metered" and stripe_api.enabled(),
            **_prepaid_context(request, top_up_error),
        },
        status=status,
    )


TOP_UP_PRESETS = [5, 10, 20, 50]
GRANTS_SHOWN = 50


def _prepaid_context(request, top_up_error: str = "") -> dict:
    if not credits.prepaid():
        return {}
    low, high = settings.BILLING_TOPUP_MIN_USD, settings.BILLING_TOPUP_MAX_USD
    return {
        "balance": credits.balance_for(request.user.pk),
        "grants": CreditGrant.objects.filter(user=request.user)[:GRANTS_SHOWN],
        "can_top_up": stripe_api.enabled(),
        "presets": [p for p in TOP_UP_PRESETS if low <= p <= high],
        "top_up_min": low,
        "top_up_max": high,
        "top_up_error": top_up_error,
        "top_up_state": request.GET.get("top_up", ""),
    }


@login_required
@require_POST
def top_up(request: HttpRequest) -> HttpResponse:
    """Buy credit: a Stripe Checkout Session, and 303 to it. Credit arrives only with
    Stripe's signed webhook, never on the way back."""
    if not credits.prepaid() or not stripe_api.enabled():
        raise Http404("Top-ups are off.")
    low, high = settings.BILLING_TOPUP_MIN_USD, settings.BILLING_TOPUP_MAX_USD
    try:
        amount = Decimal(request.POST.get("amount", "").strip().lstrip("$"))
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or not low <= amount <= high:
        problem = f"Enter an amount between ${low:.2f} and ${high:.2f}."
        return _page(request, top_up_error=problem, status=400)
    if amount != amount.quantize(Decimal("0.01")):
        return _page(request, top_up_error="Use whole cents, such as 12.50.", status=400)
    try:
        url = stripe_api.checkout_url(request.user, amount)
    except stripe.StripeError as error:
        log.warning("Checkout for user %s: %s", request.user.pk, stripe_api.describe(error))
        messages.error(request, "Stripe could not start the payment just now. Please try again.")
        return redirect("billing:index")
    return HttpResponseRedirect(url, status=303)  # See Other: a GET of Stripe's page


def grant_dict(grant: CreditGrant) -> dict:
    return {
        "kind": grant.kind,
        "amount_usd": usd_text(grant.amount),
        "reason": grant.reason,
        "expires_on": grant.expires_on.isoformat() if grant.expires_on else None,
        "created_at": grant.created_at.isoformat(),
    }


@api_view(("GET",))
def api_billing(request: HttpRequest) -> HttpResponse:
    """The logged-in user's billing, as JSON (money as 6-decimal text, as /api/usage/)."""
    prepaid = credits.prepaid()
    balance = credits.balance_for(request.user.pk) if prepaid else None
    return JsonResponse(
        {
            "mode": settings.BILLING_MODE,
            "balance_usd": usd_text(balance.left) if balance else None,
            "held_usd": usd_text(balance.held) if balance else None,
            "expired_usd": usd_text(balance.expired) if balance else None,
            "grants": [grant_dict(g) for g in CreditGrant.objects.filter(user=request.user)]
            if prepaid
            else [],
            "statements": [
                {
                    "number": s.number,
                    "cycle_start": s.cycle_start.isoformat(),
                    "cycle_end": s.cycle_end.isoformat(),
                    "total_usd": usd_text(s.total),
                    "url": request.build_absolute_uri(s.get_absolute_url()),
                }
                for s in Statement.objects.filter(user=request.user)
            ],
        }
    )


@login_required
@require_POST
def portal(request: HttpRequest) -> HttpResponse:
    """ "Manage billing": a Stripe customer portal session for this user (payment methods,
    invoices), which returns to /billing/."""
    if not stripe_api.enabled():
        raise Http404("Stripe billing is off.")
    try:
        url = stripe_api.portal_url(request.user)
    except stripe.StripeError as error:
        log.warning("Customer portal for user %s: %s", request.user.pk, stripe_api.describe(error))
        messages.error(
            request, "Stripe could not open your billing settings just now. Please try again."
        )
        return redirect("billing:index")
    return redirect(url)


CSV_COLUMNS = [
    "kind",
    "description",
    "model",
    "messages",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "charge_usd",
    "adjusts",
]


@login_required
@require_GET
def statement(request: HttpRequest, number: str) -> HttpResponse:
    found = statement_for(request.user, number)
    wanted = request.GET.get("format", "html")
    if wanted == "json":
        return JsonResponse(as_dict(found))
    if wanted == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(as_dict(found)["lines"])
        response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{found.number}.csv"'
        return response
    return render(
        request,
        "billing/statement.html",
        {
            "statement": found,
            "lines": lines_of(found),
            "credit": credits.cycle_credit(found) if credits.prepaid() else None,
        },
    )
