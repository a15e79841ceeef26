"""The one module that talks to the model provider.

Every call goes through PostHog's async OpenAI wrapper, which captures an
`$ai_generation` event with the user's id as distinct id. Each call has a hard
deadline (OPENAI_DEADLINE) that holds across the SDK's retries, its Retry-After
waits and every chunk of a stream. Failures become ProviderError with a message
fit for the user; the provider's own text (which can echo a masked key) only goes
to the log as an exception class and status.
https://platform.openai.com/docs/api-reference/chat/create
"""

import asyncio
import functools
import logging
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from urllib.parse import urlsplit
from uuid import UUID

import httpx2
import openai
import posthog
import pydantic
from django.conf import settings
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from posthog.ai.openai import AsyncOpenAI

from chat import demo
from chatusage import analytics
from chatusage.errors import ApiError
from usage.pricing import Price, TokenUsage

log = logging.getLogger(__name__)

MAX_RETRIES = 1  # inside a web request: one retry of a transient failure at most
# What a call to the SDK can raise besides our deadline: its own errors, a transport error
# mid-stream, and what a malformed answer makes the parsing raise.
SDK_FAILURES = (
    openai.OpenAIError,
    httpx2.HTTPError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
)


@dataclass(frozen=True)
class Provider:
    name: str  # recorded in the ledger and as $ai_provider
    model: str
    demo: bool


@dataclass
class Completion:
    text: str
    usage: TokenUsage | None
    latency_ms: int
    http_status: int = 200
    finish_reason: str | None = None


class ProviderError(ApiError):
    """A failed model call: its code (chatusage/errors.py gives the status and the text the
    user reads) and the provider's HTTP status, if it answered."""

    def __init__(self, code: str, http_status: int | None = None, **details):
        super().__init__(code, details)
        self.http_status = http_status


def current_provider() -> Provider:
    if not settings.OPENAI_API_KEY:
        return Provider("demo", settings.DEMO_MODEL, demo=True)
    if settings.OPENAI_BASE_URL:
        host = urlsplit(settings.OPENAI_BASE_URL).hostname or "openai-compatible"
        return Provider(host, settings.OPENAI_MODEL, demo=False)
    return Provider("openai", settings.OPENAI_MODEL, demo=False)


def deadline() -> float:
    """The monotonic time by which a call starting now must be over."""
    return time.monotonic() + settings.OPENAI_DEADLINE


class Client(AsyncOpenAI):
    """PostHog's wrapped client, building the SDK's chat answers with pydantic's validator.

    The SDK builds each answer, and each chunk of a stream, with a lenient constructor of
    its own written in Python: about 130 µs a chunk here, 4 ms of a 30-chunk streamed turn.
    An answer or chunk exactly of its declared shape (every value of its field's type, no
    field the SDK does not know) comes out of pydantic's compiled validator as the same
    objects in about 9 µs: one pass checks the shape (unknown fields refused), a second
    builds the objects as the SDK's models keep them (with their empty `model_extra`).
    Anything else (a provider's own field, a finish reason the SDK does not list) fails the
    check and goes the SDK's way, as before.
    """

    def _process_response_data(self, *, data, cast_to, response):
        if cast_to in _CHAT_TYPES and type(data) is dict and not self._strict_response_validation:
            try:
                cast_to.model_validate(data, strict=True, extra="forbid")
            except pydantic.ValidationError:
                pass
            else:
                return cast_to.model_validate(data, strict=True)
        return super()._process_response_data(data=data, cast_to=cast_to, response=response)


_CHAT_TYPES = frozenset({ChatCompletion, ChatCompletionChunk})


# One wrapped client per event loop: an async HTTP connection pool belongs to the loop it
# was opened on. Under uvicorn a worker has one loop, so one client; a dev server or a test
# that runs each request on a new loop gets a fresh one instead of a pool from a dead loop.
_lock = threading.Lock()
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Client]" = (
    weakref.WeakKeyDictionary()
)
_http_client: httpx2.AsyncClient | None = None  # set by tests and benchmarks to mock OpenAI


def _build_client() -> Client:
    provider = current_provider()
    options = {
        "posthog_client": analytics.client(),
        # Each connect or read; the whole call is bounded by the deadline on top.
        "timeout": min(settings.OPENAI_TIMEOUT, settings.OPENAI_DEADLINE),
        "max_retries": MAX_RETRIES,
    }
    if provider.demo:
        options.update(api_key="demo", base_url=demo.DEMO_BASE_URL)
        options["http_client"] = _http_client or demo.http_client()
    else:
        options["api_key"] = settings.OPENAI_API_KEY
        if settings.OPENAI_BASE_URL:
            options["base_url"] = settings.OPENAI_BASE_URL
        if _http_client is not None:
            options["http_client"] = _http_client
    return Client(**options)


