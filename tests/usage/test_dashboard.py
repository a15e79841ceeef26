import csv
import io
import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
import responses
from django.test import Client

from tests.e2e.harness.servers import QUERY_COLUMNS
from tests.helpers import streamed
from usage import reports
from usage.cycles import Cycle, cycle_for, local_day
from usage.limits import TokenUsage, reserve, settle
from usage.models import Generation, UsageAccount
from usage.pricing import price_for

MESSAGES = [{"role": "user", "content": "hello"}]
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def record(user, model, tokens=(100, 0, 50), at=NOW, error=False):
    """A generation reserved and settled through the real ledger at `at`."""
    with mock.patch("django.utils.timezone.now", return_value=at):
        reservation = reserve(user, model, MESSAGES, 500)
        if error:
            return settle(reservation, error="provider_error: boom")
        return settle(reservation, TokenUsage(*tokens))


def posthog_body_for(generations, tz):
    """PostHog's answer to USAGE_QUERY for these generations, computed as PostHog would."""
    groups = defaultdict(lambda: [0, 0, 0, 0, 0.0])
    for g in generations:
        price = price_for(g.model).posthog_properties()
        key = (local_day(g.settled_at, tz).isoformat(), g.model, g.status == "error")
        row = groups[key]
        row[0] += 1
        row[1] += g.input_tokens
        row[2] += g.cached_input_tokens
        row[3] += g.output_tokens
        if g.status == "ok":
            row[4] += (
                (g.input_tokens - g.cached_input_tokens) * price["$ai_input_token_price"]
                + g.cached_input_tokens * price["$ai_cache_read_token_price"]
                + g.output_tokens * price["$ai_output_token_price"]
            )
    results = [[d, m, e, *values] for (d, m, e), values in sorted(groups.items())]
    return {
        "columns": QUERY_COLUMNS,
        "results": results,
        "is_cached": False,
        "types": [],
        "hogql": "",
        "timezone": "UTC",
    }


@pytest.fixture
def anchored(alice):
    UsageAccount.objects.filter(user=alice).update(billing_anchor=date(2026, 8, 31))
    alice.refresh_from_db()
    return alice


@pytest.fixture
def history(anchored, bob):
    """Alice's cycle (31 Oct to 30 Nov, anchored on the 31st) and some noise from Bob."""
    gens = [
        record(
            anchored, "gpt-4o-mini", (1200, 1024, 300), datetime(2026, 10, 31, 0, 5, tzinfo=UTC)
        ),
        record(anchored, "gpt-4o-mini", (300, 0, 80), datetime(2026, 11, 1, 9, tzinfo=UTC)),
        record(anchored, "gpt-4o", (2000, 0, 500), datetime(2026, 11, 1, 23, 59, tzinfo=UTC)),
        record(anchored, "gpt-4o", at=datetime(2026, 11, 20, tzinfo=UTC), error=True),
        record(anchored, "gpt-4.1-nano", (50, 0, 10), datetime(2026, 11, 26, 11, tzinfo=UTC)),
        # Earlier cycle: not in this report.
        record(anchored, "gpt-4o", (999, 0, 999), datetime(2026, 10, 30, 23, 59, tzinfo=UTC)),
    ]
    record(bob, "gpt-4o", (5000, 0, 5000), datetime(2026, 11, 26, 11, tzinfo=UTC))
    return [g for g in gens if g.settled_at >= datetime(2026, 10, 31, tzinfo=UTC)]


@pytest.fixture(autouse=True)
def frozen_now():
    with mock.patch("django.utils.timezone.now", return_value=NOW):
        yield


def test_the_ledger_report_covers_the_cycle_across_a_month_end(anchored, history):
    report = reports.report_for(anchored)
    assert (report.cycle.start_date, report.cycle.end_date) == (
        date(2026, 10, 31),
        date(2026, 11, 30),
    )
    assert report.source == "ledger"
    assert report.totals.messages == 4
    assert report.totals.errors == 1
    assert report.totals.input_tokens == 1200 + 300 + 2000 + 50
    assert report.totals.cached_input_tokens == 1024
    assert report.totals.output_tokens == 300 + 80 + 500 + 10
    expected = sum((g.cost for g in history), Decimal(0))
    assert report.totals.cost == expected.quantize(Decimal("0.000001"))
    assert len(report.daily) == 30
    assert report.daily[0][0] == date(2026, 10, 31) and report.daily[0][1].messages == 1
    assert [m for m, _ in report.models] == ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano"]


