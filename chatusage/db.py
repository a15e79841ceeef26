"""Short database steps for async views.

An async view that waits on a model for a minute must not hold a database
connection meanwhile. `step()` runs one short piece of ORM work in a thread
(sync_to_async, so a request's steps share one thread, as Django requires) and then
gives the connection back: with PostgreSQL's pool that is a return to the pool, so N
streams in flight use at most the pool's connections.
"""

from asgiref.sync import sync_to_async
from django.db import connections


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
