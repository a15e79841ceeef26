from dataclasses import dataclass
from datetime import date

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from chatusage import cache as shared_cache
from chatusage.api import api_view, error
from usage import alerts, reports
from usage.charts import SIZES, daily_cost_chart, pace_chart
from usage.cycles import (
    Cycle,
    NoSuchCycle,
    account_cycle,
    cycle_for,
    earlier_cycles,
    local_day,
)
from usage.exports import csv_response
from usage.models import Alert, Generation, UsageAccount

EARLIER_CYCLES_SHOWN = 12


@dataclass(frozen=True)
class Asked:
    """The request's account and the cycle it asks about (?cycle=YYYY-MM-DD picks the
    account's cycle containing that day; none: the current one). `problem` says why an
    asked-for cycle was refused; the cycle is then the current one."""

    account: UsageAccount
    cycle: Cycle
    problem: str = ""


def _asked(request) -> Asked:
    """The one place the usage views read the account and the cycle from a request."""
    account = reports.account_for(request.user)
    raw = request.GET.get("cycle", "")
    if not raw:
        return Asked(account, cycle_for(account))
    try:
        return Asked(account, account_cycle(account, date.fromisoformat(raw)))
    except NoSuchCycle as exc:
        return Asked(account, cycle_for(account), str(exc))
    except ValueError:
        return Asked(account, cycle_for(account), "The cycle must be a date written YYYY-MM-DD.")


def _charts(report) -> list[dict]:
    """Each chart wide and narrow (CSS shows the one that fits the screen)."""
    today = local_day(timezone.now(), report.cycle.tz) if report.is_current else None
    return [
        {
            "size": size,
            "daily": daily_cost_chart(
                report.daily, today, width, report.daily_models, [m for m, _ in report.models]
            ),
            "pace": pace_chart(report.daily, today, report.spend.budget, width),
        }
        for size, width in SIZES.items()
    ]


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    asked = _asked(request)
    account, cycle, status = asked.account, asked.cycle, 200
    if asked.problem:  # show the current cycle, say why, and answer 400
        messages.error(request, asked.problem)
        status = 400
    report = reports.report_for(request.user, cycle, account=account)
    return render(
        request,
        "usage/dashboard.html",
        {
            "report": report,
            "charts": _charts(report),
            "cycles": earlier_cycles(account, EARLIER_CYCLES_SHOWN),
            "account": account,
            "alert_banner": alerts.banner_alerts(request.user, cycle_for(account)),
            # The bar stops at full; the text says by how much the budget was passed.
            "budget_bar": min(report.spend.percent, 100) if report.spend.budget else None,
        },
        status=status,
    )


@login_required
@require_POST
def refresh(request: HttpRequest) -> HttpResponse:
    """Ask PostHog for fresh numbers, at most once per USAGE_REFRESH_SECONDS per user."""
    asked = _asked(request)
    account, cycle = asked.account, asked.cycle
    url = reverse("usage:dashboard")
    if request.GET.get("cycle"):
        url += f"?cycle={cycle.start_date.isoformat()}"
    if reports.wanted_source() != "posthog":
        messages.info(request, "The ledger is always up to date; nothing to refresh.")
    elif shared_cache.add(
        f"usage-refresh:{request.user.pk}", 1, settings.USAGE_REFRESH_SECONDS, when_down=False
    ):
        report = reports.report_for(request.user, cycle, refresh=True, account=account)
        if report.source == "posthog":
            messages.success(request, "Fresh numbers from PostHog.")
    else:
        messages.info(request, "These numbers were refreshed less than a minute ago.")
    return redirect(url)


def _cycle_generations(user, cycle: Cycle):
    """Generations counted in the cycle: reserved in it, wherever they settled."""
    return Generation.objects.filter(
        user=user, created_at__gte=cycle.start, created_at__lt=cycle.end
    ).order_by("created_at")


@login_required
@require_GET
def export_csv(request: HttpRequest) -> HttpResponse:
    asked = _asked(request)
    if asked.problem:
        return HttpResponse(asked.problem, status=400, content_type="text/plain")
    return csv_response(
        request.user,
        _cycle_generations(request.user, asked.cycle),
        asked.cycle.tz,
        f"chatusage-{asked.cycle.start_date.isoformat()}.csv",
    )


@api_view(("GET",))
def api_usage(request: HttpRequest) -> HttpResponse:
    """The logged-in user's report. A userId (or any other) parameter is ignored on purpose."""
    asked = _asked(request)
    if asked.problem:
        return error("invalid_cycle", {"detail": asked.problem})
    report = reports.report_for(request.user, asked.cycle, account=asked.account)
    return JsonResponse(report.as_dict())


@login_required
@require_POST
def dismiss_alert(request: HttpRequest, alert_id) -> HttpResponse:
    """Hide an alert's banner (the user's own alerts only)."""
    Alert.objects.filter(pk=alert_id, user=request.user, dismissed_at__isnull=True).update(
        dismissed_at=timezone.now()
    )
    return redirect(_back_or(request, "usage:dashboard"))


def _back_or(request, fallback: str) -> str:
    """Back where the banner was (a local `next`), else `fallback`."""
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return reverse(fallback)
