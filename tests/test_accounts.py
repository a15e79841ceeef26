import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from django.db import DatabaseError
from django.urls import reverse

from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parent.parent


def test_a_new_person_can_sign_up_and_is_logged_in(client, db, django_user_model):
    response = client.post(
        reverse("signup"),
        {
            "username": "newperson",
            "email": "new@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302
    user = django_user_model.objects.get(username="newperson")
    assert user.usage_account.billing_anchor == user.date_joined.date()
    assert client.get(reverse("chat:index")).status_code == 200


def test_sign_up_shows_password_validation_errors(client, db, django_user_model):
    response = client.post(
        reverse("signup"),
        {"username": "weak", "email": "weak@example.com", "password1": "123", "password2": "123"},
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "This password is too short" in body
    assert "This password is entirely numeric" in body
    assert not django_user_model.objects.filter(username="weak").exists()


def test_sign_up_refuses_an_email_already_in_use(client, alice):
    response = client.post(
        reverse("signup"),
        {
            "username": "alice2",
            "email": "ALICE@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert "already exists" in response.content.decode()


def test_login_and_logout(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert response.url == reverse("chat:index")
    assert client.get(reverse("usage:dashboard")).status_code == 200
    assert client.get(reverse("logout")).status_code == 405  # logout is POST only
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("usage:dashboard")).status_code == 302


def test_a_wrong_password_shows_an_error(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "didn't match" in response.content.decode()


def test_password_change(client, alice):
    client.force_login(alice)
    new = "another-Long-pass-2027"
    response = client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new)


@pytest.mark.parametrize(
    "name", ["chat:index", "chat:home", "usage:dashboard", "usage:export", "password_change"]
)
def test_pages_require_login(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_navigation_shows_admin_only_to_staff(client, alice, staff):
    client.force_login(alice)
    assert 'href="/admin/"' not in client.get("/chat/").content.decode()
    client.force_login(staff)
    assert 'href="/admin/"' in client.get("/chat/").content.decode()


def test_healthz_answers_200_with_the_database_up(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up", "cache": "up"}


def test_healthz_says_degraded_but_200_when_the_cache_is_down(client, db):
    from django.test import override_settings

    from chatusage import cache as shared_cache

    dead_redis = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    shared_cache.shared.cache_clear()
    try:
        with override_settings(CACHES=dead_redis):
            response = client.get("/healthz")
    finally:
        shared_cache.shared.cache_clear()
    assert response.status_code == 200
    assert response.json() == {"status": "degraded", "database": "up", "cache": "down"}


def test_healthz_answers_503_when_the_database_is_down(client, db):
    from django.db import connection

    from chatusage import views

    if connection.vendor == "postgresql":
        # The check's own connection goes to a port where no database listens.
        views.close_health_connection()
        with mock.patch.dict(connection.settings_dict, {"PORT": "1"}):
            response = client.get("/healthz")
    else:
        with mock.patch(
            "django.db.backends.utils.CursorWrapper.execute", side_effect=DatabaseError
        ):
            response = client.get("/healthz")
    assert response.status_code == 503
    assert client.get("/healthz").status_code == 200  # and back once it answers


PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "x" * 60 + "-production-like-secret",
    "ALLOWED_HOSTS": "chat.example.com",
    "PATH": os.environ["PATH"],
}


def _manage(*args, env):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"}
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY is required when DEBUG is off" in result.stderr
