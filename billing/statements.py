"""Closing ended cycles into statements (`manage.py close_cycles`), and reading them back.

One statement per user per ended cycle, numbered CU-<year>-<nnnnnn> in one sequence for the
deployment. Its usage lines are the cycle's charges per model, as the ledger's rollups hold
them when it closes. A user with no usage in a cycle gets a $0 statement only once they have
had one before (a running account's cycles stay contiguous; a sign-up who never chatted
gets none). Charges recorded for a closed cycle later (a late settle, a reconcile backfill)
appear on the user's next statement as adjustment lines naming the statement they correct,
and so do staff corrections (a credit or a charge with its reason).
"""

import contextlib
import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import Correction, Statement, StatementCounter, StatementLine
from usage.cycles import Cycle, cycles_ended_by
from usage.models import DailyUsage, UsageAccount

COUNTER = "statements"


def _usage(user_id: int, start: date, end: date):
    return (
        DailyUsage.objects.filter(user_id=user_id, day__gte=start, day__lt=end)
        .values("model")
        .annotate(
            messages=Sum("generations"),
            input_tokens=Sum("input_tokens"),
            cached_input_tokens=Sum("cached_input_tokens"),
            output_tokens=Sum("output_tokens"),
            charge=Sum("charge"),
        )
        .order_by("model")
    )


def _charged(user_id: int, start: date, end: date) -> Decimal:
    total = DailyUsage.objects.filter(user_id=user_id, day__gte=start, day__lt=end).aggregate(
        total=Sum("charge")
    )["total"]
    return Decimal(str(total or 0))


def _unbilled(closed: Statement) -> Decimal:
    """What `closed`'s cycle has been charged since it was closed and no later statement
    has adjusted yet (0 while the ledger agrees with it)."""
    adjusted = closed.adjusted_by.aggregate(total=Sum("charge"))["total"] or Decimal(0)
    now_charged = _charged(closed.user_id, closed.cycle_start, closed.cycle_end)
    return now_charged - closed.usage_total - Decimal(str(adjusted))


def _late_charges(user_id: int, before: date) -> list[tuple[Statement, Decimal]]:
    """For each closed statement before `before`: its unbilled charges, where there are any."""
    closed = Statement.objects.filter(user_id=user_id, cycle_start__lt=before)
    return [(s, late) for s in closed if (late := _unbilled(s))]


def _next_number(closed_at: datetime) -> str:
    """The next number in the deployment's sequence: call with the counter row locked."""
    counter = StatementCounter.objects.select_for_update().get(name=COUNTER)
    counter.last += 1
    counter.save(update_fields=["last"])
    return f"CU-{closed_at.year}-{counter.last:06d}"