@functools.cache
def load_sdk() -> None:
    """Import what building a wrapped client imports (about 0.7 s of the SDK's modules),
    keeping no client: gunicorn's master does this before it forks the workers, so no
    worker's first chat waits for it and the workers share those modules' memory. Nothing
    here starts a thread or opens a connection (a disabled capture client, no request)."""
    Client(
        posthog_client=posthog.Posthog("unused", disabled=True, send=False),
        api_key="unused",
        base_url=demo.DEMO_BASE_URL,
    )


def client() -> Client:
    loop = asyncio.get_running_loop()
    with _lock:
        wrapped = _clients.get(loop)
        if wrapped is None:
            wrapped = _clients[loop] = _build_client()
        return wrapped


def use_http_client(http_client: httpx2.AsyncClient | None) -> None:
    """Send OpenAI's HTTP through `http_client` (an httpx2 MockTransport in tests), or stop."""
    global _http_client
    with _lock:
        _http_client = http_client
        _clients.clear()


def _drop_clients() -> None:
    with _lock:
        _clients.clear()


# A new capture client (settings changed) means new wrapped OpenAI clients too.
analytics.on_reset(_drop_clients)


def _call_options(
    provider: Provider,
    messages: list[dict],
    *,
    user_id: int,
    generation_id: UUID,
    conversation_id: UUID,
    price: Price,
    reserved_at: datetime,
    markup_percent: Decimal,
) -> dict:
    options = {
        "model": provider.model,
        **_messages_option(messages),
        "posthog_distinct_id": str(user_id),
        "posthog_trace_id": str(conversation_id),
        "posthog_privacy_mode": settings.POSTHOG_PRIVACY_MODE,
        "posthog_properties": {
            "generation_id": str(generation_id),
            "conversation_id": str(conversation_id),
            # The event is dated when the call was reserved (chatusage.analytics): PostHog's
            # report then puts it in the same cycle and day as the ledger does.
            analytics.RESERVED_AT: reserved_at.isoformat(),
            # The user's charge is cost x (1 + this / 100): PostHog's report computes it.
            analytics.MARKUP_PERCENT: float(markup_percent),
            **price.posthog_properties(),
        },
    }
    if provider.name != "openai":
        options["posthog_provider_override"] = provider.name
    # OpenAI's own API wants max_completion_tokens (reasoning models refuse max_tokens);
    # OpenAI-compatible servers (Ollama, vLLM) still read max_tokens.
    if provider.name == "openai":
        options["max_completion_tokens"] = settings.OPENAI_MAX_TOKENS
    else:
        options["max_tokens"] = settings.OPENAI_MAX_TOKENS
    return options


def _messages_option(messages: list[dict]) -> dict:
    """How the messages go to the SDK.

    Before sending, the SDK walks every message against each of its six message types
    (about 0.28 ms a message here: most of a long conversation's call), and PostHog's wrapper
    copies them for $ai_input. Ours are role and content strings, already what the API
    takes, so with privacy mode on (no $ai_input) they go in `extra_body`, which the SDK
    sends as it is: the same request body, the same event. With privacy mode off the
    wrapper needs them as `messages`, and they go that way.
    """
    if settings.POSTHOG_PRIVACY_MODE:
        return {"messages": [], "extra_body": {"messages": messages}}
    return {"messages": messages}


