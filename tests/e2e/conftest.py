"""Fixtures for the end-to-end tests: the app under gunicorn on PostgreSQL with a fake model
and a capture sink, and the live server + Chromium for the browser tests."""

import pytest

from tests.e2e.launch import fake_model_env, gunicorn_app, postgres_answers
from tests.e2e.servers import CaptureSink, FakeModel


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """gunicorn (2 workers, 8 threads) on PostgreSQL, a fake model and a capture sink."""
    if not postgres_answers():
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
    model, sink = FakeModel(), CaptureSink()
    env = fake_model_env(
        model.url, OPENAI_TIMEOUT="2", POSTHOG_API_KEY="phc_e2e", POSTHOG_HOST=sink.url
    )
    users = [(f"load{i}", None) for i in range(20)] + [("budget", "3.00")]
    try:
        with gunicorn_app(tmp_path_factory.mktemp("gunicorn"), env, users) as app:
            app.model, app.sink = model, sink
            yield app
    finally:
        model.stop()
        sink.stop()


@pytest.fixture(autouse=True)
def _local_http_passes_through(requests_mock):
    """`responses` guards every test; these talk to real servers on the loopback only."""
    requests_mock.add_passthru("http://127.0.0.1")


@pytest.fixture
def asgi_server(transactional_db):
    """The app under uvicorn in a thread, on the test database: an ASGI live server, so the
    browser sees answers stream (Django's live_server is WSGI and buffers them)."""
    import threading
    import time

    import uvicorn
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
    from django.core.asgi import get_asgi_application

    from tests.e2e.servers import free_port

    port = free_port()
    config = uvicorn.Config(
        ASGIStaticFilesHandler(get_asgi_application()),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
