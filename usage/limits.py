"""Budget reservations: worst-case cost is held before a call and settled after it.

reserve() and settle() each run in one transaction that first locks the user's
UsageAccount row (SELECT ... FOR UPDATE on PostgreSQL; on SQLite every
transaction is IMMEDIATE, which takes the database write lock). So for one
user, "read spend, compare with budget, record reservation" can never
interleave, and many concurrent requests cannot overshoot the budget.
"""

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Sum
from django.utils import timezone

from usage.cycles import Cycle, cycle_for, local_day
from usage.models import DailyUsage, Generation, UsageAccount
from usage.pricing import Price, price_for

# OpenAI's chat format adds a few tokens per message (role, separators) and
# primes the reply with a few more. Generous bounds: overestimating only holds
# budget a little longer; underestimating would let spend pass the budget.
PER_MESSAGE_OVERHEAD_TOKENS = 8
REPLY_PRIMING_TOKENS = 8
BYTES_PER_TOKEN_ESTIMATE = 4  # only for answers whose provider reported no usage
ERROR_TEXT_LIMIT = 2000
SETTLED_FIELDS = [
    "status",
    "error",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost",
    "cost_estimated",
    "latency_ms",
    "http_status",
    "settled_at",
]


@dataclass(frozen=True)
class Reservation:
    generation_id: UUID
    user_id: int
    model: str
    provider: str
    price: Price
    reserved_cost: Decimal
    input_token_bound: int
    max_tokens: int


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    estimated: bool = False


@dataclass(frozen=True)
class Spend:
    """Where a user stands in a cycle according to the ledger."""

    cycle: Cycle
    settled_cost: Decimal
    settled_messages: int
    pending_cost: Decimal
    pending_messages: int
    budget: Decimal  # 0 = no cap
    message_limit: int  # 0 = no cap

    @property
    def budget_left(self) -> Decimal | None:
        if not self.budget:
            return None
        return max(self.budget - self.settled_cost - self.pending_cost, Decimal(0))


class UsageLimitReached(Exception):
    """The call's worst case would pass the user's budget or message limit."""

    def __init__(self, reason: str, spend: Spend, worst_case: Decimal):
        self.reason = reason  # "budget" or "messages"
        self.spend = spend
        self.worst_case = worst_case
        resets = spend.cycle.end_date.isoformat()
        if reason == "budget":
            message = (
                f"Usage limit reached: this message could cost up to ${worst_case:.4f} and "
                f"you have spent ${spend.settled_cost:.4f} of your ${spend.budget:.2f} budget "
                f"this cycle. It resets on {resets}."
            )
        else:
            message = (
                f"Usage limit reached: you have used {spend.settled_messages} of your "
                f"{spend.message_limit} messages this cycle. It resets on {resets}."
            )
        super().__init__(message)

    def as_dict(self) -> dict:
        return {
            "reason": self.reason,
            "spent": str(self.spend.settled_cost.quantize(Decimal("0.000001"))),
            "budget": str(self.spend.budget),
            "messages": self.spend.settled_messages,
            "message_limit": self.spend.message_limit,
            "resets_at": self.spend.cycle.end.isoformat(),
        }


def worst_case_input_tokens(messages: list[dict]) -> int:
    """An upper bound on prompt tokens: a byte-level BPE never makes more tokens than bytes."""
    return (
        sum(len(str(m.get("content", "")).encode()) + PER_MESSAGE_OVERHEAD_TOKENS for m in messages)
        + REPLY_PRIMING_TOKENS
    )


def estimate_usage(reservation: Reservation, output_text: str) -> TokenUsage:
    """For an answer delivered without provider usage: a typical-ratio estimate, flagged."""
    return TokenUsage(
        input_tokens=math.ceil(reservation.input_token_bound / BYTES_PER_TOKEN_ESTIMATE),
        cached_input_tokens=0,
        output_tokens=math.ceil(len(output_text.encode()) / BYTES_PER_TOKEN_ESTIMATE),
        estimated=True,
    )


def stale_before(now: datetime) -> datetime:
    """Pending rows older than twice the provider timeout can no longer be in flight."""
    return now - timedelta(seconds=2 * settings.OPENAI_TIMEOUT)


def expire_stale_reservations(now: datetime | None = None, user=None) -> int:
    now = now or timezone.now()
    stale = Generation.objects.filter(
        status=Generation.Status.PENDING, created_at__lt=stale_before(now)
    )
    if user is not None:
        stale = stale.filter(user=user)
    return stale.update(
        status=Generation.Status.ABANDONED,
        settled_at=now,
        error="Abandoned: never settled within twice the provider timeout.",
    )


def _locked_account(user_id: int) -> UsageAccount:
    """Lock the user's account row for the rest of the transaction (create it if missing)."""
    account = UsageAccount.objects.select_for_update().filter(user_id=user_id).first()
    if account is None:
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.get(pk=user_id)
        UsageAccount.objects.get_or_create(
            user=user, defaults={"billing_anchor": local_day(user.date_joined)}
        )
        account = UsageAccount.objects.select_for_update().get(user_id=user_id)
    return account


