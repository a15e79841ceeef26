"""The usage report against a real PostHog query API on the loopback: a slow or trickling
PostHog never holds a page past the query timeout, and cold pages at once ask it once."""

import threading
import time

import pytest
import requests
from django.test import Client

from tests.e2e.harness.servers import FakePostHogQuery
from tests.helpers import check_hogql
from usage import reports

pytestmark = pytest.mark.e2e


@pytest.fixture
def posthog(settings):
    server = FakePostHogQuery()
    settings.POSTHOG_API_HOST = server.url
    settings.POSTHOG_PROJECT_ID = "4242"
    settings.POSTHOG_PERSONAL_API_KEY = "phx_personal_secret_key"
    yield server
    server.stop()
    for query in server.queries:
        check_hogql(query["query"], query["values"])


def test_a_trickling_posthog_never_holds_the_usage_page_past_the_query_timeout(
    alice_client, posthog, settings
):
    # Each byte comes well within the read timeout, the whole answer would take seconds.
    settings.POSTHOG_QUERY_TIMEOUT = (0.5, 1.0)
    posthog.mode, posthog.delay = "drip", 0.05
    started = time.monotonic()
    report = alice_client.get("/api/usage/").json()
    assert time.monotonic() - started < 1.5 + 0.75
    assert (report["source"], report["note"]) == ("ledger", reports.LEDGER_NOTE)
    assert len(posthog.queries) == 1


def test_a_posthog_slow_to_answer_is_cut_at_the_query_timeout(alice_client, posthog, settings):
    settings.POSTHOG_QUERY_TIMEOUT = (0.5, 1.0)
    posthog.mode, posthog.delay = "slow", 5.0
    started = time.monotonic()
    report = alice_client.get("/api/usage/").json()
    assert time.monotonic() - started < 1.5 + 0.75
    assert report["source"] == "ledger"


def test_queries_reuse_their_connection_to_posthog(posthog):
    """A new TLS handshake per query would cost PostHog's cloud a round trip or three."""
    from datetime import date

    from usage import hogql
    from usage.cycles import cycle_containing

    posthog.results = [["2026-11-02", "gpt-4o-mini", False, 3, 300, 0, 90, 0.0001]]
    values = reports.query_values(42, cycle_containing(1, date(2026, 11, 2)))
    for _ in range(3):
        result = hogql.run(reports.USAGE_QUERY, values, "usage")
        assert result.rows[0]["generations"] == 3
    assert (len(posthog.queries), posthog.connections) == (3, 1)


@pytest.mark.django_db(transaction=True)
def test_cold_pages_at_once_ask_posthog_once(asgi_server, alice, posthog):
    """Eight tabs open /usage/ at the same moment, nothing cached: one query reaches PostHog;
    the others read the ledger meanwhile, and the next page reads PostHog's cached answer."""
    posthog.mode, posthog.delay = "slow", 1.0
    posthog.results = [["2026-11-02", "gpt-4o-mini", False, 3, 300, 0, 90, 0.0001]]
    client = Client()
    client.force_login(alice)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    barrier = threading.Barrier(8)
    answers = []

    def open_tab():
        barrier.wait(timeout=10)
        response = requests.get(f"{asgi_server}/api/usage/", cookies=cookies, timeout=30)
        answers.append((response.status_code, response.json()["source"]))

    tabs = [threading.Thread(target=open_tab) for _ in range(8)]
    for tab in tabs:
        tab.start()
    for tab in tabs:
        tab.join(timeout=30)
    assert len(answers) == 8
    assert {status for status, _ in answers} == {200}
    assert len(posthog.queries) == 1
    assert (200, "posthog") in answers
    again = requests.get(f"{asgi_server}/api/usage/", cookies=cookies, timeout=30).json()
    assert again["source"] == "posthog"
    assert len(posthog.queries) == 1
