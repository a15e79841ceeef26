"""What a user used in a billing cycle: one UsageReport, from PostHog or from the ledger.

PostHog is read with ONE HogQL query per report (grouped by local day, model and
error flag), cached per (user, cycle). When PostHog is not configured, fails or
is throttled, the ledger's daily rollups answer instead and the report says so.
The budget figures always come from the ledger: it is what enforces the budget.
"""

import logging
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, date, datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import (
    Case,
    DateField,
    DecimalField,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from chatusage import cache as shared_cache
from chatusage import ratelimit
from usage import hogql
from usage.cycles import Cycle, current_cycle_bounds_by_anchor_day, cycle_for
from usage.limits import Spend, spend_for
from usage.models import DailyUsage, UsageAccount

log = logging.getLogger(__name__)

REPORT_QUANTUM = Decimal("0.000001")  # reports show micro-dollars
POSTHOG_DOWN_SECONDS = 30  # after a failure, skip PostHog for this long

# https://posthog.com/docs/api/queries : placeholders {name} are bound from "values".
# A user's $ai_generation events in a cycle (UTC bounds); every query here filters so.
GENERATIONS_IN_CYCLE = """
FROM events
WHERE event = '$ai_generation'
    AND distinct_id = {distinct_id}
    AND timestamp >= toDateTime({start}, 'UTC')
    AND timestamp < toDateTime({end}, 'UTC')
"""

USAGE_QUERY = """
SELECT
    toString(toDate(toTimeZone(timestamp, {time_zone}))) AS day,
    toString(properties.$ai_model) AS model,
    coalesce(toString(properties.$ai_is_error), '') = 'true' AS is_error,
    count() AS generations,
    coalesce(sum(toInt(properties.$ai_input_tokens)), 0) AS input_tokens,
    coalesce(sum(toInt(properties.$ai_cache_read_input_tokens)), 0) AS cached_input_tokens,
    coalesce(sum(toInt(properties.$ai_output_tokens)), 0) AS output_tokens,
    coalesce(sum(round(toFloat(properties.$ai_total_cost_usd)
        * (1 + coalesce(toFloat(properties.chatusage_markup_percent), 0) / 100), 6)), 0)
        AS cost_usd
{GENERATIONS_IN_CYCLE}
GROUP BY day, model, is_error
ORDER BY day, model, is_error
LIMIT 50000
""".replace("{GENERATIONS_IN_CYCLE}", GENERATIONS_IN_CYCLE.strip())


@dataclass(frozen=True)
class Totals:
    """Messages, tokens and cost summed over some usage."""

    messages: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)

    def __add__(self, other: "Totals") -> "Totals":
        """The sum of two (rows of the same day and model stay that day and model)."""
        return replace(
            self, **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(Totals)}
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def of(cls, rows) -> "Totals":
        rows = list(rows)
        return cls(
            sum(r.messages for r in rows),
            sum(r.errors for r in rows),
            sum(r.input_tokens for r in rows),
            sum(r.cached_input_tokens for r in rows),
            sum(r.output_tokens for r in rows),
            sum((r.cost for r in rows), Decimal(0)).quantize(REPORT_QUANTUM),
        )


@dataclass(frozen=True, kw_only=True)
class Row(Totals):
    """Usage of one model on one local day."""

    day: date
    model: str


