"""What an adversarial run broke, under the production command on PostgreSQL: each test
drives the break as it was found and checks that nothing is lost, free or left open."""

import json
import socket

import pytest
import requests

from tests.e2e.launch import fake_model_env, gunicorn_app, postgres_answers
from tests.e2e.servers import CaptureSink, FakeModel
from tests.e2e.test_real_server import chat, wait_for

pytestmark = pytest.mark.e2e

DEADLINE = 3  # seconds, OPENAI_DEADLINE
LEASE = 2  # seconds, RESERVATION_LEASE_SECONDS: a hold renewed by nobody lapses this soon


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if not postgres_answers():
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
    model, sink = FakeModel(), CaptureSink()
    env = fake_model_env(
        model.url,
        POSTHOG_API_KEY="phc_e2e",
        POSTHOG_HOST=sink.url,
        OPENAI_DEADLINE=str(DEADLINE),
        RESERVATION_LEASE_SECONDS=str(LEASE),
    )
    users = [("slowreader", "1.00")]  # one worst case ($1.00) and not a cent more
    try:
        with gunicorn_app(tmp_path_factory.mktemp("adversarial"), env, users) as app:
            app.model, app.sink = model, sink
            yield app
    finally:
        model.stop()
        sink.stop()


def open_stream_and_stop_reading(app, session: requests.Session, prompt: str) -> socket.socket:
    """POST a streamed chat over a raw socket, read the first bytes, then read nothing more
    (the socket stays open, its receive buffer small, so the server's sends soon block)."""
    body = json.dumps({"prompt": prompt, "stream": True}).encode()
    cookies = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    host, port = app.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        b"POST /api/chat/ HTTP/1.1\r\n"
        + f"Host: {host}:{port}\r\nCookie: {cookies}\r\n".encode()
        + f"X-CSRFToken: {session.headers['X-CSRFToken']}\r\n".encode()
        + f"Referer: {app.url}/\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    first = sock.recv(1024)
    assert first.startswith(b"HTTP/1.1 200"), first
    return sock


def test_a_client_that_stops_reading_cannot_stretch_a_call_past_its_deadline(app):
    """B1: a provider streaming without end, a client that stops reading. The call must end
    and settle at the deadline, so its hold is never released while it runs and a second
    call is refused: the ledger never passes the $1.00 budget."""
    session = app.login("slowreader")
    app.model.mode = "endless"
    try:
        sock = open_stream_and_stop_reading(app, session, "tell me everything, slowly")
        try:

            def first_call():
                return app.sql(
                    "SELECT g.status, g.cost FROM usage_generation g JOIN auth_user u "
                    "ON u.id = g.user_id WHERE u.username = 'slowreader'"
                )

            assert wait_for(lambda: [s for s, _ in first_call()] == ["ok"], 120), first_call()
            status, data = chat(session, app.url, "and a second call at once")
        finally:
            sock.close()
    finally:
        app.model.mode = "ok"
    assert (status, data["code"]) == (429, "usage_limit_reached")
    [(rows, spent)] = app.sql(
        "SELECT count(*), sum(g.cost) FROM usage_generation g JOIN auth_user u "
        "ON u.id = g.user_id WHERE u.username = 'slowreader'"
    )
    assert rows == 1 and 0 < spent <= 1
    [(content, interrupted)] = app.sql(
        "SELECT m.content, m.interrupted FROM chat_message m JOIN chat_conversation c "
        "ON c.id = m.conversation_id JOIN auth_user u ON u.id = c.user_id "
        "WHERE u.username = 'slowreader' AND m.role = 'assistant'"
    )
    assert interrupted and content.startswith("more more")
