"""Every error the JSON endpoints answer: its code, its HTTP status and what the user reads,
in one table. Code raises and answers by code (ApiError("rate_limited", wait=30)); nothing
else writes these texts. A text is a format string, filled from the raise's `details`.

Errors on the JSON endpoints are JSON: {"error": <text>, "code": <code>, ...extra}.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    status: int
    text: str


CATALOGUE: dict[str, Entry] = {
    # The request itself (400, 401, 403, 404, 405, 408, 413)
    "invalid_json": Entry(400, "{detail}"),
    "invalid_prompt": Entry(400, "{detail}"),
    "empty_prompt": Entry(400, "Write a message first."),
    "prompt_too_long": Entry(
        400, "Messages are limited to {limit:,} characters (this one has {length:,})."
    ),
    "invalid_conversation_id": Entry(400, "conversation_id must be a string."),
    "invalid_stream": Entry(400, "stream must be true or false."),
    "invalid_cycle": Entry(400, "{detail}"),
    "not_authenticated": Entry(401, "Log in first."),
    "csrf_failed": Entry(
        403, "CSRF check failed: send the csrftoken cookie's value as X-CSRFToken."
    ),
    "not_found": Entry(404, "Not found."),
    "method_not_allowed": Entry(405, "{detail}"),
    "body_timeout": Entry(408, "The request body did not arrive in time."),
    "body_too_large": Entry(413, "The request body is too large."),
    # The account and its money (402, 403, 429)
    "insufficient_credits": Entry(402, "{detail}"),
    "email_not_verified": Entry(403, "{detail}"),
    "account_blocked": Entry(403, "{detail}"),
    "usage_limit_reached": Entry(429, "{detail}"),
    # A new chat would fit: start one (nothing resets, so no Retry-After).
    "conversation_too_long": Entry(429, "{detail}"),
    "rate_limited": Entry(429, "Too many messages in a short time. Try again in {wait} seconds."),
    # The model provider (502, 503, 504): the message is kept and can be sent again
    "model_not_priced": Entry(503, "{detail}"),
    "provider_disconnected": Entry(
        502, "The connection to the model provider broke off mid-answer. Please try again."
    ),
    "provider_timeout": Entry(504, "The model did not answer in time. Please try again."),
    "provider_unreachable": Entry(
        502, "The model provider could not be reached. Please try again."
    ),
    "provider_auth": Entry(
        502,
        "The model provider refused this server's credentials. An administrator must fix "
        "the API key; your message was kept.",
    ),
    "provider_rate_limited": Entry(
        502, "The model provider is over capacity or out of quota. Please try again shortly."
    ),
    "provider_rejected": Entry(
        502, "The model provider rejected the request (check the configured model)."
    ),
    "provider_error": Entry(502, "The model provider failed to answer. Please try again."),
    "provider_bad_response": Entry(
        502, "The model provider sent a response that could not be read."
    ),
    "provider_overflow": Entry(
        502, "The model sent more than one answer may hold, so it was cut there."
    ),
    "deadline_exceeded": Entry(
        504,
        "The model took longer than {seconds:g} seconds, the limit for one answer, and was "
        "stopped.",
    ),
    # Ours (500, 503)
    "answer_not_saved": Entry(
        503,
        "Your answer arrived, but it could not be saved: the database is unavailable. It is "
        "kept, and will appear in this conversation (and in your usage) shortly.",
    ),
    "internal": Entry(500, "Something went wrong on our side."),
    "server_error": Entry(500, "Internal error."),
}


def text(code: str, **details) -> str:
    return CATALOGUE[code].text.format(**details)


def status(code: str) -> int:
    return CATALOGUE[code].status


def body(code: str, details: dict | None = None, **extra) -> dict:
    """The JSON body of an error: {"error", "code", ...extra}."""
    return {"error": text(code, **(details or {})), "code": code, **extra}


class ApiError(Exception):
    """An error to answer by its code; `extra` goes into the JSON body beside it."""

    def __init__(self, code: str, details: dict | None = None, retry_after=None, **extra):
        self.code = code
        self.details = details or {}
        self.status = status(code)
        self.message = text(code, **self.details)
        self.retry_after = retry_after  # seconds, for the Retry-After header of a 429
        self.extra = extra
        super().__init__(self.message)

    def as_dict(self) -> dict:
        return {"error": self.message, "code": self.code, **self.extra}