@dataclass(frozen=True)
class UsageReport:
    cycle: Cycle
    totals: Totals
    daily: list[tuple[date, Totals]]  # every day of the cycle, zeros included
    daily_models: dict  # day -> {model: cost}, for the chart's stacked bars
    models: list[tuple[str, Totals]]  # by cost, highest first
    spend: Spend  # from the ledger: budget, spent, reservations in flight
    source: str  # "posthog" or "ledger"
    as_of: datetime
    note: str = ""  # why the ledger answered although PostHog is wanted
    is_current: bool = True

    @property
    def spent_fraction(self) -> float | None:
        """Settled spend over the budget (Spend.percent / 100), uncapped."""
        if not self.spend.budget:
            return None
        return float(self.spend.percent) / 100

    @property
    def budget_left(self) -> Decimal | None:
        return self.spend.budget_left

    def as_dict(self) -> dict:
        def totals(t: Totals) -> dict:
            data = asdict(t)
            data["cost"] = str(t.cost)
            data["total_tokens"] = t.total_tokens
            return data

        return {
            # The original tutorial's page renders usage.toLocaleString() + " messages" and
            # estimatedCost.toFixed(6): both stay plain numbers (the README's URL table says so).
            "usage": self.totals.messages,
            "estimatedCost": float(self.totals.cost),
            "totals": totals(self.totals),
            "currency": "USD",
            "cycle": {
                "start": self.cycle.start.isoformat(),
                "end": self.cycle.end.isoformat(),
                "time_zone": self.cycle.tz.key,
                "current": self.is_current,
            },
            "budget": {
                "budget_usd": str(self.spend.budget) if self.spend.budget else None,
                "spent_usd": str(self.spend.settled_cost.quantize(REPORT_QUANTUM)),
                "reserved_usd": str(self.spend.pending_cost.quantize(REPORT_QUANTUM)),
                "left_usd": (
                    str(self.budget_left.quantize(REPORT_QUANTUM))
                    if self.budget_left is not None
                    else None
                ),
                "spent_fraction": self.spent_fraction,
                "percent": float(self.spend.percent) if self.spend.budget else None,
                "state": self.spend.state,
                "over_by_usd": str(self.spend.over_by) if self.spend.budget else None,
                "message_limit": self.spend.message_limit or None,
                "resets_at": self.cycle.end.isoformat(),
            },
            "daily": [{"day": d.isoformat(), **totals(t)} for d, t in self.daily],
            "models": [{"model": m, **totals(t)} for m, t in self.models],
            "source": self.source,
            "note": self.note,
            "asOf": self.as_of.isoformat(),
        }


def wanted_source() -> str:
    if settings.USAGE_SOURCE == "auto":
        return "posthog" if hogql.is_configured() else "ledger"
    return settings.USAGE_SOURCE


def account_for(user) -> UsageAccount:
    return UsageAccount.objects.for_user(user)


def ledger_rows(user_id: int, cycle: Cycle) -> list[Row]:
    return [
        Row(
            day=r.day,
            model=r.model,
            messages=r.generations,
            errors=r.errors,
            input_tokens=r.input_tokens,
            cached_input_tokens=r.cached_input_tokens,
            output_tokens=r.output_tokens,
            cost=r.charge,  # the user's figures are what they are charged
        )
        for r in DailyUsage.objects.filter(
            user_id=user_id, day__gte=cycle.start_date, day__lt=cycle.end_date
        )
    ]


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def query_values(user_id: int, cycle: Cycle, time_zone: bool = True) -> dict:
    """Placeholder values: the user's distinct id and the cycle's bounds as UTC strings."""
    values = {"distinct_id": str(user_id), "start": _utc(cycle.start), "end": _utc(cycle.end)}
    if time_zone:
        values["time_zone"] = cycle.tz.key
    return values


def posthog_rows(user_id: int, cycle: Cycle, refresh: bool = False) -> list[Row]:
    result = hogql.run(
        USAGE_QUERY,
        query_values(user_id, cycle),
        name="chatusage user cycle usage",
        refresh="force_blocking" if refresh else "blocking",
    )
    merged: dict[tuple[date, str], Row] = {}
    for r in result.rows:
        day = date.fromisoformat(r["day"])
        model = r["model"] or "unknown"
        is_error = bool(r["is_error"])
        generations = int(r["generations"] or 0)
        row = Row(
            day=day,
            model=model,
            messages=0 if is_error else generations,
            errors=generations if is_error else 0,
            input_tokens=int(r["input_tokens"] or 0),
            cached_input_tokens=int(r["cached_input_tokens"] or 0),
            output_tokens=int(r["output_tokens"] or 0),
            cost=Decimal(repr(float(r["cost_usd"] or 0))),
        )
        key = (day, model)
        merged[key] = merged[key] + row if key in merged else row
    return list(merged.values())


