"""Prepaid credits (BILLING_MODE=prepaid): a balance that can never be overdrawn.

The balance is the user's grants (paid top-ups, staff and sign-up grants; refunds and
take-backs are negative) less every charge settled since the first grant's day. Charges
burn expiring credit first, soonest expiry first; what an expiring grant still holds after
its last day is gone (shown as "expired" on /billing/). Answers in flight are held at their
worst case: reserve() (usage/limits.py) reads the balance inside the transaction that locks
the user's account and records the reservation, through usage.hooks.reserve_limits, so
however many calls start at once, the held worst cases never add up to more than the
balance. Only a refund (charge.refunded) can take a balance below zero; chat then stops
until it is topped up.
"""

# ruff: noqa: S608 (table names from the models; every value is a parameter)

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from billing.models import CreditGrant
from chatusage.db import batch
from usage.cycles import local_day
from usage.limits import UsageLimitReached
from usage.models import DailyUsage, UsageAccount
from usage.pricing import COST_QUANTUM
from usage.templatetags.money import usd

GRANTS = CreditGrant._meta.db_table
GRANTS_SQL = f"SELECT amount, expires_on, created_on FROM {GRANTS} WHERE user_id = %s"
# The charges of each local day since the first grant (the rollups: one row a day a model).
CHARGES_SQL = f"""
SELECT day, SUM(charge) FROM {DailyUsage._meta.db_table}
 WHERE user_id = %s AND day >= (SELECT MIN(created_on) FROM {GRANTS} WHERE user_id = %s)
 GROUP BY day ORDER BY day
"""


def prepaid() -> bool:
    return settings.BILLING_MODE == "prepaid"


def _day(value) -> date:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _usd(value) -> Decimal:
    return Decimal(str(value or 0))


@dataclass
class Balance:
    """Where a user's credit stands: what is left (settled charges taken off), what
    answers in flight hold, and what expired unused."""

    left: Decimal = Decimal(0)
    held: Decimal = Decimal(0)
    expired: Decimal = Decimal(0)
    granted: Decimal = Decimal(0)  # every grant in (top-ups included), before spending
    spent: Decimal = Decimal(0)
    expiring: list[tuple[date, Decimal]] = field(default_factory=list)  # (last day, left)

    @property
    def available(self) -> Decimal:
        """What a new call may hold: the balance less what calls in flight hold."""
        return self.left - self.held


def balance_from(grant_rows, charge_rows, held: Decimal, today: date) -> Balance:
    """The balance from GRANTS_SQL's and CHARGES_SQL's rows: a day's charges burn the
    expiring grants still valid that day (soonest expiry first), then the rest."""
    grants = [(_usd(a), _day(e) if e else None, _day(c)) for a, e, c in grant_rows]
    pool = sum((a for a, e, _ in grants if e is None), Decimal(0))  # never expires
    expiring = sorted(([e, c, a] for a, e, c in grants if e is not None), key=lambda g: g[0])
    balance = Balance(held=held, granted=sum((a for a, _, _ in grants if a > 0), Decimal(0)))
    for day, charge in charge_rows:
        day, charge = _day(day), _usd(charge)
        balance.spent += charge
        for bucket in expiring:
            last_day, starts, left = bucket
            if charge <= 0:
                break
            if starts <= day <= last_day and left > 0:
                burnt = min(left, charge)
                bucket[2] -= burnt
                charge -= burnt
        pool -= charge
    for last_day, _, left in expiring:
        if last_day < today:
            balance.expired += left
        else:
            balance.expiring.append((last_day, left))
            pool += left
    balance.left = pool
    return balance


def _reads(user_id: int) -> list:
    """The statements balance_from() reads: the user's grants and daily charges."""
    return [(GRANTS_SQL, [user_id]), (CHARGES_SQL, [user_id, user_id])]


def balance_for(user_id: int) -> Balance:
    """The user's balance now, answers in flight included (for pages and JSON)."""
    from usage.models import Generation

    grant_rows, charge_rows = batch(*_reads(user_id))
    held = Generation.objects.filter(user_id=user_id, status=Generation.Status.PENDING).aggregate(
        total=models.Sum("reserved_cost")
    )["total"]
    held = _usd(held).quantize(COST_QUANTUM)  # SQLite sums decimals as floats
    return balance_from(grant_rows, charge_rows, held, local_day(timezone.now()))


class InsufficientCredits(UsageLimitReached):
    """The call's worst case is more than the credit left (held calls taken off)."""

    def __init__(self, spend, worst_case: Decimal, balance: Balance):
        self.balance = balance
        held = f" ({usd(balance.held)} held by answers in progress)" if balance.held else ""
        super().__init__(
            "credits",
            spend,
            worst_case,
            message=f"Not enough credit: this message could cost up to {usd(worst_case)} and "
            f"your balance is {usd(balance.left)}{held}. Top up on the Billing page to keep "
            "chatting.",
        )

    def as_dict(self) -> dict:
        from usage.pricing import usd_text

        return {
            "reason": "credits",
            "balance_usd": usd_text(self.balance.left),
            "held_usd": usd_text(self.balance.held),
            "worst_case_usd": usd_text(self.worst_case),
        }


