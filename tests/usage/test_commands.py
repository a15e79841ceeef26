import json
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
import responses
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from tests.helpers import batched_events
from usage.limits import TokenUsage, reserve, settle
from usage.management.commands import reconcile_usage
from usage.management.commands.reconcile_usage import RECHECK_QUERY, RECONCILE_QUERY
from usage.models import Backfill, DailyUsage, Generation, UsageAccount

MESSAGES = [{"role": "user", "content": "hello"}]


def spend(user, model="gpt-4o-mini", tokens=(1000, 0, 200), error=False, age=timedelta(hours=1)):
    """A settled generation, `age` ago (reconcile leaves the last 15 minutes to ingestion)."""
    reservation = reserve(user, model, MESSAGES, 500)
    if error:
        settle(reservation, error="provider_error: boom", http_status=500)
    else:
        settle(reservation, TokenUsage(*tokens, estimated=False), latency_ms=800, http_status=200)
    Generation.objects.filter(pk=reservation.generation_id).update(settled_at=timezone.now() - age)
    return Generation.objects.get(pk=reservation.generation_id)


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
    assert "Checked 3 generations for 1 users (settled more than 15 minutes ago)" in output
    assert "0 missing in PostHog, 0 cost mismatches" in output


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
    # Dated when the call was reserved, as the live event is: both land in the same cycle.
    assert event["timestamp"].startswith(missing.created_at.strftime("%Y-%m-%dT%H:%M:%S"))
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


def test_two_runs_within_posthogs_ingestion_lag_backfill_a_generation_once(
    alice, ledger, posthog_query, posthog_capture, requests_mock
):
    """B9: with a 60-s lag, the second run still saw the backfilled events missing and sent
    them again: 10 generations got two events each."""
    ok, missing, errored = ledger
    lagging = posthog_rows((str(ok.pk), 1, float(ok.cost)), (str(errored.pk), 1, 0.0))
    requests_mock.add(responses.POST, posthog_query, json=lagging)  # never shows the backfill
    first = run("reconcile_usage", "--backfill")
    second = run("reconcile_usage", "--backfill")
    assert "backfilled 1" in first
    assert "backfilled 0" in second and "1 backfilled earlier and not in PostHog yet" in second
    assert [e["properties"]["generation_id"] for e in batched_events(requests_mock)] == [
        str(missing.pk)
    ]
    assert Backfill.objects.get().generation_id == missing.pk  # what was sent, and when
    # A day later it is still missing: PostHog lost it, so it is sent again.
    Backfill.objects.update(sent_at=timezone.now() - reconcile_usage.RESEND_AFTER)
    assert "backfilled 1" in run("reconcile_usage", "--backfill")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's advisory lock")
def test_a_second_reconcile_run_cannot_start_while_one_runs(alice, ledger, posthog_query):
    import psycopg

    settings_dict = connection.settings_dict
    other = psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"] or 5432,
        user=settings_dict["USER"],
        dbname=settings_dict["NAME"],
        autocommit=True,
    )
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [reconcile_usage.LOCK_KEY])
        with pytest.raises(CommandError, match="Another reconcile_usage run is in progress"):
            run("reconcile_usage")
    finally:
        other.close()


def test_reconcile_reports_an_abandoned_call_that_posthog_saw_answered(
    alice, posthog_query, requests_mock
):
    """B3: a 40-s database cut abandoned rows at $0 while PostHog held their cost, and
    reconcile said nothing."""
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    Generation.objects.filter(pk=reservation.generation_id).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    call_command("expire_reservations", stdout=StringIO())
    requests_mock.add(
        responses.POST,
        posthog_query,
        json=posthog_rows((str(reservation.generation_id), 1, 0.00042)),
    )
    out = StringIO()
    with pytest.raises(CommandError, match="1 difference"):
        call_command("reconcile_usage", stdout=out)
    assert "unbilled" in out.getvalue() and "1 answered in PostHog but abandoned" in out.getvalue()


def test_reconcile_needs_posthog_configured(alice):
    with pytest.raises(CommandError, match="POSTHOG_PROJECT_ID"):
        run("reconcile_usage")


def test_reconcile_can_check_an_earlier_cycle(alice, posthog_query, requests_mock):
    UsageAccount.objects.filter(user=alice).update(billing_anchor="2026-01-15")
    requests_mock.add(responses.POST, posthog_query, json=posthog_rows())
    run("reconcile_usage", "--cycle", "2026-03-01", "--user", str(alice.pk))
    values = json.loads(requests_mock.calls[0].request.body)["query"]["values"]
    assert (values["start"], values["end"]) == ("2026-02-15 00:00:00", "2026-03-15 00:00:00")


