import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.helpers import set_budget, streamed
from usage.limits import TokenUsage, reserve, settle
from usage.models import Generation, ModelPrice, UsageAccount

MESSAGES = [{"role": "user", "content": "hello"}]


def spend(user, model="gpt-4o", tokens=(1000, 0, 1000)):
    return settle(reserve(user, model, MESSAGES, 500), TokenUsage(*tokens))


def test_a_non_staff_user_gets_no_admin(alice_client):
    response = alice_client.get("/admin/auth/user/")
    assert response.status_code == 302
    assert "/admin/login/" in response.url


def test_the_user_list_shows_this_cycles_usage_and_budget(staff_client, alice, bob):
    set_budget(alice, "0.02")
    spend(alice)  # 1000 x 2.50 + 1000 x 10.00 per 1M = $0.0125
    page = staff_client.get("/admin/auth/user/?q=alice").content.decode()
    assert '<td class="field-messages_this_cycle">1</td>' in page
    assert "$0.0125" in page
    assert "62.5%" in page
    assert "$0.02" in page


def test_near_and_over_budget_filters(staff_client, alice, bob, outsider):
    set_budget(alice, "1.00")
    spend(alice, tokens=(0, 0, 85_000))  # 85,000 x $10 per 1M = $0.85 = 85%
    spend(bob)  # $0.0125
    set_budget(bob, "0.01")  # 125%: staff lowered the budget after the spend

    def listed(query):
        page = staff_client.get(f"/admin/auth/user/{query}").content.decode()
        return set(re.findall(r'field-username"><a [^>]*>([^<]+)</a>', page))

    assert listed("?budget=near") == {"alice", "bob"}
    assert listed("?budget=over") == {"bob"}
    assert "outsider" in listed("")


def test_search_by_username_and_email(staff_client, alice, bob):
    page = staff_client.get("/admin/auth/user/?q=bob@example").content.decode()
    assert ">bob<" in page and ">alice<" not in page


def _list_queries(client):
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/admin/auth/user/").status_code == 200
    return len(queries.captured_queries)


def test_the_user_list_query_count_is_constant(staff_client, django_user_model):
    def add_users(n, start):
        for i in range(start, start + n):
            user = django_user_model.objects.create_user(f"user{i}", f"u{i}@example.com", "x")
            spend(user, "gpt-4o-mini", (100, 0, 10))

    add_users(5, 0)
    few = _list_queries(staff_client)
    add_users(45, 5)
    many = _list_queries(staff_client)
    assert few == many


def test_the_user_page_shows_limits_usage_and_recent_generations(staff_client, alice, settings):
    settings.POSTHOG_PROJECT_ID = "4242"
    settings.POSTHOG_API_HOST = "https://us.posthog.com"
    spend(alice, "gpt-4o-mini")
    page = staff_client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()
    assert 'name="usage_account-0-budget_usd"' in page
    assert 'name="usage_account-0-billing_anchor"' in page
    assert "1 messages" in page
    assert "gpt-4o-mini" in page
    assert f"https://us.posthog.com/project/4242/person/{alice.pk}" in page


def test_staff_can_change_a_users_budget(staff_client, alice):
    page = staff_client.get(f"/admin/auth/user/{alice.pk}/change/")
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and not isinstance(v, list)}
    data.update(
        {
            "username": "alice",
            "email": "alice@example.com",
            "date_joined_0": alice.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": alice.date_joined.strftime("%H:%M:%S"),
            "usage_account-TOTAL_FORMS": "1",
            "usage_account-INITIAL_FORMS": "1",
            "usage_account-MIN_NUM_FORMS": "0",
            "usage_account-MAX_NUM_FORMS": "1",
            "usage_account-0-id": alice.usage_account.pk,
            "usage_account-0-user": alice.pk,
            "usage_account-0-billing_anchor": "2026-01-31",
            "usage_account-0-budget_usd": "12.50",
            "usage_account-0-message_limit": "100",
        }
    )
    data.pop("password", None)
    response = staff_client.post(f"/admin/auth/user/{alice.pk}/change/", data)
    assert response.status_code == 302, response.context["errors"] if response.context else ""
    alice.usage_account.refresh_from_db()
    assert alice.usage_account.budget_usd == Decimal("12.50")
    assert alice.usage_account.message_limit == 100


