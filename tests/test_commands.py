import json
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
import responses
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests.conftest import batched_events
from usage.limits import TokenUsage, reserve, settle
from usage.management.commands.reconcile_usage import RECONCILE_QUERY
from usage.models import DailyUsage, Generation, UsageAccount

MESSAGES = [{"role": "user", "content": "hello"}]


def spend(user, model="gpt-4o-mini", tokens=(1000, 0, 200), error=False):
    reservation = reserve(user, model, MESSAGES, 500)
    if error:
        return settle(reservation, error="provider_error: boom", http_status=500)
    return settle(reservation, TokenUsage(*tokens), latency_ms=800, http_status=200)


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def posthog_rows(*rows):
    return {
        "columns": ["generation_id", "events", "cost_usd"],
        "results": [list(r) for r in rows],
        "is_cached": False,
        "types": [],
        "hogql": "",
        "timezone": "UTC",
    }


@pytest.fixture
def ledger(alice):
    """Three settled generations: one PostHog has right, one it lacks, one it prices wrong."""
    return [spend(alice), spend(alice, "gpt-4o"), spend(alice, "gpt-4.1-mini", error=True)]


def test_reconcile_reports_nothing_when_posthog_agrees(alice, ledger, posthog_query, requests_mock):
    requests_mock.add(
        responses.POST,
        posthog_query,
        json=posthog_rows(*[(str(g.pk), 1, float(g.cost)) for g in ledger]),
    )
    output = run("reconcile_usage")
    assert "Checked 3 generations for 1 users: 0 missing in PostHog, 0 cost mismatches" in output


def test_reconcile_finds_a_missing_and_a_mismatched_generation(
    alice, ledger, posthog_query, requests_mock, hogql_check
):
    ok, missing, errored = ledger
    requests_mock.add(
        responses.POST,
        posthog_query,
        json=posthog_rows(
            (str(ok.pk), 1, float(ok.cost) + 0.01),
            (str(errored.pk), 1, 0.0),
        ),
    )
    out = StringIO()
    with pytest.raises(CommandError, match="2 difference"):
        call_command("reconcile_usage", "--user", "alice", stdout=out)
    output = out.getvalue()
    assert f"{missing.pk}" in output and "missing" in output
    assert f"{ok.pk}" in output and "mismatch" in output
    assert "1 missing in PostHog, 1 cost mismatches" in output
    sent = json.loads(requests_mock.calls[0].request.body)
    assert sent["refresh"] == "force_blocking"
    assert sent["query"]["query"] == RECONCILE_QUERY
    hogql_check(sent["query"]["query"], sent["query"]["values"])
    assert sent["query"]["values"]["distinct_id"] == str(alice.pk)


def test_backfill_sends_exactly_the_missing_generations(
    alice, ledger, posthog_query, posthog_capture, requests_mock
):
    ok, missing, errored = ledger
    requests_mock.add(
        responses.POST,
        posthog_query,
        json=posthog_rows(
            (str(ok.pk), 1, float(ok.cost)),
            (str(errored.pk), 1, 0.0),
        ),
    )
    output = run("reconcile_usage", "--backfill")
    assert "1 missing in PostHog" in output and "backfilled 1" in output
    [event] = batched_events(requests_mock)
    props = event["properties"]
    assert event["event"] == "$ai_generation"
    assert event["distinct_id"] == str(alice.pk)
    assert event["uuid"] == str(missing.pk)
    assert event["timestamp"].startswith(missing.settled_at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert props["generation_id"] == str(missing.pk)
    assert (props["$ai_model"], props["$ai_input_tokens"], props["$ai_output_tokens"]) == (
        "gpt-4o",
        1000,
        200,
    )
    # PostHog's cost from these prices equals the ledger's.
    posthog_cost = (
        props["$ai_input_tokens"] * props["$ai_input_token_price"]
        + props["$ai_output_tokens"] * props["$ai_output_token_price"]
    )
    assert Decimal(str(round(posthog_cost, 10))) == missing.cost


def test_a_second_run_after_the_backfill_finds_nothing(
    alice, ledger, posthog_query, posthog_capture, requests_mock
):
    requests_mock.add(
        responses.POST,
        posthog_query,
        json=posthog_rows(*[(str(g.pk), 1, float(g.cost)) for g in ledger]),
    )
    output = run("reconcile_usage", "--backfill")
    assert "backfilled 0" in output
    assert batched_events(requests_mock) == []


def test_reconcile_needs_posthog_configured(alice):
    with pytest.raises(CommandError, match="POSTHOG_PROJECT_ID"):
        run("reconcile_usage")


def test_reconcile_can_check_an_earlier_cycle(alice, posthog_query, requests_mock):
    UsageAccount.objects.filter(user=alice).update(billing_anchor="2026-01-15")
    requests_mock.add(responses.POST, posthog_query, json=posthog_rows())
    run("reconcile_usage", "--cycle", "2026-03-01", "--user", str(alice.pk))
    values = json.loads(requests_mock.calls[0].request.body)["query"]["values"]
    assert (values["start"], values["end"]) == ("2026-02-15 00:00:00", "2026-03-15 00:00:00")


def test_expire_reservations_marks_stale_pending_rows_abandoned(alice):
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    fresh = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    Generation.objects.filter(pk=reservation.generation_id).update(
        created_at=timezone.now() - timedelta(hours=1)
    )
    assert run("expire_reservations").strip() == "Marked 1 stale reservation(s) abandoned."
    assert Generation.objects.get(pk=reservation.generation_id).status == "abandoned"
    assert Generation.objects.get(pk=fresh.generation_id).status == "pending"


def test_seed_demo_is_idempotent_and_fills_the_rollups(db, settings):
    settings.DEBUG = True
    first = run("seed_demo")
    assert "5 users created" in first
    count = Generation.objects.count()
    assert count > 500
    second = run("seed_demo")
    assert "0 users created, 0 generations added" in second
    assert Generation.objects.count() == count
    ledger_cost = sum(g.cost for g in Generation.objects.filter(status="ok"))
    assert sum(d.cost for d in DailyUsage.objects.all()) == ledger_cost


def test_seed_demo_refuses_to_run_in_production(db):
    with pytest.raises(CommandError, match="DEBUG"):
        run("seed_demo")


def test_reconcile_waits_out_throttling_and_then_succeeds(
    alice, posthog_query, requests_mock, monkeypatch
):
    waits = []
    monkeypatch.setattr("time.sleep", waits.append)
    requests_mock.add(
        responses.POST,
        posthog_query,
        status=429,
        headers={"Retry-After": "7"},
        json={"type": "throttled_error", "code": "throttled", "detail": "slow down", "attr": None},
    )
    requests_mock.add(responses.POST, posthog_query, json=posthog_rows())
    spend(alice)
    with pytest.raises(CommandError, match="1 difference"):  # the generation is missing
        run("reconcile_usage")
    assert waits == [7]


def test_reconcile_stops_with_a_clear_error_on_bad_credentials(alice, posthog_query, requests_mock):
    requests_mock.add(
        responses.POST,
        posthog_query,
        status=401,
        json={
            "type": "authentication_error",
            "code": "authentication_failed",
            "detail": "Incorrect authentication credentials.",
            "attr": None,
        },
    )
    spend(alice)
    with pytest.raises(CommandError, match="refused the credentials"):
        run("reconcile_usage")
