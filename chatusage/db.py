"""Short database steps for async views.

An async view that waits on a model for a minute must not hold a database
connection meanwhile. `step()` runs one short piece of ORM work in a thread
(sync_to_async, so a request's steps share one thread, as Django requires) and then
gives the connection back: with PostgreSQL's pool that is a return to the pool, so N
streams in flight use at most the pool's connections.
"""

import logging
import time

from asgiref.sync import sync_to_async
from django.db import connections

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
