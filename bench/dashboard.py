"""/usage/ render time with 10^4 and then 10^6 ledger rows (ledger source, SQLite).

1,000 users share the rows; one heavy user owns a tenth of them. The page reads the daily
rollups, so its time and its number of SQL queries should not grow with the ledger.
"""

import sys
from datetime import timedelta

from bench.common import emit, median_ms, setup_django, timed

RENDERS = 30
USERS = 1000

FILL_SQL = """
INSERT INTO usage_generation (
    id, user_id, conversation_id, model, provider, status, reserved_cost, input_tokens,
    cached_input_tokens, output_tokens, cost, cost_estimated, latency_ms, http_status, error,
    price_input_per_1m, price_cached_input_per_1m, price_output_per_1m, created_at, settled_at)
WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < %(count)s - 1)
SELECT lower(hex(randomblob(16))),
       CASE WHEN n %% 10 = 0 THEN %(heavy)s ELSE %(first)s + (n %% %(users)s) END,
       NULL,
       CASE n %% 3 WHEN 0 THEN 'gpt-4o-mini' WHEN 1 THEN 'gpt-4o' ELSE 'gpt-4.1-mini' END,
       'openai', 'ok', 0.005, 1000 + n %% 500, 0, 200 + n %% 300, 0.0003 + (n %% 7) * 0.0001,
       0, 800, 200, '', 0.15, 0.075, 0.6,
       datetime('now', '-' || (n %% 60) || ' days'),
       datetime('now', '-' || (n %% 60) || ' days', '+2 seconds')
FROM seq
"""

ROLLUP_SQL = """
INSERT INTO usage_dailyusage (user_id, day, model, generations, errors, input_tokens,
                              cached_input_tokens, output_tokens, cost)
SELECT user_id, date(settled_at), model, count(*), 0, sum(input_tokens),
       sum(cached_input_tokens), sum(output_tokens), sum(cost)
FROM usage_generation GROUP BY user_id, date(settled_at), model
"""


def main():
    setup_django(None)
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from usage.models import Generation, UsageAccount

    call_command("collectstatic", interactive=False, verbosity=0)
    anchor = (timezone.now() - timedelta(days=20)).date()
    User.objects.bulk_create([User(username=f"user{i}") for i in range(USERS)])
    users = list(User.objects.order_by("pk").values_list("pk", flat=True))
    UsageAccount.objects.bulk_create(
        [UsageAccount(user_id=pk, billing_anchor=anchor) for pk in users]
    )
    heavy = User.objects.get(pk=users[0])
    client = Client()
    client.force_login(heavy)

    def fill(count):
        with connection.cursor() as cursor:
            cursor.execute(
                FILL_SQL, {"count": count, "heavy": heavy.pk, "first": users[1], "users": USERS - 1}
            )
            cursor.execute("DELETE FROM usage_dailyusage")
            cursor.execute(ROLLUP_SQL)

    def render():
        response = client.get("/usage/")
        assert response.status_code == 200

    figures = {}
    filled = 0
    for total in (10_000, 1_000_000):
        fill(total - filled)
        filled = total
        assert Generation.objects.count() == total
        for _ in range(5):
            render()
        samples = [timed(render) for _ in range(RENDERS)]
        with CaptureQueriesContext(connection) as queries:
            render()
        figures[total] = (median_ms(samples), len(queries.captured_queries))
    small, large = figures[10_000], figures[1_000_000]
    emit(
        bench="dashboard",
        db="sqlite",
        renders=RENDERS,
        ms_1e4=round(small[0], 2),
        ms_1e6=round(large[0], 2),
        ratio=round(large[0] / small[0], 3),
        queries_1e4=small[1],
        queries_1e6=large[1],
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
