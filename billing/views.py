"""/billing/: the user's statements and the open cycle's running total; each statement as a
printable page, JSON or CSV. Every lookup is the user's own: anyone else's is 404."""

import csv
import io
import logging

import stripe
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from billing import stripe_api
from billing.models import Statement
from billing.statements import lines_of
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
    }


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
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
        },
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
    return render(request, "billing/statement.html", {"statement": found, "lines": lines_of(found)})
