"""Short database steps for async views.

An async view that waits on a model for a minute must not hold a database
connection meanwhile. `step()` runs one short piece of ORM work in a thread
(sync_to_async, so a request's steps share one thread, as Django requires) and then
gives the connection back: with PostgreSQL's pool that is a return to the pool, so N
streams in flight use at most the pool's connections.

The statements run on every request (the ledger's, usage/sql.py; a chat turn's,
chat/sql.py; the session read, chatusage/sessions.py) are plain SQL sent by `batch()`,
several in one round trip on PostgreSQL: the ORM took longer to build them than the
database took to answer.
"""

import logging
import time
from datetime import date, datetime
from decimal import Decimal
from uuid import UUID

from asgiref.sync import sync_to_async
from django.db import connection, connections

log = logging.getLogger(__name__)


def release_connections() -> None:
    """Return this thread's server connections to the pool, unless a transaction is open.

    SQLite connections are files, not server sessions: keeping them saves a reconnect.
    """
    for conn in connections.all(initialized_only=True):
        if conn.vendor != "sqlite" and not conn.in_atomic_block:
            conn.close()


def _run(fn, args, kwargs):
    try:
        return fn(*args, **kwargs)
    finally:
        release_connections()


async def step(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in the request's sync thread, connection released after."""
    return await sync_to_async(_run)(fn, args, kwargs)


def postgres() -> bool:
    return connection.vendor == "postgresql"


def params(values: dict | list) -> dict | list:
    """Values as the database stores them. psycopg adapts Python types itself; SQLite keeps
    Django's text forms (UUIDs as hex, datetimes as naive UTC, decimals as numbers)."""
    if postgres():
        return values
    if isinstance(values, dict):
        return {key: _sqlite_value(value) for key, value in values.items()}
    return [_sqlite_value(value) for value in values]


def _sqlite_value(value):
    if isinstance(value, UUID):
        return value.hex
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return connection.ops.adapt_decimalfield_value(value, 20, 10)
    return value


def require_transaction(what: str) -> None:
    """A precondition, checked: `what` must run inside a transaction (its lock and its
    writes commit together), not in autocommit."""
    if not connection.in_atomic_block:
        raise RuntimeError(f"{what} must run inside transaction.atomic().")


def batch(*statements: tuple[str, dict | list]) -> list[list[tuple] | None]:
    """Run (sql, params) statements in order: each one's rows, or None if it returns none.

    Inside a transaction they run in it (PostgreSQL's BEGIN goes out in the same batch).
    On PostgreSQL they go in pipeline mode, one round trip, unless there is only one to send.
    An error in any statement raises, and the ones after it do not run.
    """
    if not postgres():
        results = []
        with connection.cursor() as cursor:
            for sql, values in statements:
                cursor.execute(sql, values)
                results.append(cursor.fetchall() if cursor.description else None)
        return results
    import psycopg

    connection.ensure_connection()
    raw = connection.connection
    # psycopg's server-binding cursor sends the values apart from the text, dumped in C. The
    # connection's own cursor_factory (Django's, client-side binding) quotes each value into
    # the text in Python: a chat turn's statements took 8% more CPU that way. Nothing is
    # prepared (Django turns that off for poolers, and preparing measured no faster). Where
    # queries are logged (DEBUG, CaptureQueriesContext): Django's, so the log misses none.
    new_cursor = connection.cursor if connection.queries_logged else lambda: psycopg.Cursor(raw)
    in_transaction = raw.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    if len(statements) == 1 and (raw.autocommit or in_transaction):
        # One statement and no BEGIN to send before it (the session read, the user row, a
        # spend read): pipeline mode costs 83 µs of CPU where a plain execute costs 46.
        (sql, values), cursor = statements[0], new_cursor()
        with connection.wrap_database_errors:
            cursor.execute(sql, values)
        return [cursor.fetchall() if cursor.description else None]
    cursors = []
    # Django's error classes, though the errors only arrive with the pipeline's results.
    with connection.wrap_database_errors, raw.pipeline():
        for sql, values in statements:
            cursor = new_cursor()
            cursor.execute(sql, values)
            cursors.append(cursor)
    return [cursor.fetchall() if cursor.description else None for cursor in cursors]


POOL_CHECK_SECONDS = 5.0


def watch_pool(interval: float = POOL_CHECK_SECONDS) -> None:
    """Check the idle pooled connections every `interval` seconds, in a daemon thread.

    After a database restart every idle connection in the pool is dead. psycopg_pool
    finds that out one checkout at a time and sleeps with a doubling delay between two
    dead ones (1, 2, 4 s...), so a worker with ten dead connections served nothing for
    a minute. pool.check() tests them all at once, without that delay, and replaces the
    broken ones. Started by gunicorn in each worker (gunicorn.conf.py).
    """
    import threading

    from django.db import connection

    def run():
        pool = getattr(connection, "pool", None)  # None on SQLite
        if pool is None:
            return
        while True:
            time.sleep(interval)
            if not pool.closed:
                try:
                    pool.check()
                except Exception:  # never let the watcher die; the pool logs the cause
                    log.warning("Checking the database pool failed", exc_info=True)

    threading.Thread(target=run, name="db-pool-watch", daemon=True).start()
