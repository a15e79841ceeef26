"""The cast (alice, bob, outsider, staff) and the mocks for OpenAI and PostHog.

OpenAI is mocked with an httpx2 MockTransport handed to the real (PostHog-wrapped)
client; PostHog with `responses`, which fails any request nobody expected.
"""

import gzip
import importlib
import json
import sys
import types
from collections.abc import Callable
from decimal import Decimal

import httpx2
import pytest
import requests
import responses
from asgiref.sync import async_to_sync
from django.core.cache import cache
from django.test import Client

from chat import demo, llm
from chatusage import analytics, views
from usage import pricing

PASSWORD = "a-Long-unusual-pass-2026"
POSTHOG_HOST = "https://ph.example.test"
POSTHOG_API_HOST = "https://app.ph.example.test"


@pytest.fixture(autouse=True)
def _isolation(settings):
    """No test reaches a real network or another test's cached state."""
    settings.POSTHOG_API_KEY = ""
    settings.POSTHOG_PROJECT_ID = ""
    settings.POSTHOG_PERSONAL_API_KEY = ""
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.DEMO_STREAM_DELAY = 0
    settings.CHAT_RATE_LIMIT = "1000/60"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast
    # Production uses whitenoise's manifest storage, which needs collectstatic first.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    cache.clear()
    pricing.clear_cache()
    analytics.reset(flush=False)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
        analytics.reset(flush=True)  # drain queued events while `responses` still answers
        # An HTTP request nobody registered fails the test: the code under test may catch
        # the ConnectionError `responses` raises and fall back silently (to the ledger, say).
        unexpected = [
            call.request.url
            for call in mock.calls
            if isinstance(call.response, requests.ConnectionError)
            and "Connection refused by Responses" in str(call.response)
        ]
        assert not unexpected, f"unexpected HTTP requests: {unexpected}"
    llm.use_http_client(None)
    views.close_health_connection()  # or the test database could not be dropped
    cache.clear()


@pytest.fixture(autouse=True)
def _price_table(request):
    """The price table a migration seeds, present in every database test.

    A transactional test (the PostgreSQL race, the browser tests) ends with a flush that
    empties every table, and xdist may run another test after it on the same database.
    """
    uses_db = request.node.get_closest_marker("django_db") or {
        "db",
        "transactional_db",
        "live_server",
    } & set(request.fixturenames)
    if uses_db:
        request.getfixturevalue("db")
        from django.apps import apps

        seed = importlib.import_module("usage.migrations.0002_seed_prices")
        seed.seed_prices(apps, None)


@pytest.fixture
def requests_mock(_isolation) -> responses.RequestsMock:
    """`responses` in strict mode: an unregistered URL raises ConnectionError."""
    return _isolation


def _make_user(django_user_model, username, **extra):
    return django_user_model.objects.create_user(
        username=username, email=f"{username}@example.com", password=PASSWORD, **extra
    )


@pytest.fixture
def alice(db, django_user_model):
    return _make_user(django_user_model, "alice")


@pytest.fixture
def bob(db, django_user_model):
    return _make_user(django_user_model, "bob")


@pytest.fixture
def outsider(db, django_user_model):
    return _make_user(django_user_model, "outsider")


@pytest.fixture
def staff(db, django_user_model):
    return _make_user(django_user_model, "staff", is_staff=True, is_superuser=True)


@pytest.fixture
def alice_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def staff_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def dollar_model(db):
    """Input is free, output costs $0.01 a token: 100 max tokens = exactly $1.00 worst case."""
    from usage.models import ModelPrice

    ModelPrice.objects.create(
        model="dollar-model", input_per_1m=0, cached_input_per_1m=0, output_per_1m=10_000
    )
    return "dollar-model"


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
    """Settled spend today, as the daily rollups record it."""
    from django.utils import timezone

    from usage.cycles import local_day
    from usage.models import DailyUsage

    DailyUsage.objects.create(
        user=user, day=local_day(timezone.now()), model=model, generations=1, cost=Decimal(amount)
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


@pytest.fixture
def openai_mock(settings) -> OpenAIMock:
    """The real OpenAI SDK with PostHog's wrapper, over an httpx2 MockTransport."""
    settings.OPENAI_API_KEY = "sk-test-not-a-real-key"
    settings.OPENAI_MODEL = "gpt-4o-mini"
    mock = OpenAIMock()
    llm.use_http_client(httpx2.AsyncClient(transport=httpx2.MockTransport(mock)))  # survives resets
    return mock


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


@pytest.fixture
def posthog_capture(settings, requests_mock) -> CapturedEvents:
    """PostHog capture on, its /batch/ endpoint answered by `responses`."""
    settings.POSTHOG_API_KEY = "phc_test_project_token"
    settings.POSTHOG_HOST = POSTHOG_HOST
    analytics.reset(flush=False)
    requests_mock.add(responses.POST, f"{POSTHOG_HOST}/batch/", json={"status": 1})
    return CapturedEvents(requests_mock)


@pytest.fixture
def posthog_query(settings, requests_mock):
    """PostHog's query API configured; tests register its answers on requests_mock."""
    settings.POSTHOG_PROJECT_ID = "4242"
    settings.POSTHOG_PERSONAL_API_KEY = "phx_personal_secret_key"
    settings.POSTHOG_API_HOST = POSTHOG_API_HOST
    return f"{POSTHOG_API_HOST}/api/projects/4242/query/"


# --- HogQL checked with PostHog's own parser ---------------------------------


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


@pytest.fixture
def hogql_check():
    return check_hogql
