"""Budget reservations: worst-case cost is held before a call and settled after it.

reserve() runs in one transaction that first locks the user's UsageAccount row
(SELECT ... FOR UPDATE on PostgreSQL; on SQLite every transaction is IMMEDIATE,
which takes the database write lock). So for one user, "read spend, compare with
budget, record reservation" can never interleave, and many concurrent requests
cannot overshoot the budget. settle() needs no lock: one conditional UPDATE decides
who settles, and settling only ever lowers what reserve() sees as committed.
A pending reservation is a lease that its turn renews while it runs (renew_lease), so
expiry never frees the budget of a call still running, however long it takes; only a turn
that stopped renewing (a killed worker) has its hold released.
"""

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import partial
from uuid import UUID, uuid4

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from chatusage.db import batch, require_transaction
from usage import alerts, budget, hooks, sql
from usage.cycles import Cycle, cycle_for, local_day
from usage.models import Generation, UsageAccount
from usage.pricing import COST_QUANTUM, Price, TokenUsage, charge_for, price_for, usd_text

log = logging.getLogger(__name__)

# OpenAI's chat format adds a few tokens per message (role, separators) and
# primes the reply with a few more. Generous bounds: overestimating only holds
# budget a little longer; underestimating would let spend pass the budget.
PER_MESSAGE_OVERHEAD_TOKENS = 8
REPLY_PRIMING_TOKENS = 8
BYTES_PER_TOKEN_ESTIMATE = 4  # only for answers whose provider reported no usage
ERROR_TEXT_LIMIT = 2000
SETTLEMENT_FIELDS = ["user_id", "model", *sql.SETTLED_FIELDS]


@dataclass(frozen=True)
class Reservation:
    generation_id: UUID
    user_id: int
    model: str
    provider: str
    price: Price
    reserved_cost: Decimal  # the worst case, as the user's charge
    input_token_bound: int
    max_tokens: int
    # The call belongs to the cycle (and local day) it was reserved in, whenever it settles:
    # a call in flight across midnight or a cycle's end is charged where it began.
    reserved_at: datetime
    markup_percent: Decimal = Decimal(0)  # BILLING_MARKUP_PERCENT when reserved
    alerting: bool = False  # settling may cross an alert threshold (usage/alerts.py)


@dataclass(frozen=True)
class Settlement:
    """What settle() recorded on a generation's ledger row."""

    generation_id: UUID
    user_id: int
    model: str
    status: str
    cost: Decimal  # what the provider charges
    charge: Decimal  # what the user is charged
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_estimated: bool
    exceeded_reservation: bool
    latency_ms: int | None
    http_status: int | None
    settled_at: datetime
    error: str = ""

    @property
    def pk(self) -> UUID:
        return self.generation_id

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def of(cls, generation: Generation) -> "Settlement":
        return cls(
            **{f: getattr(generation, f) for f in SETTLEMENT_FIELDS}, generation_id=generation.pk
        )


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

    @property
    def percent(self) -> Decimal | None:
        """Settled spend as a percentage of the budget, uncapped: the one figure the usage
        page, the chat page, the JSON and admin ("Used") all show."""
        if not self.budget:
            return None
        return (self.settled_cost / self.budget * 100).quantize(Decimal("0.1"))

    @property
    def state(self) -> str:
        """ok, near or over (usage/budget.py); ok without a cap."""
        return budget.state(self.percent)

    @property
    def over_by(self) -> Decimal:
        return max(self.settled_cost - self.budget, Decimal(0)) if self.budget else Decimal(0)


def _limit_message(reason: str, spend, worst_case: Decimal, new_chat) -> str:
    """What a refusal for one of the budget rules says."""
    resets = spend.cycle.end_date.isoformat()
    if reason == "blocked":
        message = "Chat is paused for this account. Please contact the site's staff."
    elif reason == "unverified":
        message = (
            "Confirm your email address to start chatting: open the link we sent you "
            "(or ask for a new one on the chat page)."
        )
    elif reason == "conversation":
        left = max(spend.budget - spend.settled_cost - spend.pending_cost, Decimal(0))
        message = (
            f"This conversation is too long for what is left of your budget: its next "
            f"message could cost up to ${worst_case:.4f} and ${left:.4f} is left this "
            f"cycle. A new chat costs at most ${new_chat:.4f} for the same message."
        )
    elif reason == "budget":
        message = (
            f"Usage limit reached: this message could cost up to ${worst_case:.4f} and "
            f"you have spent ${spend.settled_cost:.4f} of your ${spend.budget:.2f} budget "
            f"this cycle. It resets on {resets}."
        )
    else:
        # The rule counts the messages being answered too: so does the text.
        used = spend.settled_messages + spend.pending_messages
        pending = spend.pending_messages
        being_answered = f" ({pending} still being answered)" if pending else ""
        message = (
            f"Usage limit reached: you have used {used} of your {spend.message_limit} "
            f"messages this cycle{being_answered}. It resets on {resets}."
        )
    return message