def test_posthog_and_the_ledger_give_the_same_report(
    anchored, history, posthog_query, requests_mock, hogql_check, settings
):
    settings.USAGE_TIME_ZONE = ZoneInfo("UTC")
    requests_mock.add(
        responses.POST, posthog_query, json=posthog_body_for(history, settings.USAGE_TIME_ZONE)
    )
    from_posthog = reports.report_for(anchored)
    settings.USAGE_SOURCE = "ledger"
    from_ledger = reports.report_for(anchored)
    assert from_posthog.source == "posthog" and from_ledger.source == "ledger"
    assert from_posthog.totals == from_ledger.totals
    assert from_posthog.daily == from_ledger.daily
    assert from_posthog.models == from_ledger.models
    sent = json.loads(requests_mock.calls[0].request.body)
    assert sent["query"]["values"] == {
        "distinct_id": str(anchored.pk),
        "start": "2026-10-31 00:00:00",
        "end": "2026-11-30 00:00:00",
        "time_zone": "UTC",
    }
    hogql_check(sent["query"]["query"], sent["query"]["values"])


def test_daily_buckets_follow_the_usage_time_zone(
    anchored, settings, posthog_query, requests_mock, hogql_check
):
    settings.USAGE_TIME_ZONE = ZoneInfo("America/New_York")
    requests_mock.add(responses.POST, posthog_query, json=posthog_body_for([], None))
    report = reports.report_for(anchored)
    sent = json.loads(requests_mock.calls[0].request.body)["query"]["values"]
    # Local midnight on 31 Oct (EDT, UTC-4) to local midnight on 30 Nov (EST, UTC-5).
    assert (sent["start"], sent["end"]) == ("2026-10-31 04:00:00", "2026-11-30 05:00:00")
    assert sent["time_zone"] == "America/New_York"
    assert report.cycle.start_date == date(2026, 10, 31)


def test_the_cache_prevents_a_second_posthog_call(anchored, posthog_query, requests_mock):
    requests_mock.add(responses.POST, posthog_query, json=posthog_body_for([], None))
    first = reports.report_for(anchored)
    second = reports.report_for(anchored)
    assert len(requests_mock.calls) == 1
    assert first.as_of == second.as_of


def test_refresh_forces_fresh_numbers_at_most_once_a_minute(anchored, posthog_query, requests_mock):
    requests_mock.add(responses.POST, posthog_query, json=posthog_body_for([], None))
    client = Client()
    client.force_login(anchored)
    client.get("/usage/")
    client.post("/usage/refresh/")
    client.post("/usage/refresh/")
    bodies = [json.loads(c.request.body) for c in requests_mock.calls]
    assert [b["refresh"] for b in bodies] == ["blocking", "force_blocking"]


