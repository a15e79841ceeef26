"""Faults and abuse found in review: each test failed on the code before the fix."""

import csv
import gc
import io
import json
import re
import weakref
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.db import IntegrityError, transaction
from django.test import Client

from chat import views
from chat.models import Message
from tests.helpers import (
    OPENAI_COMPLETION,
    PRODUCTION_ENV,
    api_request,
    hold_budget,
    manage,
    post,
    set_budget,
    streamed,
)
from usage.models import Generation, UsageAccount

pytestmark = pytest.mark.django_db


def test_rate_limited_requests_are_not_kept_alive(alice, openai_mock, settings):
    """One shared error instance chained every 429's traceback (and request) onto itself."""
    settings.CHAT_RATE_LIMIT = "1/60"
    alive = []
    for n in range(30):
        request = api_request(alice, {"prompt": "x" * 1000 + str(n)})
        response = async_to_sync(views.api_chat)(request)
        alive.append(weakref.ref(request))
        del request
        if n:
            assert response.status_code == 429
    gc.collect()
    assert sum(ref() is not None for ref in alive) == 0


def test_every_429_says_when_to_come_back(alice_client, alice, openai_mock, settings):
    settings.CHAT_RATE_LIMIT = "1/60"
    post(alice_client, {"prompt": "one"})
    limited = post(alice_client, {"prompt": "two"})
    assert limited.status_code == 429
    assert 1 <= int(limited["Retry-After"]) <= 60
    settings.CHAT_RATE_LIMIT = "1000/60"
    set_budget(alice, "0.01")
    hold_budget(alice, "0.01")
    refused = post(alice_client, {"prompt": "three"})
    assert refused.json()["code"] == "usage_limit_reached"
    assert int(refused["Retry-After"]) > 3600  # the cycle resets days from now
    form = alice_client.post("/chat/", {"prompt": "four"})
    assert form.status_code == 429 and int(form["Retry-After"]) > 3600


def test_a_lone_surrogate_in_the_models_answer_is_saved_and_billed(
    alice_client, alice, openai_mock
):
    body = json.loads(json.dumps(OPENAI_COMPLETION))
    body["choices"][0]["message"]["content"] = "broken \ud800 text"
    openai_mock.answer(
        content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    response = post(alice_client, {"prompt": "Say something odd"})
    assert response.status_code == 200
    assert response.json()["response"] == "broken \ufffd text"
    assert Message.objects.get(role="assistant").content == "broken \ufffd text"
    assert Generation.objects.get(user=alice).status == "ok"


def test_exports_cannot_carry_spreadsheet_formulas(alice, staff_client):
    alice.username = '=HYPERLINK("http://evil.example")'
    alice.save()
    Generation.objects.create(
        user=alice,
        model="@SUM(1+1)",
        provider="-2+3",
        status="ok",
        price_input_per_1m=0,
        price_cached_input_per_1m=0,
        price_output_per_1m=0,
        error="+cmd|' /C calc'!A0",
    )
    client = Client()
    client.force_login(alice)
    user_rows = list(
        csv.DictReader(io.StringIO(streamed(client.get("/usage/export.csv")).decode()))
    )
    assert (user_rows[0]["model"], user_rows[0]["provider"]) == ("'@SUM(1+1)", "'-2+3")
    generation = Generation.objects.get(user=alice)
    response = staff_client.post(
        "/admin/usage/generation/",
        {"action": "export_csv", "_selected_action": [str(generation.pk)]},
    )
    [row] = csv.DictReader(io.StringIO(streamed(response).decode()))
    assert row["user"].startswith("'=") and row["error"].startswith("'+")


def test_a_negative_budget_cannot_be_stored(alice):
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageAccount.objects.filter(user=alice).update(budget_usd=Decimal("-1"))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CHAT_RATE_LIMIT", "twenty", "CHAT_RATE_LIMIT must be requests/seconds"),
        ("CHAT_RATE_LIMIT", "20/0", "CHAT_RATE_LIMIT must be requests/seconds"),
        ("USAGE_CACHE_SECONDS", "-5", "USAGE_CACHE_SECONDS cannot be negative"),
        ("USAGE_REFRESH_SECONDS", "-1", "USAGE_REFRESH_SECONDS cannot be negative"),
        ("USAGE_DEFAULT_BUDGET_USD", "-2", "USAGE_DEFAULT_BUDGET_USD cannot be negative"),
        ("USAGE_DEFAULT_BUDGET_USD", "a lot", "USAGE_DEFAULT_BUDGET_USD must be an amount"),
        ("OPENAI_DEADLINE", "0", "OPENAI_DEADLINE must be positive"),
    ],
)
def test_malformed_settings_refuse_to_start_and_name_the_variable(name, value, message):
    result = manage("check", env={**PRODUCTION_ENV, name: value})
    assert result.returncode != 0
    assert message in result.stderr