def test_generations_are_read_only_and_export_as_csv(staff_client, alice):
    first = spend(alice, "gpt-4o-mini")
    spend(alice, "gpt-4o")
    assert staff_client.get("/admin/usage/generation/").status_code == 200
    page = staff_client.get(f"/admin/usage/generation/{first.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    response = staff_client.post(
        "/admin/usage/generation/",
        {"action": "export_csv", "_selected_action": [str(first.pk)]},
    )
    content = streamed(response).decode()
    rows = list(csv.DictReader(io.StringIO(content)))
    assert [r["generation_id"] for r in rows] == [str(first.pk)]
    assert rows[0]["user"] == "alice"
    assert (
        staff_client.get("/admin/usage/generation/?status__exact=ok&model=gpt-4o").status_code
        == 200
    )


def test_model_prices_cannot_be_negative(staff_client):
    response = staff_client.post(
        "/admin/usage/modelprice/add/",
        {
            "model": "bad",
            "input_per_1m": "-1",
            "cached_input_per_1m": "0",
            "output_per_1m": "1",
            "active": "on",
        },
    )
    assert response.status_code == 200
    assert "Prices cannot be negative." in response.content.decode()
    assert not ModelPrice.objects.filter(model="bad").exists()
    response = staff_client.post(
        "/admin/usage/modelprice/add/",
        {
            "model": "good",
            "input_per_1m": "1",
            "cached_input_per_1m": "0.5",
            "output_per_1m": "2",
            "active": "on",
        },
    )
    assert response.status_code == 302
    assert ModelPrice.objects.get(model="good").cached_input_per_1m == Decimal("0.5")


def test_admin_times_are_in_the_billing_zone_and_say_so(staff_client, alice, settings):
    from zoneinfo import ZoneInfo

    from usage import admin as usage_admin

    generation = spend(alice, "gpt-4o-mini")
    Generation.objects.filter(pk=generation.pk).update(
        created_at=datetime(2026, 11, 20, 23, 30, tzinfo=UTC)
    )
    settings.USAGE_TIME_ZONE = ZoneInfo("Asia/Tokyo")  # 08:30 the next day there
    listing = staff_client.get("/admin/usage/generation/").content.decode()
    assert f"Created ({usage_admin.ZONE})" in listing  # the process's zone, named
    assert "2026-11-21 08:30:00" in listing
    page = staff_client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()
    assert f"When ({usage_admin.ZONE})" in page and "2026-11-21 08:30" in page


def test_a_users_page_starts_with_the_limits_and_this_cycle(staff_client, alice):
    page = staff_client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()
    limits, cycle, password = (
        page.index("Usage limits and billing"),
        page.index("This cycle"),
        page.index("Password"),
    )
    assert limits < cycle < password


def test_support_actions_change_limits_and_are_logged(staff_client, alice, openai_mock):
    from django.contrib.admin.models import LogEntry
    from django.test import Client
    from django.utils import timezone

    changelist = "/admin/auth/user/"
    selected = {"_selected_action": [str(alice.pk)], "index": "0"}
    staff_client.post(changelist, {"action": "raise_budget", "amount": "2.50", **selected})
    alice.usage_account.refresh_from_db()
    assert alice.usage_account.budget_usd == Decimal("7.50")  # the default $5.00 + $2.50
    UsageAccount.objects.filter(user=alice).update(
        billing_anchor=timezone.localdate() - timedelta(days=40)
    )
    staff_client.post(changelist, {"action": "reset_anchor", **selected})
    alice.usage_account.refresh_from_db()
    assert alice.usage_account.billing_anchor == timezone.localdate()
    staff_client.post(changelist, {"action": "block", **selected})
    client = Client()
    client.force_login(alice)
    refused = client.post("/api/chat/", {"prompt": "hi"}, content_type="application/json")
    assert (refused.status_code, refused.json()["code"]) == (403, "account_blocked")
    staff_client.post(changelist, {"action": "unblock", **selected})
    ok = client.post("/api/chat/", {"prompt": "hi"}, content_type="application/json")
    assert ok.status_code == 200
    logged = [e.change_message for e in LogEntry.objects.filter(object_id=str(alice.pk))]
    assert len(logged) == 4
    assert any("Budget raised by $2.50 to $7.50" in m for m in logged)


