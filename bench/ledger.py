"""reserve() + settle() per call, the ledger's cost on every message (SQLite or PostgreSQL).

Two users side by side, call by call: one with a budget (the default: settles also watch for
alerts, which locks the account) and one without a cap; and the uncapped call settled as a
chat turn settles (inside the answer's transaction), with metered billing off and on, for
what the meter-event outbox adds (in time, and in this process's CPU: the rest of the
time is PostgreSQL's). Beside them, one bare round trip
(`SELECT 1` through Django's cursor), the unit in which the database's part can be read on
any machine.
"""

import contextlib
import statistics
import sys
import time

from bench.common import emit, postgres_database, setup_django, spread_ms, timed

CALLS = 500
WARM_UP = 30


def main(label="sqlite"):
    databases = postgres_database() if label == "postgres" else contextlib.nullcontext(None)
    with databases as url:
        setup_django(url)
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.db import connection

        from usage import limits
        from usage.models import UsageAccount

        budgeted = User.objects.create_user("budgeted")  # the default budget
        uncapped = User.objects.create_user("uncapped")
        UsageAccount.objects.filter(user=uncapped).update(budget_usd=0)
        messages = [{"role": "user", "content": "How much does the ledger cost per call?"}]
        usage = limits.TokenUsage(40, 0, 120)

        def call(user):
            reservation = limits.reserve(user, settings.DEMO_MODEL, messages, 500)
            limits.settle(reservation, usage, latency_ms=900, http_status=200)

        from django.db import transaction

        def chat_settle(metered: bool):
            # As a chat turn settles: in the transaction that saves the answer; with
            # metered billing the meter-event outbox row joins it (sending is left out).
            settings.BILLING_MODE = "metered" if metered else "off"
            reservation = limits.reserve(uncapped, settings.DEMO_MODEL, messages, 500)
            with transaction.atomic():
                limits.settle(reservation, usage, latency_ms=900, http_status=200)
            settings.BILLING_MODE = "off"

        settings.STRIPE_API_KEY = "sk_test_bench"
        settings.STRIPE_SEND_AFTER_COMMIT = False

        def round_trip():
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()

        def cpu_timed(fn):
            started = time.thread_time()
            wall = timed(fn)
            return wall, time.thread_time() - started

        samples = {"budgeted": [], "uncapped": [], "rt": [], "billing_off": [], "metered": []}
        cpu = {"billing_off": [], "metered": []}  # this process's, not PostgreSQL's
        for n in range(WARM_UP + CALLS):
            figures = (timed(lambda: call(budgeted)), timed(lambda: call(uncapped)))
            figures += (timed(round_trip),)
            off, on = cpu_timed(lambda: chat_settle(False)), cpu_timed(lambda: chat_settle(True))
            figures += (off[0], on[0])
            if n >= WARM_UP:
                for key, seconds in zip(samples, figures, strict=True):
                    samples[key].append(seconds)
                cpu["billing_off"].append(off[1])
                cpu["metered"].append(on[1])
        assert (
            limits.spend_for(
                budgeted.usage_account, limits.cycle_for(budgeted.usage_account)
            ).settled_messages
            == WARM_UP + CALLS
        )
        from billing.models import StripeOutbox

        outbox = StripeOutbox.objects.count()
        assert outbox == WARM_UP + CALLS, outbox  # one row per metered settle
    emit(
        bench="ledger",
        db=label,
        **spread_ms(samples["budgeted"], "alerting_"),
        **spread_ms(samples["uncapped"], "uncapped_"),
        **spread_ms(samples["rt"], "round_trip_"),
        **spread_ms(samples["billing_off"], "chat_settle_billing_off_"),
        **spread_ms(samples["metered"], "chat_settle_metered_"),
        metered_outbox_added_ms=round(
            (statistics.median(samples["metered"]) - statistics.median(samples["billing_off"]))
            * 1000,
            3,
        ),
        metered_outbox_added_cpu_ms=round(
            (statistics.median(cpu["metered"]) - statistics.median(cpu["billing_off"])) * 1000, 3
        ),
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
