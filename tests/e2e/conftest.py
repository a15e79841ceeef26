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