def test_the_generations_list_is_compact_formatted_and_titled_by_username(staff_client, alice):
    generation = spend(alice, "gpt-4o-mini")
    listing = staff_client.get("/admin/usage/generation/").content.decode()
    assert "1,000 / 1,000" in listing  # tokens in / out
    assert "0.0007500000" not in listing and "$0.0008" in listing
    assert "chatusage/admin.css" in listing  # right-aligned numbers
    detail = staff_client.get(f"/admin/usage/generation/{generation.pk}/change/").content.decode()
    assert "gpt-4o-mini for alice (ok)" in detail


def test_the_admin_index_sums_up_this_cycle(staff_client, alice, bob):
    set_budget(bob, "0.01")
    spend(alice, "gpt-4o", (1000, 0, 2000))  # $0.0225
    spend(bob, "gpt-4o-mini", (1000, 0, 1000))  # $0.00075 …
    from usage.models import DailyUsage

    DailyUsage.objects.filter(user=bob).update(charge=Decimal("0.012"))  # … made 120%
    page = staff_client.get("/admin/").content.decode()
    assert 'id="cycle-summary"' in page and "Top spenders" in page
    assert "1 at or over it" in page
    assert page.index(">alice<") < page.index(">bob<")  # alice spent more


def _viewer(django_user_model):
    """Staff who may look at users and nothing else (auth.view_user only)."""
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", "viewer@example.com", "pw-viewer-1")
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_user"))
    return viewer


def test_staff_who_may_only_view_users_cannot_change_money(client, alice, django_user_model):
    """B5: with auth.view_user alone, staff raised a budget, blocked and reset an anchor."""
    client.force_login(_viewer(django_user_model))
    account = alice.usage_account
    before = (account.budget_usd, account.blocked, account.billing_anchor)
    listing = client.get("/admin/auth/user/").content.decode()
    assert 'value="raise_budget"' not in listing and 'value="block"' not in listing
    selected = {"_selected_action": [str(alice.pk)], "index": "0"}
    for action in ("raise_budget", "block", "reset_anchor"):
        client.post("/admin/auth/user/", {"action": action, "amount": "100", **selected})
    account.refresh_from_db()
    assert (account.budget_usd, account.blocked, account.billing_anchor) == before
    page = client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()
    assert 'name="usage_account-0-budget_usd"' not in page  # shown, not editable


def test_the_budget_permission_opens_the_money_actions(client, alice, django_user_model):
    from django.contrib.auth.models import Permission

    viewer = _viewer(django_user_model)
    viewer.user_permissions.add(Permission.objects.get(codename="change_budget"))
    client.force_login(viewer)
    selected = {"_selected_action": [str(alice.pk)], "index": "0"}
    client.post("/admin/auth/user/", {"action": "raise_budget", "amount": "1", **selected})
    alice.usage_account.refresh_from_db()
    assert alice.usage_account.budget_usd == Decimal("6.00")


def test_raising_the_budget_of_a_user_with_no_cap_leaves_no_cap(staff_client, alice):
    set_budget(alice, "0")  # 0 = no cap
    selected = {"_selected_action": [str(alice.pk)], "index": "0"}
    response = staff_client.post(
        "/admin/auth/user/", {"action": "raise_budget", "amount": "2.50", **selected}, follow=True
    )
    alice.usage_account.refresh_from_db()
    assert alice.usage_account.effective_budget == 0
    assert "no cap, so no budget to raise" in response.content.decode()


def test_the_block_action_says_what_it_does(staff_client):
    listing = staff_client.get("/admin/auth/user/").content.decode()
    assert "Block: pause chat" in listing
    assert "Set budget to 0" not in listing  # budget 0 means no cap, the opposite


def test_near_follows_the_alert_thresholds_everywhere(staff_client, alice, bob, settings):
    """ "Near" was 80 % in five places, whatever USAGE_ALERT_THRESHOLDS said."""
    from django.test import Client

    from tests.helpers import settled_today

    settings.USAGE_ALERT_THRESHOLDS = [Decimal(50), Decimal(90)]
    set_budget(alice, "1.00")
    settled_today(alice, "0.85")  # past 80, below 90: not near any more
    set_budget(bob, "1.00")
    settled_today(bob, "1.00")  # exactly 100 %: over, in admin as on bob's own page

    def listed(query):
        page = staff_client.get(f"/admin/auth/user/{query}").content.decode()
        return set(re.findall(r'field-username"><a [^>]*>([^<]+)</a>', page))

    assert listed("?budget=near") == {"bob"}  # near or over, from 90 %
    assert listed("?budget=over") == {"bob"}
    index = staff_client.get("/admin/").content.decode()
    assert "0 near their budget</a> (90% or more)" in index and "1 at or over it" in index
    client = Client()
    client.force_login(alice)
    assert client.get("/api/usage/").json()["budget"]["state"] == "ok"
    client.force_login(bob)
    assert client.get("/api/usage/").json()["budget"]["state"] == "over"