@pytest.mark.parametrize("status", [500, 504, 429, 401, 400])
def test_it_falls_back_to_the_ledger_when_posthog_fails(
    anchored, history, posthog_query, requests_mock, status
):
    requests_mock.add(
        responses.POST,
        posthog_query,
        status=status,
        json={"type": "x", "code": "x", "detail": "nope", "attr": None},
    )
    client = Client()
    client.force_login(anchored)
    response = client.get("/usage/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "these numbers come from the ledger" in page
    assert 'id="stat-messages">4<' in page
    data = client.get("/api/usage/").json()
    assert data["source"] == "ledger"
    assert data["totals"]["messages"] == 4


def test_it_falls_back_to_the_ledger_when_posthog_times_out(
    anchored, history, posthog_query, requests_mock
):
    import requests

    requests_mock.add(responses.POST, posthog_query, body=requests.ReadTimeout("slow"))
    report = reports.report_for(anchored)
    assert report.source == "ledger"
    # Users read a plain note; the cause goes to the log and to staff.
    assert report.note == reports.LEDGER_NOTE
    health = reports.posthog_health()
    assert not health["ok"] and "did not answer in time" in health["detail"]
    # While PostHog is down the dashboard does not keep knocking.
    reports.report_for(anchored)
    assert len(requests_mock.calls) == 1


def test_the_dashboard_shows_the_cycle_budget_and_models(anchored, history):
    client = Client()
    client.force_login(anchored)
    page = client.get("/usage/").content.decode()
    assert "31 Oct – 29 Nov 2026" in page  # the last day it covers, not the next cycle's first
    assert 'id="stat-messages">4<' in page
    assert "gpt-4.1-nano" in page
    assert "Source: the ledger" in page
    # Every day of the 30-day cycle, wide and narrow: a bar so far, an empty slot after today.
    assert page.count('class="day"') + page.count('class="future"') == 2 * 30
    # Stacked by model: a day with two models draws two coloured parts; a legend names them.
    assert 'id="chart-legend"' in page and "gpt-4.1-nano" in page
    assert page.count('class="bar"') > page.count('class="day"')
    assert page.count('class="future"') > 0 and 'class="today"' in page
    assert "on pace for" in page and page.count("<tr><td>") >= 30  # the table alternative
    assert "resets" in page


def test_an_earlier_cycle_can_be_picked(anchored, history):
    client = Client()
    client.force_login(anchored)
    data = client.get("/api/usage/?cycle=2026-10-15").json()
    assert data["cycle"]["start"].startswith("2026-09-30")
    assert data["cycle"]["current"] is False
    assert data["totals"]["messages"] == 1  # the 30 October call
    assert client.get("/usage/?cycle=2026-10-15").status_code == 200


def test_a_bad_or_future_cycle_is_refused(anchored):
    client = Client()
    client.force_login(anchored)
    assert client.get("/api/usage/?cycle=garbage").json()["code"] == "invalid_cycle"
    assert client.get("/api/usage/?cycle=2027-05-01").status_code == 400
    response = client.get("/usage/?cycle=2027-05-01", follow=True)
    assert "has not started yet" in response.content.decode()


def test_users_see_only_their_own_numbers(anchored, history, bob):
    client = Client()
    client.force_login(bob)
    data = client.get(f"/api/usage/?userId={anchored.pk}&user_id={anchored.pk}").json()
    assert data["totals"]["messages"] == 1
    assert data["totals"]["input_tokens"] == 5000
    csv_text = streamed(client.get(f"/usage/export.csv?userId={anchored.pk}"))
    rows = list(csv.DictReader(io.StringIO(csv_text.decode())))
    assert len(rows) == 1
    assert not Generation.objects.filter(user=anchored, id__in=[r["generation_id"] for r in rows])


def test_the_api_returns_the_seeds_keys_and_the_rest(anchored, history):
    client = Client()
    client.force_login(anchored)
    data = client.get("/api/usage/").json()
    assert data["totals"]["messages"] == 4
    assert data["estimatedCost"] == float(data["totals"]["cost"])
    assert data["budget"]["budget_usd"] == "5.00"
    assert len(data["daily"]) == 30
    assert {m["model"] for m in data["models"]} == {"gpt-4o", "gpt-4o-mini", "gpt-4.1-nano"}
    assert data["source"] == "ledger"


def test_the_api_needs_a_login(client, db):
    response = client.get("/api/usage/")
    assert (response.status_code, response.json()["code"]) == (401, "not_authenticated")


def test_the_csv_export_lists_the_cycles_generations(anchored, history):
    client = Client()
    client.force_login(anchored)
    response = client.get("/usage/export.csv")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(streamed(response).decode())))
    assert {r["generation_id"] for r in rows} == {str(g.pk) for g in history}
    assert sum(Decimal(r["charge_usd"]) for r in rows) == sum(g.charge for g in history)
    assert {r["status"] for r in rows} == {"ok", "error"}


def test_the_budget_shows_what_is_left_and_what_is_held(anchored, history):
    reserve(anchored, "gpt-4o", MESSAGES, 500)  # in flight
    report = reports.report_for(anchored)
    assert report.spend.pending_cost > 0
    assert report.budget_left == (
        report.spend.budget - report.spend.settled_cost - report.spend.pending_cost
    )
    assert cycle_for(anchored.usage_account) == report.cycle


# --- PostHog's shared quota ---------------------------------------------------


def _empty_answer(requests_mock, url):
    requests_mock.add(responses.POST, url, json={"results": [], "columns": []})


