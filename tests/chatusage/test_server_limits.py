"""The server's own limits (chatusage/asgi.py, chatusage/server.py, gunicorn.conf.py): what
an adversarial run found unbounded. Real gunicorn runs are in tests/e2e/test_adversarial.py."""

import asyncio
import itertools
import json
import runpy
from unittest import mock

import pytest
from asgiref.sync import async_to_sync

from chatusage import asgi
from tests.helpers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT_KIB = 256  # DATA_UPLOAD_MAX_MEMORY_SIZE


def call(headers: list[tuple[bytes, bytes]], chunks, method="POST", path="/api/chat/"):
    """Run the ASGI app on one request whose body is `chunks` (an iterable of bytes; None
    in it means the client stops sending): (status, body, how many body reads it made)."""
    chunks = iter(chunks)
    reads, ended = 0, False

    async def receive():
        nonlocal reads, ended
        chunk = None if ended else next(chunks, b"")
        if chunk is None:  # the client sends nothing more (and stays)
            await asyncio.Event().wait()
        reads += 1
        ended = chunk == b""
        return {"type": "http.request", "body": chunk, "more_body": not ended}

    status, _, body = exchange(scope_for(method, path, headers), receive)
    return status, body, reads


def scope_for(method: str, path: str, headers: list, host: bytes = b"127.0.0.1") -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", host), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def exchange(scope: dict, receive) -> tuple[int, dict, bytes]:
    """Run the ASGI app on `scope`: the (status, headers, body) it sent."""
    sent = []

    async def send(message):
        sent.append(message)

    async_to_sync(asgi.application)(scope, receive, send)
    headers = {name.decode(): value.decode() for name, value in sent[0]["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], headers, body


def probe(host: bytes = b"127.0.0.1") -> tuple[int, dict, dict]:
    """GET /healthz through the ASGI application: (status, headers, the JSON body)."""

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    status, headers, body = exchange(scope_for("GET", "/healthz", [], host), receive)
    return status, headers, json.loads(body)


def test_healthz_is_answered_before_django_as_django_answers_it(client):
    """chatusage/asgi.py answers /healthz itself (a busy worker's event loop makes each of
    Django's hand-offs a wait): the view's status and body, never cached."""
    status, headers, body = probe()
    view = client.get("/healthz")
    assert (status, body) == (view.status_code, view.json())
    assert body == {"status": "ok", "database": "up", "cache": "up"}
    assert "no-store" in headers["cache-control"]
    assert headers["content-type"] == "application/json"


def test_a_load_balancer_may_probe_healthz_by_address(client):
    assert client.get("/healthz", HTTP_HOST="10.1.2.3").status_code == 400  # Django's hosts
    assert probe(host=b"10.1.2.3")[0] == 200


def test_healthz_before_django_answers_503_while_the_database_is_down():
    from django.db import DatabaseError, connection

    from chatusage import views

    if connection.vendor == "postgresql":
        views.close_health_connection()
        with mock.patch.dict(connection.settings_dict, {"PORT": "1"}):
            status, _, body = probe()
    else:
        with mock.patch(
            "django.db.backends.utils.CursorWrapper.execute", side_effect=DatabaseError
        ):
            status, _, body = probe()
    assert (status, body["status"], body["database"]) == (503, "unavailable", "down")
    assert probe()[0] == 200  # and back once it answers


def test_a_declared_body_over_the_limit_is_refused_before_a_byte_is_read():
    """B6: a logged-out 1 GiB POST made a 1,022 MB temporary file before its 400."""
    status, body, reads = call([(b"content-length", str(2**30).encode())], [b"x" * 1024])
    assert (status, json.loads(body)["code"]) == (413, "body_too_large")
    assert reads == 0


def test_a_chunked_body_is_stopped_at_the_limit():
    status, body, reads = call([], itertools.repeat(b"x" * 1024))  # a stream without end
    assert (status, json.loads(body)["code"]) == (413, "body_too_large")
    assert reads == LIMIT_KIB + 1


def test_a_body_that_stops_arriving_is_refused_when_its_time_is_up(settings):
    settings.REQUEST_BODY_TIMEOUT = 0.2
    status, body, _ = call([(b"content-length", b"100")], [b"x" * 10, None])
    assert (status, json.loads(body)["code"]) == (408, "body_timeout")


def test_a_body_within_the_limit_reaches_django_whole(alice, openai_mock):
    """The guard reads the body first; the view gets all of it (here: logged out, 401/403)."""
    prompt = json.dumps({"prompt": "x" * 8000}).encode()
    halves = [prompt[:4000], prompt[4000:]]
    status, body, _ = call(
        [(b"content-type", b"application/json"), (b"content-length", str(len(prompt)).encode())],
        halves,
    )
    assert status in (401, 403) and json.loads(body)["code"]
    status, _, _ = call([], [], method="GET", path="/healthz")
    assert status == 200


def test_the_server_config_outlasts_the_deadline_and_trusts_no_forwarded_header(monkeypatch):
    """B2: graceful_timeout (30 s) was below OPENAI_DEADLINE (120 s): a reload killed streams
    before they settled. And uvicorn trusted X-Forwarded-For from 127.0.0.1."""
    monkeypatch.setenv("OPENAI_DEADLINE", "120")
    monkeypatch.setenv("GUNICORN_GRACEFUL_TIMEOUT", "30")
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert config["graceful_timeout"] >= 120 + 30
    assert config["forwarded_allow_ips"] == ""
    assert config["worker_class"] == "chatusage.server.Worker"
