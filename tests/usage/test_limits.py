import threading
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest
from asgiref.sync import async_to_sync
from django.db import DatabaseError, connection, connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils import timezone as django_timezone

from chat import services
from tests.helpers import set_budget, streamed
from usage import limits, reports, sql
from usage.cycles import cycle_containing
from usage.limits import TokenUsage, UsageLimitReached, reserve, settle
from usage.models import DailyUsage, Generation, UsageAccount

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


def test_worst_case_input_is_bounded_by_utf8_bytes_plus_overhead():
    bound = limits.worst_case_input_tokens([{"role": "user", "content": "héllo"}])
    assert bound == len("héllo".encode()) + limits.PER_MESSAGE_OVERHEAD_TOKENS + 8


def test_reserve_holds_the_worst_case_and_settle_records_the_actual(alice):
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    bound = limits.worst_case_input_tokens(MESSAGES)
    worst_cost = (Decimal(bound) * Decimal("0.15") + 500 * Decimal("0.60")) / 1_000_000
    # The hold is the worst case as the user's charge: the cost to 6 places (no markup).
    assert reservation.reserved_cost == worst_cost.quantize(Decimal("0.000001"), ROUND_HALF_UP)
    generation = Generation.objects.get(pk=reservation.generation_id)
    assert generation.status == "pending"
    assert generation.price_output_per_1m == Decimal("0.60")

    generation = settle(reservation, TokenUsage(30, 0, 12), latency_ms=420, http_status=200)
    assert generation.status == "ok"
    assert generation.cost == Decimal("0.0000117")  # 30 x 0.15 + 12 x 0.60 per 1M
    assert generation.charge == Decimal("0.000012")  # to 6 places, half up
    assert (generation.input_tokens, generation.output_tokens) == (30, 12)
    assert generation.latency_ms == 420
    spend = limits.spend_for(alice.usage_account, limits.cycle_for(alice.usage_account))
    assert spend.pending_cost == 0
    assert spend.settled_cost == Decimal("0.000012")  # budgets count what the user is charged
    day = DailyUsage.objects.get(user=alice)
    assert (day.generations, day.errors, day.input_tokens, day.output_tokens) == (1, 0, 30, 12)


def test_settle_is_idempotent(alice):
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    settle(reservation, TokenUsage(30, 0, 12))
    settle(reservation, TokenUsage(30, 0, 12))
    settle(reservation, error="late error")
    day = DailyUsage.objects.get(user=alice)
    assert (day.generations, day.errors, day.cost) == (1, 0, Decimal("0.0000117"))


def test_a_failed_call_costs_nothing_and_releases_its_reservation(alice):
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    generation = settle(reservation, error="provider_error: boom", http_status=500)
    assert (generation.status, generation.cost, generation.http_status) == ("error", 0, 500)
    spend = limits.spend_for(alice.usage_account, limits.cycle_for(alice.usage_account))
    assert (spend.pending_cost, spend.settled_cost, spend.settled_messages) == (0, 0, 0)
    assert DailyUsage.objects.get(user=alice).errors == 1


def test_an_answer_without_reported_usage_settles_at_a_flagged_estimate(alice):
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    usage = limits.estimate_usage(reservation, "x" * 400)
    generation = settle(reservation, usage)
    assert generation.cost_estimated
    assert generation.output_tokens == 100
    assert generation.cost > 0


def test_reserve_refuses_when_the_worst_case_would_pass_the_budget(alice, dollar_model):
    set_budget(alice, "2.00")
    first = reserve(alice, dollar_model, MESSAGES, 100)
    second = reserve(alice, dollar_model, MESSAGES, 100)
    with pytest.raises(UsageLimitReached) as refused:
        reserve(alice, dollar_model, MESSAGES, 100)
    details = refused.value.as_dict()
    assert details["reason"] == "budget"
    assert details["budget"] == "2.00"
    assert details["resets_at"] == limits.cycle_for(alice.usage_account).end.isoformat()
    assert "resets on" in str(refused.value)
    # Settling below the worst case gives the difference back: $0.40 spent, $1.60 free.
    settle(first, TokenUsage(10, 0, 40))
    with pytest.raises(UsageLimitReached):
        reserve(alice, dollar_model, MESSAGES, 100)  # $0.40 + $1.00 held + $1.00 > $2.00
    settle(second, error="boom")
    reserve(alice, dollar_model, MESSAGES, 100)