def test_a_wrong_project_is_a_configuration_error_shown_to_staff_not_users(
    anchored, posthog_query, requests_mock, staff_client
):
    requests_mock.add(
        responses.POST, posthog_query, status=404, json={"type": "invalid_request", "detail": "x"}
    )
    client = Client()
    client.force_login(anchored)
    page = client.get("/usage/").content.decode()
    assert reports.LEDGER_NOTE.replace(":", "") in page.replace(":", "")
    assert "4242" not in page and "POSTHOG_PROJECT_ID" not in page
    admin = staff_client.get("/admin/").content.decode()
    assert "PostHogConfigError" in admin and "check POSTHOG_PROJECT_ID" in admin


def test_the_report_cache_key_moves_with_the_cycles_end(anchored, posthog_query, requests_mock):
    _empty_answer(requests_mock, posthog_query)
    cycle = cycle_for(anchored.usage_account)
    reports.report_for(anchored, cycle)
    reports.report_for(anchored, cycle)
    assert len(requests_mock.calls) == 1  # cached
    moved = Cycle(cycle.start_date, cycle.end_date + timedelta(days=1), cycle.tz)
    reports.report_for(anchored, moved)
    assert len(requests_mock.calls) == 2


def test_closed_cycles_stay_cached_when_the_current_one_does_not(
    anchored, history, posthog_query, requests_mock, settings
):
    settings.USAGE_CACHE_SECONDS = 0  # the current cycle is asked every time
    _empty_answer(requests_mock, posthog_query)
    current = cycle_for(anchored.usage_account)
    earlier = current.previous(anchored.usage_account.billing_anchor.day)
    for _ in range(3):
        reports.report_for(anchored, current)
        reports.report_for(anchored, earlier)
    sent = [json.loads(c.request.body)["query"]["values"]["start"] for c in requests_mock.calls]
    assert sent.count(reports.query_values(anchored.pk, earlier)["start"]) == 1
    assert sent.count(reports.query_values(anchored.pk, current)["start"]) == 3


def test_one_user_cannot_spend_the_projects_query_quota(
    anchored, posthog_query, requests_mock, settings
):
    settings.USAGE_CACHE_SECONDS = 0
    _empty_answer(requests_mock, posthog_query)
    limit = int(reports.POSTHOG_QUERIES_PER_USER.split("/")[0])
    notes = [reports.report_for(anchored).note for _ in range(limit + 5)]
    assert len(requests_mock.calls) == limit
    assert notes[-1].startswith("PostHog was asked often just now")


def test_only_one_request_per_user_and_cycle_asks_posthog_at_a_time(
    anchored, posthog_query, requests_mock
):
    from chatusage import cache as shared_cache

    _empty_answer(requests_mock, posthog_query)
    cycle = cycle_for(anchored.usage_account)
    in_flight = reports._cache_key(anchored.pk, cycle) + ":in-flight"
    shared_cache.add(in_flight, 1, 30, when_down=False)  # another request is asking now
    report = reports.report_for(anchored, cycle)
    assert (report.source, len(requests_mock.calls)) == ("ledger", 0)
    assert "being asked" in report.note
    shared_cache.delete(in_flight)
    assert reports.report_for(anchored, cycle).source == "posthog"
    assert shared_cache.get(in_flight) is None  # released after its answer


# --- The budget card and the dates ---------------------------------------------


@pytest.mark.parametrize(
    ("budget", "spent", "state", "text"),
    [
        ("0", "0.30", "ok", "No cap"),
        ("1.00", "0", "ok", "0.0% used"),
        ("1.00", "0.79", "ok", "79.0% used"),
        ("1.00", "0.80", "near", "80.0% used"),
        # At exactly 100 % the budget is used up: over, on every page and in admin alike.
        ("1.00", "1.00", "over", "100.0% used · <strong>budget used up</strong>"),
        ("1.00", "1.54", "over", "154.0% used · <strong>over by $0.5400</strong>"),
    ],
)
def test_the_budget_card_says_spent_of_budget_in_its_state(alice, budget, spent, state, text):
    from tests.helpers import set_budget, settled_today

    set_budget(alice, budget)
    if spent != "0":
        settled_today(alice, spent)
    client = Client()
    client.force_login(alice)
    page = client.get("/usage/").content.decode()
    assert f'class="stat budget budget-{state}" id="budget-card"' in page
    assert text in page
    if budget != "0":
        # Spent as the cost card writes it (one money format per figure), of the budget.
        assert f"${Decimal(spent):.4f} <small>of $1.00 spent</small>" in page
        assert f'id="stat-cost">${Decimal(spent):.4f}<' in page
        assert "resets " in page and " (in " in page
        # The same percentage in the JSON and on the chat page.
        data = client.get("/api/usage/").json()["budget"]
        assert data["percent"] == float(Decimal(spent) * 100)
        assert data["state"] == state


