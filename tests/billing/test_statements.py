"""Closed-cycle statements: one per user per ended cycle, numbered, frozen, equal to the
ledger's charges, and late usage on the next one."""

import csv
import io
import random
import threading
from datetime import date, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client

from billing.models import ClosedStatement, Statement, StatementLine
from billing.statements import close_cycles
from usage.models import DailyUsage, UsageAccount

ANCHOR = date(2026, 9, 10)
USERS_AT_ONCE = 40  # cycles: 10 Sep – 10 Oct, 10 Oct – 10 Nov, ...


def anchored(user):
    UsageAccount.objects.filter(user=user).update(billing_anchor=ANCHOR)


def used(user, day, charge, model="gpt-4o-mini", messages=1):
    DailyUsage.objects.create(
        user=user,
        day=day,
        model=model,
        generations=messages,
        output_tokens=100 * messages,
        cost=Decimal(charge),
        charge=Decimal(charge),
    )


def run(*args):
    out = StringIO()
    call_command("close_cycles", *args, stdout=out)
    return out.getvalue()


def test_each_ended_cycle_gets_one_numbered_statement_equal_to_its_charges(alice, bob):
    anchored(alice)
    anchored(bob)
    used(alice, date(2026, 9, 12), "0.50")
    used(alice, date(2026, 9, 30), "0.25", model="gpt-4o")
    used(alice, date(2026, 10, 11), "1.00")  # the next cycle
    used(bob, date(2026, 10, 1), "0.10")
    output = run("--as-of", "2026-10-10")
    assert "Closed 2 statement(s)" in output
    [first, second] = Statement.objects.order_by("number")
    assert [first.number, second.number] == ["CU-2026-000001", "CU-2026-000002"]
    mine = Statement.objects.get(user=alice)
    assert (mine.cycle_start, mine.cycle_end) == (date(2026, 9, 10), date(2026, 10, 10))
    assert mine.total == Decimal("0.75")
    assert {(line.model, line.charge) for line in mine.lines.all()} == {
        ("gpt-4o", Decimal("0.25")),
        ("gpt-4o-mini", Decimal("0.50")),
    }
    assert "Closed 0 statement(s)" in run("--as-of", "2026-10-10")  # idempotent


def test_a_quiet_cycle_gets_a_zero_statement_only_after_a_first_one(alice, bob):
    anchored(alice)
    anchored(bob)  # bob never chats: no statements at all
    used(alice, date(2026, 9, 12), "0.50")
    run("--as-of", "2026-11-10")  # two cycles ended; alice used nothing in the second
    assert [s.total for s in Statement.objects.filter(user=alice).order_by("cycle_start")] == [
        Decimal("0.50"),
        Decimal("0"),
    ]
    assert not Statement.objects.filter(user=bob).exists()


def test_a_closed_statement_never_changes(alice):
    anchored(alice)
    used(alice, date(2026, 9, 12), "0.50")
    run("--as-of", "2026-10-10")
    statement = Statement.objects.get()
    statement.total = Decimal("0")
    with pytest.raises(ClosedStatement):
        statement.save()
    with pytest.raises(ClosedStatement):
        statement.lines.first().delete()
    assert Statement.objects.get().total == Decimal("0.50")


def test_usage_recorded_for_a_closed_cycle_goes_on_the_next_statement(alice):
    """A late settle (or a backfill) after its cycle's statement closed."""
    anchored(alice)
    used(alice, date(2026, 9, 12), "0.50")
    run("--as-of", "2026-10-10")
    used(alice, date(2026, 10, 9), "0.20")  # late, for the closed cycle
    used(alice, date(2026, 10, 20), "1.00")
    run("--as-of", "2026-11-10")
    first, second = Statement.objects.order_by("cycle_start")
    assert first.total == Decimal("0.50")  # unchanged
    adjustment = second.lines.get(kind=StatementLine.Kind.ADJUSTMENT)
    assert (adjustment.charge, adjustment.adjusts) == (Decimal("0.20"), first)
    assert first.number in adjustment.description
    assert second.total == Decimal("1.20")
    run("--as-of", "2026-12-10")  # adjusted once, never again
    third = Statement.objects.order_by("cycle_start").last()
    assert not third.lines.filter(kind=StatementLine.Kind.ADJUSTMENT).exists()


def test_statement_totals_equal_the_ledger_over_random_usage(alice, bob):
    rng = random.Random(7)
    for user in (alice, bob):
        anchored(user)
        for _ in range(60):
            day = ANCHOR + timedelta(days=rng.randrange(0, 120))
            charge = Decimal(rng.randrange(0, 10**6)) / Decimal(10**6)
            DailyUsage.objects.update_or_create(
                user=user,
                day=day,
                model=rng.choice(["a", "b", "c"]),
                defaults={"generations": 1, "cost": charge, "charge": charge},
            )
    run("--as-of", "2027-01-10")
    for user in (alice, bob):
        statements = Statement.objects.filter(user=user)
        closed_days = DailyUsage.objects.filter(user=user, day__lt=date(2027, 1, 10))
        assert sum(s.total for s in statements) == sum(d.charge for d in closed_days)
        for s in statements:
            assert s.total == sum(line.charge for line in s.lines.all())