def test_a_budget_of_zero_means_no_cap(alice, dollar_model):
    set_budget(alice, "0")
    held = [reserve(alice, dollar_model, MESSAGES, 100) for _ in range(8)]  # $8 on no cap
    assert Generation.objects.filter(user=alice, status="pending").count() == len(held) == 8


def test_the_message_limit_counts_settled_and_pending_calls(alice):
    set_budget(alice, None, message_limit=2)
    settle(reserve(alice, "gpt-4o-mini", MESSAGES, 500), TokenUsage(5, 0, 5))
    reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    with pytest.raises(UsageLimitReached) as refused:
        reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    assert refused.value.reason == "messages"


def test_failed_calls_do_not_count_against_the_message_limit(alice):
    set_budget(alice, None, message_limit=1)
    settle(reserve(alice, "gpt-4o-mini", MESSAGES, 500), error="boom")
    second = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    assert Generation.objects.get(pk=second.generation_id).status == "pending"


def _age(reservation, seconds):
    Generation.objects.filter(pk=reservation.generation_id).update(
        created_at=timezone.now() - timedelta(seconds=seconds)
    )


def _lapse(reservation):
    """What a killed worker leaves: a lease nobody renews any more."""
    Generation.objects.filter(pk=reservation.generation_id).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )


def test_a_renewed_reservation_holds_however_old_it_is(alice, dollar_model, settings):
    """Age alone never releases a hold: a call past its deadline may still be settling."""
    settings.OPENAI_DEADLINE = 10
    set_budget(alice, "1.50")
    live = reserve(alice, dollar_model, MESSAGES, 100)
    _age(live, 3600)
    limits.renew_lease(live)
    with pytest.raises(UsageLimitReached):
        reserve(alice, dollar_model, MESSAGES, 100)
    assert Generation.objects.get(pk=live.generation_id).status == "pending"


def test_a_reservation_whose_lease_lapsed_is_abandoned_and_stops_holding(alice, dollar_model):
    set_budget(alice, "1.00")
    stuck = reserve(alice, dollar_model, MESSAGES, 100)
    with pytest.raises(UsageLimitReached):
        reserve(alice, dollar_model, MESSAGES, 100)
    _lapse(stuck)
    reserve(alice, dollar_model, MESSAGES, 100)
    assert Generation.objects.get(pk=stuck.generation_id).status == "abandoned"


def test_renewing_a_settled_reservation_changes_nothing(alice, dollar_model):
    reservation = reserve(alice, dollar_model, MESSAGES, 100)
    settle(reservation, error="failed")
    before = Generation.objects.get(pk=reservation.generation_id).lease_until
    limits.renew_lease(reservation)
    assert Generation.objects.get(pk=reservation.generation_id).lease_until == before


def test_an_estimate_never_costs_more_than_the_reservation(alice):
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 10)
    usage = limits.estimate_usage(reservation, "😀" * 100)  # 400 bytes, max_tokens 10
    assert usage.output_tokens == 10
    assert usage.input_tokens <= reservation.input_token_bound
    settled = settle(reservation, usage)
    assert settled.cost <= reservation.reserved_cost
    assert settled.cost_estimated and not settled.exceeded_reservation


def test_reported_usage_above_the_reservation_is_recorded_flagged_and_logged(alice, caplog):
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 10)
    settled = settle(reservation, TokenUsage(reservation.input_token_bound, 0, 5000))
    assert settled.output_tokens == 5000  # what the provider bills is what we record
    assert settled.cost > reservation.reserved_cost
    assert Generation.objects.get(pk=reservation.generation_id).exceeded_reservation
    assert "Reservation bound violated" in caplog.text


