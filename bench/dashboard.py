"""/usage/ render time for a heavy user, with 10^4 and then 10^6 generations in the ledger,
on PostgreSQL, from both sources.

1,000 users share the generations; the heavy one owns a tenth of them, spread over every day
of the last 90 days and eight models, with an error now and then: a real month's page (a
bar for every day, eight models in the split, earlier cycles). The ledger source reads the
daily rollups, so its time and number of SQL queries should not grow with the ledger. The
PostHog source asks a loopback PostHog query API (its own process, TCP_NODELAY) that answers
the heavy user's rows for the cycle, as PostHog would: cold (nothing cached) and warm.
"""

import json
import sys
from datetime import timedelta

from bench.common import emit, postgres_database, server_process, setup_django, spread_ms, timed

RENDERS = 30
USERS = 1000
MODELS = [
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4.1",
    "gpt-4.1-nano",
    "o4-mini",
    "gpt-5-mini",
    "chatusage-demo",
]

# Generation n: every tenth belongs to the heavy user; for them m = n / 10 walks through
# every (model, day) pair: model m % 8, day (m / 8) % 90 before today.
FILL_SQL = """
INSERT INTO usage_generation (
    id, user_id, conversation_id, model, provider, status, reserved_cost, input_tokens,
    cached_input_tokens, output_tokens, cost, charge, cost_estimated, exceeded_reservation,
    latency_ms, http_status, error, price_input_per_1m, price_cached_input_per_1m,
    price_output_per_1m, created_at, settled_at)
SELECT gen_random_uuid(),
       CASE WHEN n %% 10 = 0 THEN %(heavy)s ELSE %(first)s + (n %% %(others)s) END,
       NULL,
       (%(models)s::text[])[1 + (n / 10) %% 8],
       'openai',
       CASE WHEN n %% 97 = 0 THEN 'error' ELSE 'ok' END,
       0.005, 1000 + n %% 500, (n %% 3) * 100, 200 + n %% 300,
       CASE WHEN n %% 97 = 0 THEN 0 ELSE 0.0003 + (n %% 7) * 0.0001 END,
       CASE WHEN n %% 97 = 0 THEN 0 ELSE 0.0003 + (n %% 7) * 0.0001 END,
       false, false, 800, 200, '', 0.15, 0.075, 0.6,
       t - interval '2 seconds', t
FROM generate_series(%(start)s::bigint, %(stop)s - 1) AS n,
     LATERAL (SELECT now() - ((n / 80) %% 90) * interval '1 day'
                           - ((n * 7919) %% 80000) * interval '1 second' AS t) AS moment
"""

# What settle() would have added up, per (user, day, model).
ROLLUP_SQL = """
INSERT INTO usage_dailyusage (user_id, day, model, generations, errors, input_tokens,
                              cached_input_tokens, output_tokens, cost, charge)
SELECT user_id, (settled_at AT TIME ZONE 'UTC')::date, model,
       count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE status = 'error'),
       sum(input_tokens), sum(cached_input_tokens), sum(output_tokens), sum(cost), sum(charge)
FROM usage_generation GROUP BY 1, 2, 3
"""

# What PostHog's USAGE_QUERY answers for the heavy user's cycle.
POSTHOG_ROWS_SQL = """
SELECT to_char((settled_at AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD'), model,
       status = 'error', count(*), sum(input_tokens), sum(cached_input_tokens),
       sum(output_tokens), sum(cost)::float
FROM usage_generation
WHERE user_id = %s AND settled_at >= %s AND settled_at < %s
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


def main():
    with postgres_database() as url:
        setup_django(url)
        from django.contrib.auth.models import User
        from django.core.cache import cache
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext, override_settings
        from django.utils import timezone

        from usage.cycles import cycle_for
        from usage.models import DailyUsage, Generation, UsageAccount

        call_command("collectstatic", interactive=False, verbosity=0)
        anchor = (timezone.now() - timedelta(days=20)).date()
        User.objects.bulk_create([User(username=f"user{i}") for i in range(USERS)])
        users = list(User.objects.order_by("pk").values_list("pk", flat=True))
        UsageAccount.objects.bulk_create(
            [UsageAccount(user_id=pk, billing_anchor=anchor) for pk in users]
        )
        heavy = User.objects.get(pk=users[0])
        cycle = cycle_for(heavy.usage_account)
        client = Client()
        client.force_login(heavy)

        def fill(start, stop):
            with connection.cursor() as cursor:
                cursor.execute(
                    FILL_SQL,
                    {
                        "start": start,
                        "stop": stop,
                        "heavy": heavy.pk,
                        "first": users[1],
                        "others": USERS - 1,
                        "models": MODELS,
                    },
                )
                cursor.execute("DELETE FROM usage_dailyusage")
                cursor.execute(ROLLUP_SQL)
                cursor.execute("ANALYZE")

        def render():
            response = client.get("/usage/")
            assert response.status_code == 200

        def renders(cold=False):
            def one():
                if cold:
                    cache.clear()  # PostHog's cached answer, and the per-user query quota
                render()

            for _ in range(5):
                one()
            samples = [timed(one) for _ in range(RENDERS)]
            with CaptureQueriesContext(connection) as queries:
                one()
            return samples, len(queries.captured_queries)

        figures = {}
        filled = 0
        with override_settings(USAGE_SOURCE="ledger"):
            for total in (10_000, 1_000_000):
                fill(filled, total)
                filled = total
                assert Generation.objects.count() == total
                figures[total] = renders()
        heavy_rows = DailyUsage.objects.filter(user=heavy, day__gte=cycle.start_date).count()
        with connection.cursor() as cursor:
            cursor.execute(POSTHOG_ROWS_SQL, [heavy.pk, cycle.start, cycle.end])
            answer = [list(row) for row in cursor.fetchall()]
        with server_process("posthog", stdin=json.dumps(answer)) as posthog:
            configured = override_settings(
                USAGE_SOURCE="posthog",
                POSTHOG_API_HOST=posthog,
                POSTHOG_PROJECT_ID="1",
                POSTHOG_PERSONAL_API_KEY="phx_bench",
            )
            with configured:
                cold, cold_queries = renders(cold=True)
                cache.clear()
                warm, warm_queries = renders()
    (small, small_queries), (large, large_queries) = figures[10_000], figures[1_000_000]
    emit(
        bench="dashboard",
        db="postgres",
        heavy_user_generations=total // 10,
        heavy_user_cycle_rows=heavy_rows,
        **spread_ms(small, "ledger_1e4_"),
        **spread_ms(large, "ledger_1e6_"),
        ratio=round(spread_ms(large)["ms"] / spread_ms(small)["ms"], 3),
        queries_1e4=small_queries,
        queries_1e6=large_queries,
        **spread_ms(cold, "posthog_cold_"),
        **spread_ms(warm, "posthog_warm_"),
        posthog_rows=len(answer),
        queries_posthog_cold=cold_queries,
        queries_posthog_warm=warm_queries,
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
