"""The PostgreSQL pool's checkout check (chatusage/postgresql/base.py): a connection the
server has ended is never handed out, and a quiet one is handed out without a round trip."""

import select
from unittest import mock

import psycopg
import pytest
from django.db import connection
from psycopg_pool import ConnectionPool

from chatusage.postgresql.base import check_quiet

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's pool"),
    pytest.mark.django_db(transaction=True),
]


def connect() -> psycopg.Connection:
    return psycopg.connect(**connection.get_connection_params(), autocommit=True)


def end_on_the_server(conn: psycopg.Connection) -> None:
    """pg_terminate_backend, as a restart or failover ends every session; returns once the
    server's last word has reached the client's socket."""
    with connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
    poll = select.poll()
    poll.register(conn.fileno(), select.POLLIN)
    assert poll.poll(30_000), "the server never closed the connection"


def test_the_project_checks_connections_with_it():
    assert connection.settings_dict["ENGINE"] == "chatusage.postgresql"
    assert connection.settings_dict["CONN_HEALTH_CHECKS"]


def test_a_quiet_connection_passes_without_a_round_trip():
    with (
        connect() as conn,
        mock.patch.object(
            ConnectionPool, "check_connection", wraps=ConnectionPool.check_connection
        ) as full_check,
    ):
        check_quiet(conn)
        assert full_check.call_count == 0
        assert conn.execute("SELECT 1").fetchone() == (1,)  # and it was fine


def test_a_connection_the_server_ended_fails_the_check():
    with connect() as conn:
        end_on_the_server(conn)
        assert not conn.broken  # psycopg cannot know yet: nothing has been sent since
        with pytest.raises(psycopg.OperationalError):
            check_quiet(conn)


def test_a_closed_connection_fails_the_check():
    conn = connect()
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        check_quiet(conn)


def test_the_pool_never_hands_out_a_connection_the_server_ended():
    """As after a database restart: the next request gets a working connection, not a 500."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    pool = connection.pool
    ended = connection.connection
    ended_pid = ended.info.backend_pid
    connection.close()  # back to the pool, idle
    end_on_the_server(ended)
    taken = [pool.getconn() for _ in range(pool.get_stats()["pool_available"])]
    try:
        for conn in taken:
            assert conn.execute("SELECT pg_backend_pid()").fetchone() != (ended_pid,)
    finally:
        for conn in taken:
            pool.putconn(conn)
    with connection.cursor() as cursor:  # and Django's own checkout works
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