def test_one_users_spend_never_limits_another(alice, bob, dollar_model):
    set_budget(alice, "1.00")
    set_budget(bob, "1.00")
    reserve(alice, dollar_model, MESSAGES, 100)  # alice's whole budget
    with pytest.raises(UsageLimitReached):
        reserve(alice, dollar_model, MESSAGES, 100)
    bobs = reserve(bob, dollar_model, MESSAGES, 100)  # bob's is untouched
    assert Generation.objects.get(pk=bobs.generation_id).user == bob


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL row locks")
@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_overshoot_the_budget(django_user_model, dollar_model):
    """N threads on N connections reserve at once against a budget that fits exactly k calls."""
    threads_count, k = 24, 7
    user = django_user_model.objects.create_user("racer", password="x")
    set_budget(user, f"{k}.00")
    barrier = threading.Barrier(threads_count)
    outcomes: list[str] = []
    lock = threading.Lock()

    def race():
        try:
            barrier.wait(timeout=30)
            try:
                reservation = reserve(user, dollar_model, MESSAGES, 100)
            except UsageLimitReached:
                result = "refused"
            else:
                # Settle at the worst case: the most a call can really cost.
                settle(reservation, TokenUsage(reservation.input_token_bound, 0, 100))
                result = "ok"
            with lock:
                outcomes.append(result)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=race) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["ok"] * k + ["refused"] * (threads_count - k)
    spend = limits.spend_for(user.usage_account, limits.cycle_for(user.usage_account))
    assert spend.settled_cost == Decimal(k)
    assert spend.settled_cost <= user.usage_account.effective_budget
    assert Generation.objects.filter(user=user, status="pending").count() == 0


def test_the_spend_read_covers_a_whole_31_day_cycle_and_nothing_before_it(alice):
    """reserve() reads the days before it knows the cycle: the longest cycle must fit."""
    set_budget(alice, "10.00")
    UsageAccount.objects.filter(user=alice).update(billing_anchor=date(2025, 1, 1))
    for day, cost in [(date(2025, 12, 31), "5"), (date(2026, 1, 1), "1"), (date(2026, 1, 31), "2")]:
        DailyUsage.objects.create(
            user=alice, day=day, model="m", generations=1, cost=cost, charge=cost
        )
    end_of_january = datetime(2026, 1, 31, 23, 0, tzinfo=UTC)
    with transaction.atomic():
        account, spend, _, _, _ = limits._locked_spend(alice.pk, end_of_january)
    assert (spend.cycle.start_date, spend.cycle.end_date) == (date(2026, 1, 1), date(2026, 2, 1))
    assert (spend.settled_cost, spend.settled_messages) == (Decimal(3), 2)
    assert account.effective_budget == Decimal("10.00")


def test_a_user_without_a_usage_account_gets_one_on_the_first_message(alice):
    UsageAccount.objects.filter(user=alice).delete()
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 50)
    settle(reservation, TokenUsage(10, 0, 5))
    assert UsageAccount.objects.get(user=alice).billing_anchor == alice.date_joined.date()
    assert Generation.objects.get(pk=reservation.generation_id).status == "ok"


@pytest.mark.django_db(transaction=True)
def test_a_failed_statement_rolls_the_reservation_back_and_the_connection_stays_usable(
    alice, monkeypatch
):
    """A batch that fails half way (here: the insert) leaves nothing behind."""
    monkeypatch.setattr(sql, "INSERT_SQL", sql.INSERT_SQL.replace(sql.GENERATION, "no_such"))
    with pytest.raises(DatabaseError, match="no_such"):  # Django's class, on both databases
        reserve(alice, "gpt-4o-mini", MESSAGES, 50)
    monkeypatch.undo()
    assert not connection.in_atomic_block
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 50)
    assert Generation.objects.filter(user=alice).count() == 1
    settle(reservation, TokenUsage(10, 0, 5))
    assert DailyUsage.objects.get(user=alice).generations == 1