def test_staff_see_cost_charge_and_margin(staff_client, alice, settings):
    settings.BILLING_MARKUP_PERCENT = Decimal("20")
    generation = spend(alice, "gpt-4o", (1000, 0, 1000))  # cost $0.0125, charged $0.015
    assert (generation.cost, generation.charge) == (Decimal("0.0125"), Decimal("0.015"))
    listing = staff_client.get("/admin/auth/user/?q=alice").content.decode()
    assert '<td class="field-charged_this_cycle">$0.0150</td>' in listing
    assert '<td class="field-cost_this_cycle">$0.0125</td>' in listing
    assert '<td class="field-margin_this_cycle">$0.0025</td>' in listing
    page = staff_client.get(f"/admin/auth/user/{alice.pk}/change/").content.decode()
    assert "$0.0150 charged (provider cost $0.0125, margin $0.0025)" in page
    generations = staff_client.get("/admin/usage/generation/").content.decode()
    assert "$0.0150 (+20%)" in generations
    index = staff_client.get("/admin/").content.decode()
    assert "(provider cost $0.0125, margin $0.0025)" in index
    exported = staff_client.post(
        "/admin/usage/generation/",
        {"action": "export_csv", "_selected_action": [str(generation.pk)], "index": "0"},
    )
    [row] = csv.DictReader(io.StringIO(streamed(exported).decode()))
    assert (row["charge_usd"], row["cost_usd"], row["markup_percent"]) == (
        "0.0150000000",
        "0.0125000000",
        "20.0000",
    )


def test_restarting_a_cycle_ends_it_early_and_keeps_every_earlier_cycle(
    staff_client, alice, alice_client, monkeypatch
):
    """A restart used to re-anchor every past cycle: earlier cycles and their CSVs answered
    400 and their spend belonged to no cycle. Past cycles never change."""
    from datetime import date

    from django.utils import timezone as django_timezone

    from billing.models import Statement
    from billing.statements import close_cycles
    from usage.models import DailyUsage

    today = date(2026, 11, 27)
    monkeypatch.setattr(django_timezone, "now", lambda: datetime(2026, 11, 27, 12, tzinfo=UTC))
    UsageAccount.objects.filter(user=alice).update(billing_anchor=date(2026, 9, 10))
    for day, charge in [(date(2026, 9, 20), "0.50"), (date(2026, 11, 20), "0.83")]:
        DailyUsage.objects.create(
            user=alice, day=day, model="gpt-4o-mini", generations=1, cost=charge, charge=charge
        )
    selected = {"_selected_action": [str(alice.pk)], "index": "0", "action": "reset_anchor"}
    staff_client.post("/admin/auth/user/", selected)
    account = UsageAccount.objects.get(user=alice)
    assert account.billing_anchor == today

    page = alice_client.get("/usage/")
    cycles = [c.start_date for c in page.context["cycles"]]
    assert cycles == [today, date(2026, 11, 10), date(2026, 10, 10), date(2026, 9, 10)]
    ended_early = alice_client.get("/api/usage/?cycle=2026-11-10")
    assert ended_early.status_code == 200
    assert ended_early.json()["estimatedCost"] == 0.83  # still its own
    assert ended_early.json()["cycle"]["end"].startswith("2026-11-27")
    assert alice_client.get("/usage/export.csv?cycle=2026-09-20").status_code == 200

    closed = close_cycles(today).created
    assert [(s.cycle_start, s.cycle_end, s.total) for s in closed] == [
        (date(2026, 9, 10), date(2026, 10, 10), Decimal("0.50")),
        (date(2026, 10, 10), date(2026, 11, 10), Decimal("0")),
        (date(2026, 11, 10), today, Decimal("0.83")),
    ]
    staff_client.post("/admin/auth/user/", selected)  # again the same day: nothing changes
    assert Statement.objects.count() == 3 and alice.past_anchors.count() == 1
