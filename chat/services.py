"""A chat turn: validate; reserve and save the prompt (one transaction); call; settle and
save the answer (one transaction).

Views call these; they never touch the ledger or the provider themselves. The call
itself is async and holds no database connection: the ledger and message writes
around it are short steps (chatusage.db.step). Every way a turn can end settles its
reservation exactly once: an answer, a provider error, the deadline, the client going
away before or during the stream. Only a killed worker leaves a pending row, and expiry
releases it once no call could still be running (usage.limits.stale_before).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID, uuid4

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError, transaction
from django.http import Http404
from django.utils import timezone

from chat import llm, spool
from chat import sql as chat_sql
from chat.models import Conversation, Message
from chat.render import markdown_html
from chatusage import ratelimit
from chatusage.db import batch, step
from chatusage.errors import ApiError
from usage import limits
from usage.cycles import cycle_for
from usage.models import Generation, UsageAccount
from usage.pricing import UnknownModelError, price_for, usd_text

log = logging.getLogger(__name__)


class ChatError(ApiError):
    """Anything that stops a turn, by its code (chatusage/errors.py)."""


@dataclass
class Turn:
    user: object  # the User who asked
    conversation: Conversation
    prompt: Message
    messages: list[dict]
    reservation: limits.Reservation
    provider: llm.Provider
    streaming: bool = False  # stream_events() has started: it settles, however it ends
    concluding: bool = False  # the stream's relay is settling: it must not be cancelled


def clean_prompt(value) -> str:
    if not isinstance(value, str):
        raise ChatError("invalid_prompt", {"detail": "The prompt must be text."})
    prompt = value.strip()
    if not prompt:
        raise ChatError("empty_prompt")
    if len(prompt) > settings.CHAT_MAX_PROMPT_CHARS:
        limit = {"limit": settings.CHAT_MAX_PROMPT_CHARS, "length": len(prompt)}
        raise ChatError("prompt_too_long", limit)
    if "\x00" in prompt:
        raise ChatError("invalid_prompt", {"detail": "The prompt contains a NUL character."})
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800", legal in JSON
        not_text = "The prompt contains characters that are not valid text."
        raise ChatError("invalid_prompt", {"detail": not_text}) from exc
    return prompt


def conversation_for(user, conversation_id) -> Conversation:
    """The user's own conversation, or 404: the one scoping helper for chat lookups."""
    try:
        return Conversation.objects.get(pk=conversation_id, user=user)
    except (Conversation.DoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise Http404("No such conversation.") from exc


def shown_messages(conversation: Conversation) -> list[Message]:
    """The conversation's messages as the page shows them: each answer with its ledger row
    (tokens and cost) as `generation`, all read in one query."""
    shown = list(conversation.messages.all())
    answers = [m for m in shown if m.role == Message.Role.ASSISTANT]
    generations = Generation.objects.in_bulk([m.generation_id for m in answers if m.generation_id])
    for message in shown:
        answer = message.role == Message.Role.ASSISTANT
        message.generation = generations.get(message.generation_id) if answer else None
    return shown


def history(conversation: Conversation | None, text: str) -> list[dict]:
    """System prompt + as many recent answered messages as fit in CHAT_HISTORY_BYTES + prompt.

    Failed prompts are not history (a retry resends its own text as the prompt).
    """
    earlier = []
    if conversation is not None:
        (earlier,) = batch(chat_sql.earlier(conversation.pk, conversation.user_id))
    return _fitted(_answered(earlier), text)


def _answered(newest_first):
    """(role, content) of the messages (chat_sql.earlier()'s rows) that are history."""
    return (
        (message.role, message.content)
        for message in map(chat_sql.Earlier._make, newest_first)
        if not message.failed
    )


def _fitted(newest_first, text: str) -> list[dict]:
    """The messages sent for `text`: the system prompt, then the latest of `newest_first`
    ((role, content) pairs) that fit in CHAT_HISTORY_BYTES with it, then the prompt."""
    kept = []
    budget = max(settings.CHAT_HISTORY_BYTES - len(text.encode()), 0)
    for role, content in newest_first:
        size = len(content.encode())
        if size > budget:
            break
        budget -= size
        kept.append({"role": role, "content": content})
    kept.reverse()
    return [
        {"role": "system", "content": settings.CHAT_SYSTEM_PROMPT},
        *kept,
        {"role": "user", "content": text},
    ]


def next_history(turn: Turn, answer: str) -> list[dict]:
    """What history() will give the conversation's next message, from the turn in hand:
    its history and prompt, then this answer (no query)."""
    earlier = [(m["role"], m["content"]) for m in turn.messages[1:]]
    earlier.append(("assistant", answer))
    return _fitted(reversed(earlier), "")


def _continued(user, conversation_id) -> tuple[Conversation, list]:
    """The user's conversation and its messages, newest first (chat_sql.earlier()'s rows),
    read in one round trip; 404 if it is not theirs or the id is no UUID."""
    try:
        pk = conversation_id if isinstance(conversation_id, UUID) else UUID(conversation_id)
    except (ValueError, TypeError, AttributeError) as exc:
        raise Http404("No such conversation.") from exc
    found, earlier = batch(*chat_sql.continued(pk, user.pk))
    if not found:
        raise Http404("No such conversation.")
    # Only what the turn knows; any other field loads from the database if asked for.
    conversation = Conversation.from_db(
        "default", ["id", "user_id", "title"], [pk, user.pk, found[0][0]]
    )
    return conversation, earlier


def _saving_prompt(conversation: Conversation, text: str, generation_id: UUID, earlier):
    """How a turn saves its prompt (and a new conversation) with its reservation
    (limits.reserve_with): the statements, the statements that take them back, and a
    function that makes the prompt's Message from their rows. The prompt is marked failed
    until answered; a retry of the last, failed prompt reuses it. `earlier`: the
    conversation's messages, newest first, as _continued() read them (None: a new one)."""
    now = timezone.now()
    user = Message.Role.USER.value
    values = chat_sql.message_values(conversation.pk, user, text, now, generation_id, failed=True)
    if earlier is None:
        conversation.created_at = conversation.updated_at = now

        def started(rows) -> Message:
            _, (row,) = rows
            conversation._state.adding, conversation._state.db = False, "default"
            return chat_sql.saved(row[0], values)

        statements = chat_sql.start_conversation(conversation, values)
        return statements, chat_sql.drop_conversation(conversation.pk), started
    last = chat_sql.Earlier._make(earlier[0]) if earlier else None
    if last and last.role == user and last.failed and last.content == text:

        def reused(rows) -> Message:
            # Its created_at is the first try's: left to load from the row if asked for.
            fields = ["id", "conversation_id", "role", "content", "generation_id", "failed"]
            return Message.from_db("default", fields, [last.id, *(values[f] for f in fields[1:])])

        back = chat_sql.reuse_prompt(last.id, last.generation_id)
        return [chat_sql.reuse_prompt(last.id, generation_id)], [back], reused

    def saved(rows) -> Message:
        ((row,),) = rows
        return chat_sql.saved(row[0], values)

    return [chat_sql.save_prompt(values)], [chat_sql.drop_prompt(generation_id)], saved


def _refusal(exc: Exception, conversation: Conversation | None) -> ChatError:
    """What a turn refused before the call says; it wrote nothing."""
    extra = {"conversation_id": str(conversation.pk)} if conversation else {}
    detail = {"detail": str(exc)}
    if isinstance(exc, limits.UsageLimitReached) and exc.reason == "unverified":
        return ChatError("email_not_verified", detail, **extra)
    if isinstance(exc, limits.UsageLimitReached) and exc.reason == "blocked":
        return ChatError("account_blocked", detail, **extra)
    if isinstance(exc, limits.UsageLimitReached) and exc.reason == "conversation":
        return ChatError(
            "conversation_too_long", detail, **extra, new_chat_usd=usd_text(exc.new_chat)
        )
    if isinstance(exc, limits.UsageLimitReached) and exc.reason == "credits":
        return ChatError("insufficient_credits", detail, **extra, **exc.as_dict())
    if isinstance(exc, limits.UsageLimitReached):
        return ChatError(
            "usage_limit_reached", detail, retry_after=exc.retry_after, **extra, **exc.as_dict()
        )
    return ChatError("model_not_priced", detail, **extra)


def _check_rate(user) -> None:
    wait = ratelimit.wait_seconds(f"chat:{user.pk}")
    if wait:
        # A new error each time: one shared instance chained every request's traceback
        # (and so every rate-limited request and its body) onto itself.
        raise ChatError("rate_limited", {"wait": wait}, retry_after=wait)


def start_turn(user, prompt_text, conversation_id=None) -> Turn:
    """Count the turn against the user's rate limit, validate, then reserve budget for the
    call and save the prompt (and a new conversation) in one transaction: one round trip
    and the commit, and never one without the other. All of it is one step of the request
    (one thread hand-off and one pooled connection).

    A refused turn (bad input, budget, message limit, unpriced model) writes nothing but
    the refusal's alert: the prompt goes back to the composer with the reason. An accepted
    prompt is saved marked failed until answered, so a failed call never loses it.
    """
    _check_rate(user)
    text = clean_prompt(prompt_text)
    new_conversation = not conversation_id
    if new_conversation:
        conversation, earlier = Conversation(user=user, title=text.splitlines()[0][:80]), None
    else:
        conversation, earlier = _continued(user, conversation_id)
    messages = _fitted(_answered(earlier or []), text)
    provider = llm.current_provider()
    generation_id = uuid4()
    saving, undo, prompt_from = _saving_prompt(conversation, text, generation_id, earlier)
    refused = None
    with transaction.atomic():
        try:
            reservation, rows = limits.reserve_with(
                user,
                provider.model,
                messages,
                settings.OPENAI_MAX_TOKENS,
                provider=provider.name,
                conversation_id=conversation.pk,
                new_chat_messages=None if new_conversation else history(None, text),
                generation_id=generation_id,
                also=saving,
                undo=undo,
            )
        except (limits.UsageLimitReached, UnknownModelError) as exc:
            refused = exc  # raised after the commit, which keeps what reserve() recorded
        else:
            prompt = prompt_from(rows)
    if refused is not None:
        raise _refusal(refused, None if new_conversation else conversation) from refused
    return Turn(user, conversation, prompt, messages, reservation, provider)


async def astart_turn(user, prompt_text, conversation_id=None) -> Turn:
    return await step(start_turn, user, prompt_text, conversation_id)


def _call_context(turn: Turn) -> dict:
    return {
        "user_id": turn.reservation.user_id,
        "generation_id": turn.reservation.generation_id,
        "conversation_id": turn.conversation.pk,
        "price": turn.reservation.price,
        "reserved_at": turn.reservation.reserved_at,
        "markup_percent": turn.reservation.markup_percent,
    }


@dataclass
class Answer:
    conversation: Conversation
    message: Message
    generation_id: UUID
    usage: dict
    budget: dict  # BudgetView.as_dict() right after this answer settled


@dataclass(frozen=True)
class AnswerRecord:
    """Everything that settling a delivered answer and saving it needs, and nothing that
    needs the database to rebuild: so an answer can wait on disk while the database is away
    (chat/spool.py) and be saved from there later, exactly as it would have been."""

    reservation: limits.Reservation
    usage: limits.TokenUsage
    prompt_id: int
    conversation_id: UUID
    text: str
    latency_ms: int | None
    http_status: int | None
    finish_reason: str
    interrupted: bool
    error: str  # what the user read beside a cut-short answer
    demo: bool

    @classmethod
    def of(cls, turn: Turn, completion: llm.Completion, interrupted: bool, error) -> "AnswerRecord":
        return cls(
            reservation=turn.reservation,
            usage=completion.usage or limits.estimate_usage(turn.reservation, completion.text),
            prompt_id=turn.prompt.pk,
            conversation_id=turn.conversation.pk,
            text=completion.text,
            latency_ms=completion.latency_ms,
            http_status=error.http_status if error else completion.http_status,
            finish_reason=completion.finish_reason or "",
            interrupted=interrupted,
            error=error.message if error else "",
            demo=turn.provider.demo,
        )

    def save(self) -> tuple[limits.Settlement, Message, limits.Spend | None]:
        """Settle and save the answer in one transaction, one commit, and say where the
        user now stands. Idempotent: run again after a commit whose outcome was lost, it
        finds the answer and saves no second one. Should saving fail, the call is settled
        (and its prompt marked answered) on its own before the error goes on: what was
        delivered is billed, and a billed prompt never offers Retry."""

        def settle(also=(), standing=False):
            return limits.settle_with(
                self.reservation,
                self.usage,
                latency_ms=self.latency_ms,
                http_status=self.http_status,
                also=also,
                standing=standing,
            )

        values = chat_sql.message_values(
            self.conversation_id,
            Message.Role.ASSISTANT.value,
            self.text,
            timezone.now(),
            self.reservation.generation_id,
            interrupted=self.interrupted,
            error=self.error,
            finish_reason=self.finish_reason,
            demo=self.demo,
        )
        # Settle, save the answer and read where the user now stands: one round trip on
        # PostgreSQL, then the commit.
        try:
            with transaction.atomic():
                generation, (inserted, _, _), spend = settle(
                    chat_sql.save_answer(values, self.prompt_id), standing=True
                )
                if inserted:
                    answer = chat_sql.saved(inserted[0][0], values)
                else:  # saved before: this is a retry of a save whose commit was lost
                    answer = Message.objects.get(
                        generation_id=generation.pk, role=Message.Role.ASSISTANT
                    )
        except Exception:
            with transaction.atomic():
                settle()
                Message.objects.filter(pk=self.prompt_id).update(failed=False)
            raise
        return generation, answer, spend


def _finish(
    turn: Turn,
    completion: llm.Completion,
    interrupted: bool = False,
    error: llm.ProviderError | None = None,
) -> Answer:
    """Settle what was delivered and save it as the answer (cut short when interrupted)."""
    generation, answer, spend = AnswerRecord.of(turn, completion, interrupted, error).save()
    return Answer(
        turn.conversation,
        answer,
        generation.pk,
        {
            "model": generation.model,
            "input_tokens": generation.input_tokens,
            "cached_input_tokens": generation.cached_input_tokens,
            "output_tokens": generation.output_tokens,
            "total_tokens": generation.total_tokens,
            "cost_usd": usd_text(generation.charge),  # what the user is charged
            "estimated": generation.cost_estimated,
            "truncated": answer.finish_reason == "length",
            "latency_ms": generation.latency_ms,
        },
        (budget_view_of(spend) if spend else budget_view(turn.user)).as_dict(),
    )


def _fail(turn: Turn, error: llm.ProviderError, latency_ms: int | None = None) -> ChatError:
    limits.settle(
        turn.reservation,
        error=f"{error.code}: {error.message}",
        latency_ms=latency_ms,
        http_status=error.http_status,
    )
    return ChatError(error.code, error.details, conversation_id=str(turn.conversation.pk))


NOT_ANSWERED = "The client went away before an answer."

# Settling steps and stream relays run as tasks of their own (so a cancelled request still
# completes them); a reference is kept until each ends, and a failure is logged, not lost
# with the task.
_running: set[asyncio.Task] = set()


def _kept(task: asyncio.Task) -> asyncio.Task:
    _running.add(task)
    task.add_done_callback(_ended)
    return task


def _ended(task: asyncio.Task) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("A chat task failed", exc_info=task.exception())


async def _settle(fn, *args, **kwargs):
    """A settling step that finishes even if the request is cancelled meanwhile, and that
    waits out a database outage of up to SETTLE_RETRY_SECONDS.

    A client that goes away cancels the request's task; the write still completes (in
    its own task) and the cancellation is re-raised to the caller afterwards.
    """
    return await asyncio.shield(_kept(asyncio.ensure_future(_retrying(fn, args, kwargs))))


async def _retrying(fn, args, kwargs):
    """`step(fn, ...)`, tried again with backoff while the database cannot be reached. Each
    settling step is idempotent, so a try whose commit was lost is safe to repeat."""
    give_up = time.monotonic() + settings.SETTLE_RETRY_SECONDS
    delay = 0.25
    while True:
        try:
            return await step(fn, *args, **kwargs)
        except (OperationalError, InterfaceError):
            if time.monotonic() + delay > give_up:
                raise
            log.warning("The database is unavailable to settle a turn; trying again in %ss", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class AnswerNotSaved(ChatError):
    """The answer was delivered, but the database stayed away: it waits on disk."""

    def __init__(self, text: str):
        super().__init__("answer_not_saved", response=text)


async def _deliver(turn: Turn, completion: llm.Completion, interrupted=False, error=None):
    """Settle and save a delivered answer (_finish); while the database stays away past the
    retries, keep it on disk for `manage.py settle_spooled` and raise AnswerNotSaved."""
    try:
        return await _settle(_finish, turn, completion, interrupted, error)
    except (OperationalError, InterfaceError) as exc:
        spool.keep(AnswerRecord.of(turn, completion, interrupted, error))
        raise AnswerNotSaved(completion.text) from exc


async def _keep_leased(reservation: limits.Reservation) -> None:
    """Renew the reservation's lease while the turn runs, however long it takes."""
    while True:
        await asyncio.sleep(settings.RESERVATION_LEASE_SECONDS / 3)
        try:
            await step(limits.renew_lease, reservation)
        except Exception:  # the next renewal tries again; the lease outlasts two misses
            log.warning("Renewing a reservation's lease failed", exc_info=True)


@asynccontextmanager
async def _leased(turn: Turn):
    renewals = asyncio.create_task(_keep_leased(turn.reservation))
    try:
        yield
    finally:
        renewals.cancel()


async def answer(turn: Turn) -> Answer:
    """Call the model without streaming and settle. Raises ChatError on provider failure."""
    async with _leased(turn):
        try:
            completion = await llm.complete(
                turn.messages, until=llm.deadline(), **_call_context(turn)
            )
        except llm.ProviderError as exc:
            raise await _settle(_fail, turn, exc) from exc
        except asyncio.CancelledError:  # the client went away while the model worked
            await _settle(limits.settle, turn.reservation, error=NOT_ANSWERED)
            raise
        except Exception as exc:  # a bug of ours: the call costs nothing, the error goes on
            await _settle(limits.settle, turn.reservation, error=f"Failed: {type(exc).__name__}")
            raise
        return await _deliver(turn, completion)


_END = ("end", None)


async def stream_events(turn: Turn) -> AsyncIterator[tuple[str, dict]]:
    """(event, data) pairs for server-sent events. Settles however the stream ends.

    The model's stream is read by a task of its own (_relay), which settles the turn by the
    deadline whatever the client does: a client that stops reading cannot keep a call, or
    its hold on the budget, open past it. This generator only passes on what the relay
    read, joining the deltas that arrived together into one event. When the client goes
    away the server closes this generator; the relay is then stopped and settles what
    arrived, and the generator waits for that.
    """
    turn.streaming = True
    relay = None
    try:
        yield (
            "start",
            {
                "conversation_id": str(turn.conversation.pk),
                "generation_id": str(turn.reservation.generation_id),
                "model": turn.provider.model,
                "demo": turn.provider.demo,
            },
        )
        queue: asyncio.Queue = asyncio.Queue()
        relay = _kept(asyncio.create_task(_relay(turn, queue)))
        while True:
            events = [await queue.get()]
            while not queue.empty():
                events.append(queue.get_nowait())
            text = "".join(data for event, data in events if event == "delta")
            if text:
                yield "delta", {"text": text}
            for event, data in events:
                if event == "end":
                    return
                if event != "delta":
                    yield event, data
    finally:
        if relay is None:
            await _settle(limits.settle, turn.reservation, error=NOT_ANSWERED)
        else:
            if not turn.concluding:
                relay.cancel()
            await asyncio.wait([relay])  # its settling, even if we are cancelled again


async def _relay(turn: Turn, queue: asyncio.Queue) -> None:
    """Read the model's stream into `queue` within the deadline, then settle and put the
    closing event (done or error). Cancelled (the client went away), it settles what
    arrived."""
    stream, error = None, None
    until = llm.deadline()
    async with _leased(turn):
        try:
            try:
                # The deadline is a wall for the whole read, not only for each chunk.
                async with asyncio.timeout(until - time.monotonic()):
                    stream = await llm.stream(turn.messages, until=until, **_call_context(turn))
                    async for delta in stream:
                        queue.put_nowait(("delta", delta))
            except TimeoutError:
                error = llm.deadline_error()
            except llm.ProviderError as exc:
                error = exc
        except asyncio.CancelledError:
            turn.concluding = True
            await _conclude(turn, stream, None)
            raise
        turn.concluding = True  # from here on the turn is settling: nobody cancels it
        try:
            closing = await _conclude(turn, stream, error)
        except ChatError as exc:  # the answer waits on disk (AnswerNotSaved)
            closing = "error", exc.as_dict()
        except Exception:  # never leave the client without a closing event
            log.exception("Settling a streamed turn failed")
            closing = "error", ChatError("internal").as_dict()
    queue.put_nowait(closing)
    queue.put_nowait(_END)


async def _conclude(turn: Turn, stream: llm.Stream | None, error: llm.ProviderError | None):
    """Settle a streamed turn: its closing event, or None when the client went away."""
    if stream is not None and stream.result is None:
        await asyncio.shield(stream.close())
    if stream is not None and stream.result is not None and error is None:
        done = await _deliver(turn, stream.result)
        # The next message's worst case, for the page's estimate (the history grew).
        estimate = basis_for(next_history(turn, done.message.content))
        return "done", {**_done_event(done), "estimate": estimate}
    if stream is not None and stream.parts:
        partial = await _deliver(turn, stream.completion(), True, error)
        if error is None:
            return None
        return "error", {"error": error.message, "code": error.code, **_done_event(partial)}
    if error is None:
        await _settle(limits.settle, turn.reservation, error=NOT_ANSWERED)
        return None
    failure = await _settle(_fail, turn, error, stream.latency_ms if stream else None)
    return "error", failure.as_dict()


def _done_event(answer: Answer) -> dict:
    return {
        "budget": answer.budget,
        "conversation_id": str(answer.conversation.pk),
        "response": answer.message.content,
        "html": markdown_html(answer.message.content),  # what the page shows on reload
        "interrupted": answer.message.interrupted,
        "usage": answer.usage,
    }


def release_unstarted(turn: Turn) -> None:
    """Settle a streamed turn whose response was closed before its stream began."""
    if not turn.streaming:
        limits.settle(turn.reservation, error=NOT_ANSWERED)


@dataclass(frozen=True)
class BudgetView:
    """What the chat page shows of the user's money: left, when it resets, in which state."""

    budget: Decimal  # 0 = no cap
    spent: Decimal  # settled, and held by answers in flight
    left: Decimal | None
    resets_at: datetime
    least_message: Decimal  # the worst case of the shortest message, as reserve() holds it

    spend_state: str  # Spend.state: ok, near (from 80%) or over
    percent: Decimal | None  # Spend.percent: the figure every page shows

    @property
    def state(self) -> str:
        """The ledger's state, or empty when not even a short message fits any more."""
        if self.budget and self.left < self.least_message:
            return "empty"
        return self.spend_state

    def as_dict(self) -> dict:
        return {
            "budget": str(self.budget) if self.budget else None,
            "spent": usd_text(self.spent),
            "left": usd_text(self.left) if self.left is not None else None,
            "percent": float(self.percent) if self.percent is not None else None,
            "state": self.state,
            "resets_at": self.resets_at.isoformat(),
        }


def budget_view(user, account: UsageAccount | None = None) -> BudgetView:
    """The user's money this cycle, from the ledger (the same figures reserve() checks)."""
    account = account or UsageAccount.objects.for_user(user)
    return budget_view_of(limits.spend_for(account, cycle_for(account)))


def budget_view_of(spend: limits.Spend) -> BudgetView:
    """budget_view() from a Spend already read (with a settle, say)."""
    cycle = spend.cycle
    provider = llm.current_provider()
    try:
        least = limits.worst_case(provider.model, history(None, "?"), settings.OPENAI_MAX_TOKENS)
    except UnknownModelError:
        least = Decimal(0)
    return BudgetView(
        budget=spend.budget,
        spent=spend.settled_cost + spend.pending_cost,
        left=spend.budget_left,
        resets_at=cycle.end,
        least_message=least,
        spend_state=spend.state,
        percent=spend.percent,
    )


def estimate_basis(conversation: Conversation | None) -> dict | None:
    """What the page needs to show a message's worst case while it is typed, computed as
    reserve() computes it: input bound = history bound + the prompt's UTF-8 bytes, priced,
    times (1 + markup / 100), rounded half-up to 6 places."""
    return basis_for(history(conversation, ""))


def basis_for(messages: list[dict]) -> dict | None:
    """estimate_basis() for the messages a next prompt would be sent with."""
    model = llm.current_provider().model
    try:
        price = price_for(model)
    except UnknownModelError:
        return None
    base = limits.worst_case_input_tokens(messages)
    return {
        "base_tokens": base,
        "input_price": str(price.input_per_1m / 1_000_000),
        "output_cost": str(price.cost(0, 0, settings.OPENAI_MAX_TOKENS)),
        "markup_percent": str(settings.BILLING_MARKUP_PERCENT),
    }