class UsageLimitReached(Exception):
    """The call's worst case would pass the user's budget or message limit."""

    def __init__(
        self,
        reason: str,
        spend: Spend,
        worst_case: Decimal,
        new_chat: Decimal | None = None,
        message: str = "",
    ):
        # "budget", "conversation" (this conversation's next message does not fit, a new
        # chat's does), "messages", "unverified" or "blocked"; or a reserve_limits hook's
        # (usage/hooks.py), with its own message
        self.reason = reason
        self.spend = spend
        self.worst_case = worst_case
        self.new_chat = new_chat  # the most a new chat's first message could cost
        super().__init__(message or _limit_message(reason, spend, worst_case, new_chat))

    @property
    def retry_after(self) -> int:
        """Seconds until the cycle resets, when a refused message could go through."""
        return max(1, math.ceil((self.spend.cycle.end - timezone.now()).total_seconds()))

    def as_dict(self) -> dict:
        return {
            "reason": self.reason,
            "spent": usd_text(self.spend.settled_cost),
            "budget": str(self.spend.budget),
            "messages": self.spend.settled_messages + self.spend.pending_messages,
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
    """For an answer delivered without provider usage: a typical-ratio estimate, flagged.

    Clamped to what the reservation held (its input bound and max_tokens), so an estimate
    can never cost more than was reserved.
    """
    output_tokens = math.ceil(len(output_text.encode()) / BYTES_PER_TOKEN_ESTIMATE)
    return TokenUsage(
        input_tokens=math.ceil(reservation.input_token_bound / BYTES_PER_TOKEN_ESTIMATE),
        cached_input_tokens=0,
        output_tokens=min(output_tokens, reservation.max_tokens),
        estimated=True,
    )


def worst_case(model: str, messages: list[dict], max_tokens: int) -> Decimal:
    """What reserve() would hold for this call: the most it can be charged."""
    cost = price_for(model).cost(worst_case_input_tokens(messages), 0, max_tokens)
    return charge_for(cost, settings.BILLING_MARKUP_PERCENT)


def lease_end(now: datetime) -> datetime:
    """Until when a reservation made or renewed at `now` holds without another renewal."""
    return now + timedelta(seconds=settings.RESERVATION_LEASE_SECONDS)


def renew_lease(reservation: Reservation) -> None:
    """Keep holding a call that is still running (its turn calls this while it lasts)."""
    batch(sql.renew_lease(reservation.generation_id, lease_end(timezone.now())))


def expire_stale_reservations(now: datetime | None = None, user_id: int | None = None) -> int:
    """Release the holds of calls whose turn stopped renewing its lease (a killed worker)."""
    now = now or timezone.now()
    stale = Generation.objects.filter(status=Generation.Status.PENDING).filter(
        Q(lease_until__lt=now) | Q(lease_until__isnull=True, created_at__lt=now)
    )
    if user_id is not None:
        stale = stale.filter(user_id=user_id)
    return stale.update(
        status=Generation.Status.ABANDONED,
        settled_at=now,
        error="Abandoned: its turn stopped renewing the reservation before it settled.",
    )


def _money(value) -> Decimal:
    # SQLite keeps decimals as REAL; PostgreSQL answers exact numerics.
    return Decimal(str(value)).quantize(COST_QUANTUM)


def _cycle_spend(rows, account: UsageAccount, cycle: Cycle, include_pending: bool = True):
    """Sum usage.sql.SPEND_SQL's rows over a cycle: (Spend, calls whose lease lapsed)."""
    settled_cost, settled_messages = Decimal(0), 0
    pending_cost, pending_messages, stale = Decimal(0), 0, 0
    for day, cost, count, lapsed in rows:
        if day is None:  # the calls in flight
            pending_cost, pending_messages, stale = Decimal(str(cost)), count, lapsed
            continue
        if isinstance(day, str):  # SQLite answers text
            day = date.fromisoformat(day)
        if cycle.start_date <= day < cycle.end_date:
            settled_cost += Decimal(str(cost))
            settled_messages += int(count)
    spend = Spend(
        cycle=cycle,
        settled_cost=_money(settled_cost),
        settled_messages=settled_messages,
        pending_cost=_money(pending_cost) if include_pending else Decimal(0),
        pending_messages=int(pending_messages) if include_pending else 0,
        budget=account.effective_budget,
        message_limit=account.effective_message_limit,
    )
    return spend, int(stale)


def spend_for(account: UsageAccount, cycle: Cycle, include_pending: bool = True) -> Spend:
    """Settled spend of the cycle (from the rollups) and the reservations in flight."""
    now = timezone.now()
    (rows,) = batch(sql.spend(account.user_id, cycle.start_date, now))
    return _cycle_spend(rows, account, cycle, include_pending)[0]


# A billing cycle is a month at most and contains today: it starts no earlier than this.
LONGEST_CYCLE = timedelta(days=31)


def _recent_spend(user_id: int, now: datetime):
    """The spend read for a transaction that does not know the account's cycle yet."""
    return sql.spend(user_id, local_day(now) - LONGEST_CYCLE, now)


def _standing(user_id: int, now: datetime, account_row, spend_rows):
    """The account and its current cycle's spend from lock_account's and _recent_spend's
    rows: (account, Spend, calls whose lease lapsed)."""
    account = sql.account_from(user_id, account_row)
    return account, *_cycle_spend(spend_rows, account, cycle_for(account, now))


def _locked_spend(
    user_id: int, now: datetime, hold=(), reads=(), undo=()
) -> tuple[UsageAccount, Spend, bool, list, list]:
    """Lock the user's account and read where they stand (and `reads`, statements of the
    reserve_limits hooks), then run `hold` (a reservation's insert, and the caller's
    statements that go with it), all in one round trip on PostgreSQL. Call inside a
    transaction.

    The spend is read after the lock is held (its own statement, its own snapshot), so it
    sees every reservation and settle committed before ours, and not `hold`, which comes
    after it. Returns (account, spend, whether `hold` is in, the rows of `reads`, those of
    `hold`): off the usual path (an account to make, stale reservations to release) `hold`
    is taken back (`undo`, then the reservation's delete), and the caller decides again.
    """
    require_transaction("_locked_spend()")
    account_rows, spend_rows, *results = batch(
        sql.lock_account(user_id), _recent_spend(user_id, now), *reads, *hold
    )
    if account_rows:
        account, spend, stale = _standing(user_id, now, account_rows[0], spend_rows)
        if not stale:
            return account, spend, bool(hold), results[: len(reads)], results[len(reads) :]
    if hold:
        batch(*undo, sql.take_back(hold[0]))
    if not account_rows:  # made with the user; one made before accounts existed gets it now
        from django.contrib.auth import get_user_model

        UsageAccount.objects.for_user(get_user_model().objects.get(pk=user_id))
    else:  # calls that can no longer be running still hold budget: release it
        expire_stale_reservations(now, user_id=user_id)
    return _locked_spend(user_id, now, reads=reads)


def reserve(
    user,
    model: str,
    messages: list[dict],
    max_tokens: int,
    provider: str = "openai",
    conversation_id: UUID | None = None,
    new_chat_messages: list[dict] | None = None,
) -> Reservation:
    """Hold the call's worst-case cost, or raise UsageLimitReached (or UnknownModelError).

    `new_chat_messages`: for a message in an existing conversation, the same message as a
    new chat would send it, so that a refusal can tell "too long" from "used up".

    One transaction, two round trips on PostgreSQL: lock the account, read the spend and
    insert the reservation; then apply the rules (refusal()) and commit, or take the
    reservation back first. Nobody sees it before the commit. (reserve_with() does the
    work.)
    """
    return reserve_with(
        user, model, messages, max_tokens, provider, conversation_id, new_chat_messages
    )[0]


def reserve_with(
    user,
    model: str,
    messages: list[dict],
    max_tokens: int,
    provider: str = "openai",
    conversation_id: UUID | None = None,
    new_chat_messages: list[dict] | None = None,
    *,
    generation_id: UUID | None = None,
    also: tuple = (),
    undo: tuple = (),
) -> tuple[Reservation, list]:
    """reserve(), with the caller's own statements (`also`) sent with the reservation's
    insert, in its round trip and its transaction (the chat saves the prompt this way):
    their rows come back second. `undo`: the statements that take them back, run before
    the reservation's delete when the call is refused (or decided again). They may name
    the reservation by `generation_id`, its id when given."""
    price = price_for(model)
    input_bound = worst_case_input_tokens(messages)
    markup = settings.BILLING_MARKUP_PERCENT
    now = timezone.now()
    reservation = Reservation(
        generation_id=generation_id or uuid4(),
        user_id=user.pk,
        model=model,
        provider=provider,
        price=price,
        reserved_cost=charge_for(price.cost(input_bound, 0, max_tokens), markup),
        input_token_bound=input_bound,
        max_tokens=max_tokens,
        reserved_at=now,
        markup_percent=markup,
    )
    hold = [sql.insert_reservation(reservation, conversation_id, lease_end(now)), *also]
    # savepoint=False: inside the caller's transaction (the chat turn's) this adds no
    # round trips; an error rolls that transaction back.
    # Limits other apps set (billing's prepaid credit): their reads join the locked batch.
    limits_reads = [(limit, limit.statements(user.pk)) for limit in hooks.reserve_limits]
    reads = [statement for _, statements in limits_reads for statement in statements]
    with transaction.atomic(savepoint=False):
        account, spend, held, rows, written = _locked_spend(user.pk, now, hold, reads, undo)
        new_chat = (
            None
            if new_chat_messages is None
            else charge_for(
                price.cost(worst_case_input_tokens(new_chat_messages), 0, max_tokens), markup
            )
        )
        refused = refusal(account, spend, reservation.reserved_cost, new_chat)
        for limit, statements in limits_reads:
            mine, rows = rows[: len(statements)], rows[len(statements) :]
            if refused is None and statements:
                refused = limit.refusal(mine, spend, reservation.reserved_cost, now)
        if refused is None and not held:
            written = batch(*hold)
        elif refused is not None and held:
            batch(*undo, sql.take_back(hold[0]))
        if refused is not None and refused.reason in ("budget", "messages"):
            # Only when a new chat would be refused too: a conversation too long for what
            # is left has not reached the limit. Committed with this transaction, so it is
            # raised after the block.
            alerts.after_refusal(account, spend.cycle, spend.settled_cost, refused.reason)
    if refused is not None:
        raise refused
    return replace(reservation, alerting=alerts.watches(account)), written[1:]


def refusal(
    account: UsageAccount, spend: Spend, worst_case: Decimal, new_chat: Decimal | None = None
) -> UsageLimitReached | None:
    """The budget rules: why this call may not start, or None if it may.

    `spend` counts the calls in flight at their worst case, so concurrent calls can never
    together pass the budget or the message limit. `new_chat` is what the same message
    would hold in a new conversation (None: this is one): when that would fit, the refusal
    says the conversation is too long, not that the budget is used up.
    """
    if account.blocked:  # staff paused this account's chat
        return UsageLimitReached("blocked", spend, worst_case)
    if not account.email_verified:  # a sign-up not yet confirmed has no budget at all
        return UsageLimitReached("unverified", spend, worst_case)
    committed = spend.settled_cost + spend.pending_cost
    if spend.budget and committed + worst_case > spend.budget:
        if new_chat is not None and committed + new_chat <= spend.budget:
            return UsageLimitReached("conversation", spend, worst_case, new_chat)
        return UsageLimitReached("budget", spend, worst_case)
    if spend.message_limit and (
        spend.settled_messages + spend.pending_messages >= spend.message_limit
    ):
        return UsageLimitReached("messages", spend, worst_case)
    return None


def settle(
    reservation: Reservation,
    usage: TokenUsage | None = None,
    *,
    error: str = "",
    latency_ms: int | None = None,
    http_status: int | None = None,
) -> Settlement:
    """Record what the call really cost and release its reservation. Idempotent.
    (settle_with() does the work, see there.)"""
    return settle_with(
        reservation, usage, error=error, latency_ms=latency_ms, http_status=http_status
    )[0]


def settle_with(
    reservation: Reservation,
    usage: TokenUsage | None = None,
    *,
    error: str = "",
    latency_ms: int | None = None,
    http_status: int | None = None,
    also: tuple = (),
    standing: bool = False,
) -> tuple[Settlement, list, Spend | None]:
    """Record what the call really cost and release its reservation. Idempotent.

    `also`: the caller's own statements, run after the settle in the same transaction and
    the same round trip (the chat saves its answer this way); their rows come back second.
    With `standing`, where the user stands after it (the current cycle's Spend; None
    without an account) comes back third, read in that round trip too: by the reads the
    alert watch makes anyway, when it makes them.

    With `error` (or no usage) the call settles as an error at $0. A row that was
    marked abandoned meanwhile is still settled: the real figures win. One conditional
    UPDATE decides who settles, so a second settle of the same call changes nothing; the
    daily rollup is updated in the same transaction. The budget needs no account lock here:
    settling only ever lowers what reserve() sees as committed. Alerts do: when this call
    can cross a threshold, the lock puts the user's settles in a row (usage/alerts.py).
    """
    now = timezone.now()
    fields = {
        "settled_at": now,
        "latency_ms": latency_ms,
        "http_status": http_status,
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "output_tokens": 0,
        "cost_estimated": False,
        "exceeded_reservation": False,
    }
    if error or usage is None:
        fields |= {
            "status": Generation.Status.ERROR,
            "error": (error or "No usage reported.")[:ERROR_TEXT_LIMIT],
            "cost": Decimal(0),
            "charge": Decimal(0),
        }
    else:
        # The reservation carries the prices snapshotted on its row.
        cost = reservation.price.cost(
            usage.input_tokens, usage.cached_input_tokens, usage.output_tokens
        )
        charge = charge_for(cost, reservation.markup_percent)
        exceeded = charge > reservation.reserved_cost
        if exceeded:
            # The provider's own figures are what it bills: record them as reported, flag
            # the row and tell operators, since the worst-case bound was wrong.
            log.warning(
                "Reservation bound violated for generation %s: reported %s in / %s out "
                "tokens charge %s, %s was reserved (bound %s in / %s out).",
                reservation.generation_id,
                usage.input_tokens,
                usage.output_tokens,
                charge,
                reservation.reserved_cost,
                reservation.input_token_bound,
                reservation.max_tokens,
            )
        fields |= {
            "status": Generation.Status.OK,
            "error": "",
            "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "output_tokens": usage.output_tokens,
            "cost_estimated": usage.estimated,
            "exceeded_reservation": exceeded,
            "cost": cost,
            "charge": charge,
        }
    watch = reservation.alerting and fields["charge"] > 0
    user_id = reservation.user_id
    # What other apps record with the settle (billing's meter events), in its transaction.
    outboxes = [
        (outbox, writes)
        for outbox in hooks.settle_outboxes
        if (writes := outbox.statements(fields))
    ]
    statements, decisive = sql.settle(
        reservation.generation_id,
        user_id,
        reservation.model,
        local_day(reservation.reserved_at),
        fields,
        [statement for _, writes in outboxes for statement in writes],
    )
    spend = None
    if watch:
        # Alerts need this user's settles in a row: the lock makes each one read the spend
        # every earlier settle committed, so exactly one of them crosses each threshold.
        # Lock, settle and read go out together: one round trip, then the commit.
        with transaction.atomic(savepoint=False):
            account_rows, *results, spend_rows = batch(
                sql.lock_account(user_id),
                *statements,
                *also,
                _recent_spend(user_id, now),
            )
            won = bool(results[decisive])
            if account_rows:
                account, spend, _ = _standing(user_id, now, account_rows[0], spend_rows)
                if won:
                    alerts.after_settle(account, spend.cycle, spend.settled_cost, fields["charge"])
    else:
        reads = standing_reads(user_id, now) if standing else []
        # PostgreSQL settles in one statement (its outboxes' writes included); SQLite's
        # several need a transaction.
        alone = len(statements) == 1 and not also and not reads
        with nullcontext() if alone else transaction.atomic(savepoint=False):
            results = batch(*statements, *also, *reads)
        if reads:
            results, (account_rows, spend_rows) = results[: -len(reads)], results[-len(reads) :]
            spend = standing_from(user_id, now, account_rows, spend_rows)
        won = bool(results[decisive])
    extra = results[len(statements) :]
    spend = spend if standing else None
    # After the settle's commit, or the caller's transaction's when there is one.
    for outbox, _ in outboxes:
        transaction.on_commit(outbox.committed)
    if not won:  # settled before (a retry, or expiry raced us): report what the row holds
        return Settlement.of(Generation.objects.get(pk=reservation.generation_id)), extra, spend
    for callback in hooks.after_settle:
        transaction.on_commit(partial(callback, user_id, fields))
    settlement = Settlement(
        generation_id=reservation.generation_id, user_id=user_id, model=reservation.model, **fields
    )
    return settlement, extra, spend


def standing_reads(user_id: int, now: datetime) -> list:
    """Statements that read where a user stands (account and spend), unlocked: for
    standing_from(), in a batch of the caller's."""
    return [sql.read_account(user_id), _recent_spend(user_id, now)]


def standing_from(user_id: int, now: datetime, account_rows, spend_rows) -> Spend | None:
    """The current cycle's Spend from standing_reads()'s rows (None without an account)."""
    if not account_rows:
        return None
    return _standing(user_id, now, account_rows[0], spend_rows)[1]