class CreditLimit:
    """Registered in usage.hooks.reserve_limits (billing/apps.py): in prepaid mode, the
    balance read and checked in reserve()'s locked transaction."""

    def statements(self, user_id: int) -> list:
        return _reads(user_id) if prepaid() else []

    def refusal(self, results, spend, worst_case: Decimal, now) -> UsageLimitReached | None:
        grant_rows, charge_rows = results
        balance = balance_from(grant_rows, charge_rows, spend.pending_cost, local_day(now))
        if worst_case > balance.available:
            return InsufficientCredits(spend, worst_case, balance)
        return None


# --- grants -------------------------------------------------------------------------


def grant(user, amount: Decimal, kind: str, reason: str = "", **extra) -> CreditGrant | None:
    """Record credit in or out. With stripe_object_id: once per Stripe object (None when
    it was applied before)."""
    now = timezone.now()
    try:
        with transaction.atomic():
            return CreditGrant.objects.create(
                user=user,
                amount=amount,
                kind=kind,
                reason=reason,
                created_at=now,
                created_on=local_day(now),
                **extra,
            )
    except IntegrityError:
        if (
            extra.get("stripe_object_id")
            and CreditGrant.objects.filter(stripe_object_id=extra["stripe_object_id"]).exists()
        ):
            return None  # applied before: a replay or a retry
        raise


def signup_credit(user) -> None:
    """BILLING_SIGNUP_CREDIT_USD for a new user (prepaid mode)."""
    amount = settings.BILLING_SIGNUP_CREDIT_USD
    if prepaid() and amount > 0:
        grant(user, amount, CreditGrant.Kind.SIGNUP, "Welcome credit")


def user_for_customer(customer: str | None, metadata) -> int | None:
    """The user a Stripe object belongs to: by its customer, else its metadata."""
    if customer:
        found = UsageAccount.objects.filter(stripe_customer_id=customer).first()
        if found:
            return found.user_id
    user_id = (metadata or {}).get("chatusage_user_id")
    return int(user_id) if user_id and str(user_id).isdigit() else None


def low_balance_check(user_id: int, fields: dict) -> None:
    """After a charge settled (usage.hooks.after_settle): the low-balance alert (mail,
    banner, webhook `credits.low_balance`), once each time the balance falls below
    BILLING_LOW_BALANCE_USD after having been at or above it since the last top-up.

    Reads what has committed, so settles racing each other all see the same end balance:
    the alert's key (the top-up it follows) makes one of them record it.
    """
    from django.db.models import Sum

    from usage import alerts
    from usage.cycles import cycle_for
    from usage.models import Alert, Generation

    line = settings.BILLING_LOW_BALANCE_USD
    if not prepaid() or not line or fields["charge"] <= 0:
        return
    last = CreditGrant.objects.filter(user_id=user_id, amount__gt=0).order_by("-created_at").first()
    if last is None:
        return
    balance = balance_for(user_id)
    if balance.left >= line:
        return
    spent_since = Generation.objects.filter(
        user_id=user_id, status=Generation.Status.OK, settled_at__gte=last.created_at
    ).aggregate(total=Sum("charge"))["total"] or Decimal(0)
    if balance.left + Decimal(str(spent_since)) < line:
        return  # it was already below the line after that top-up
    account = UsageAccount.objects.get(user_id=user_id)
    with transaction.atomic():
        alerts.record(
            account, cycle_for(account), Alert.Kind.LOW_BALANCE, last.pk, balance.left, line
        )


@dataclass(frozen=True)
class CycleCredit:
    """Prepaid credit over one closed cycle, for its statement: what came in, what the
    cycle's answers used (the statement's usage) and the balance at its end, as the grants
    and the ledger stand."""

    bought: Decimal
    granted: Decimal
    taken_back: Decimal  # refunds and staff take-backs (negative or 0)
    used: Decimal
    closing_balance: Decimal


def cycle_credit(statement) -> CycleCredit:
    grants = CreditGrant.objects.filter(
        user_id=statement.user_id, created_on__lt=statement.cycle_end
    ).values_list("kind", "amount", "expires_on", "created_on")
    during = [g for g in grants if g[3] >= statement.cycle_start]

    def total(kinds):
        return sum((a for k, a, _, _ in during if k in kinds), Decimal(0))

    charges = (
        DailyUsage.objects.filter(user_id=statement.user_id, day__lt=statement.cycle_end)
        .values_list("day")
        .annotate(total=models.Sum("charge"))
        .order_by("day")
    )
    last_day = statement.cycle_end - timedelta(days=1)
    end = balance_from([g[1:] for g in grants], charges, Decimal(0), last_day)
    return CycleCredit(
        bought=total({CreditGrant.Kind.PURCHASE}),
        granted=total({CreditGrant.Kind.GRANT, CreditGrant.Kind.SIGNUP}),
        taken_back=total({CreditGrant.Kind.REFUND, CreditGrant.Kind.TAKE_BACK}),
        used=statement.usage_total,
        closing_balance=end.left,
    )