PAGES = ["/chat/", "/usage/", "/accounts/password_change/"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_forbid_inline_scripts_and_carry_none(alice_client, path):
    response = alice_client.get(path)
    policy = response["Content-Security-Policy"]
    script_src = next(d for d in policy.split(";") if d.strip().startswith("script-src"))
    assert script_src.split() == ["script-src", "'self'"]
    assert "frame-ancestors 'none'" in policy
    page = response.content.decode()
    assert not re.search(r"\son[a-z]+=", page), "an inline event handler would be blocked"
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "an inline script"


def test_hsts_covers_subdomains_and_preload_only_when_asked():
    default = manage("diffsettings", "--all", env=PRODUCTION_ENV).stdout
    assert "SECURE_HSTS_INCLUDE_SUBDOMAINS = False" in default
    assert "SECURE_HSTS_PRELOAD = False" in default
    opted = manage(
        "diffsettings",
        "--all",
        env={
            **PRODUCTION_ENV,
            "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
            "SECURE_HSTS_PRELOAD": "1",
        },
    ).stdout
    assert "SECURE_HSTS_INCLUDE_SUBDOMAINS = True" in opted
    assert "SECURE_HSTS_PRELOAD = True" in opted
    clean = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env={
            **PRODUCTION_ENV,
            "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
            "SECURE_HSTS_PRELOAD": "1",
        },
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr


PRE_FORK = """
import runpy, sys, threading
from types import SimpleNamespace
config = runpy.run_path("gunicorn.conf.py")
assert config["preload_app"] and config["wsgi_app"] == "chatusage.asgi:application"
import chatusage.asgi  # what gunicorn's preload imports
from django.db import connection
connection.ensure_connection()
before = "chat.views" in sys.modules
sdk = "openai.resources.beta.assistants"  # loaded by the first client, not by an import
threads = threading.active_count()
config["pre_fork"](SimpleNamespace(cfg=SimpleNamespace(preload_app=True)), None)
import gc
print(before, "chat.views" in sys.modules, "posthog.ai.openai" in sys.modules,
      sdk in sys.modules, threading.active_count() == threads,
      connection.connection is None, gc.get_freeze_count() > 0)
"""


def test_the_preloading_master_forks_workers_with_the_app_imported_and_no_connection(tmp_path):
    """gunicorn.conf.py's pre_fork: what a worker would import on its first request (the
    SDK's modules its first client loads too) is loaded before the fork, with no thread
    started (a thread would not survive the fork), no database connection is inherited,
    the GC is frozen."""
    env = {**PRODUCTION_ENV, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    result = manage("shell", "--no-imports", "-c", PRE_FORK, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False"] + ["True"] * 6


def test_production_static_files_collect(tmp_path):
    """Production's manifest storage fails on any reference it cannot resolve (a vendored
    script's source map, say): every server start would then fail at collectstatic."""
    import subprocess
    import sys

    from tests.helpers import PRODUCTION_ENV

    env = {**PRODUCTION_ENV, "STATIC_ROOT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "staticfiles.json").exists()
