"""The cast (alice, bob, outsider, staff) and the mocks for OpenAI and PostHog.

OpenAI is mocked with an httpx2 MockTransport handed to the real (PostHog-wrapped)
client; PostHog with `responses`, which fails any request nobody expected.
"""

import importlib

import httpx2
import pytest
import requests
import responses
from django.core.cache import cache
from django.test import Client

from chat import llm
from chatusage import analytics, views
from tests.helpers import (
    PASSWORD,
    POSTHOG_API_HOST,
    POSTHOG_HOST,
    CapturedEvents,
    OpenAIMock,
    check_hogql,
)
from usage import pricing


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
def _steady_rate_windows(monkeypatch):
    """The rate limits' clock (chatusage/ratelimit.py, fixed windows) stands still in the
    middle of an hour and of a minute: a test's requests could otherwise straddle a
    window's end and find the limit reset halfway (a test of 30 requests did, in CI)."""
    import time
    from types import SimpleNamespace

    from chatusage import ratelimit

    now = time.time()
    still = now - now % 3600 + 1830
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: still))


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


@pytest.fixture
def openai_mock(settings) -> OpenAIMock:
    """The real OpenAI SDK with PostHog's wrapper, over an httpx2 MockTransport."""
    settings.OPENAI_API_KEY = "sk-test-not-a-real-key"
    settings.OPENAI_MODEL = "gpt-4o-mini"
    mock = OpenAIMock()
    llm.use_http_client(httpx2.AsyncClient(transport=httpx2.MockTransport(mock)))  # survives resets
    return mock


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


@pytest.fixture
def hogql_check():
    return check_hogql
