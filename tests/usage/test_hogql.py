import json
import logging
from datetime import date
from zoneinfo import ZoneInfo

import pytest
import requests
import responses

from usage import hogql
from usage.cycles import cycle_containing
from usage.reports import USAGE_QUERY, posthog_rows, query_values

OK_BODY = {
    "cache_key": "abc",
    "is_cached": False,
    "columns": ["day", "model", "n"],
    "types": [["day", "String"], ["model", "String"], ["n", "UInt64"]],
    "results": [["2026-11-02", "gpt-4o-mini", 3], ["2026-11-03", "gpt-4o", 1]],
    "hogql": "SELECT ...",
    "timezone": "UTC",
    "timings": [],
}


def test_it_posts_the_query_with_the_personal_key_and_zips_rows(posthog_query, requests_mock):
    requests_mock.add(responses.POST, posthog_query, json=OK_BODY)
    result = hogql.run("SELECT 1 LIMIT 1", {"distinct_id": "7"}, name="test")
    assert result.rows == [
        {"day": "2026-11-02", "model": "gpt-4o-mini", "n": 3},
        {"day": "2026-11-03", "model": "gpt-4o", "n": 1},
    ]
    request = requests_mock.calls[0].request
    assert request.headers["Authorization"] == "Bearer phx_personal_secret_key"
    assert request.req_kwargs["timeout"] == (3.05, 15.0)  # explicit connect and read timeouts
    assert json.loads(request.body) == {
        "query": {
            "kind": "HogQLQuery",
            "query": "SELECT 1 LIMIT 1",
            "values": {"distinct_id": "7"},
        },
        "name": "test",
        "refresh": "blocking",
    }


def test_a_cached_answer_is_marked(posthog_query, requests_mock):
    requests_mock.add(responses.POST, posthog_query, json={**OK_BODY, "is_cached": True})
    assert hogql.run("SELECT 1 LIMIT 1", {}, name="t").is_cached


def test_it_reuses_one_session_across_calls(posthog_query, requests_mock):
    requests_mock.add(responses.POST, posthog_query, json=OK_BODY)
    first = hogql._session()
    hogql.run("SELECT 1 LIMIT 1", {}, name="t")
    hogql.run("SELECT 1 LIMIT 1", {}, name="t")
    assert hogql._session() is first


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "retry_after"),
    [
        (
            400,
            {
                "type": "validation_error",
                "code": "invalid_input",
                "detail": "Unknown table `eventz`.",
                "attr": None,
            },
            {},
            hogql.PostHogQueryError,
            None,
        ),
        (
            401,
            {
                "type": "authentication_error",
                "code": "authentication_failed",
                "detail": "Incorrect authentication credentials.",
                "attr": None,
            },
            {},
            hogql.PostHogAuthError,
            None,
        ),
        (
            403,
            {
                "type": "authentication_error",
                "code": "permission_denied",
                "detail": "API key missing required scope 'query:read'",
                "attr": None,
            },
            {},
            hogql.PostHogAuthError,
            None,
        ),
        (
            429,
            {
                "type": "throttled_error",
                "code": "throttled",
                "detail": "Request was throttled. Expected available in 30 seconds.",
                "attr": None,
            },
            {"Retry-After": "30"},
            hogql.PostHogUnavailable,
            30,
        ),
        (
            429,
            {
                "type": "throttled_error",
                "code": "throttled",
                "detail": "Too many concurrent queries.",
                "attr": None,
            },
            {},
            hogql.PostHogUnavailable,
            None,
        ),
        (
            500,
            {
                "type": "server_error",
                "code": "error",
                "detail": "A server error occurred.",
                "attr": None,
            },
            {},
            hogql.PostHogUnavailable,
            None,
        ),
        (
            503,
            {"type": "server_error", "code": "busy", "detail": "Busy", "attr": None},
            {},
            hogql.PostHogUnavailable,
            None,
        ),
        (
            504,
            {
                "type": "server_error",
                "code": "query_timeout",
                "detail": "Query timed out",
                "attr": None,
            },
            {},
            hogql.PostHogUnavailable,
            None,
        ),
    ],
)
def test_failures_map_to_a_small_family_of_errors(
    posthog_query, requests_mock, caplog, status, body, headers, error, retry_after
):
    requests_mock.add(responses.POST, posthog_query, json=body, status=status, headers=headers)
    with caplog.at_level(logging.DEBUG), pytest.raises(error) as raised:
        hogql.run("SELECT 1 LIMIT 1", {}, name="t")
    assert getattr(raised.value, "retry_after", None) == retry_after
    if status == 400:
        assert "Unknown table" in str(raised.value)
    assert "phx_personal_secret_key" not in str(raised.value)
    assert "phx_personal_secret_key" not in caplog.text
    assert len(requests_mock.calls) == 1  # never retried inside a request


@pytest.mark.parametrize(
    "exc",
    [
        requests.ConnectTimeout("slow"),
        requests.ReadTimeout("slow"),
        requests.ConnectionError("refused"),
    ],
)
def test_network_failures_are_unavailable(posthog_query, requests_mock, caplog, exc):
    requests_mock.add(responses.POST, posthog_query, body=exc)
    with caplog.at_level(logging.DEBUG), pytest.raises(hogql.PostHogUnavailable):
        hogql.run("SELECT 1 LIMIT 1", {}, name="t")
    assert "phx_personal_secret_key" not in caplog.text


def test_it_refuses_to_run_unconfigured(db):
    with pytest.raises(hogql.PostHogNotConfigured):
        hogql.run("SELECT 1 LIMIT 1", {}, name="t")


def test_the_usage_query_is_valid_hogql_with_every_input_a_placeholder(hogql_check):
    cycle = cycle_containing(30, date(2026, 2, 10), ZoneInfo("Europe/Berlin"))
    values = query_values(7, cycle)
    assert values == {
        "distinct_id": "7",
        "start": "2026-01-29 23:00:00",
        "end": "2026-02-27 23:00:00",
        "time_zone": "Europe/Berlin",
    }
    ast = hogql_check(USAGE_QUERY, values)
    assert ast["limit"]["value"] == 50000


@pytest.mark.django_db
def test_a_hostile_distinct_id_changes_nothing_in_the_query(
    posthog_query, requests_mock, hogql_check
):
    requests_mock.add(responses.POST, posthog_query, json={**OK_BODY, "columns": [], "results": []})
    hostile = "1' OR 1=1 -- {distinct_id} }} \" ; DROP"
    cycle = cycle_containing(1, date(2026, 11, 5), ZoneInfo("UTC"))
    posthog_rows(hostile, cycle)
    sent = json.loads(requests_mock.calls[0].request.body)["query"]
    assert sent["query"] == USAGE_QUERY
    assert sent["values"]["distinct_id"] == hostile
    hogql_check(sent["query"], sent["values"])


def test_the_query_api_host_is_derived_from_the_ingestion_host():
    from chatusage.settings import _query_api_host

    assert _query_api_host("https://us.i.posthog.com") == "https://us.posthog.com"
    assert _query_api_host("https://eu.i.posthog.com") == "https://eu.posthog.com"
    assert _query_api_host("https://posthog.example.com") == "https://posthog.example.com"