_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Model output as storable text: lone surrogates (no UTF-8 form) become U+FFFD.

    A provider can send them as JSON escapes; the database and the browser cannot take
    them, and the answer is billed either way, so it must be saved.
    """
    return _SURROGATES.sub("\ufffd", text)


def _usage(raw) -> TokenUsage | None:
    if raw is None or raw.prompt_tokens is None or raw.completion_tokens is None:
        return None
    details = getattr(raw, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0
    return TokenUsage(raw.prompt_tokens, cached, raw.completion_tokens)


def deadline_error() -> ProviderError:
    log.warning("Model call stopped at its deadline (%ss)", settings.OPENAI_DEADLINE)
    return ProviderError("deadline_exceeded", seconds=settings.OPENAI_DEADLINE)


# No token of any OpenAI tokenizer is longer than this many characters: an answer longer than
# max_tokens of them is more than the provider may send (and more than was reserved).
MAX_CHARS_PER_TOKEN = 64


def max_answer_chars() -> int:
    return settings.OPENAI_MAX_TOKENS * MAX_CHARS_PER_TOKEN


def overflow_error() -> ProviderError:
    log.warning("Model stream cut: longer than OPENAI_MAX_TOKENS allows")
    return ProviderError("provider_overflow")


def _remaining(until: float) -> float:
    return until - time.monotonic()


def provider_error(exc: Exception, mid_stream: bool = False) -> ProviderError:
    """Map an OpenAI SDK (or parsing) failure onto what we tell the user."""
    status = getattr(exc, "status_code", None)
    # An AttributeError, KeyError, TypeError or IndexError is an answer of a shape nobody
    # expected, or a fault of ours: its traceback says which. (Their messages name a key or
    # a type; a ValueError's, pydantic's among them, can quote the answer: not logged.)
    unexpected = not isinstance(exc, openai.OpenAIError | httpx2.HTTPError | ValueError)
    log.warning(
        "Model provider call failed: %s (HTTP %s)",
        type(exc).__name__,
        status,
        exc_info=unexpected,
    )
    if mid_stream and isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        return ProviderError("provider_disconnected")
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError("provider_timeout")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError("provider_unreachable")
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ProviderError("provider_auth", http_status=status)
    if isinstance(exc, openai.RateLimitError):
        return ProviderError("provider_rate_limited", http_status=status)
    if isinstance(exc, openai.BadRequestError | openai.NotFoundError):
        return ProviderError("provider_rejected", http_status=status)
    if isinstance(exc, openai.APIStatusError):
        return ProviderError("provider_error", http_status=status)
    return ProviderError("provider_bad_response")


async def _create(messages: list[dict], until: float, context: dict, **extra):
    """Send one chat completion through PostHog's wrapper, by `until` whatever happens:
    (the SDK's answer, the monotonic time it was sent)."""
    options = _call_options(current_provider(), messages, **context)
    started = time.monotonic()
    try:
        async with asyncio.timeout(_remaining(until)):
            return await client().chat.completions.create(**extra, **options), started
    except TimeoutError as exc:
        raise deadline_error() from exc
    except SDK_FAILURES as exc:
        raise provider_error(exc) from exc


async def complete(messages: list[dict], *, until: float, **context) -> Completion:
    """One non-streaming chat completion, over by `until` (monotonic) whatever happens."""
    response, started = await _create(messages, until, context)
    try:
        choice = response.choices[0]
        text = clean_text(choice.message.content or "")
        usage = _usage(response.usage)
    except SDK_FAILURES as exc:
        raise provider_error(exc) from exc
    return Completion(
        text=text,
        usage=usage,
        latency_ms=round((time.monotonic() - started) * 1000),
        finish_reason=choice.finish_reason,
    )


@dataclass
class Stream:
    """Text deltas of a streamed completion (`async for`); `result` once it is exhausted.

    Each wait for the next chunk is bounded by what is left of the call's deadline.
    """

    _stream: object
    _started: float
    _until: float
    max_chars: int  # more than max_tokens can make: the provider is not keeping to it
    parts: list[str] = field(default_factory=list)
    size: int = 0  # characters received
    usage: TokenUsage | None = None
    finish_reason: str | None = None
    result: Completion | None = None

    def __aiter__(self) -> "Stream":
        return self

    async def __anext__(self) -> str:
        while True:
            # A chunk already buffered arrives without waiting, so the timeout below would
            # never strike while a provider floods us: check the deadline itself first.
            if _remaining(self._until) <= 0:
                raise deadline_error()
            try:
                async with asyncio.timeout(_remaining(self._until)):
                    chunk = await anext(self._stream)
            except StopAsyncIteration:
                self.result = self.completion()
                raise
            except TimeoutError as exc:
                raise deadline_error() from exc
            except SDK_FAILURES as exc:
                raise provider_error(exc, mid_stream=True) from exc
            if chunk.usage is not None:
                self.usage = _usage(chunk.usage)
            delta = ""
            for choice in chunk.choices or []:
                if choice.finish_reason:
                    self.finish_reason = choice.finish_reason
                delta += (choice.delta.content if choice.delta else None) or ""
            delta = clean_text(delta)
            if delta:
                self.parts.append(delta)
                self.size += len(delta)
                if self.size > self.max_chars:
                    raise overflow_error()
                return delta

    def completion(self) -> Completion:
        """What has arrived so far (all of it once the stream is exhausted)."""
        return Completion(
            text=self.text,
            usage=self.usage,
            latency_ms=self.latency_ms,
            finish_reason=self.finish_reason,
        )

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def latency_ms(self) -> int:
        return round((time.monotonic() - self._started) * 1000)

    async def close(self) -> None:
        """Stop early: the wrapper then captures its event (without token counts)."""
        try:
            await self._stream.close()
        except Exception:  # the provider connection may already be broken; nothing to keep
            log.debug("Closing a model stream failed", exc_info=True)


async def stream(messages: list[dict], *, until: float, **context) -> Stream:
    """A streaming chat completion; the wrapper asks for the final usage chunk itself."""
    raw, started = await _create(messages, until, context, stream=True)
    return Stream(raw, started, until, max_answer_chars())
