"""Start chatusage under gunicorn on a fresh PostgreSQL database, as production runs it.

Used by the end-to-end tests and by the benchmarks (bench/), so both measure the same thing.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.e2e.harness.servers import TcpProxy, free_port

ROOT = Path(__file__).resolve().parents[3]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# Only keeps a hung server from hanging a test: twenty logins at once hash twenty passwords
# on two shared cores, which can take a while on a busy machine.
LOGIN_TIMEOUT = 120
LOAD_MODEL = "load-test-model"  # $0.01 per output token, free input: 100 tokens = $1.00


def _answers(host, port) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _psycopg(dbname="postgres"):
    import psycopg

    return psycopg.connect(dbname=dbname, autocommit=True, connect_timeout=5, **PG)


@contextmanager
def fresh_database(prefix: str):
    """A new, empty PostgreSQL database, dropped afterwards with whatever still holds it
    open: yields its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with _psycopg() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with _psycopg() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


SETUP_SCRIPT = """
import json
from decimal import Decimal
from django.contrib.auth.models import User
from usage.models import ModelPrice, UsageAccount
ModelPrice.objects.create(model="%(model)s", input_per_1m=0, cached_input_per_1m=0,
                          output_per_1m=10000)
ids = {}
for name, budget in %(users)s:
    user = User.objects.create_user(name, f"{name}@example.com", "load-pass-2026")
    UsageAccount.objects.filter(user=user).update(
        budget_usd=None if budget is None else Decimal(budget))
    ids[name] = user.pk
print(json.dumps(ids))
"""


def fake_model_env(model_url: str, **extra: str) -> dict:
    """Settings that point the app at a fake OpenAI-compatible model (`servers.FakeModel`):
    LOAD_MODEL at 100 max tokens, so every answer costs $1.00, the most a call may."""
    return {
        "OPENAI_API_KEY": "sk-fake-e2e",
        "OPENAI_BASE_URL": f"{model_url}/v1",
        "OPENAI_MODEL": LOAD_MODEL,
        "OPENAI_MAX_TOKENS": "100",
        **extra,
    }


class App:
    def __init__(self, url, env, process, proxy, dbname, user_ids):
        self.url = url
        self.env = env
        self.process = process
        self.model = None  # the tests attach their FakeModel and CaptureSink
        self.sink = None
        self.proxy = proxy
        self.dbname = dbname
        self.user_ids = user_ids

    def sql(self, query, *params):
        with _psycopg(self.dbname) as conn:
            return conn.execute(query, params).fetchall()

    def login(self, username) -> requests.Session:
        session = requests.Session()
        session.get(f"{self.url}/accounts/login/", timeout=LOGIN_TIMEOUT)
        response = session.post(
            f"{self.url}/accounts/login/",
            data={
                "username": username,
                "password": "load-pass-2026",
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            allow_redirects=False,
            timeout=LOGIN_TIMEOUT,
        )
        assert response.status_code == 302, response.text[:500]
        session.headers["X-CSRFToken"] = session.cookies["csrftoken"]
        return session


def manage(env, *args, timeout=180):
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def postgres_answers() -> bool:
    return _answers(PG["host"], PG["port"])


@contextmanager
def gunicorn_app(
    workdir: Path,
    env: dict,
    users: list[tuple[str, str | None]],
    workers: int = 2,
    proxy: bool = True,
):
    """chatusage under the production command (`gunicorn -c gunicorn.conf.py`, nothing else)
    on a new PostgreSQL database.

    With `proxy` the app reaches PostgreSQL through a TcpProxy that a fault test can cut;
    without, directly (for throughput figures). `env` adds to (or overrides) production-like
    settings; `users` are (name, budget) pairs, all with the password "load-pass-2026". The
    database is dropped afterwards.
    """
    with fresh_database("chatusage_e2e") as dbname:
        proxy = TcpProxy(PG["host"], PG["port"]) if proxy else None
        db_port = proxy.port if proxy else PG["port"]
        port = free_port()
        cache_url = "redis://127.0.0.1:6379/7" if _answers("127.0.0.1", 6379) else "locmem://"
        full_env = {
            "PATH": os.environ["PATH"],
            "DEBUG": "false",
            "SECRET_KEY": "e2e-" + uuid.uuid4().hex * 2,
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "false",
            "SECURE_COOKIES": "false",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{db_port}/{dbname}",
            "CACHE_URL": cache_url,
            "USAGE_DEFAULT_BUDGET_USD": "0",
            "CHAT_RATE_LIMIT": "100000/60",
            "STATIC_ROOT": str(workdir / "static"),
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": str(workers),
            "GUNICORN_ACCESS_LOG": "",
            "LOG_LEVEL": "WARNING",
            **env,
        }
        if cache_url.startswith("redis"):
            import redis

            redis.Redis(port=6379, db=7).flushdb()
        manage(full_env, "migrate", "--noinput", "-v0")
        manage(full_env, "collectstatic", "--noinput", "-v0")
        output = manage(
            full_env,
            "shell",
            "--no-imports",
            "-c",
            SETUP_SCRIPT % {"model": LOAD_MODEL, "users": users},
        )
        ids = json.loads(output.strip().splitlines()[-1])
        log = open(workdir / "gunicorn.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                        break
                # Not listening yet, or its first request (cold imports) is slow on a busy machine.
                except requests.RequestException:
                    pass
                assert process.poll() is None, "gunicorn exited"
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
            yield App(url, full_env, process, proxy, dbname, ids)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
            if proxy:
                proxy.cut()


@contextmanager
def app_with_fakes(workdir: Path, users: list[tuple[str, str | None]], model=None, **env: str):
    """gunicorn_app() talking to a fake model (`model`, or a new instant one) and a PostHog
    capture sink, both attached to the app (app.model, app.sink) and stopped afterwards."""
    from tests.e2e.harness.servers import CaptureSink, FakeModel

    model, sink = model or FakeModel(), CaptureSink()
    settings = fake_model_env(model.url, POSTHOG_API_KEY="phc_e2e", POSTHOG_HOST=sink.url, **env)
    try:
        with gunicorn_app(workdir, settings, users) as app:
            app.model, app.sink = model, sink
            yield app
    finally:
        model.stop()
        sink.stop()