# Copies of PostHog's answers are kept per (user, cycle). A closed cycle's numbers no longer
# change once ingestion has caught up, so they are kept far longer than the current one's.
CLOSED_CYCLE_CACHE_SECONDS = 24 * 3600
# Each user may cause this many uncached PostHog queries: the project's HogQL quota
# (240/min, 2,400/h) is shared with the team's own analytics.
POSTHOG_QUERIES_PER_USER = "20/3600"
LEDGER_NOTE = "PostHog could not be read just now: these numbers come from the ledger."
HEALTH_KEY = "usage-report:posthog-health"


def _cache_key(user_id: int, cycle: Cycle) -> str:
    """Start, end and time zone: a new anchor day keeps a cycle's start but moves its end."""
    return (
        f"usage-report:v2:{user_id}:{cycle.start_date.isoformat()}:"
        f"{cycle.end_date.isoformat()}:{cycle.tz.key}"
    )


def _record_health(error: hogql.PostHogError | None) -> None:
    """The last outcome of a PostHog query, for staff (admin index) and the log."""
    now = timezone.now()
    if error is None:
        shared_cache.set(HEALTH_KEY, {"ok": True, "at": now}, 7 * 24 * 3600)
        return
    kind = type(error).__name__
    log.warning("Usage report fell back to the ledger: %s: %s", kind, error)
    shared_cache.set(
        HEALTH_KEY, {"ok": False, "at": now, "kind": kind, "detail": str(error)}, 7 * 24 * 3600
    )


def posthog_health() -> dict | None:
    """{"ok", "at", "kind"?, "detail"?} of the last PostHog query, or None if none yet."""
    return shared_cache.get(HEALTH_KEY)


def _posthog_or_ledger(user_id, cycle, refresh, is_current) -> tuple[list[Row], str, datetime, str]:
    """Rows, source, as-of time and a note for the reader."""
    now = timezone.now()

    def from_ledger(note: str):
        return ledger_rows(user_id, cycle), "ledger", now, note

    wanted = wanted_source()
    if wanted == "ledger":
        return from_ledger("")
    if not hogql.is_configured():
        note = "PostHog is not configured: these numbers come from the ledger."
        return from_ledger(note)
    key = _cache_key(user_id, cycle)
    if not refresh:
        cached = shared_cache.get(key)
        if cached is not None:
            rows, as_of = cached
            return rows, "posthog", as_of, ""
        if shared_cache.get("usage-report:posthog-down"):
            return from_ledger(LEDGER_NOTE)
    if ratelimit.wait_seconds(f"posthog-report:{user_id}", POSTHOG_QUERIES_PER_USER):
        note = "PostHog was asked often just now: these numbers come from the ledger."
        return from_ledger(note)
    # One query per (user, cycle) at a time; whoever comes meanwhile reads the ledger rather
    # than queueing behind it or asking PostHog again (without a cache, everyone asks).
    flight = f"{key}:in-flight"
    if not shared_cache.add(flight, 1, sum(settings.POSTHOG_QUERY_TIMEOUT), when_down=True):
        note = "PostHog is being asked for these numbers: for now they come from the ledger."
        return from_ledger(note)
    try:
        rows = posthog_rows(user_id, cycle, refresh=refresh)
    except hogql.PostHogError as exc:
        _record_health(exc)
        if isinstance(exc, hogql.PostHogUnavailable):
            down_for = exc.retry_after or POSTHOG_DOWN_SECONDS
            shared_cache.set("usage-report:posthog-down", 1, down_for)
        return from_ledger(LEDGER_NOTE)
    finally:
        shared_cache.delete(flight)
    _record_health(None)
    timeout = settings.USAGE_CACHE_SECONDS if is_current else CLOSED_CYCLE_CACHE_SECONDS
    shared_cache.set(key, (rows, now), timeout)
    return rows, "posthog", now, ""


