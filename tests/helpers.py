"""What the tests share: the cast's password, the budget and ledger helpers, the mocks of
OpenAI and PostHog's capture, the chat API's client helpers, and PostHog's own HogQL
parser. Fixtures are in conftest.py; test modules import from here, never from each other.
"""

import gzip
import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx2
import responses
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import Client, RequestFactory

from chat import demo, views
from chatusage import analytics
from chatusage.sessions import SessionStore

PASSWORD = "a-Long-unusual-pass-2026"


POSTHOG_HOST = "https://ph.example.test"


POSTHOG_API_HOST = "https://app.ph.example.test"


def streamed(response) -> bytes:
    """A streamed response's whole body, whether its content is sync or async."""
    content = response.streaming_content
    if hasattr(content, "__aiter__"):

        async def read():
            return b"".join([chunk async for chunk in content])

        return async_to_sync(read)()
    return b"".join(content)


def set_budget(user, budget, message_limit=None):
    account = user.usage_account
    account.budget_usd = Decimal(budget) if budget is not None else None
    account.message_limit = message_limit
    account.save()


def settled_today(user, amount, model="gpt-4o-mini"):
    """Settled spend today (what the user was charged; no markup), as the rollups record it."""
    from django.utils import timezone

    from usage.cycles import local_day
    from usage.models import DailyUsage

    DailyUsage.objects.create(
        user=user,
        day=local_day(timezone.now()),
        model=model,
        generations=1,
        cost=Decimal(amount),
        charge=Decimal(amount),
    )


def hold_budget(user, amount, model="gpt-4o-mini"):
    """A call in flight: a pending ledger row holding `amount` of the user's budget."""
    from usage.models import Generation

    return Generation.objects.create(
        user=user,
        model=model,
        provider="test",
        status="pending",
        reserved_cost=Decimal(amount),
        price_input_per_1m=0,
        price_cached_input_per_1m=0,
        price_output_per_1m=0,
    )


class OpenAIMock:
    """Records every request to the model and answers with `handler` (default: the demo)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.handler: Callable = demo.handle  # sync or async, as httpx2's MockTransport takes

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(json.loads(request.content))
        return self.handler(request)

    def answer(self, status=200, body=None, content=None, headers=None):
        def handler(request):
            if content is not None:
                return httpx2.Response(status, content=content, headers=headers or {})
            return httpx2.Response(status, json=body, headers=headers or {})

        self.handler = handler

    def raise_(self, exc: Exception):
        def handler(request):
            raise exc

        self.handler = handler


def batched_events(mock: responses.RequestsMock) -> list[dict]:
    """Every event the capture client posted to PostHog's /batch/ (gzipped or not)."""
    events = []
    for call in mock.calls:
        if call.request.url.startswith(f"{POSTHOG_HOST}/batch"):
            body = call.request.body
            if isinstance(body, bytes) and body[:2] == b"\x1f\x8b":
                body = gzip.decompress(body)
            events.extend(json.loads(body)["batch"])
    return events


class CapturedEvents:
    def __init__(self, mock: responses.RequestsMock):
        self._mock = mock

    def all(self) -> list[dict]:
        analytics.client().flush()
        return batched_events(self._mock)

    def generations(self) -> list[dict]:
        return [e for e in self.all() if e["event"] == "$ai_generation"]