def test_the_user_sees_their_statements_and_nobody_elses(alice, bob):
    anchored(alice)
    used(alice, date(2026, 9, 12), "0.50")
    run("--as-of", "2026-10-10")
    number = Statement.objects.get().number
    client = Client()
    client.force_login(alice)
    listing = client.get("/billing/").content.decode()
    assert number in listing and "$0.50" in listing
    page = client.get(f"/billing/statements/{number}/")
    assert page.status_code == 200 and "gpt-4o-mini" in page.content.decode()
    data = client.get(f"/billing/statements/{number}/?format=json").json()
    assert (data["number"], data["total_usd"]) == (number, "0.500000")
    assert data["cycle"] == {"start": "2026-09-10", "end": "2026-10-10", "time_zone": "UTC"}
    exported = client.get(f"/billing/statements/{number}/?format=csv")
    [row] = csv.DictReader(io.StringIO(exported.content.decode()))
    assert (row["model"], row["charge_usd"]) == ("gpt-4o-mini", "0.500000")
    outsider = Client()
    outsider.force_login(bob)
    assert outsider.get(f"/billing/statements/{number}/").status_code == 404
    assert outsider.get(f"/billing/statements/{number}/?format=json").status_code == 404
    assert Client().get("/billing/").status_code == 302  # log in first


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL row locks")
@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_give_one_statement_per_cycle_and_no_gap(django_user_model):
    users = [
        django_user_model.objects.create_user(f"u{n}", f"u{n}@example.com", "pw-Long-2026")
        for n in range(USERS_AT_ONCE)
    ]
    for user in users:
        anchored(user)
        used(user, date(2026, 9, 12), "0.10")
    barrier = threading.Barrier(2)

    errors = []

    def close():
        barrier.wait()
        try:
            close_cycles(date(2026, 10, 10))
        except Exception as exc:  # a duplicate number, say: the test reports it
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=close) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    numbers = sorted(Statement.objects.values_list("number", flat=True))
    assert numbers == [f"CU-2026-{n:06d}" for n in range(1, USERS_AT_ONCE + 1)]  # no gap
    assert Statement.objects.values("user").distinct().count() == USERS_AT_ONCE
    assert not errors, errors


def test_a_staff_credit_goes_on_the_next_statement_and_into_the_users_history(alice, staff_client):
    from django.contrib.admin.models import LogEntry

    anchored(alice)
    used(alice, date(2026, 9, 12), "0.50")
    response = staff_client.post(
        "/admin/billing/correction/add/",
        {"user": alice.pk, "amount": "-0.30", "reason": "Outage on 11 Sep"},
    )
    assert response.status_code == 302
    run("--as-of", "2026-10-10")
    statement = Statement.objects.get()
    credit = statement.lines.get(kind=StatementLine.Kind.ADJUSTMENT)
    assert (credit.charge, credit.description) == (Decimal("-0.30"), "Credit: Outage on 11 Sep")
    assert statement.total == Decimal("0.20")
    history = LogEntry.objects.get(object_id=str(alice.pk), content_type__model="user")
    history = history.change_message
    assert "Credited 0.30 USD: Outage on 11 Sep" in history
    run("--as-of", "2026-11-10")  # applied once
    later = Statement.objects.order_by("cycle_start").last()
    assert not later.lines.filter(description__startswith="Credit").exists()


def test_staff_export_a_cycles_statements_for_accounting(alice, bob, staff_client):
    for user in (alice, bob):
        anchored(user)
        used(user, date(2026, 9, 12), "0.50")
    run("--as-of", "2026-10-10")
    ids = [str(pk) for pk in Statement.objects.values_list("pk", flat=True)]
    response = staff_client.post(
        "/admin/billing/statement/?cycle_start=2026-09-10",
        {"action": "export_csv", "_selected_action": ids, "index": "0"},
    )
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert {r["username"] for r in rows} == {"alice", "bob"}
    assert {r["total_usd"] for r in rows} == {"0.5000000000"}


def test_reconcile_reports_a_statement_the_ledger_no_longer_matches(alice, posthog_query):
    from django.core.management.base import CommandError

    anchored(alice)
    used(alice, date(2026, 9, 12), "0.50")
    run("--as-of", "2026-10-10")
    DailyUsage.objects.filter(user=alice).update(charge=Decimal("0.40"))  # rewritten history
    out = StringIO()
    with pytest.raises(CommandError, match="1 difference"):
        call_command("reconcile_usage", stdout=out)
    assert "statement CU-2026-000001 (alice): total 0.5" in out.getvalue()