def close(account: UsageAccount, cycle: Cycle, closed_at: datetime) -> Statement | None:
    """Freeze the statement of `account`'s ended `cycle`: the new one, or None when there is
    nothing to bill or another run closed it first."""
    user_id = account.user_id
    with transaction.atomic():
        # The counter's lock puts every closing run in a row: the check below then sees
        # what the run before committed, and numbers never repeat or skip.
        number = _next_number(closed_at)
        if Statement.objects.filter(user_id=user_id, cycle_start=cycle.start_date).exists():
            transaction.set_rollback(True)
            return None
        usage = list(_usage(user_id, cycle.start_date, cycle.end_date))
        late = _late_charges(user_id, cycle.start_date)
        corrections = list(
            Correction.objects.select_for_update().filter(user_id=user_id, statement=None)
        )
        earlier = Statement.objects.filter(user_id=user_id, cycle_start__lt=cycle.start_date)
        if not usage and not late and not corrections and not earlier.exists():
            transaction.set_rollback(True)  # hands the number back
            return None
        usage_total = sum((Decimal(str(u["charge"] or 0)) for u in usage), Decimal(0))
        adjustments = sum((amount for _, amount in late), Decimal(0)) + sum(
            (c.amount for c in corrections), Decimal(0)
        )
        statement = Statement.objects.create(
            number=number,
            user_id=user_id,
            cycle_start=cycle.start_date,
            cycle_end=cycle.end_date,
            time_zone=cycle.tz.key,
            usage_total=usage_total,
            adjustments_total=adjustments,
            total=usage_total + adjustments,
            closed_at=closed_at,
        )
        StatementLine.objects.bulk_create(
            [
                StatementLine(
                    statement=statement,
                    kind=StatementLine.Kind.USAGE,
                    description=u["model"],
                    model=u["model"],
                    messages=u["messages"] or 0,
                    input_tokens=u["input_tokens"] or 0,
                    cached_input_tokens=u["cached_input_tokens"] or 0,
                    output_tokens=u["output_tokens"] or 0,
                    charge=Decimal(str(u["charge"] or 0)),
                )
                for u in usage
            ]
            + [
                StatementLine(
                    statement=statement,
                    kind=StatementLine.Kind.ADJUSTMENT,
                    description=f"Recorded after {closed.number} closed (late answers, backfills)",
                    charge=amount,
                    adjusts=closed,
                )
                for closed, amount in late
            ]
            + [
                StatementLine(
                    statement=statement,
                    kind=StatementLine.Kind.ADJUSTMENT,
                    description=("Credit" if c.amount < 0 else "Charge") + f": {c.reason}",
                    charge=c.amount,
                )
                for c in corrections
            ]
        )
        Correction.objects.filter(pk__in=[c.pk for c in corrections]).update(statement=statement)
    return statement


@dataclass
class Closed:
    created: list[Statement]
    accounts: int


def close_cycles(as_of: date | None = None) -> Closed:
    """Close every ended cycle of every account: idempotent, safe to run twice at once."""
    now = timezone.now()
    tz = settings.USAGE_TIME_ZONE
    today = timezone.localdate(now, tz)
    as_of = as_of or today
    closed_at = now if as_of >= today else datetime.combine(as_of, time(), tz)
    with contextlib.suppress(IntegrityError):  # another run made it first
        StatementCounter.objects.get_or_create(name=COUNTER)
    created = []
    accounts = UsageAccount.objects.order_by("user_id")
    for account in accounts:
        have = set(
            Statement.objects.filter(user_id=account.user_id).values_list("cycle_start", flat=True)
        )
        for cycle in cycles_ended_by(account, as_of):
            if cycle.start_date in have:
                continue
            statement = close(account, cycle, closed_at)
            if statement is not None:
                created.append(statement)
    return Closed(created, accounts.count())


def lines_of(statement: Statement) -> list[StatementLine]:
    return list(statement.lines.select_related("adjusts"))


def statements_csv(statements) -> str:
    """One cycle's statements (or any), one row each, for accounting."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "number",
            "user_id",
            "username",
            "email",
            "cycle_start",
            "cycle_end",
            "usage_usd",
            "adjustments_usd",
            "total_usd",
            "closed_at",
        ]
    )
    for s in statements.select_related("user").order_by("number"):
        writer.writerow(
            [
                s.number,
                s.user_id,
                s.user.get_username(),
                s.user.email,
                s.cycle_start,
                s.cycle_end,
                s.usage_total,
                s.adjustments_total,
                s.total,
                s.closed_at.isoformat(),
            ]
        )
    return out.getvalue()


def mismatched(statements) -> list[tuple[Statement, Decimal, Decimal]]:
    """Statements whose total is no longer their lines' sum, or whose cycle the ledger now
    charges differently (not yet adjusted): (statement, its total, what the ledger says)."""
    found = []
    for s in statements.prefetch_related("lines"):
        lines = sum((line.charge for line in s.lines.all()), Decimal(0))
        unbilled = _unbilled(s)
        if lines != s.total or unbilled:
            found.append((s, s.total, s.total + unbilled))
    return found


def reconcile_check() -> list[str]:
    """For reconcile_usage: every statement whose total no longer matches the ledger."""
    return [
        f"statement {s.number} ({s.user.get_username()}): total {total}, ledger now {ledger}"
        for s, total, ledger in mismatched(Statement.objects.select_related("user"))
    ]