def _load_hogql_parser():
    # The parser's extension imports posthog.hogql.* at load time; the SDK has none.
    for name in (
        "posthog.hogql",
        "posthog.hogql.ast",
        "posthog.hogql.base",
        "posthog.hogql.errors",
    ):
        sys.modules.setdefault(name, types.ModuleType(name))
    import hogql_parser

    return hogql_parser


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def check_hogql(query: str, values: dict, config_keys=("time_zone",)) -> dict:
    """Parse with hogql-parser; every input must be a placeholder, none spliced into the text.

    `config_keys` are settings (not user input) whose value may also occur as a literal.
    """
    parser = _load_hogql_parser()
    ast = json.loads(parser.parse_select_json(query))
    assert not ast.get("error"), f"HogQL syntax error: {ast.get('message')}"
    placeholders = {
        ".".join(n["expr"]["chain"]) for n in _walk(ast) if n.get("node") == "Placeholder"
    }
    assert placeholders == set(values), (placeholders, set(values))
    constants = [n.get("value") for n in _walk(ast) if n.get("node") == "Constant"]
    for key, value in values.items():
        if key not in config_keys:
            assert value not in constants, f"{key} appears as a literal"
            if isinstance(value, str) and len(value) > 3:
                assert value not in query, f"{key} was spliced into the text"
    assert ast.get("limit") is not None, "every query needs a LIMIT"
    return ast


API = "/api/chat/"


OPENAI_COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1764000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris is the capital of France."},
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 2000,
        "completion_tokens": 9,
        "total_tokens": 2009,
        "prompt_tokens_details": {"cached_tokens": 1024},
    },
}


def post(client, body, **extra):
    return client.post(API, json.dumps(body), content_type="application/json", **extra)


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def sse_events(response) -> list[tuple[str, dict]]:
    """Read a streamed answer to its end, as the ASGI server does (async iteration)."""

    async def read():
        return b"".join([part async for part in response])

    return parse_sse(async_to_sync(read)().decode())


def api_request(user, body: dict):
    """A POST to /api/chat/ by `user` (logged in, with a session), past the middleware."""
    client = Client()
    client.force_login(user)
    request = RequestFactory().post(API, json.dumps(body), content_type="application/json")
    request.session = SessionStore(client.cookies[settings.SESSION_COOKIE_NAME].value)
    return request


async def stream_directly(user, prompt):
    """The streaming response as the ASGI handler gets it (no test-client wrapper around it)."""
    request = await sync_to_async(api_request)(user, {"prompt": prompt, "stream": True})
    return await views.api_chat(request)


def close_response(response) -> None:
    """The server closing a response it sent, with request_finished held back as Django's
    test client does, so it does not close the test's database connection."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


async def client_goes_away(response, parts=None):
    """What the ASGI handler does when the browser disconnects: close the body iterator it was
    reading, then the response.

    The request_finished signal is held back, as Django's test client does, so it does not
    close the test's database connection (a real server's connection is in autocommit).
    """
    if parts is not None:
        await parts.aclose()
    await sync_to_async(close_response)(response)


ROOT = Path(__file__).resolve().parent.parent


PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "x" * 60 + "-production-like-secret",
    "ALLOWED_HOSTS": "chat.example.com",
    "PATH": os.environ["PATH"],
}


def manage(*args, env):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


README = ROOT / "README.md"


def documented_verify():
    """The signature check exactly as README.md shows it."""
    text = README.read_text()
    code = re.search(r"<!-- signature-snippet -->\s*```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - our own README's snippet, under test
    return namespace["verify"]


def stripe_signature(body: bytes, secret: str, at: float | None = None) -> str:
    """A Stripe-Signature header made the way Stripe makes it (not with the code under test):
    `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    import hashlib
    import hmac
    import time

    timestamp = int(at if at is not None else time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def stripe_event(kind: str, obj: dict, event_id: str = "evt_1") -> dict:
    return {"id": event_id, "object": "event", "type": kind, "data": {"object": obj}}


def checkout_session(user_id, cents=1000, paid=True, session_id="cs_test_1") -> dict:
    """A Checkout Session as Stripe's webhook carries it, for a top-up by `user_id`."""
    return {
        "id": session_id,
        "object": "checkout.session",
        "mode": "payment",
        "currency": "usd",
        "amount_total": cents,
        "payment_status": "paid" if paid else "unpaid",
        "client_reference_id": str(user_id),
        "metadata": {"chatusage_user_id": str(user_id)},
    }