def spend_for(account: UsageAccount, cycle: Cycle, include_pending: bool = True) -> Spend:
    """Settled spend of the cycle (from the rollups) and the reservations in flight."""
    settled = DailyUsage.objects.filter(
        user_id=account.user_id, day__gte=cycle.start_date, day__lt=cycle.end_date
    ).aggregate(cost=Sum("cost"), messages=Sum("generations"))
    pending = {"cost": None, "messages": 0}
    if include_pending:
        pending = Generation.objects.filter(
            user_id=account.user_id, status=Generation.Status.PENDING
        ).aggregate(cost=Sum("reserved_cost"), messages=Count("id"))
    return Spend(
        cycle=cycle,
        settled_cost=settled["cost"] or Decimal(0),
        settled_messages=settled["messages"] or 0,
        pending_cost=pending["cost"] or Decimal(0),
        pending_messages=pending["messages"] or 0,
        budget=account.effective_budget,
        message_limit=account.effective_message_limit,
    )


def reserve(
    user,
    model: str,
    messages: list[dict],
    max_tokens: int,
    provider: str = "openai",
    conversation_id: UUID | None = None,
) -> Reservation:
    """Hold the call's worst-case cost, or raise UsageLimitReached (or UnknownModelError)."""
    price = price_for(model)
    input_bound = worst_case_input_tokens(messages)
    worst_case = price.cost(input_bound, 0, max_tokens)
    now = timezone.now()
    with transaction.atomic():
        account = _locked_account(user.pk)
        expire_stale_reservations(now, user=user)
        spend = spend_for(account, cycle_for(account, now))
        committed = spend.settled_cost + spend.pending_cost
        if spend.budget and committed + worst_case > spend.budget:
            raise UsageLimitReached("budget", spend, worst_case)
        if spend.message_limit and (
            spend.settled_messages + spend.pending_messages >= spend.message_limit
        ):
            raise UsageLimitReached("messages", spend, worst_case)
        generation = Generation.objects.create(
            user_id=user.pk,
            conversation_id=conversation_id,
            model=model,
            provider=provider,
            reserved_cost=worst_case,
            price_input_per_1m=price.input_per_1m,
            price_cached_input_per_1m=price.cached_input_per_1m,
            price_output_per_1m=price.output_per_1m,
        )
    return Reservation(
        generation_id=generation.pk,
        user_id=user.pk,
        model=model,
        provider=provider,
        price=price,
        reserved_cost=worst_case,
        input_token_bound=input_bound,
        max_tokens=max_tokens,
    )


def settle(
    reservation: Reservation,
    usage: TokenUsage | None = None,
    *,
    error: str = "",
    latency_ms: int | None = None,
    http_status: int | None = None,
) -> Generation:
    """Record what the call really cost and release its reservation. Idempotent.

    With `error` (or no usage) the call settles as an error at $0. A row that was
    marked abandoned meanwhile is still settled: the real figures win.
    """
    now = timezone.now()
    with transaction.atomic():
        _locked_account(reservation.user_id)
        generation = Generation.objects.select_for_update().get(pk=reservation.generation_id)
        if generation.status not in (Generation.Status.PENDING, Generation.Status.ABANDONED):
            return generation
        generation.settled_at = now
        generation.latency_ms = latency_ms
        generation.http_status = http_status
        if error or usage is None:
            generation.status = Generation.Status.ERROR
            generation.error = (error or "No usage reported.")[:ERROR_TEXT_LIMIT]
            generation.cost = Decimal(0)
        else:
            generation.status = Generation.Status.OK
            generation.error = ""
            generation.input_tokens = usage.input_tokens
            generation.cached_input_tokens = usage.cached_input_tokens
            generation.output_tokens = usage.output_tokens
            generation.cost_estimated = usage.estimated
            generation.cost = Price(
                generation.model,
                generation.price_input_per_1m,
                generation.price_cached_input_per_1m,
                generation.price_output_per_1m,
            ).cost(usage.input_tokens, usage.cached_input_tokens, usage.output_tokens)
        generation.save(update_fields=SETTLED_FIELDS)
        _add_to_rollup(generation, local_day(now))
    return generation


def _add_to_rollup(generation: Generation, day) -> None:
    ok = generation.status == Generation.Status.OK
    row, _ = DailyUsage.objects.get_or_create(
        user_id=generation.user_id, day=day, model=generation.model
    )
    DailyUsage.objects.filter(pk=row.pk).update(
        generations=F("generations") + int(ok),
        errors=F("errors") + int(not ok),
        input_tokens=F("input_tokens") + generation.input_tokens,
        cached_input_tokens=F("cached_input_tokens") + generation.cached_input_tokens,
        output_tokens=F("output_tokens") + generation.output_tokens,
        cost=F("cost") + generation.cost,
    )