def test_expire_reservations_marks_pending_rows_with_a_lapsed_lease_abandoned(alice):
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    fresh = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    Generation.objects.filter(pk=reservation.generation_id).update(
        lease_until=timezone.now() - timedelta(seconds=1)
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


class FakePostHog:
    """PostHog's query API over a set of ingested events: generation_id -> (count, cost).

    Answers the reconcile page query and the pre-backfill recheck; ingest() takes what the
    capture client sent, deduplicated by event uuid as PostHog does.
    """

    def __init__(self, requests_mock, url, events=None, answer=None):
        self.events = dict(events or {})
        self.bodies = []
        requests_mock.add_callback(responses.POST, url, callback=answer or self)

    def __call__(self, request):
        body = json.loads(request.body)
        self.bodies.append(body)
        query, values = body["query"]["query"], body["query"]["values"]
        if query == RECONCILE_QUERY:
            ids = sorted(g for g in self.events if g > values["after"])[: values["page_size"]]
            answer = posthog_rows(*[(g, *self.events[g]) for g in ids])
        else:
            assert query == RECHECK_QUERY
            ids = [g for g in values["generation_ids"] if g in self.events]
            answer = {"columns": ["generation_id"], "results": [[g] for g in ids]}
        return 200, {}, json.dumps(answer)

    def ingest(self, events):
        for event in events:
            props = event["properties"]
            cost = (
                props["$ai_input_tokens"] * props["$ai_input_token_price"]
                + props["$ai_output_tokens"] * props["$ai_output_token_price"]
            )
            self.events[props["generation_id"]] = (1, cost)


def test_reconcile_converges_a_second_run_reports_nothing_new(
    alice, posthog_query, posthog_capture, requests_mock, hogql_check
):
    known = spend(alice)
    missing = spend(alice, "gpt-4o")
    interrupted = spend(alice, "gpt-4o-mini")
    Generation.objects.filter(pk=interrupted.pk).update(cost_estimated=True)
    recent = spend(alice, age=timedelta(minutes=2))  # PostHog may not have it yet
    fake = FakePostHog(
        requests_mock,
        posthog_query,
        {str(known.pk): (1, float(known.cost)), str(interrupted.pk): (1, 0.0)},
    )
    first = run("reconcile_usage", "--backfill")
    assert "Checked 3 generations" in first  # the recent one waits for the next run
    assert "1 missing in PostHog, 0 cost mismatches" in first
    assert "1 estimated" in first and "backfilled 1" in first
    assert str(recent.pk) not in first
    for body in fake.bodies:
        hogql_check(body["query"]["query"], body["query"]["values"])
    sent = batched_events(requests_mock)
    assert [e["uuid"] for e in sent] == [str(missing.pk)]
    fake.ingest(sent)

    second = run("reconcile_usage", "--backfill")
    assert "0 missing in PostHog, 0 cost mismatches, 0 duplicated, 0 unknown" in second
    assert "backfilled 0" in second
    assert len(batched_events(requests_mock)) == 1  # nothing sent twice


def test_reconcile_pages_through_a_heavy_user(alice, posthog_query, requests_mock, monkeypatch):
    monkeypatch.setattr(reconcile_usage, "PAGE_SIZE", 2)
    generations = [spend(alice) for _ in range(5)]
    fake = FakePostHog(
        requests_mock, posthog_query, {str(g.pk): (1, float(g.cost)) for g in generations}
    )
    output = run("reconcile_usage")
    assert "Checked 5 generations" in output and "0 missing" in output
    assert [b["query"]["values"]["after"] for b in fake.bodies] == [
        "",
        *sorted(str(g.pk) for g in generations)[1:5:2],
    ]


def test_a_backfill_skips_what_arrived_since_the_comparison(
    alice, posthog_query, posthog_capture, requests_mock
):
    late = spend(alice)

    def arrives_meanwhile(request):
        if json.loads(request.body)["query"]["query"] == RECHECK_QUERY:
            fake.events[str(late.pk)] = (1, float(late.cost))
        return fake(request)

    fake = FakePostHog(requests_mock, posthog_query, answer=arrives_meanwhile)
    output = run("reconcile_usage", "--backfill")
    assert "1 missing in PostHog" in output and "backfilled 0" in output
    assert batched_events(requests_mock) == []