@pytest.mark.parametrize(
    ("start", "end", "words"),
    [
        (date(2026, 11, 7), date(2026, 12, 7), "7 Nov – 6 Dec 2026"),
        (date(2026, 12, 15), date(2027, 1, 15), "15 Dec 2026 – 14 Jan 2027"),
        (date(2026, 1, 31), date(2026, 2, 28), "31 Jan – 27 Feb 2026"),
        (date(2026, 3, 15), date(2026, 4, 15), "15 Mar – 14 Apr 2026"),  # DST starts inside
    ],
)
def test_cycles_read_as_the_days_they_cover(start, end, words):
    from usage.templatetags.money import cycle_range

    cycle = Cycle(start, end, ZoneInfo("America/New_York"))
    assert cycle_range(cycle) == words
    # A whole number of local days, even across the DST change.
    assert len(cycle.days) == (end - start).days


def test_the_forecast_carries_the_daily_average_to_the_cycles_end():
    from usage.charts import nice_step, pace_chart
    from usage.reports import Totals

    days = [date(2026, 11, d) for d in range(1, 31)]
    daily = [
        (d, Totals(messages=1, cost=Decimal("0.10") if d.day <= 10 else Decimal(0))) for d in days
    ]
    pace = pace_chart(daily, date(2026, 11, 10), Decimal("5.00"), 720)
    assert pace.projected == Decimal("3.000000")  # $1.00 in 10 days, 30 days in the cycle
    assert pace.budget_y is not None and len(pace.points.split()) == 10
    assert [nice_step(Decimal(v)) for v in ("0.07", "0.9", "4.2", "0")] == [
        Decimal("0.05"), Decimal("0.5"), Decimal("2"), Decimal("0.01"),
    ]  # fmt: skip


def test_the_forecast_says_when_the_budget_is_reached_and_a_light_user_sees_their_line():
    from usage.charts import pace_chart
    from usage.reports import Totals

    days = [date(2026, 11, d) for d in range(1, 31)]

    def spending(per_day):
        return [(d, Totals(messages=1, cost=Decimal(per_day) if d.day <= 10 else 0)) for d in days]

    heavy = pace_chart(spending("0.25"), date(2026, 11, 10), Decimal("5.00"), 720)
    assert heavy.reaches_budget == date(2026, 11, 20)  # $2.50 by the 10th: $5 on the 20th
    assert heavy.budget_shown
    within = pace_chart(spending("0.10"), date(2026, 11, 10), Decimal("5.00"), 720)
    assert within.reaches_budget is None and within.budget_shown  # $3 by the end: in sight
    light = pace_chart(spending("0.001"), date(2026, 11, 10), Decimal("5.00"), 720)
    assert not light.budget_shown and light.budget_y is None
    heights = [float(point.split(",")[1]) for point in light.points.split()]
    assert light.baseline - min(heights) > 20  # the line climbs, not a flat line at $0
    narrow = pace_chart(spending("0.10"), date(2026, 11, 10), Decimal("5.00"), 360)
    xs = [x for x, _ in narrow.labels]
    assert all(b - a > 55.9 for a, b in zip(xs, xs[1:], strict=False))  # labels never touch


def test_the_usage_page_says_when_the_budget_runs_out_or_that_chat_is_paused(alice_client, alice):
    from tests.helpers import settled_today
    from usage.models import UsageAccount

    UsageAccount.objects.filter(user=alice).update(billing_anchor=NOW.date())  # day one
    settled_today(alice, "4.00")  # $4 on day one of a 30-day cycle: $5 is reached tomorrow
    page = alice_client.get("/usage/").content.decode()
    assert "at this pace you reach your $5.00 budget around 27 Nov" in page
    settled_today(alice, "1.50", model="gpt-4o")
    page = alice_client.get("/usage/").content.decode()
    assert "budget used up: chat is paused until 26 Dec" in page


def test_a_new_user_sees_one_empty_state_not_empty_charts(alice_client):
    page = alice_client.get("/usage/").content.decode()
    assert page.count("No messages in this cycle yet") == 1
    assert 'id="daily-chart"' not in page and 'id="models"' not in page
