"""reserve() + settle() per call: the ledger's cost on every message, SQLite or PostgreSQL."""

import sys
import uuid

from bench.common import emit, median_ms, setup_django, spread_ms, timed

CALLS = 500


def main(label="sqlite"):
    dbname = None
    url = None
    if label == "postgres":
        import psycopg

        dbname = f"chatusage_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{dbname}"')
        url = f"postgres://postgres@127.0.0.1:5432/{dbname}"
    try:
        setup_django(url)
        from django.conf import settings
        from django.contrib.auth.models import User

        from usage import limits

        user = User.objects.create_user("bench")
        messages = [{"role": "user", "content": "How much does the ledger cost per call?"}]
        usage = limits.TokenUsage(40, 0, 120)

        def call():
            reservation = limits.reserve(user, settings.DEMO_MODEL, messages, 500)
            limits.settle(reservation, usage, latency_ms=900, http_status=200)

        for _ in range(30):
            call()
        samples = [timed(call) for _ in range(CALLS)]
        emit(
            bench="ledger",
            db=label,
            calls=CALLS,
            reserve_settle_ms=round(median_ms(samples), 3),
            **spread_ms(samples),
        )
    finally:
        if dbname:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(
                "postgres://postgres@127.0.0.1:5432/postgres", autocommit=True
            ) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    main(*sys.argv[1:])
