"""Fixtures for the end-to-end tests: the app under gunicorn on PostgreSQL with a fake model
and a capture sink, and the live server + Chromium for the browser tests."""

from pathlib import Path

import pytest

from tests.e2e.harness.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, HANG_GUARD_MS
from tests.e2e.harness.launch import app_with_fakes, postgres_answers


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """gunicorn (2 workers, 8 threads) on PostgreSQL, a fake model and a capture sink."""
    if not postgres_answers():
        pytest.skip("PostgreSQL is not answering on 127.0.0.1:5432")
    users = [(f"load{i}", None) for i in range(20)] + [("budget", "3.00")]
    with app_with_fakes(tmp_path_factory.mktemp("gunicorn"), users, OPENAI_TIMEOUT="2") as app:
        yield app


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

    from tests.e2e.harness.servers import free_port

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


@pytest.fixture
def browser():
    # Per test, not per module: while Playwright's event loop runs, Django hands this thread
    # another connection object, so database set-up must happen before the loop starts.
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (make test installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, settings):
    settings.DEMO_STREAM_DELAY = 0.01  # stream visibly, as `make run` does
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(HANG_GUARD_MS)
    yield page
    context.close()


@pytest.fixture(params=["light", "dark"])
def scheme_page(request, browser, settings):  # noqa: F811
    settings.DEMO_STREAM_DELAY = 0
    ARTIFACTS.mkdir(exist_ok=True)
    # axe is injected as an inline script, which the app's CSP rightly refuses.
    context = browser.new_context(
        viewport={"width": 1280, "height": 860}, color_scheme=request.param, bypass_csp=True
    )
    page = context.new_page()
    page.set_default_timeout(HANG_GUARD_MS)
    page.scheme = request.param
    yield page
    context.close()