def test_the_query_log_sees_every_ledger_statement(alice):
    """DEBUG's query log and CaptureQueriesContext miss nothing, pipelined or not."""
    with CaptureQueriesContext(connection) as queries:
        settle(reserve(alice, "gpt-4o-mini", MESSAGES, 50), TokenUsage(10, 0, 5))
    logged = " ".join(query["sql"] for query in queries.captured_queries)
    assert "INSERT INTO usage_generation" in logged
    assert "UPDATE usage_generation" in logged
    assert "INSERT INTO usage_dailyusage" in logged


def at(monkeypatch, moment):
    monkeypatch.setattr(django_timezone, "now", lambda: moment.astimezone(UTC))


def test_a_call_in_flight_at_the_end_of_a_cycle_is_charged_to_the_cycle_it_began_in(
    alice, settings, monkeypatch, posthog_capture, openai_mock
):
    """Calls in flight when a cycle ended were charged to the next one: the old cycle showed
    $1 of the $4 used in it. Kathmandu (+05:45): its midnight is at no whole UTC hour."""
    zone = ZoneInfo("Asia/Kathmandu")
    settings.USAGE_TIME_ZONE = zone
    UsageAccount.objects.filter(user=alice).update(billing_anchor=date(2026, 3, 15))
    old = cycle_containing(15, date(2026, 4, 14), zone)
    new = cycle_containing(15, date(2026, 4, 15), zone)
    assert old.end == new.start == datetime(2026, 4, 15, tzinfo=zone)

    at(monkeypatch, datetime(2026, 4, 14, 23, 59, 50, tzinfo=zone))  # reserved in the old cycle
    turn = services.start_turn(alice, "Just before midnight")
    at(monkeypatch, datetime(2026, 4, 15, 0, 0, 10, tzinfo=zone))  # answered in the new one
    answer = async_to_sync(services.answer)(turn)
    cost = Generation.objects.get(pk=answer.generation_id).charge
    assert cost > 0

    account = UsageAccount.objects.get(user=alice)
    assert limits.spend_for(account, old).settled_cost == cost  # reserve() and alerts
    assert limits.spend_for(account, new).settled_cost == 0
    assert reports.report_for(alice, old).totals.cost == cost  # the usage page
    assert reports.report_for(alice, new).totals.cost == 0
    client = Client()
    client.force_login(alice)
    exported = streamed(client.get("/usage/export.csv?cycle=2026-04-14")).decode()
    assert str(answer.generation_id) in exported
    assert str(answer.generation_id) not in streamed(client.get("/usage/export.csv")).decode()
    # PostHog's copy is dated when the call was reserved, so its report agrees.
    [event] = posthog_capture.generations()
    assert datetime.fromisoformat(event["timestamp"]) == datetime(
        2026, 4, 14, 23, 59, 50, tzinfo=zone
    )


def test_the_message_limit_refusal_counts_what_the_rule_counts(alice, dollar_model):
    """The rule counts messages being answered; the text said "9 of 10" when it refused."""
    set_budget(alice, "0", message_limit=2)
    settle(reserve(alice, dollar_model, MESSAGES, 1), TokenUsage(0, 0, 1))
    reserve(alice, dollar_model, MESSAGES, 1)  # in flight
    with pytest.raises(UsageLimitReached) as refused:
        reserve(alice, dollar_model, MESSAGES, 1)
    assert "you have used 2 of your 2 messages this cycle (1 still being answered)" in str(
        refused.value
    )
    assert refused.value.as_dict()["messages"] == 2


