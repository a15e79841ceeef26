"""Redis dead or hanging under the production command: chat, the plain form, the usage page
and /healthz still answer, quickly, and no prompt is lost."""

import contextlib
import socket
import threading
import time

import pytest
import requests

from tests.e2e.harness.client import chat
from tests.e2e.harness.launch import gunicorn_app, postgres_answers
from tests.e2e.harness.servers import free_port

pytestmark = pytest.mark.e2e


class HangingServer:
    """Accepts TCP connections and never answers (a Redis stuck in a long command)."""

    def __init__(self):
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._held: list[socket.socket] = []
        self._listener.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while self._running:
            with contextlib.suppress(TimeoutError):
                conn, _ = self._listener.accept()
                self._held.append(conn)

    def stop(self):
        self._running = False
        self._thread.join(timeout=2)
        self._listener.close()
        for conn in self._held:
            conn.close()


@pytest.fixture(scope="module", params=["unreachable", "hanging"])
def faulty_cache_app(request, tmp_path_factory):
    if not postgres_answers():
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
    hanging = HangingServer() if request.param == "hanging" else None
    port = hanging.port if hanging else free_port()  # nothing listens on a free port
    env = {"CACHE_URL": f"redis://127.0.0.1:{port}/0", "DEMO_STREAM_DELAY": "0"}
    try:
        with gunicorn_app(tmp_path_factory.mktemp("cache"), env, [("cachefault", None)]) as app:
            yield app
    finally:
        if hanging:
            hanging.stop()


def test_chat_and_pages_answer_without_the_cache(faulty_cache_app):
    app = faulty_cache_app
    session = app.login("cachefault")
    started = time.monotonic()
    status, data = chat(session, app.url, "no cache, plain")
    assert status == 200 and data["response"]
    status, data = chat(session, app.url, "no cache, streamed", stream=True)
    assert status == 200 and data["response"]
    # Each cache call gives up after CACHE_TIMEOUT (0.5 s), never the OS's TCP timeouts.
    assert time.monotonic() - started < 10
    health = requests.get(f"{app.url}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "degraded", "database": "up", "cache": "down"}
    assert session.get(f"{app.url}/usage/", timeout=10).status_code == 200


def test_the_plain_form_keeps_working_and_loses_no_prompt(faulty_cache_app):
    app = faulty_cache_app
    session = app.login("cachefault")
    response = session.post(
        f"{app.url}/chat/",
        data={
            "prompt": "Sent without JavaScript",
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": f"{app.url}/chat/"},
        timeout=30,
    )
    assert response.status_code == 200  # followed the redirect to the conversation
    assert "Sent without JavaScript" in response.text
    [(failed,)] = app.sql(
        "SELECT failed FROM chat_message WHERE content = %s", "Sent without JavaScript"
    )
    assert failed is False
