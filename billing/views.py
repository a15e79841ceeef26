"""/billing/: the user's statements and the open cycle's running total; each statement as a
printable page, JSON or CSV. Every lookup is the user's own: anyone else's is 404."""

import csv
import io

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from billing.models import Statement
from billing.statements import lines_of
from usage import reports
from usage.cycles import cycle_for
from usage.pricing import usd_text


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
        {"statements": Statement.objects.filter(user=request.user), "open": report},
    )


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
