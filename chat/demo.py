"""The offline demo model: an httpx2 transport that speaks OpenAI's chat-completions wire format.

With no OPENAI_API_KEY the real OpenAI client (wrapped by PostHog) is pointed at
this transport, so the wrapper, the ledger and the dashboard run exactly as in
production: same request, same JSON, same server-sent events, same `usage`
block (including the final usage chunk of a stream), just no network.
"""

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx2
from django.conf import settings

DEMO_BASE_URL = "http://demo.chatusage.invalid/v1"

_TEMPLATE = (
    "This is the offline demo model, answering because no OpenAI API key is configured. "
    "You wrote {words} words, starting with “{opening}”. "
    "In production this reply would come from {model}. Everything around it is real: "
    "the call went through PostHog's OpenAI wrapper with your user id as the distinct id, "
    "your budget held the worst-case cost before the call, and the ledger now records "
    "the actual tokens and cost of this answer. Open the Usage page to see it."
)


def _tokens(text: str) -> int:
    """About four bytes a token, as OpenAI's tokenizers average on English."""
    return max(1, math.ceil(len(text.encode()) / 4))


_CODE_ANSWER = """Here is a small example in Python (from the offline demo model):

```python
def price(tokens: int, per_million: float) -> float:
    \"\"\"What a number of tokens costs at a price per million.\"\"\"
    return tokens * per_million / 1_000_000


print(f"${price(1_200, 0.60):.6f}")
```

The ledger computes every answer's cost this way, with Decimal instead of float."""

_LIST_ANSWER = """What happens to each message you send:

1. **Reserve**: the worst case this answer could cost is held from your budget.
2. **Call**: the model answers through PostHog's wrapper, which records an `$ai_generation` event.
3. **Settle**: the real tokens are priced and the hold is released.

- Failed calls cost nothing.
- An answer cut short is billed for what arrived, flagged as an estimate."""

_TABLE_ANSWER = """Prices of a few models per million tokens (USD):

| model | input | cached input | output |
|:--|--:|--:|--:|
| gpt-4o-mini | 0.15 | 0.075 | 0.60 |
| gpt-4o | 2.50 | 1.25 | 10.00 |
| gpt-4.1-mini | 0.40 | 0.10 | 1.60 |

Your Usage page shows what you spent, per day and per model."""


def demo_answer(messages: list[dict]) -> str:
    """A fixed answer that shows what the product does; markdown when the prompt asks for
    code, a list or a table, so a newcomer sees how answers render."""
    prompt = next(
        (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    lowered = prompt.lower()
    if any(word in lowered for word in ("code", "python", "function", "script")):
        return _CODE_ANSWER
    if "table" in lowered or "price" in lowered:
        return _TABLE_ANSWER
    if "list" in lowered or "steps" in lowered or "how does" in lowered:
        return _LIST_ANSWER
    words = prompt.split()
    opening = " ".join(words[:8]) + ("…" if len(words) > 8 else "")
    return _TEMPLATE.format(words=len(words), opening=opening, model=settings.OPENAI_MODEL)


def cap_answer(answer: str, max_tokens: int | None) -> tuple[str, int, str]:
    """Cut the answer at max_tokens as OpenAI does: (text, completion tokens, finish reason)."""
    tokens = _tokens(answer)
    if not max_tokens or tokens <= max_tokens:
        return answer, tokens, "stop"
    return answer.encode()[: max_tokens * 4].decode(errors="ignore"), max_tokens, "length"


def demo_usage(messages: list[dict], completion_tokens: int) -> dict:
    per_message = [_tokens(str(m.get("content", ""))) + 4 for m in messages]
    prompt_tokens = sum(per_message) + 3
    # OpenAI caches a repeated prefix of 1024+ tokens in steps of 128: the history is that prefix.
    history = sum(per_message[:-1])
    cached = (history // 128) * 128 if history >= 1024 else 0
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _chunk(completion_id: str, model: str, created: int, delta: dict, finish=None, usage=None):
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n".encode()


def _split(answer: str, pieces: int | None) -> list[str]:
    """The answer one word a piece, or in `pieces` pieces of about as many words each."""
    words = [word + " " for word in answer.split(" ")]
    words[-1] = words[-1][:-1]
    if not pieces or pieces >= len(words):
        return words
    size = math.ceil(len(words) / pieces)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def stream_chunks(completion_id, model, created, answer, finish, usage, include_usage, pieces=None):
    """The server-sent event frames of a streamed answer, a word (or `pieces` pieces) a frame."""
    yield _chunk(completion_id, model, created, {"role": "assistant", "content": ""})
    for text in _split(answer, pieces):
        yield _chunk(completion_id, model, created, {"content": text})
    yield _chunk(completion_id, model, created, {}, finish=finish)
    if include_usage:
        yield _chunk(completion_id, model, created, {}, usage=usage)
    yield b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Reply:
    """What the demo model answers to one request: a JSON body, or stream frames."""

    status: int
    json: dict | None = None
    frames: list[bytes] | None = None


def reply(content: bytes, path: str = "/v1/chat/completions", pieces: int | None = None) -> Reply:
    """Answer one chat-completions request body in OpenAI's wire format."""
    if not path.endswith("/chat/completions"):
        return Reply(404, {"error": {"message": "Unknown endpoint"}})
    try:
        body = json.loads(content)
        messages = body["messages"]
    except (ValueError, KeyError, TypeError):
        return Reply(
            400, {"error": {"message": "Invalid JSON body", "type": "invalid_request_error"}}
        )
    model = body.get("model", settings.DEMO_MODEL)
    answer, completion_tokens, finish = cap_answer(
        demo_answer(messages), body.get("max_completion_tokens") or body.get("max_tokens")
    )
    usage = demo_usage(messages, completion_tokens)
    completion_id = f"chatcmpl-demo-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        frames = stream_chunks(
            completion_id, model, created, answer, finish, usage, include_usage, pieces
        )
        return Reply(200, frames=list(frames))
    return Reply(
        200,
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": usage,
        },
    )


async def _paced(frames: list[bytes], delay: float) -> AsyncIterator[bytes]:
    for index, frame in enumerate(frames):
        if delay and 0 < index < len(frames) - 1:
            await asyncio.sleep(delay)  # a word at a time, as a real model streams
        yield frame


async def handle(request: httpx2.Request) -> httpx2.Response:
    """The async MockTransport handler the demo client (and the tests) use."""
    answer = reply(request.content, request.url.path)
    if answer.frames is not None:
        return httpx2.Response(
            answer.status,
            headers={"content-type": "text/event-stream"},
            content=_paced(answer.frames, settings.DEMO_STREAM_DELAY),
        )
    return httpx2.Response(answer.status, json=answer.json)


def http_client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.MockTransport(handle))