def test_the_raw_statements_name_every_column_of_their_tables():
    """The hot path's SQL lists columns by hand: a new model field must be placed in it (or
    named here as one the statements leave to its default), or this fails."""
    from usage.models import Alert

    def columns(model):
        return {field.column for field in model._meta.concrete_fields}

    assert columns(Generation) == {*sql.GENERATION_FIELDS, *sql.SETTLED_FIELDS}
    assert columns(UsageAccount) == {*sql.ACCOUNT_FIELDS, "user_id"}
    left_to_their_default = {
        "attempts",
        "last_error",
        "email_sent_at",
        "webhook_sent_at",
        "delivered_at",
        "dismissed_at",
    }
    assert columns(Alert) == {*sql.ALERT_FIELDS, *left_to_their_default}


def test_a_generation_keeps_the_markup_it_was_reserved_with(alice, settings):
    """The charge is cost x (1 + markup/100), rounded half-up to 6 places, with the markup
    in force when the call was reserved: changing it mid-call or later changes nothing."""
    settings.BILLING_MARKUP_PERCENT = Decimal("20")
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    settings.BILLING_MARKUP_PERCENT = Decimal("50")  # changed while the call runs
    settled = settle(reservation, TokenUsage(1000, 0, 1000))  # cost $0.00075
    assert settled.cost == Decimal("0.00075")
    assert settled.charge == Decimal("0.0009")  # x 1.2, not x 1.5
    row = Generation.objects.get(pk=reservation.generation_id)
    assert (row.markup_percent, row.charge) == (Decimal("20"), Decimal("0.0009"))
    later = settle(reserve(alice, "gpt-4o-mini", MESSAGES, 500), TokenUsage(1000, 0, 1000))
    assert later.charge == Decimal("0.001125")  # the new markup for the new call only
    assert Generation.objects.get(pk=reservation.generation_id).charge == Decimal("0.0009")
    day = DailyUsage.objects.get(user=alice)
    assert (day.cost, day.charge) == (Decimal("0.0015"), Decimal("0.002025"))


def test_budgets_hold_and_count_the_users_charge(alice, dollar_model, settings):
    """With a 100 % markup a call that can cost $1.00 can be charged $2.00: a $3.00 budget
    holds one such call in flight, not three."""
    settings.BILLING_MARKUP_PERCENT = Decimal("100")
    set_budget(alice, "3.00")
    first = reserve(alice, dollar_model, MESSAGES, 100)
    assert first.reserved_cost == Decimal("2.00")
    with pytest.raises(UsageLimitReached):
        reserve(alice, dollar_model, MESSAGES, 100)
    settle(first, TokenUsage(0, 0, 40))  # cost $0.40, charged $0.80
    spend = limits.spend_for(alice.usage_account, limits.cycle_for(alice.usage_account))
    assert spend.settled_cost == Decimal("0.80")
    reserve(alice, dollar_model, MESSAGES, 100)  # $0.80 + $2.00 fits in $3.00


@pytest.mark.parametrize("budget", ["5.00", "0"], ids=["watched by alerts", "no cap"])
def test_a_settle_says_where_the_user_stands_after_it(alice, bob, budget):
    """What the chat shows after an answer: this call settled, the others still held."""
    set_budget(alice, budget)
    earlier = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    settle(earlier, TokenUsage(10, 0, 20))
    held = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    reserve(bob, "gpt-4o-mini", MESSAGES, 500)  # someone else's: not counted
    reservation = reserve(alice, "gpt-4o-mini", MESSAGES, 500)
    with CaptureQueriesContext(connection) as queries:
        settlement, extra, spend = limits.settle_with(
            reservation, TokenUsage(30, 0, 40), standing=True
        )
    charges = Generation.objects.filter(user=alice, status="ok").values_list("charge", flat=True)
    assert (
        spend.settled_cost
        == sum(charges)
        == settlement.charge + Generation.objects.get(pk=earlier.generation_id).charge
    )
    assert (spend.pending_messages, spend.pending_cost) == (1, held.reserved_cost)
    assert spend.budget == Decimal(budget) and extra == []
    reads = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert len(reads) == 2  # the account and the spend, once
    assert limits.settle_with(reservation, TokenUsage(30, 0, 40))[2] is None  # not asked