def build_report(
    cycle: Cycle,
    rows: list[Row],
    spend: Spend,
    source: str,
    as_of: datetime,
    note: str = "",
    is_current: bool = True,
) -> UsageReport:
    by_day: dict[date, list[Row]] = {}
    by_model: dict[str, list[Row]] = {}
    for row in rows:
        by_day.setdefault(row.day, []).append(row)
        by_model.setdefault(row.model, []).append(row)
    models = sorted(
        ((m, Totals.of(rs)) for m, rs in by_model.items()), key=lambda mt: (-mt[1].cost, mt[0])
    )
    return UsageReport(
        cycle=cycle,
        totals=Totals.of(rows),
        daily=[(d, Totals.of(by_day.get(d, []))) for d in cycle.days],
        daily_models={d: {r.model: r.cost for r in rs} for d, rs in by_day.items()},
        models=models,
        spend=spend,
        source=source,
        as_of=as_of,
        note=note,
        is_current=is_current,
    )


def report_for(
    user, cycle: Cycle | None = None, refresh: bool = False, account: UsageAccount | None = None
) -> UsageReport:
    """The user's usage in `cycle` (default: the current one). Pass `account` if at hand."""
    account = account or account_for(user)
    current = cycle_for(account)
    cycle = cycle or current
    spend = spend_for(account, cycle, include_pending=cycle == current)
    rows, source, as_of, note = _posthog_or_ledger(user.pk, cycle, refresh, cycle == current)
    return build_report(cycle, rows, spend, source, as_of, note, is_current=cycle == current)


# --- Every user's current cycle at once (the admin's user list, the staff summary) ---

MONEY_FIELD = DecimalField(max_digits=20, decimal_places=10)


def _by_anchor_day(attribute: str):
    """Each user's current cycle start/end as one CASE over their anchor's day of month."""
    bounds = current_cycle_bounds_by_anchor_day()
    return Case(
        *[
            When(usage_account__billing_anchor__day=day, then=Value(getattr(cycle, attribute)))
            for day, cycle in bounds.items()
        ],
        output_field=DateField(),
    )


def _cycle_sum(field: str, output_field):
    rollup = (
        DailyUsage.objects.filter(
            user=OuterRef("pk"),
            day__gte=OuterRef("cycle_start"),
            day__lt=OuterRef("cycle_end"),
        )
        .order_by()
        .values("user")
        .annotate(total=Sum(field))
        .values("total")
    )
    return Coalesce(
        Subquery(rollup, output_field=output_field), Value(0), output_field=output_field
    )


def with_cycle_usage(queryset):
    """Annotate cycle_messages, cycle_charge (what the user is charged), cycle_cost (what the
    provider charges), budget and budget_pct (of the charge) in one query, any user count."""
    default_budget = settings.USAGE_DEFAULT_BUDGET_USD
    return (
        queryset.annotate(
            cycle_start=_by_anchor_day("start_date"),
            cycle_end=_by_anchor_day("end_date"),
        )
        .annotate(
            cycle_messages=_cycle_sum("generations", IntegerField()),
            cycle_charge=_cycle_sum("charge", MONEY_FIELD),
            cycle_cost=_cycle_sum("cost", MONEY_FIELD),
            budget=Coalesce(
                F("usage_account__budget_usd"), Value(default_budget), output_field=MONEY_FIELD
            ),
        )
        .annotate(
            budget_pct=Case(
                When(
                    budget__gt=0,
                    then=ExpressionWrapper(
                        F("cycle_charge") * 100 / F("budget"), output_field=MONEY_FIELD
                    ),
                ),
                default=None,
                output_field=MONEY_FIELD,
            )
        )
    )
